//! The watch hub: which rooms this instance's watchers watch, the latest
//! snapshot of each, and when the next one may go out. Every store has one;
//! the store tells it what changed and builds snapshots when asked, the hub
//! does the rest the same way for every store.
//!
//! **What a watcher holds.** Each watched room has one `tokio::sync::watch`
//! channel with the latest `Arc<Snapshot>`: a slow watcher holds a pointer
//! to the latest snapshot and skips stale ones; nothing is queued per
//! watcher. A [`Subscription`] unregisters on `Drop`, and the room's entry
//! goes with its last watcher (the store is told, so it can forget an empty
//! room or unsubscribe from its notifications). A subscription can end with
//! an error (the store could not read the room): the RPC then ends with
//! that error, never with OK.
//!
//! **Coalescing follows the cost of a publish.** A change is published at
//! once unless the room published less than its *window* ago; then it is
//! folded into one publish at the end of that window (the store's driver
//! asks for due rooms with [`Hub::take_due`]). A room's window is twice the
//! estimated CPU time of one fan-out, `watchers × (8 µs + 40 ns × listed
//! users)` (the per-delivery cost measured by the benchmark), at most
//! `--snapshot-interval`: a small room's change goes out at once, a big
//! room's snapshots never take more than about half a core, and a burst
//! costs at most one snapshot build per window.
//!
//! **Versions only grow on a stream**: a snapshot older than the one
//! published is dropped, and one that looks the same (the version aside)
//! replaces it without waking anyone, so two identical snapshots never
//! follow each other.
//!
//! Locks: one `std::sync::Mutex` per shard of rooms, and one for the queue
//! of due publishes; never held across an `.await`, never both at once
//! (shard first when a caller holds one: stores call in with their own
//! room lock held, so the order is store lock → hub shard → due queue).

use std::cmp::Reverse;
use std::collections::hash_map::RandomState;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll};

use tokio::sync::{watch, Notify};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::Stream;

use super::clock::Millis;
use super::counters::ActivityCounters;
use super::model::{Coalescing, Error, Id, Limits, Snapshot};

/// Number of room shards (a power of two).
const SHARDS: usize = 64;
/// Estimated server CPU of delivering one snapshot to one watcher, in ns.
pub const DELIVERY_NS: u64 = 8_000;
/// Estimated extra CPU per listed user of a delivered snapshot, in ns.
pub const LISTED_USER_NS: u64 = 40;

/// What a store does when a room loses its last watcher here.
type OnIdle = Box<dyn Fn(&Id) + Send + Sync>;

/// What the latest state of a watched room is.
type Published = Result<Arc<Snapshot>, Error>;

/// What a store must do after telling the hub of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nobody watches the room here.
    NotWatched,
    /// Build a snapshot now and [`Hub::publish`] it.
    Publish,
    /// The room's window is open: the change goes out with the publish at
    /// its end (the store's driver gets the room from [`Hub::take_due`]).
    Deferred,
    /// A publish is already pending; the change is folded into it.
    Coalesced,
}

/// The hub of one store. Cheap to clone: clones share one state.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<HashMap<Id, Watched>>]>,
    hasher: RandomState,
    /// Rooms whose publish waits for the end of their window, by due time;
    /// at most one entry per room (while it is `pending`).
    due: Mutex<BinaryHeap<Reverse<(Millis, Id)>>>,
    /// Woken when a publish is queued, so the driver can wake earlier.
    due_changed: Notify,
    /// The longest window (`--snapshot-interval`), ms.
    window_cap: Millis,
    /// Windows follow the fan-out's cost, or are always the cap.
    adaptive: bool,
    /// Rooms watched here at most (`--max-rooms`).
    max_rooms: usize,
    /// Rooms watched here.
    rooms: AtomicUsize,
    counters: Arc<ActivityCounters>,
    /// Open subscriptions.
    watchers: AtomicUsize,
    /// Source of entry epochs (see [`Watched::epoch`]).
    next_epoch: AtomicU64,
    /// Told when a room loses its last watcher here.
    on_idle: OnceLock<OnIdle>,
}

