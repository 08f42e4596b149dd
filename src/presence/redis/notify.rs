//! Notifications and resyncs: how an instance's watchers learn of changes
//! made on any instance.
//!
//! Every visible change publishes the room's new version on the room's
//! channel (`SPUBLISH` on a Cluster, `PUBLISH` on one node). An instance
//! subscribes only to the rooms its watchers watch; a notification with a
//! version above what its hub published tells the hub of a change, and the
//! hub says when to read the room: once per change, or once per coalescing
//! window for a big room, never once per watcher. The read snapshot goes
//! to the hub, and from there to every local watcher encoded once.
//!
//! Pub/sub is at-most-once, so the hub is also corrected by **resyncs**:
//! every watched room's version is checked on every (re)subscription
//! confirmed by Redis (after a reconnect, or an unsolicited unsubscribe
//! when a Cluster moves a slot), after Redis comes back from an outage,
//! and every `--store-resync-interval`. The same pass subscribes watched
//! rooms whose subscription is not confirmed and unsubscribes rooms nobody
//! watches any more.

use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use tokio_util::sync::CancellationToken;

use super::ops::Op;
use super::Redis;
use crate::presence::counters::ActivityCounters;
use crate::presence::hub::Change;
use crate::presence::model::Id;

impl Redis {
    /// Subscribes this instance to `room_id`'s channel.
    pub(super) async fn subscribe(&self, room_id: &str) -> Result<(), crate::presence::Error> {
        let channel = self.shared.keys.room(room_id).channel;
        let link = &self.shared.notifications;
        let mut conn = link.get().await?;
        match tokio::time::timeout(self.shared.config.timeout, conn.subscribe(&channel)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(link.error(err, None)),
            Err(_) => Err(link.unavailable("no answer to SUBSCRIBE within --store-timeout")),
        }
    }

    async fn unsubscribe(&self, room_id: &str) {
        let channel = self.shared.keys.room(room_id).channel;
        if let Ok(mut conn) = self.shared.notifications.get().await {
            let _ =
                tokio::time::timeout(self.shared.config.timeout, conn.unsubscribe(&channel)).await;
        }
    }

