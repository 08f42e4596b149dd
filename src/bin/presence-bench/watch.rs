//! Watch streams under test.
//!
//! - [`Tracker`]: when each watcher had each change (step), for latency to
//!   the *last* watcher and for convergence; shared by every scenario that
//!   watches.
//! - [`spawn_room_reader`]: reads a WatchRoom stream and checks every
//!   message it decodes: a snapshot in each, versions strictly growing, never
//!   two identical snapshots in a row, and the snapshot that completes the
//!   last step is the expected listing. Problems are kept in the tracker and
//!   become sanity checks (`--check` fails on them).
//! - [`Churn`]: a room with a base user and joiners who come and go (change
//!   k: joiner k/2 joins when k is even, leaves when it is odd), its
//!   progress as read from a snapshot, the listing expected after n
//!   changes, and plain heartbeats that must produce nothing.
//! - [`run_isolated`]: changes one at a time, each after the previous one
//!   reached every watcher.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use presenced::grpc::pb;
use presenced::grpc::pb::presence_service_client::PresenceServiceClient;
use prost::Message;
use tokio::sync::Notify;
use tonic::transport::Channel;

use crate::ctx::{interval, Ctx};
use crate::phase::{Measured, Meter};
use crate::report::Report;
use crate::stats::Samples;

/// Problems kept word for word (the rest are counted).
const KEPT_PROBLEMS: usize = 5;

/// When each of `watchers` streams had each of `steps` changes.
pub struct Tracker {
    watchers: u32,
    epoch: Instant,
    /// Streams that got their first message.
    ready: AtomicU32,
    /// Per step: the streams that have it, and when the last one got it
    /// (ns since `epoch`).
    counts: Vec<AtomicU32>,
    last_ns: Vec<AtomicU64>,
    notify: Notify,
    /// A stream failed to open or ended with an error.
    failed: AtomicBool,
    /// Messages after each stream's first, all streams together.
    messages: AtomicU64,
    /// Messages after the first, and their bytes, each stream counted up to
    /// the one that completed the last step; the most of one stream.
    to_last_messages: AtomicU64,
    to_last_bytes: AtomicU64,
    to_last_max: AtomicU64,
    /// Streams that completed the last step.
    completed: AtomicU32,
    problems: Mutex<(u64, Vec<String>)>,
}

impl Tracker {
    pub fn new(watchers: usize, steps: usize) -> Arc<Self> {
        Arc::new(Tracker {
            watchers: watchers as u32,
            epoch: Instant::now(),
            ready: AtomicU32::new(0),
            counts: (0..steps).map(|_| AtomicU32::new(0)).collect(),
            last_ns: (0..steps).map(|_| AtomicU64::new(0)).collect(),
            notify: Notify::new(),
            failed: AtomicBool::new(false),
            messages: AtomicU64::new(0),
            to_last_messages: AtomicU64::new(0),
            to_last_bytes: AtomicU64::new(0),
            to_last_max: AtomicU64::new(0),
            completed: AtomicU32::new(0),
            problems: Mutex::default(),
        })
    }

    pub fn steps(&self) -> usize {
        self.counts.len()
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// `at` in ns since this tracker's epoch (0 if before it).
    pub fn ns_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn ready_one(&self) {
        if self.ready.fetch_add(1, Ordering::AcqRel) + 1 == self.watchers {
            self.notify.notify_one();
        }
    }

    /// One stream now has steps `from..to`.
    fn reached(&self, from: usize, to: usize) {
        let at = self.now_ns();
        for step in from..to.min(self.counts.len()) {
            self.last_ns[step].fetch_max(at, Ordering::AcqRel);
            if self.counts[step].fetch_add(1, Ordering::AcqRel) + 1 == self.watchers {
                self.notify.notify_one();
            }
        }
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Relaxed);
        self.notify.notify_one();
    }

    /// Records a broken promise of the service (kept for the report).
    pub fn problem(&self, what: String) {
        let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        p.0 += 1;
        if p.1.len() < KEPT_PROBLEMS {
            p.1.push(what);
        }
    }

