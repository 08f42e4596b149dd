//! The in-memory store's one background task: it ends sessions past their
//! deadline, forgets offline users past their retention, and publishes the
//! snapshots the hub deferred to the end of a coalescing window. There is
//! no timer per session.

use std::cmp::Reverse;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::presence::clock::Millis;
use crate::presence::counters::ActivityCounters;
use crate::presence::model::Id;

use super::room::{Due, Shard};
use super::Memory;

/// The sweeper wakes at least this often, so a wall-clock jump or a lost
/// wake-up costs at most this much lateness.
const MAX_SWEEP_SLEEP: Millis = 250;
/// Sessions one [`Memory::sweep`] ends at most (a few milliseconds of
/// work). When more are due the sweeper yields and sweeps again at once, so
/// a mass expiry does not hold up other requests on its worker thread.
const SWEEP_BUDGET: usize = 4096;

impl Memory {
    /// Ends sessions past their deadline (at most `SWEEP_BUDGET` per call),
    /// forgets offline users past retention and publishes coalesced
    /// snapshots that are due. Returns when the next of these falls due, if
    /// anything is queued (now, when the budget ran out).
    pub fn sweep(&self) -> Option<Millis> {
        let now = self.shared.clock.now();
        ActivityCounters::bump(&self.shared.counters.sweeps);
        let mut budget = SWEEP_BUDGET;
        let mut next: Option<Millis> = None;
        for shard in self.shared.rooms.iter() {
            let mut guard = shard.lock().unwrap_or_else(|e| e.into_inner());
            let shard = &mut *guard;
            let mut touched = self.expire_due(shard, now, &mut budget);
            if budget == 0
                && shard
                    .deadlines
                    .peek()
                    .is_some_and(|Reverse((at, _))| *at <= now)
            {
                next = Some(now);
            }
            touched.extend(self.purge_due(shard, now));
            touched.sort_unstable();
            touched.dedup();
            for room_id in touched {
                if let Some(room) = shard.rooms.get_mut(&room_id) {
                    self.changed(room, now);
                }
                self.shared.drop_if_empty(shard, &room_id);
            }
            if let Some(Reverse((at, _))) = shard.deadlines.peek() {
                next = earliest(next, *at);
            }
            if let Some(Reverse(due)) = shard.purges.peek() {
                next = earliest(next, due.at);
            }
        }
        self.publish_due(now);
        match self.shared.hub.next_due() {
            Some(at) => earliest(next, at),
            None => next,
        }
    }

    /// Scans the shard's due rooms (within `budget` ended sessions): ends
    /// what has expired and queues each room again at its earliest remaining
    /// deadline, but no sooner than one coalescing window from now (its
    /// watchers see one change per window anyway, and a big room whose
    /// sessions lapse one by one is not rescanned for each of them).
    /// Returns the rooms where a user went offline.
    fn expire_due(&self, shard: &mut Shard, now: Millis, budget: &mut usize) -> Vec<Id> {
        let batch = self.shared.limits.snapshot_interval.as_millis() as Millis;
        let mut touched = Vec::new();
        while let Some(Reverse((at, _))) = shard.deadlines.peek() {
            if *at > now || *budget == 0 {
                break;
            }
            let Reverse((at, room_id)) = shard.deadlines.pop().expect("peeked");
            let Some(room) = shard.rooms.get_mut(&room_id) else {
                continue;
            };
            if room.queued != Some(at) {
                continue; // superseded by an earlier entry of this room
            }
            let mut expired = Vec::new();
            let mut earliest_left: Option<Millis> = None;
            let mut more = false;
            for (id, session) in &room.sessions {
                if session.deadline > now {
                    earliest_left = earliest(earliest_left, session.deadline);
                } else if expired.len() < *budget {
                    expired.push(id.clone());
                } else {
                    more = true;
                }
            }
            *budget -= expired.len();
            let mut went_offline = false;
            for id in &expired {
                ActivityCounters::bump(&self.shared.counters.sessions_expired);
                went_offline |= self.end_session(room, &mut shard.purges, id, now);
            }
            room.queued = if more {
                Some(now)
            } else {
                earliest_left.map(|at| at.max(now.saturating_add(batch)))
            };
            if let Some(at) = room.queued {
                shard.deadlines.push(Reverse((at, room_id.clone())));
            }
            if went_offline {
                touched.push(room_id);
            }
        }
        touched
    }

    /// Forgets the shard's offline users whose retention has ended. An entry
    /// of a user who came back and left again since is moved to the end of
    /// their current retention, so each user has at most one. Returns the
    /// rooms that lost a user.
    fn purge_due(&self, shard: &mut Shard, now: Millis) -> Vec<Id> {
        let retention = self.shared.limits.retention.as_millis() as Millis;
        let mut touched = Vec::new();
        while shard
            .purges
            .peek()
            .is_some_and(|Reverse(due)| due.at <= now)
        {
            let Reverse(due) = shard.purges.pop().expect("peeked");
            let Some(room) = shard.rooms.get_mut(&due.room) else {
                continue;
            };
            let Some(user) = room.users.get_mut(&due.key) else {
                continue;
            };
            let Some(since) = user.last_disconnected() else {
                user.purge_queued = false; // online again: queued anew when it leaves
                continue;
            };
            let ends = since.saturating_add(retention);
            if ends > now {
                shard.purges.push(Reverse(Due { at: ends, ..due }));
                continue;
            }
            let user = room.users.remove(&due.key).expect("looked up above");
            ActivityCounters::bump(&self.shared.counters.users_purged);
            room.order.remove(&user.rank);
            self.unlist_user(&due.key, &room.id, 0, true);
            touched.push(due.room);
        }
        touched
    }

    /// Publishes the snapshots whose coalescing window has ended.
    fn publish_due(&self, now: Millis) {
        let cap = self.shared.limits.max_list_limit as usize;
        for room_id in self.shared.hub.take_due(now) {
            let shard = self.shared.room_shard(&room_id);
            if let Some(room) = shard.rooms.get(&room_id) {
                self.shared.hub.publish(room.snapshot(cap, false));
            }
        }
    }

    /// Runs [`Memory::sweep`] whenever something falls due, until `cancel`.
    pub async fn run_sweeper(self, cancel: CancellationToken) {
        loop {
            let next = self.sweep();
            let now = self.shared.clock.now();
            if next.is_some_and(|at| at <= now) {
                // Over budget: let other tasks run, then carry on.
                tokio::task::yield_now().await;
                if cancel.is_cancelled() {
                    return;
                }
                continue;
            }
            let wake = next.map_or(now + MAX_SWEEP_SLEEP, |at| at.min(now + MAX_SWEEP_SLEEP));
            self.shared.next_wake.store(wake, Ordering::SeqCst);
            let sleep = Duration::from_millis(wake.saturating_sub(now));
            tokio::select! {
                () = tokio::time::sleep(sleep) => {}
                () = self.shared.sweeper.notified() => {}
                () = self.shared.hub.deferred() => {}
                () = cancel.cancelled() => return,
            }
        }
    }
}

fn earliest(a: Option<Millis>, b: Millis) -> Option<Millis> {
    Some(a.map_or(b, |a| a.min(b)))
}
