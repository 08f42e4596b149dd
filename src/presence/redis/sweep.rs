//! Expiry and retention without keyspace notifications: every room group
//! has an index of its rooms by when they are next due (their earliest
//! session deadline, no sooner than one window after their last scan, or
//! their earliest purge). Every instance sweeps every group; the script
//! re-checks each deadline and retention, so instances racing on a room
//! end each session once and the loser finds nothing to do. Each pass
//! also reads the groups' totals for the live-count metrics.
//!
//! What an expiry changes outside the room's slot (the session's claim,
//! the user's index, the totals) is done once the pass has ended every
//! due session, batched per index group: a mass expiry shows in the rooms
//! first, and costs a few calls per group rather than two per session.
//! Deferred, these are only releases, which commute with the reserves
//! made meanwhile.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

use redis::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::keys::ROOM_GROUPS;
use super::ops::{Op, US};
use super::scripts::Reply;
use super::Redis;
use crate::presence::clock::Millis;
use crate::presence::counters::ActivityCounters;

/// Time between two sweeps: an expired session ends at most this much
/// after its deadline (plus the room's batching window).
pub const SWEEP_EVERY: Duration = Duration::from_millis(250);
/// Due rooms read from one group per round trip.
const DUE_PER_READ: usize = 128;
/// Expiry scripts one instance has in flight at most (with their second
/// steps). Redis runs scripts one at a time: more in flight only queues
/// the other calls behind them (a mass expiry would hold heartbeats past
/// `--store-timeout`); this many keep it busy.
const EXPIRES_IN_FLIGHT: usize = 8;
/// Sessions one expiry script ends at most (and offline users it purges),
/// about 4 ms of Redis's time; a room with more stays due and is swept
/// again at once.
const EXPIRE_BATCH: usize = 128;
/// Claims, or user index entries, one release call gives up at most.
const RELEASE_BATCH: usize = 256;