    pub fn ready_count(&self) -> u32 {
        self.ready.load(Ordering::Acquire)
    }

    pub fn count(&self, step: usize) -> u32 {
        self.counts[step].load(Ordering::Acquire)
    }

    /// When the last stream got `step`, in ns since the epoch.
    pub fn last_ns(&self, step: usize) -> u64 {
        self.last_ns[step].load(Ordering::Acquire)
    }

    /// Messages after each stream's first, so far.
    pub fn messages(&self) -> u64 {
        self.messages.load(Ordering::Acquire)
    }

    /// Streams that completed the last step, messages and bytes per stream
    /// up to it (mean), and the most messages of one stream.
    pub fn to_last(&self) -> (u32, f64, f64, u64) {
        let n = self.completed.load(Ordering::Acquire);
        let w = f64::from(self.watchers.max(1));
        (
            n,
            self.to_last_messages.load(Ordering::Acquire) as f64 / w,
            self.to_last_bytes.load(Ordering::Acquire) as f64 / w,
            self.to_last_max.load(Ordering::Acquire),
        )
    }

    async fn wait(&self, done: impl Fn() -> bool, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let notified = self.notify.notified();
            if done() {
                return true;
            }
            if self.failed.load(Ordering::Relaxed) {
                return false;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return done();
            }
        }
    }

    /// Waits until every stream got its first message.
    pub async fn wait_ready(&self, within: Duration) -> bool {
        self.wait(|| self.ready_count() >= self.watchers, within)
            .await
    }

    /// Waits until every stream has `step`.
    pub async fn wait_step(&self, step: usize, within: Duration) -> bool {
        self.wait(|| self.count(step) >= self.watchers, within)
            .await
    }

    /// Adds a sanity check to `rep`: every message of `what` was valid.
    pub fn check_streams(&self, rep: &mut Report, what: &str) {
        let p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        let detail = if p.0 == 0 {
            String::new()
        } else {
            format!(": {} problems, first: {}", p.0, p.1.join("; "))
        };
        rep.check(
            format!(
                "{what}: every WatchRoom message decoded and valid (versions grow, no repeat, final listing as expected){detail}"
            ),
            p.0 == 0,
        );
    }
}

/// How far a snapshot got: the number of a scenario's changes it shows.
pub type Progress = Arc<dyn Fn(&pb::RoomSnapshot) -> usize + Send + Sync>;
/// Whether the snapshot that completes the last step is the one expected.
pub type Verify = Arc<dyn Fn(&pb::RoomSnapshot) -> Result<(), String> + Send + Sync>;

/// What a room reader knows about the scenario.
#[derive(Clone)]
pub struct RoomWatch {
    pub progress: Progress,
    pub verify: Option<Verify>,
}

/// The view of a snapshot (all but its version), hashed: two snapshots in
/// a row with the same view are a repeat.
fn view_hash(s: &pb::RoomSnapshot) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.room_id.hash(&mut h);
    s.online_count.hash(&mut h);
    s.total_count.hash(&mut h);
    for u in &s.users {
        u.user_id.hash(&mut h);
        u.online.hash(&mut h);
        u.last_disconnected
            .as_ref()
            .map(|t| (t.seconds, t.nanos))
            .hash(&mut h);
        u.data.as_ref().map(|d| d.encode_to_vec()).hash(&mut h);
    }
    h.finish()
}

/// What one stream showed so far, and the checks each next snapshot of it
/// must pass.
pub struct StreamCheck {
    /// (version, view) of the previous snapshot.
    prev: Option<(u64, u64)>,
    /// Steps the stream has reached.
    reached: usize,
    steps: usize,
    /// Messages after the first, and their bytes on the wire.
    messages: u64,
    bytes: u64,
}