struct Watched {
    /// The room's id (the map's key, shared).
    id: Id,
    tx: watch::Sender<Published>,
    /// Tells this entry apart from a later one of the same room, so a
    /// guard of a failed (detached) entry cannot unregister from a new one.
    epoch: u64,
    watchers: u32,
    /// When the last publish went out (or was decided), ms.
    last_publish: Millis,
    /// A publish is queued in `due`.
    pending: bool,
}

impl Hub {
    /// A hub for `limits` (its windows, at most `snapshot_interval`, and
    /// at most `max_rooms` watched rooms), counting into `counters`.
    pub fn new(limits: &Limits, counters: Arc<ActivityCounters>) -> Self {
        let window_cap = limits.snapshot_interval;
        let max_rooms = limits.max_rooms;
        Self {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                hasher: RandomState::new(),
                due: Mutex::default(),
                due_changed: Notify::new(),
                window_cap: window_cap.as_millis() as Millis,
                adaptive: limits.coalescing == Coalescing::Adaptive,
                max_rooms,
                rooms: AtomicUsize::new(0),
                counters,
                watchers: AtomicUsize::new(0),
                next_epoch: AtomicU64::new(0),
                on_idle: OnceLock::new(),
            }),
        }
    }

    /// Sets what to do when a room loses its last watcher (once; later calls
    /// are ignored). Called with no hub lock held.
    pub fn on_idle(&self, f: impl Fn(&Id) + Send + Sync + 'static) {
        let _ = self.inner.on_idle.set(Box::new(f));
    }

    /// Subscribes to `room_id`. The room's current snapshot is shared if it
    /// is watched already; else `current` makes it (under the room's hub
    /// lock, so a change published meanwhile cannot be missed when the
    /// caller holds its own room lock too). A room not watched yet needs
    /// room under the `max_rooms` bound.
    pub fn subscribe(
        &self,
        room_id: &str,
        current: impl FnOnce() -> Snapshot,
    ) -> Result<Subscription, Error> {
        let mut shard = self.inner.shard(room_id);
        if !shard.contains_key(room_id) {
            let max = self.inner.max_rooms;
            self.inner
                .rooms
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < max).then_some(n + 1)
                })
                .map_err(|_| Error::LimitReached {
                    what: "watched rooms",
                    limit: max,
                })?;
            let snapshot = current();
            ActivityCounters::bump(&self.inner.counters.snapshots_built);
            let epoch = self.inner.next_epoch.fetch_add(1, Ordering::Relaxed);
            shard.insert(
                snapshot.room_id.clone(),
                Watched {
                    id: snapshot.room_id.clone(),
                    tx: watch::Sender::new(Ok(Arc::new(snapshot))),
                    epoch,
                    watchers: 0,
                    last_publish: 0,
                    pending: false,
                },
            );
        }
        let watched = shard.get_mut(room_id).expect("present");
        Ok(self.register(watched))
    }

    /// Subscribes to `room_id` if it is watched here already.
    pub fn join(&self, room_id: &str) -> Option<Subscription> {
        let mut shard = self.inner.shard(room_id);
        let watched = shard.get_mut(room_id)?;
        Some(self.register(watched))
    }

    fn register(&self, watched: &mut Watched) -> Subscription {
        watched.watchers += 1;
        self.inner.watchers.fetch_add(1, Ordering::Relaxed);
        Subscription {
            stream: WatchStream::new(watched.tx.subscribe()),
            done: false,
            guard: Guard {
                hub: self.clone(),
                room_id: watched.id.clone(),
                epoch: watched.epoch,
            },
        }
    }

    /// Records a change of `room_id`'s listing at `now` and says what the
    /// store must do about it.
    pub fn changed(&self, room_id: &str, now: Millis) -> Change {
        let mut shard = self.inner.shard(room_id);
        let Some(watched) = shard.get_mut(room_id) else {
            return Change::NotWatched;
        };
        if watched.pending {
            ActivityCounters::bump(&self.inner.counters.snapshots_coalesced);
            return Change::Coalesced;
        }
        let due = watched
            .last_publish
            .saturating_add(self.inner.window(watched));
        if now >= due {
            watched.last_publish = now;
            return Change::Publish;
        }
        watched.pending = true;
        let key = watched.id.clone();
        drop(shard);
        self.inner
            .due
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Reverse((due, key)));
        self.inner.due_changed.notify_one();
        Change::Deferred
    }

    /// Publishes a snapshot the store built for a watched room (after
    /// [`Change::Publish`] or [`Hub::take_due`]). Older than what was
    /// published: dropped. Looking the same: kept without waking anyone.
    pub fn publish(&self, snapshot: Snapshot) {
        ActivityCounters::bump(&self.inner.counters.snapshots_built);
        let shard = self.inner.shard(&snapshot.room_id);
        let Some(watched) = shard.get(&snapshot.room_id) else {
            return;
        };
        watched.tx.send_if_modified(|current| match current {
            Ok(old) if snapshot.version <= old.version => false,
            Ok(old) if old.same_view(&snapshot, usize::MAX) => {
                *current = Ok(Arc::new(snapshot));
                false
            }
            _ => {
                *current = Ok(Arc::new(snapshot));
                true
            }
        });
    }

    /// Ends every subscription of `room_id` with `error` (the store cannot
    /// read the room). The room's next watcher starts afresh.
    pub fn fail(&self, room_id: &str, error: Error) {
        let removed = self.inner.shard(room_id).remove(room_id);
        if let Some(watched) = removed {
            self.inner.rooms.fetch_sub(1, Ordering::AcqRel);
            let _ = watched.tx.send_replace(Err(error));
        }
    }

    /// Rooms whose window has ended by `now`, for the store to build and
    /// publish (each once; their window starts again now).
    pub fn take_due(&self, now: Millis) -> Vec<Id> {
        let mut due = self.inner.due.lock().unwrap_or_else(|e| e.into_inner());
        let mut rooms = Vec::new();
        while due.peek().is_some_and(|Reverse((at, _))| *at <= now) {
            let Reverse((_, room_id)) = due.pop().expect("peeked");
            let mut shard = self.inner.shard(&room_id);
            if let Some(watched) = shard.get_mut(&room_id).filter(|w| w.pending) {
                watched.pending = false;
                watched.last_publish = now;
                rooms.push(room_id);
            }
        }
        rooms
    }

    /// When the next deferred publish is due.
    pub fn next_due(&self) -> Option<Millis> {
        let due = self.inner.due.lock().unwrap_or_else(|e| e.into_inner());
        due.peek().map(|Reverse((at, _))| *at)
    }

    /// Resolves when a publish was deferred (so a driver sleeping past its
    /// due time can wake up). One waiter at a time.
    pub async fn deferred(&self) {
        self.inner.due_changed.notified().await;
    }

    /// True when somebody here watches `room_id`.
    pub fn is_watched(&self, room_id: &str) -> bool {
        self.inner.shard(room_id).contains_key(room_id)
    }

    /// Every watched room with the version and total count of its latest
    /// snapshot.
    pub fn watched(&self) -> Vec<(Id, u64, u32)> {
        let mut rooms = Vec::new();
        for shard in self.inner.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            rooms.extend(shard.iter().map(|(id, w)| {
                let (version, total) =
                    w.tx.borrow()
                        .as_ref()
                        .map_or((0, 0), |s| (s.version, s.total_count));
                (id.clone(), version, total)
            }));
        }
        rooms
    }

    /// True when a publish of `room_id` waits for the end of its window.
    pub fn is_pending(&self, room_id: &str) -> bool {
        self.inner
            .shard(room_id)
            .get(room_id)
            .is_some_and(|w| w.pending)
    }

    /// The version of `room_id`'s latest snapshot, if it is watched here.
    pub fn version(&self, room_id: &str) -> Option<u64> {
        let shard = self.inner.shard(room_id);
        let watched = shard.get(room_id)?;
        let version = watched.tx.borrow().as_ref().map_or(0, |s| s.version);
        Some(version)
    }

    /// Open subscriptions.
    pub fn watchers(&self) -> usize {
        self.inner.watchers.load(Ordering::Relaxed)
    }

    /// Rooms watched here.
    pub fn rooms(&self) -> usize {
        self.inner.rooms.load(Ordering::Relaxed)
    }

    /// The window a room with `watchers` watchers and `listed` listed users
    /// gets, in ms (see the module doc).
    pub fn window_for(&self, watchers: u32, listed: usize) -> Millis {
        if !self.inner.adaptive {
            return self.inner.window_cap;
        }
        window_ms(self.inner.window_cap, watchers, listed)
    }
}