impl Redis {
    /// Sweeps until `shutdown`.
    pub(super) async fn run_sweeper(self, shutdown: CancellationToken) {
        loop {
            self.sweep().await;
            tokio::select! {
                () = tokio::time::sleep(SWEEP_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    /// One sweep of every group: ends the sessions past their deadline,
    /// forgets offline users past their retention (both as of Redis's time,
    /// or the test clock), and reads the totals; then reads the watched
    /// rooms whose coalescing window has ended.
    pub async fn sweep(&self) {
        ActivityCounters::bump(&self.shared.counters.sweeps);
        let now = self.now_ms_for_sweep();
        let slots = Semaphore::new(EXPIRES_IN_FLIGHT);
        let ended = Mutex::new(Ended::default());
        let groups = (0..ROOM_GROUPS).map(|g| self.sweep_group(g, now, &slots, &ended));
        let totals = futures_util::future::join_all(groups).await;
        let mut sum = [0u64; 3];
        let mut complete = true;
        for group in totals {
            match group {
                Some(t) => (0..3).for_each(|i| sum[i] += t[i]),
                None => complete = false,
            }
        }
        if complete {
            for (cell, value) in self.shared.totals.iter().zip(sum) {
                cell.store(value, Ordering::Relaxed);
            }
        }
        self.publish_due();
        let ended = ended.into_inner().expect("never poisoned");
        self.release_ended(ended, &slots).await;
    }

    /// The second steps of what a sweep ended: per index group, one call
    /// per [`RELEASE_BATCH`] claims and one per as many user entries; one
    /// totals update. Failures are logged: a claim left behind is taken
    /// over when found stale, and a user index heals at its next limit.
    async fn release_ended(&self, ended: Ended, slots: &Semaphore) {
        let calls = ended.claims.iter().flat_map(|(key, pairs)| {
            pairs.chunks(RELEASE_BATCH * 2).map(move |chunk| async move {
                let _slot = slots.acquire().await.expect("never closed");
                let mut args = vec!["release"];
                args.extend(chunk.iter().map(String::as_str));
                let call = self.key_call(Op::Claim, &self.shared.scripts.claim, key, &args);
                if let Err(err) = call.await {
                    tracing::debug!(%err, key, "claims not released; each is taken over when found stale");
                }
            })
        });
        let mut users: HashMap<String, Vec<String>> = HashMap::new();
        for ((user_id, room_id), n) in ended.users {
            users
                .entry(self.shared.keys.user_index(&user_id))
                .or_default()
                .extend([user_id, room_id, n.to_string(), "0".to_owned()]);
        }
        let releases = users.iter().flat_map(|(key, entries)| {
            entries.chunks(RELEASE_BATCH * 4).map(move |chunk| async move {
                let _slot = slots.acquire().await.expect("never closed");
                let mut args = vec!["release"];
                args.extend(chunk.iter().map(String::as_str));
                let call = self.key_call(
                    Op::UserIndex,
                    &self.shared.scripts.user_index,
                    key,
                    &args,
                );
                if let Err(err) = call.await {
                    tracing::debug!(%err, key, "user index not updated; it heals at its next use");
                }
            })
        });
        tokio::join!(
            futures_util::future::join_all(calls),
            futures_util::future::join_all(releases),
            async {
                if ended.sessions > 0 || ended.rooms > 0 {
                    self.totals_release(ended.sessions, ended.rooms).await;
                }
            },
        );
    }

    /// The sweep's "now" for choosing due rooms. Redis's own time decides
    /// in the script; a skewed clock here only picks rooms early (the
    /// script then finds them not due) or late (another instance sweeps
    /// them).
    fn now_ms_for_sweep(&self) -> Millis {
        self.shared.clock.now()
    }

    /// Sweeps one group; returns its totals (sessions, rooms, online).
    async fn sweep_group(
        &self,
        g: u64,
        now: Millis,
        slots: &Semaphore,
        ended: &Mutex<Ended>,
    ) -> Option<[u64; 3]> {
        let (due, totals) = self.shared.keys.group(g);
        loop {
            let (d, limit) = (due.clone(), DUE_PER_READ);
            let rooms: Vec<String> = self
                .timed(Op::Sweep, None, |mut conn| async move {
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&d)
                        .arg("-inf")
                        .arg(now)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit)
                        .query_async(&mut conn)
                        .await
                })
                .await
                .ok()?;
            let expiries = rooms.iter().map(|room| async move {
                let _slot = slots.acquire().await.expect("never closed");
                self.expire_room(room, ended).await
            });
            let more = futures_util::future::join_all(expiries).await;
            if rooms.len() < DUE_PER_READ && !more.contains(&true) {
                break;
            }
        }
        let t = totals.clone();
        let counts: (Option<u64>, Option<u64>, Option<u64>) = self
            .timed(Op::Sweep, None, |mut conn| async move {
                redis::cmd("HMGET")
                    .arg(&t)
                    .arg("s")
                    .arg("r")
                    .arg("o")
                    .query_async(&mut conn)
                    .await
            })
            .await
            .ok()?;
        Some([
            counts.0.unwrap_or(0),
            counts.1.unwrap_or(0),
            counts.2.unwrap_or(0),
        ])
    }

    /// Runs the expiry script on one due room, adding what it ended to
    /// `ended` and purging the index entries of the users it forgot; true
    /// when the room has more due now.
    async fn expire_room(&self, room_id: &str, ended: &Mutex<Ended>) -> bool {
        let limits = &self.shared.config.limits;
        let keys = self.shared.keys.room(room_id);
        let retention = (limits.retention.as_millis() as Millis).to_string();
        let batch = (limits.snapshot_interval.as_millis() as Millis).to_string();
        let most = EXPIRE_BATCH.to_string();
        let reply = self
            .room_call(
                Op::Sweep,
                &self.shared.scripts.expire,
                room_id,
                &keys,
                &[&retention, &batch, &most],
            )
            .await;
        let parsed = reply.and_then(|value| {
            parse_expired(value).map_err(|e| self.shared.calls.error(e, Some(room_id)))
        });
        let (state, sessions, purged) = match parsed {
            Ok(parsed) => parsed,
            Err(err) => {
                tracing::debug!(%err, room_id, "room not swept; retried at the next sweep");
                return false;
            }
        };
        {
            let mut ended = ended.lock().expect("never poisoned");
            for (session_id, user_id) in sessions {
                ActivityCounters::bump(&self.shared.counters.sessions_expired);
                let owner = format!("{room_id}{US}{user_id}");
                let claims = ended.claims.entry(self.shared.keys.claims(&session_id));
                claims.or_default().extend([session_id, owner]);
                *ended
                    .users
                    .entry((user_id, room_id.to_owned()))
                    .or_default() += 1;
                ended.sessions += 1;
            }
            ended.rooms += i64::from(state == Swept::Deleted);
        }
        // Purges stay one call each, at once: forgetting a room in an
        // index does not commute with a session joining it meanwhile.
        let purges = purged.iter().map(|user_id| {
            ActivityCounters::bump(&self.shared.counters.users_purged);
            self.user_release(user_id, room_id, 0, true)
        });
        futures_util::future::join_all(purges).await;
        state == Swept::More
    }
}

/// What a sweep ended, for its second steps.
#[derive(Default)]
struct Ended {
    /// Claims to release by claims key: session id, owner, ….
    claims: HashMap<String, Vec<String>>,
    /// Sessions ended by (user, room).
    users: HashMap<(String, String), i64>,
    /// Sessions and rooms ended in all.
    sessions: i64,
    rooms: i64,
}

/// What became of a swept room.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Swept {
    /// Nothing more due now.
    Done,
    /// No users left: the room is gone.
    Deleted,
    /// More due now than one script may end.
    More,
}

/// The expiry script's reply: what became of the room, ended (session,
/// user) pairs, purged users.
#[allow(clippy::type_complexity)]
fn parse_expired(
    value: Value,
) -> Result<(Swept, Vec<(String, String)>, Vec<String>), redis::RedisError> {
    let mut reply = Reply::new(value)?;
    let state = match reply.number()? {
        1 => Swept::Deleted,
        2 => Swept::More,
        _ => Swept::Done,
    };
    let mut sessions = Vec::new();
    loop {
        let session = reply.text()?;
        if session.is_empty() {
            break;
        }
        sessions.push((session, reply.text()?));
    }
    let mut purged = Vec::new();
    while !reply.is_empty() {
        purged.push(reply.text()?);
    }
    Ok((state, sessions, purged))
}