/// What one snapshot did to its stream.
#[derive(Debug, Default, PartialEq)]
pub struct Seen {
    /// It was the stream's first.
    pub first: bool,
    /// Promises it broke.
    pub problems: Vec<String>,
    /// Steps it reached that the stream had not (`from..to`).
    pub reached: Option<(usize, usize)>,
    /// It completed the last step.
    pub completed: bool,
}

impl StreamCheck {
    pub fn new(steps: usize) -> Self {
        StreamCheck {
            prev: None,
            reached: 0,
            steps,
            messages: 0,
            bytes: 0,
        }
    }

    /// Checks snapshot `s` (`len` bytes on the wire): after the first, its
    /// version is above the previous one's and its view differs; it shows
    /// no fewer changes than before; the one completing the last step
    /// passes `watch.verify`.
    pub fn see(&mut self, s: &pb::RoomSnapshot, len: u64, watch: &RoomWatch) -> Seen {
        let mut seen = Seen::default();
        let view = view_hash(s);
        match self.prev {
            None => seen.first = true,
            Some((version, old_view)) => {
                self.messages += 1;
                self.bytes += len;
                if s.version <= version {
                    seen.problems.push(format!(
                        "{}: version {} after {version}",
                        s.room_id, s.version
                    ));
                }
                if view == old_view {
                    seen.problems.push(format!(
                        "{}: snapshot {} repeats the one before",
                        s.room_id, s.version
                    ));
                }
            }
        }
        self.prev = Some((s.version, view));
        let p = (watch.progress)(s);
        if p < self.reached {
            seen.problems.push(format!(
                "{}: snapshot {} shows {p} changes after one showing {}",
                s.room_id, s.version, self.reached
            ));
        }
        if p > self.reached {
            seen.reached = Some((self.reached, p));
            if p >= self.steps && self.reached < self.steps {
                seen.completed = true;
                if let Some(Err(e)) = watch.verify.as_ref().map(|v| v(s)) {
                    seen.problems
                        .push(format!("{}: final snapshot: {e}", s.room_id));
                }
            }
            self.reached = p;
        }
        seen
    }
}

/// Reads a WatchRoom stream to its end, checking each message
/// ([`StreamCheck`]) and telling `tracker` of its progress.
pub fn spawn_room_reader(
    mut stream: tonic::Streaming<pb::WatchRoomResponse>,
    tracker: Arc<Tracker>,
    watch: RoomWatch,
) {
    tokio::spawn(async move {
        let mut check = StreamCheck::new(tracker.steps());
        loop {
            let msg = match stream.message().await {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(_) => {
                    tracker.fail();
                    break;
                }
            };
            let len = msg.encoded_len() as u64 + 5;
            let Some(s) = msg.snapshot else {
                tracker.problem("a WatchRoom message without a snapshot".into());
                continue;
            };
            let seen = check.see(&s, len, &watch);
            if seen.first {
                tracker.ready_one();
            } else {
                tracker.messages.fetch_add(1, Ordering::AcqRel);
            }
            for p in seen.problems {
                tracker.problem(p);
            }
            if let Some((from, to)) = seen.reached {
                tracker.reached(from, to);
            }
            if seen.completed {
                tracker.completed.fetch_add(1, Ordering::AcqRel);
                tracker
                    .to_last_messages
                    .fetch_add(check.messages, Ordering::AcqRel);
                tracker
                    .to_last_bytes
                    .fetch_add(check.bytes, Ordering::AcqRel);
                tracker
                    .to_last_max
                    .fetch_max(check.messages, Ordering::AcqRel);
            }
        }
    });
}

/// Reads a stream of another service to its end: its k-th message after
/// the first completes step k (the Health/Watch baseline).
pub fn spawn_counting_reader<M: Send + 'static>(
    mut stream: tonic::Streaming<M>,
    tracker: Arc<Tracker>,
) {
    tokio::spawn(async move {
        let mut k = 0;
        loop {
            match stream.message().await {
                Ok(Some(_)) => {
                    if k == 0 {
                        tracker.ready_one();
                    } else {
                        tracker.messages.fetch_add(1, Ordering::AcqRel);
                        tracker.reached(k - 1, k);
                    }
                    k += 1;
                }
                Ok(None) => break,
                Err(_) => {
                    tracker.fail();
                    break;
                }
            }
        }
    });
}