    /// Receives notifications, resyncs and publishes what the hub defers,
    /// until `shutdown`.
    pub async fn run_notifier(self, shutdown: CancellationToken) {
        let pushes = self
            .shared
            .pushes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let idle = self
            .shared
            .idle_rx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let (Some(mut pushes), Some(mut idle)) = (pushes, idle) else {
            tracing::warn!("the Redis notifier is already running");
            return;
        };
        let mut resync = tokio::time::interval(self.shared.config.resync_interval);
        resync.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let now = self.shared.clock.now();
            let due_in = self
                .shared
                .hub
                .next_due()
                .map_or(Duration::from_secs(1), |at| {
                    Duration::from_millis(at.saturating_sub(now))
                });
            tokio::select! {
                Some(push) = pushes.recv() => self.on_push(push).await,
                Some(room) = idle.recv() => {
                    if !self.shared.hub.is_watched(&room) {
                        self.unsubscribe(&room).await;
                    }
                }
                _ = resync.tick() => self.resync().await,
                () = tokio::time::sleep(due_in) => self.publish_due(),
                () = self.shared.hub.deferred() => {}
                () = shutdown.cancelled() => return,
            }
        }
    }

    async fn on_push(&self, push: PushInfo) {
        let channel_room = |data: &[Value]| -> Option<Id> {
            let channel = match data.first()? {
                Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                Value::SimpleString(s) => s.clone(),
                _ => return None,
            };
            self.shared.keys.room_of_channel(&channel).map(Id::from)
        };
        match push.kind {
            PushKind::Message | PushKind::SMessage => {
                let Some(room) = channel_room(&push.data) else {
                    return;
                };
                let version = push
                    .data
                    .get(1)
                    .and_then(|v| super::scripts::number(v.clone()).ok());
                let seen = self.shared.hub.version(&room);
                if version.is_none() || seen.is_some_and(|seen| version > Some(seen)) {
                    self.changed(room);
                }
            }
            PushKind::Subscribe | PushKind::SSubscribe => {
                let Some(room) = channel_room(&push.data) else {
                    return;
                };
                self.subscribed().insert(room.clone());
                // (Re)subscribed: what was published before is checked.
                self.check_rooms(vec![room]).await;
            }
            PushKind::Unsubscribe | PushKind::SUnsubscribe => {
                let Some(room) = channel_room(&push.data) else {
                    return;
                };
                self.subscribed().remove(&room);
                if self.shared.hub.is_watched(&room) {
                    // Not asked for (a Cluster moved the slot): again.
                    if let Err(err) = self.subscribe(&room).await {
                        tracing::debug!(%err, room_id = %room, "resubscribe failed; retried at the next resync");
                    }
                }
            }
            PushKind::Disconnection => {
                ActivityCounters::bump(&self.shared.counters.notifier_reconnects);
                self.subscribed().clear();
                tracing::info!(store = %self.describe(), "notification connection lost; reconnecting and resyncing");
            }
            _ => {}
        }
    }

    fn subscribed(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<Id>> {
        self.shared
            .subscribed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A change of `room`: read it now, or when its window ends.
    fn changed(&self, room: Id) {
        let now = self.shared.clock.now();
        if self.shared.hub.changed(&room, now) == Change::Publish {
            self.spawn_fetch(room);
        }
    }

    /// Reads the rooms whose coalescing window has ended.
    pub(super) fn publish_due(&self) {
        let now = self.shared.clock.now();
        for room in self.shared.hub.take_due(now) {
            self.spawn_fetch(room);
        }
    }

    /// Reads `room` and hands the snapshot to the hub, in a task of its
    /// own (at most a bounded number at once).
    fn spawn_fetch(&self, room: Id) {
        let this = self.clone();
        tokio::spawn(async move { this.fetch(&room).await });
    }

    async fn fetch(&self, room: &str) {
        let Ok(_permit) = self.shared.fetches.clone().acquire_owned().await else {
            return;
        };
        let cap = self.shared.config.limits.max_list_limit as usize;
        match self.snapshot(room, cap, false).await {
            Ok(snapshot) => self.shared.hub.publish(snapshot),
            Err(err @ crate::presence::Error::Corrupt { .. }) => self.shared.hub.fail(room, err),
            Err(err) => {
                tracing::debug!(%err, room_id = room, "room not read; retried at the next resync")
            }
        }
    }

    /// Checks every watched room (after an outage).
    pub(super) fn resync_all(&self) {
        let this = self.clone();
        tokio::spawn(async move { this.resync().await });
    }

    /// The periodic pass: subscriptions made to match the watched rooms,
    /// then every watched room's version checked.
    async fn resync(&self) {
        let watched: Vec<Id> = self
            .shared
            .hub
            .watched()
            .into_iter()
            .map(|(id, _, _)| id)
            .collect();
        let (missing, extra): (Vec<Id>, Vec<Id>) = {
            let subscribed = self.subscribed();
            let watched_set: std::collections::HashSet<&Id> = watched.iter().collect();
            (
                watched
                    .iter()
                    .filter(|r| !subscribed.contains(*r))
                    .cloned()
                    .collect(),
                subscribed
                    .iter()
                    .filter(|r| !watched_set.contains(r))
                    .cloned()
                    .collect(),
            )
        };
        for room in &missing {
            let _ = self.subscribe(room).await;
        }
        for room in &extra {
            self.unsubscribe(room).await;
            self.subscribed().remove(room);
        }
        self.check_rooms(watched).await;
    }

    /// Compares each room's version in Redis with what the hub published;
    /// a room that differs (a lost notification, a Redis that lost its
    /// data) is read again.
    pub(super) async fn check_rooms(&self, rooms: Vec<Id>) {
        let checks = rooms.iter().map(|room| async move {
            let keys = self.shared.keys.room(room);
            let state: Result<(Option<u64>, Option<String>), _> = self
                .timed(Op::Read, Some(room), |mut conn| async move {
                    redis::cmd("HMGET")
                        .arg(&keys.hash)
                        .arg("#v")
                        .arg("#n")
                        .query_async(&mut conn)
                        .await
                })
                .await;
            (room, state)
        });
        let published: std::collections::HashMap<Id, (u64, u32)> = self
            .shared
            .hub
            .watched()
            .into_iter()
            .map(|(id, version, total)| (id, (version, total)))
            .collect();
        for (room, state) in futures_util::future::join_all(checks).await {
            let Ok((version, live)) = state else { continue };
            let Some(&(seen, total)) = published.get(room) else {
                continue;
            };
            ActivityCounters::bump(&self.shared.counters.resyncs);
            let stale = match live {
                Some(_) => version.unwrap_or(0) != seen,
                // Nobody in it: stale only if the hub still lists someone.
                None => total > 0,
            };
            if stale {
                ActivityCounters::bump(&self.shared.counters.resynced_rooms);
                self.changed(room.clone());
            }
        }
    }

    /// True when every watched room's snapshot here is Redis's latest, or
    /// waits for the end of its window (for tests: every change so far has
    /// reached the hub).
    pub async fn settled(&self) -> bool {
        let watched = self.shared.hub.watched();
        for (room, seen, total) in watched {
            if self.shared.hub.is_pending(&room) {
                continue;
            }
            let keys = self.shared.keys.room(&room);
            let state: Result<(Option<u64>, Option<String>), _> = self
                .timed(Op::Read, Some(&room), |mut conn| async move {
                    redis::cmd("HMGET")
                        .arg(&keys.hash)
                        .arg("#v")
                        .arg("#n")
                        .query_async(&mut conn)
                        .await
                })
                .await;
            match state {
                Ok((v, Some(_))) if v.unwrap_or(0) == seen => {}
                Ok((_, None)) if total == 0 => {}
                _ => return false,
            }
        }
        true
    }
}
