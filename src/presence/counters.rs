//! Monotonic counts of what the engine did, for metrics.
//!
//! Plain relaxed atomics, bumped on slow paths only (a session created or
//! ended, a snapshot built or handed out; never on the heartbeat of a live
//! session). The engine knows no metrics library: the exporter reads
//! [`Activity`] at scrape time, so the engine stays free of exporters and of
//! process-wide registries, and every store (one per test server) counts on
//! its own.

use std::sync::atomic::{AtomicU64, Ordering};

/// The live counters of one store.
#[derive(Debug, Default)]
pub struct ActivityCounters {
    pub sessions_created: AtomicU64,
    pub sessions_disconnected: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub sessions_removed: AtomicU64,
    pub users_purged: AtomicU64,
    pub snapshots_built: AtomicU64,
    pub snapshots_coalesced: AtomicU64,
    pub snapshots_delivered: AtomicU64,
    pub sweeps: AtomicU64,
    pub resyncs: AtomicU64,
    pub resynced_rooms: AtomicU64,
    pub notifier_reconnects: AtomicU64,
}

impl ActivityCounters {
    /// Adds one to `counter`.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> Activity {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Activity {
            sessions_created: get(&self.sessions_created),
            sessions_disconnected: get(&self.sessions_disconnected),
            sessions_expired: get(&self.sessions_expired),
            sessions_removed: get(&self.sessions_removed),
            users_purged: get(&self.users_purged),
            snapshots_built: get(&self.snapshots_built),
            snapshots_coalesced: get(&self.snapshots_coalesced),
            snapshots_delivered: get(&self.snapshots_delivered),
            sweeps: get(&self.sweeps),
            resyncs: get(&self.resyncs),
            resynced_rooms: get(&self.resynced_rooms),
            notifier_reconnects: get(&self.notifier_reconnects),
        }
    }
}

/// What a store has done since it started; every field only grows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// Sessions created by a heartbeat (or restored from disk).
    pub sessions_created: u64,
    /// Sessions ended by a disconnect (RPC or beacon).
    pub sessions_disconnected: u64,
    /// Sessions ended because their deadline passed (by this instance).
    pub sessions_expired: u64,
    /// Sessions ended by RemoveRoomUser or RemoveRoom.
    pub sessions_removed: u64,
    /// Offline users forgotten at the end of their retention.
    pub users_purged: u64,
    /// Room snapshots built for watchers (one per publish, shared by all of
    /// the room's watchers).
    pub snapshots_built: u64,
    /// Changes folded into a snapshot already pending in its coalescing
    /// window, so they cost no snapshot of their own.
    pub snapshots_coalesced: u64,
    /// Snapshots handed to watch streams (one per watcher per snapshot it
    /// received; a slow watcher that skipped stale ones counts only what it
    /// got).
    pub snapshots_delivered: u64,
    /// Sweeps run (expiry, retention and deferred publishes).
    pub sweeps: u64,
    /// Watched rooms whose version was checked against the shared store
    /// (0 for the embedded store).
    pub resyncs: u64,
    /// Rooms such a check found stale and refreshed: notifications that
    /// were lost.
    pub resynced_rooms: u64,
    /// Times the shared store's notification connection was re-established.
    pub notifier_reconnects: u64,
}