/// Opens `w` streams with `open(i)`, at most 512 at once, handing each to
/// `read`; then waits (bounded) until every one got its first message.
pub async fn open_streams<S, Open, Fut>(
    tracker: &Arc<Tracker>,
    w: usize,
    open: Open,
    read: Arc<dyn Fn(S, Arc<Tracker>) + Send + Sync>,
) -> Result<(), String>
where
    S: Send + 'static,
    Open: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Result<S, tonic::Status>> + Send + 'static,
{
    let opens = Arc::new(tokio::sync::Semaphore::new(512));
    for i in 0..w {
        let fut = open(i);
        let (tracker, read) = (tracker.clone(), read.clone());
        let permit = opens.clone().acquire_owned().await.expect("never closed");
        tokio::spawn(async move {
            let r = fut.await;
            drop(permit);
            match r {
                Ok(stream) => read(stream, tracker),
                Err(_) => tracker.fail(),
            }
        });
    }
    if tracker.wait_ready(Duration::from_secs(120)).await {
        Ok(())
    } else {
        Err(format!(
            "only {} of {w} streams opened",
            tracker.ready_count()
        ))
    }
}

/// A room with a base user and joiners who come and go.
pub struct Churn {
    pub room: String,
    pub room_token: String,
    driver: PresenceServiceClient<Channel>,
    base: pb::HeartbeatRequest,
    /// Session ids of the joiners, by joiner.
    joiners: Vec<String>,
    /// Session tokens of the joiners in the room now.
    tokens: Mutex<Vec<String>>,
}

impl Churn {
    /// Makes `room` with its base user (through `driver`), for up to
    /// `changes` changes; `scope` keeps session ids apart between uses.
    pub async fn new(
        ctx: &Ctx,
        mut driver: PresenceServiceClient<Channel>,
        room: String,
        scope: u64,
        changes: usize,
    ) -> Result<Churn, String> {
        let base = pb::HeartbeatRequest {
            room_id: room.clone(),
            user_id: "base".into(),
            session_id: ctx.session(100 + scope, 0),
            interval: interval(600),
        };
        let reply = driver
            .heartbeat(base.clone())
            .await
            .map_err(|e| format!("heartbeat of the base user: {e}"))?
            .into_inner();
        Ok(Churn {
            room,
            room_token: reply.room_token,
            driver,
            base,
            joiners: (0..changes.div_ceil(2) as u64)
                .map(|i| ctx.session(200 + scope, i))
                .collect(),
            tokens: Mutex::default(),
        })
    }

    /// Change `k`; returns when its reply arrived.
    pub async fn change(&self, k: usize) -> Result<Instant, String> {
        let mut driver = self.driver.clone();
        if k.is_multiple_of(2) {
            let reply = driver
                .heartbeat(pb::HeartbeatRequest {
                    room_id: self.room.clone(),
                    user_id: format!("joiner-{}", k / 2),
                    session_id: self.joiners[k / 2].clone(),
                    interval: interval(600),
                })
                .await
                .map_err(|e| format!("join: {e}"))?;
            let at = Instant::now();
            self.tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(reply.into_inner().session_token);
            Ok(at)
        } else {
            let token = self
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()
                .unwrap_or_default();
            driver
                .disconnect(pb::DisconnectRequest {
                    session_token: token,
                })
                .await
                .map_err(|e| format!("leave: {e}"))?;
            Ok(Instant::now())
        }
    }

    /// A heartbeat of the base user's live session: nothing visible
    /// changes, so no watcher may get a snapshot.
    pub async fn plain_heartbeat(&self) -> Result<(), String> {
        self.driver
            .clone()
            .heartbeat(self.base.clone())
            .await
            .map(|_| ())
            .map_err(|e| format!("plain heartbeat: {e}"))
    }