impl Inner {
    fn shard(&self, room_id: &str) -> MutexGuard<'_, HashMap<Id, Watched>> {
        let i = self.hasher.hash_one(room_id) as usize & (SHARDS - 1);
        // Every mutation completes before anything that could panic, so a
        // poisoned lock still guards consistent state.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    fn window(&self, watched: &Watched) -> Millis {
        if !self.adaptive {
            return self.window_cap;
        }
        let listed = watched.tx.borrow().as_ref().map_or(0, |s| s.users.len());
        window_ms(self.window_cap, watched.watchers, listed)
    }
}

/// Twice the estimated fan-out CPU of a room, in whole ms, at most `cap`.
fn window_ms(cap: Millis, watchers: u32, listed: usize) -> Millis {
    let cost_ns = u64::from(watchers) * (DELIVERY_NS + LISTED_USER_NS * listed as u64);
    (2 * cost_ns / 1_000_000).min(cap)
}

/// A subscription to a room's snapshots: the current one first, then the
/// latest after each change (a slow reader skips stale ones); an `Err`
/// ends it. Dropping it unsubscribes.
pub struct Subscription {
    stream: WatchStream<Published>,
    done: bool,
    guard: Guard,
}

impl Stream for Subscription {
    type Item = Result<Arc<Snapshot>, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let next = Pin::new(&mut self.stream).poll_next(cx);
        match &next {
            Poll::Ready(Some(Ok(_))) => {
                ActivityCounters::bump(&self.guard.hub.inner.counters.snapshots_delivered);
            }
            Poll::Ready(Some(Err(_)) | None) => self.done = true,
            Poll::Pending => {}
        }
        next
    }
}

