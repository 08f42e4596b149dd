//! The presence engine: rooms, sessions, deadlines and snapshots.
//!
//! Plain Rust with an injectable [`Clock`]: no tonic, no prost, no HTTP.
//! The server talks to it through the [`Store`] trait, implemented by the
//! embedded [`Memory`] store and the shared [`Redis`] store. What every
//! store shares lives here once: request validation (`validate.rs`), the
//! listing order ([`listing`]), the watch hub with its coalescing windows
//! ([`Hub`]) and the counters of what a store did.
//!
//! - `model.rs`: limits, snapshots, leases, errors.
//! - `store.rs`: the [`Store`] trait and [`AnyStore`].
//! - `memory.rs`, `memory/`: the embedded store and its state file.
//! - `redis.rs`, `redis/`: the Redis store, its scripts and notifications.

mod clock;
mod counters;
mod hub;
pub mod listing;
mod memory;
mod model;
pub mod redis;
mod store;
mod validate;

pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use counters::{Activity, ActivityCounters};
pub use hub::{Change, Hub, Subscription};
pub use memory::{persist, Memory};
pub use model::*;
pub use redis::{Redis, RedisConfig};
pub use store::{AnyStore, Health, Stats, Store};
