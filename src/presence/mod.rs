//! The presence engine: rooms, sessions, deadlines and snapshots.
//!
//! Plain Rust with an injectable [`Clock`]: no tonic, no prost, no HTTP.
//! The RPC layer talks to it through the [`Store`] trait.

mod clock;
mod counters;
mod memory;
mod model;
pub mod persist;
mod store;

pub use clock::{Clock, ManualClock, Millis, SystemClock};
pub use counters::Counts;
pub use memory::{Memory, Stats, Subscription};
pub use model::*;
pub use store::Store;

#[cfg(test)]
mod tests;
