//! The scenarios, one file each. Each starts its own servers (unless the
//! bench targets a running one), builds its state, then measures phases,
//! every one bounded in count and in time, and returns a
//! [`Report`](crate::report::Report). Sizes are two constants of a
//! scenario's own `Sizes`: `QUICK` (the smoke run) and `FULL`.
//!
//! - `heartbeat`: live-session heartbeats vs Health/Check.
//! - `fanout`: isolated changes to 100–50 k watchers vs Health/Watch.
//! - `coalescing`: changes every 30–40 ms, adaptive vs fixed windows.
//! - `storm`: a join storm, adaptive vs fixed windows.
//! - `expiry`: 100 k sessions due at once.
//! - `memory`: RSS per session, per room, per watch stream.
//! - `persist`: heartbeat stalls while `--data-dir` state is written.
//! - `redis_heartbeat`, `redis_watch`, `redis_memory`, `redis_expiry`: the
//!   Redis store (each with its own `redis-server`).

pub mod coalescing;
pub mod expiry;
pub mod fanout;
pub mod heartbeat;
pub mod memory;
pub mod persist;
pub mod redis_expiry;
pub mod redis_heartbeat;
pub mod redis_memory;
pub mod redis_watch;
pub mod storm;