    /// Changes shown by a snapshot: after k changes, ceil(k/2) joiners are
    /// listed and k mod 2 of them online, besides the base user.
    pub fn progress() -> Progress {
        Arc::new(|s: &pb::RoomSnapshot| {
            let joined = u64::from(s.total_count.saturating_sub(1));
            let online = u64::from(s.online_count.saturating_sub(1));
            (2 * joined).saturating_sub(online) as usize
        })
    }

    /// The listing after `changes` changes, `limit` users at most: the base
    /// user and the joiner in the room (if any) online, in that order, then
    /// the joiners who left, the most recent first.
    pub fn expected(changes: usize, limit: usize) -> Verify {
        let joined = changes.div_ceil(2);
        let left = changes / 2;
        let mut want: Vec<(String, bool)> = vec![("base".into(), true)];
        if joined > left {
            want.push((format!("joiner-{}", joined - 1), true));
        }
        want.extend((0..left).rev().map(|i| (format!("joiner-{i}"), false)));
        want.truncate(limit);
        let online = 1 + (joined - left) as u32;
        let total = 1 + joined as u32;
        Arc::new(move |s: &pb::RoomSnapshot| {
            let got: Vec<(String, bool)> = s
                .users
                .iter()
                .map(|u| (u.user_id.clone(), u.online))
                .collect();
            if s.online_count != online || s.total_count != total {
                return Err(format!(
                    "{} online of {} (expected {online} of {total})",
                    s.online_count, s.total_count
                ));
            }
            if got != want {
                return Err(format!(
                    "listing {:?}… (expected {:?}…)",
                    &got[..got.len().min(3)],
                    &want[..want.len().min(3)]
                ));
            }
            Ok(())
        })
    }
}

/// What [`run_isolated`] measured.
pub struct Isolated {
    /// Per step: from the change's reply to the last watcher's receipt.
    pub latency: Samples,
    /// Every step reached every watcher.
    pub ok: bool,
    /// The servers, over the steps.
    pub measured: Measured,
}

/// Runs `steps` changes with `trigger(k)` (which returns when the change
/// was acknowledged), each after every watcher had the previous one plus
/// `gap`, measuring `pids` over them.
pub async fn run_isolated<Trig, TrigFut>(
    tracker: &Tracker,
    pids: &[Option<u32>],
    gap: Duration,
    mut trigger: Trig,
) -> Result<Isolated, String>
where
    Trig: FnMut(usize) -> TrigFut,
    TrigFut: std::future::Future<Output = Result<Instant, String>>,
{
    let steps = tracker.steps();
    let mut latency = Samples::with_capacity(steps);
    let mut ok = true;
    let within = Duration::from_secs(10) + Duration::from_micros(u64::from(tracker.watchers) * 100);
    let meter = Meter::start(pids);
    for k in 0..steps {
        let acked = tracker.ns_of(trigger(k).await?);
        if !tracker.wait_step(k, within).await {
            ok = false;
            break;
        }
        latency.record(Duration::from_nanos(
            tracker.last_ns(k).saturating_sub(acked),
        ));
        tokio::time::sleep(gap).await;
    }
    Ok(Isolated {
        latency,
        ok,
        measured: meter.stop(),
    })
}