/// Unregisters a watcher on drop; the room's entry goes with its last
/// watcher, and the store is told.
struct Guard {
    hub: Hub,
    room_id: Id,
    epoch: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let inner = &self.hub.inner;
        inner.watchers.fetch_sub(1, Ordering::Relaxed);
        let mut shard = inner.shard(&self.room_id);
        let Some(watched) = shard
            .get_mut(&self.room_id)
            .filter(|w| w.epoch == self.epoch)
        else {
            return;
        };
        watched.watchers -= 1;
        if watched.watchers > 0 {
            return;
        }
        shard.remove(&self.room_id);
        inner.rooms.fetch_sub(1, Ordering::AcqRel);
        drop(shard);
        if let Some(on_idle) = inner.on_idle.get() {
            on_idle(&self.room_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_stream::StreamExt;

    fn limits(max_rooms: usize) -> Limits {
        Limits {
            max_rooms,
            ..Limits::default()
        }
    }

    fn snapshot(room: &str, version: u64, users: usize) -> Snapshot {
        Snapshot {
            room_id: Id::from(room),
            users: (0..users)
                .map(|i| super::super::UserPresence {
                    user_id: Id::from(format!("u{i}")),
                    last_disconnected: None,
                    data: None,
                })
                .collect(),
            online_count: users as u32,
            total_count: users as u32,
            version,
            memo: Default::default(),
        }
    }

    async fn next(sub: &mut Subscription) -> Option<Result<Arc<Snapshot>, Error>> {
        tokio::time::timeout(Duration::from_millis(20), sub.next())
            .await
            .ok()
            .flatten()
    }

    #[test]
    fn windows_follow_the_cost_of_a_fan_out_up_to_the_cap() {
        let hub = Hub::new(&limits(10), Arc::default());
        assert_eq!(hub.window_for(10, 5), 0, "a small room publishes at once");
        assert_eq!(hub.window_for(100, 5), 1);
        assert_eq!(hub.window_for(1000, 5), 16);
        assert_eq!(hub.window_for(1000, 1000), 50, "capped");
        assert_eq!(hub.window_for(0, 0), 0);
        let fixed = Hub::new(
            &Limits {
                coalescing: Coalescing::Fixed,
                ..Limits::default()
            },
            Arc::default(),
        );
        assert_eq!(fixed.window_for(10, 5), 50, "a fixed window for every room");
    }

    #[tokio::test]
    async fn changes_publish_or_defer_by_the_window_and_never_go_back() {
        let counters = Arc::new(ActivityCounters::default());
        let hub = Hub::new(&limits(10), counters.clone());
        assert_eq!(hub.changed("r", 5), Change::NotWatched);
        // 1000 watchers of 5 users: a 16 ms window.
        let mut subs: Vec<Subscription> = (0..1000)
            .map(|_| hub.subscribe("r", || snapshot("r", 10, 5)).unwrap())
            .collect();
        assert_eq!(hub.watchers(), 1000);
        assert_eq!(next(&mut subs[0]).await.unwrap().unwrap().version, 10);
        assert_eq!(hub.changed("r", 100), Change::Publish);
        hub.publish(snapshot("r", 11, 6));
        assert_eq!(next(&mut subs[0]).await.unwrap().unwrap().version, 11);
        assert_eq!(hub.changed("r", 110), Change::Deferred);
        assert_eq!(hub.changed("r", 111), Change::Coalesced);
        assert_eq!(hub.next_due(), Some(116));
        assert!(hub.take_due(115).is_empty());
        assert_eq!(hub.take_due(116), vec![Id::from("r")]);
        hub.publish(snapshot("r", 9, 1)); // older: dropped
        hub.publish(snapshot("r", 12, 6)); // same view: kept silently
        assert!(next(&mut subs[0]).await.is_none());
        assert_eq!(hub.version("r"), Some(12));
        hub.publish(snapshot("r", 13, 7));
        assert_eq!(next(&mut subs[0]).await.unwrap().unwrap().version, 13);
        assert_eq!(counters.read().snapshots_coalesced, 1);
    }

    #[tokio::test]
    async fn the_last_watcher_leaving_tells_the_store_and_a_failure_ends_streams() {
        let hub = Hub::new(&limits(10), Arc::default());
        let idle = Arc::new(Mutex::new(Vec::new()));
        let seen = idle.clone();
        hub.on_idle(move |room| seen.lock().unwrap().push(room.to_string()));
        let a = hub.subscribe("r", || snapshot("r", 1, 0)).unwrap();
        let mut b = hub.join("r").expect("watched");
        assert!(hub.join("q").is_none());
        drop(a);
        assert!(idle.lock().unwrap().is_empty());
        assert!(hub.is_watched("r"));
        next(&mut b).await.unwrap().unwrap();
        hub.fail("r", Error::ShuttingDown);
        assert_eq!(
            next(&mut b).await.unwrap().unwrap_err(),
            Error::ShuttingDown
        );
        assert!(next(&mut b).await.is_none(), "ended after the error");
        // A new watcher starts afresh; the old guard leaves it alone.
        let c = hub.subscribe("r", || snapshot("r", 5, 0)).unwrap();
        drop(b);
        assert!(hub.is_watched("r"));
        drop(c);
        assert!(!hub.is_watched("r"));
        assert_eq!(*idle.lock().unwrap(), ["r"]);
        assert_eq!((hub.watchers(), hub.rooms()), (0, 0));
    }

    #[test]
    fn watched_rooms_are_bounded() {
        let hub = Hub::new(&limits(2), Arc::default());
        let _a = hub.subscribe("a", || snapshot("a", 1, 0)).unwrap();
        let _b = hub.subscribe("b", || snapshot("b", 1, 0)).unwrap();
        let _a2 = hub.subscribe("a", || snapshot("a", 1, 0)).unwrap();
        let err = hub.subscribe("c", || snapshot("c", 1, 0)).err().unwrap();
        assert_eq!(
            err,
            Error::LimitReached {
                what: "watched rooms",
                limit: 2
            }
        );
        drop(_b);
        assert!(hub.subscribe("c", || snapshot("c", 1, 0)).is_ok());
    }
}