/// Sends `plain` (heartbeats that change nothing visible), waits `quiet`,
/// and records a problem if any watcher got a snapshot meanwhile.
pub async fn expect_quiet<F, Fut>(
    tracker: &Tracker,
    quiet: Duration,
    plain: F,
) -> Result<(), String>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let before = tracker.messages();
    plain().await?;
    tokio::time::sleep(quiet).await;
    let after = tracker.messages();
    if after != before {
        tracker.problem(format!(
            "{} snapshots after a plain heartbeat of a live session",
            after - before
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(version: u64, users: &[(&str, bool)], total: u32) -> pb::RoomSnapshot {
        pb::RoomSnapshot {
            room_id: "r".into(),
            users: users
                .iter()
                .map(|(id, online)| pb::UserPresence {
                    user_id: (*id).into(),
                    online: *online,
                    ..Default::default()
                })
                .collect(),
            online_count: users.iter().filter(|u| u.1).count() as u32,
            total_count: total,
            version,
        }
    }

    fn churn(changes: usize) -> RoomWatch {
        RoomWatch {
            progress: Churn::progress(),
            verify: Some(Churn::expected(changes, 100)),
        }
    }

    #[test]
    fn a_churn_is_followed_step_by_step_to_the_expected_listing() {
        let watch = churn(2);
        let mut check = StreamCheck::new(2);
        let first = check.see(&snapshot(10, &[("base", true)], 1), 10, &watch);
        assert!(first.first && first.problems.is_empty() && first.reached.is_none());
        let join = check.see(
            &snapshot(11, &[("base", true), ("joiner-0", true)], 2),
            10,
            &watch,
        );
        assert_eq!((join.reached, join.completed), (Some((0, 1)), false));
        let leave = check.see(
            &snapshot(12, &[("base", true), ("joiner-0", false)], 2),
            10,
            &watch,
        );
        assert_eq!(leave.reached, Some((1, 2)));
        assert!(leave.completed && leave.problems.is_empty(), "{leave:?}");
    }

    #[test]
    fn coalesced_changes_reach_several_steps_at_once() {
        let watch = churn(2);
        let mut check = StreamCheck::new(2);
        check.see(&snapshot(10, &[("base", true)], 1), 10, &watch);
        let both = check.see(
            &snapshot(12, &[("base", true), ("joiner-0", false)], 2),
            10,
            &watch,
        );
        assert_eq!(both.reached, Some((0, 2)));
        assert!(both.completed && both.problems.is_empty());
    }

    #[test]
    fn repeats_old_versions_regress_and_wrong_listings_are_problems() {
        let watch = churn(2);
        let mut check = StreamCheck::new(2);
        let base = snapshot(10, &[("base", true)], 1);
        check.see(&base, 10, &watch);
        // The same view again (a snapshot on a plain heartbeat).
        let repeat = check.see(&snapshot(11, &[("base", true)], 1), 10, &watch);
        assert_eq!(repeat.problems.len(), 1, "{repeat:?}");
        assert!(repeat.problems[0].contains("repeats"));
        // A version that does not grow.
        let joined = snapshot(11, &[("base", true), ("joiner-0", true)], 2);
        let stale = check.see(&joined, 10, &watch);
        assert!(stale
            .problems
            .iter()
            .any(|p| p.contains("version 11 after 11")));
        // Back to fewer changes.
        let back = check.see(&snapshot(12, &[("base", true)], 1), 10, &watch);
        assert!(back.problems.iter().any(|p| p.contains("shows 0 changes")));
        // The last step, with the offline joiner missing from the listing.
        let mut check = StreamCheck::new(2);
        check.see(&base, 10, &watch);
        let wrong = check.see(&snapshot(12, &[("base", true)], 2), 10, &watch);
        assert!(wrong.completed);
        assert!(
            wrong.problems.iter().any(|p| p.contains("final snapshot")),
            "{wrong:?}"
        );
    }

    #[test]
    fn the_expected_listing_is_online_first_then_most_recently_left() {
        let verify = Churn::expected(5, 100);
        let ok = snapshot(
            20,
            &[
                ("base", true),
                ("joiner-2", true),
                ("joiner-1", false),
                ("joiner-0", false),
            ],
            4,
        );
        assert_eq!(verify(&ok), Ok(()));
        let misordered = snapshot(
            20,
            &[
                ("base", true),
                ("joiner-2", true),
                ("joiner-0", false),
                ("joiner-1", false),
            ],
            4,
        );
        assert!(verify(&misordered).is_err());
        assert!(
            Churn::expected(5, 2)(&snapshot(20, &[("base", true), ("joiner-2", true)], 4)).is_ok()
        );
    }
}
