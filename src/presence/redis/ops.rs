//! The Redis store's operations: what each RPC does, in scripts on the
//! room's slot and, for what lives elsewhere, second steps.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::Value;

use super::keys::RoomKeys;
use super::scripts::{self, Reply, Script};
use super::Redis;
use crate::presence::clock::Millis;
use crate::presence::counters::ActivityCounters;
use crate::presence::hub::Subscription;
use crate::presence::listing::user_rooms_order;
use crate::presence::model::{Error, Id, Lease, RoomPresence, Snapshot, UserPresence};

/// Separates the fields of a stored value (ids cannot hold it).
pub(super) const US: char = '\u{1f}';
/// Separates the records of a user index entry.
const RS: char = '\u{1e}';
/// The order score of an online user (see `lua/prelude.lua`).
const ONLINE: f64 = -9e15;

impl Redis {
    /// `now` for a script: the test clock's, or '' for Redis's `TIME`.
    fn now_arg(&self) -> String {
        match &self.shared.config.clock {
            Some(clock) => clock.now().to_string(),
            None => String::new(),
        }
    }

    /// Runs a room script: ARGV is now, the room, its channel, the publish
    /// command, then `extra`.
    pub(super) async fn room_call(
        &self,
        op: Op,
        script: &Script,
        room_id: &str,
        keys: &RoomKeys,
        extra: &[&str],
    ) -> Result<Value, Error> {
        let mut args = vec![
            self.now_arg(),
            room_id.to_owned(),
            keys.channel.clone(),
            self.shared.publish.to_owned(),
        ];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let k = [&*keys.hash, &*keys.order, &*keys.due, &*keys.totals];
        self.timed(op, Some(room_id), |mut conn| async move {
            script.call(&mut conn, &k, &args).await
        })
        .await
    }

    /// Runs a script on one key (an index, the totals): ARGV is now, three
    /// blanks (the room arguments of room scripts), then `extra`.
    pub(super) async fn key_call(
        &self,
        op: Op,
        script: &Script,
        key: &str,
        extra: &[&str],
    ) -> Result<Value, Error> {
        let mut args = vec![self.now_arg(), String::new(), String::new(), String::new()];
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        self.timed(op, None, |mut conn| async move {
            script.call(&mut conn, &[key], &args).await
        })
        .await
    }

    /// Runs `call` on a connection, timing it; an unreachable Redis is
    /// recorded in health at once.
    pub(super) async fn timed<T, F, Fut>(
        &self,
        op: Op,
        room: Option<&str>,
        call: F,
    ) -> Result<T, Error>
    where
        F: FnOnce(super::conn::Conn) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let started = Instant::now();
        let result = self.shared.calls.run(room, call).await;
        self.shared.latency.record(op, started.elapsed());
        if let Err(err @ Error::Unavailable { .. }) = &result {
            self.set_health(Err(err.clone()));
        }
        result
    }

    /// Maps a bad reply to the room's `Corrupt`.
    fn corrupt(&self, room_id: &str) -> impl Fn(redis::RedisError) -> Error + '_ {
        let room_id = room_id.to_owned();
        move |e| self.shared.calls.error(e, Some(&room_id))
    }

    /// Creates the session or pushes its deadline to now + 2.5 × interval.
    pub async fn heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> Result<Lease, Error> {
        let limits = &self.shared.config.limits;
        let ttl = limits.check_heartbeat(room_id, user_id, session_id, interval)?;
        let keys = self.shared.keys.room(room_id);
        let ttl_arg = ttl.to_string();
        let reply = self
            .room_call(
                Op::Heartbeat,
                &self.shared.scripts.heartbeat,
                room_id,
                &keys,
                &[user_id, session_id, &ttl_arg],
            )
            .await?;
        let corrupt = self.corrupt(room_id);
        let mut reply = Reply::new(reply).map_err(&corrupt)?;
        match reply.text().map_err(&corrupt)?.as_str() {
            "live" => Ok(Lease {
                incarnation: reply.number().map_err(&corrupt)?,
                deadline: reply.number().map_err(&corrupt)?,
            }),
            "conflict" => Err(Error::SessionConflict {
                session_id: session_id.to_owned(),
                other: "user",
            }),
            tag @ ("new" | "expired") => {
                let exists = reply.number().map_err(&corrupt)? == 1 || tag == "expired";
                let in_room = reply.number().map_err(&corrupt)? as usize;
                let replacing = tag == "expired";
                let slow = Slow {
                    room_id,
                    user_id,
                    session_id,
                    ttl,
                    keys: &keys,
                };
                self.create(slow, exists, in_room, replacing).await
            }
            other => Err(corrupt(scripts::shape(
                "a heartbeat outcome",
                &Value::SimpleString(other.into()),
            ))),
        }
    }

    /// The slow path of a heartbeat: claims the session id, reserves the
    /// limits kept in other slots, then creates the session in its room,
    /// giving back what it reserved if that fails. With `replacing`, the
    /// session's last life expired unswept: the new one takes its place in
    /// the counts.
    async fn create(
        &self,
        s: Slow<'_>,
        room_exists: bool,
        in_room: usize,
        replacing: bool,
    ) -> Result<Lease, Error> {
        let limits = &self.shared.config.limits;
        let owner = format!("{}{US}{}", s.room_id, s.user_id);
        // Checked again, atomically, when the session is made.
        let in_room_after_expiry = in_room.saturating_sub(usize::from(replacing));
        let room_full = (in_room_after_expiry >= limits.max_sessions_per_user_room).then_some(
            Error::LimitReached {
                what: "sessions per user in a room",
                limit: limits.max_sessions_per_user_room,
            },
        );
        let want_room = !room_exists;
        let (claim, user, totals) = tokio::join!(
            self.claim(s.session_id, &owner),
            self.user_reserve(s.user_id, s.room_id, replacing),
            async {
                if replacing {
                    Ok(None)
                } else {
                    self.totals_reserve(want_room).await
                }
            },
        );
        let release = Reserved {
            claim: matches!(claim, Ok(None)),
            user: matches!(user, Ok(Ok(_))) && !replacing,
            user_new_room: matches!(user, Ok(Ok(true))),
            session: matches!(totals, Ok(None)) && !replacing,
            room: matches!(totals, Ok(None)) && want_room && !replacing,
        };
        // The first refusal in the order every store uses.
        let refusal = match (claim, user, totals) {
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => Some(e),
            (Ok(held), Ok(user), Ok(totals)) => {
                let conflict = match held {
                    Some(holder) => self
                        .claimed_elsewhere(s.session_id, &owner, &holder)
                        .await
                        .err(),
                    None => None,
                };
                conflict.or(room_full).or(user.err()).or(totals)
            }
        };
        if let Some(err) = refusal {
            self.give_back(&s, &owner, release, 0).await;
            return Err(err);
        }
        // Claimed (possibly stolen from a stale holder): the claim is ours.
        let release = Reserved {
            claim: true,
            ..release
        };

        let ttl = s.ttl.to_string();
        let max = limits.max_sessions_per_user_room.to_string();
        let retention = (limits.retention.as_millis() as Millis).to_string();
        let reply = self
            .room_call(
                Op::Create,
                &self.shared.scripts.create,
                s.room_id,
                s.keys,
                &[s.user_id, s.session_id, &ttl, &max, &retention],
            )
            .await;
        let reply = match reply {
            Ok(reply) => reply,
            Err(err) => {
                self.give_back(&s, &owner, release, 0).await;
                return Err(err);
            }
        };
        let corrupt = self.corrupt(s.room_id);
        let mut reply = Reply::new(reply).map_err(&corrupt)?;
        match reply.text().map_err(&corrupt)?.as_str() {
            "created" => {
                let lease = Lease {
                    incarnation: reply.number().map_err(&corrupt)?,
                    deadline: reply.number().map_err(&corrupt)?,
                };
                let room_created = reply.number().map_err(&corrupt)? == 1;
                let expired = reply.number().map_err(&corrupt)? == 1;
                ActivityCounters::bump(&self.shared.counters.sessions_created);
                if expired {
                    ActivityCounters::bump(&self.shared.counters.sessions_expired);
                }
                // Activity this path guessed wrong (a race with another
                // instance), set right: an expired life ended by a sweeper
                // meanwhile, a room made or found by someone else.
                let late_session = replacing && !expired;
                let room_delta = i64::from(room_created) - i64::from(release.room);
                if late_session {
                    self.user_release(s.user_id, s.room_id, -1, false).await;
                }
                if late_session || room_delta != 0 {
                    self.totals_release(-i64::from(late_session), -room_delta)
                        .await;
                }
                Ok(lease)
            }
            "live" => {
                // Another call made it live meanwhile: a plain heartbeat.
                let lease = Lease {
                    incarnation: reply.number().map_err(&corrupt)?,
                    deadline: reply.number().map_err(&corrupt)?,
                };
                self.give_back(
                    &s,
                    &owner,
                    Reserved {
                        claim: false,
                        ..release
                    },
                    0,
                )
                .await;
                Ok(lease)
            }
            "limit" => {
                let expired = reply.number().map_err(&corrupt)? == 1;
                if expired {
                    ActivityCounters::bump(&self.shared.counters.sessions_expired);
                }
                self.give_back(&s, &owner, release, u32::from(expired))
                    .await;
                Err(Error::LimitReached {
                    what: "sessions per user in a room",
                    limit: limits.max_sessions_per_user_room,
                })
            }
            "conflict" => {
                self.give_back(&s, &owner, release, 0).await;
                Err(Error::SessionConflict {
                    session_id: s.session_id.to_owned(),
                    other: "user",
                })
            }
            other => Err(corrupt(scripts::shape(
                "a create outcome",
                &Value::SimpleString(other.into()),
            ))),
        }
    }

    /// A session id claimed by `holder` (room US user): taken over if the
    /// holder's room no longer has that session (a claim left behind), else
    /// a conflict.
    async fn claimed_elsewhere(
        &self,
        session_id: &str,
        owner: &str,
        holder: &str,
    ) -> Result<(), Error> {
        let Some((room, user)) = holder.split_once(US) else {
            return self.steal(session_id, owner, holder).await;
        };
        let keys = self.shared.keys.room(room);
        let field = format!("s{session_id}");
        let held: Option<String> = self
            .timed(Op::Claim, Some(room), |mut conn| async move {
                redis::cmd("HGET")
                    .arg(&keys.hash)
                    .arg(&field)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let live_there = held.is_some_and(|v| v.split(US).next() == Some(user));
        if live_there {
            let other = if owner.split(US).next() == Some(room) {
                "user"
            } else {
                "room"
            };
            return Err(Error::SessionConflict {
                session_id: session_id.to_owned(),
                other,
            });
        }
        self.steal(session_id, owner, holder).await
    }

    async fn steal(&self, session_id: &str, owner: &str, holder: &str) -> Result<(), Error> {
        let key = self.shared.keys.claims(session_id);
        let reply = self
            .key_call(
                Op::Claim,
                &self.shared.scripts.claim,
                &key,
                &["steal", session_id, owner, holder],
            )
            .await?;
        match scripts::text(reply)
            .map_err(|e| self.shared.calls.error(e, None))?
            .as_str()
        {
            "" => Ok(()),
            _ => Err(Error::SessionConflict {
                session_id: session_id.to_owned(),
                other: "room",
            }),
        }
    }

    /// Claims `session_id` for `owner`: `None` when it is ours now, else
    /// who holds it.
    async fn claim(&self, session_id: &str, owner: &str) -> Result<Option<String>, Error> {
        let key = self.shared.keys.claims(session_id);
        let reply = self
            .key_call(
                Op::Claim,
                &self.shared.scripts.claim,
                &key,
                &["claim", session_id, owner, ""],
            )
            .await?;
        let holder = scripts::text(reply).map_err(|e| self.shared.calls.error(e, None))?;
        Ok((!holder.is_empty()).then_some(holder))
    }

    /// Activity one more session of `user_id` in `room_id` against the
    /// per-user limits: `Ok(true)` when counted in a room new to the user,
    /// `Ok(false)` when counted, else the limit reached. A `replacing`
    /// session takes the place of its expired life: checked, not counted
    /// again.
    async fn user_reserve(
        &self,
        user_id: &str,
        room_id: &str,
        replacing: bool,
    ) -> Result<Result<bool, Error>, Error> {
        let limits = &self.shared.config.limits;
        let key = self.shared.keys.user_index(user_id);
        let (max_s, max_r) = (
            limits.max_sessions_per_user.to_string(),
            limits.max_rooms_per_user.to_string(),
        );
        let max_s = if replacing {
            (limits.max_sessions_per_user + 1).to_string()
        } else {
            max_s
        };
        for attempt in 0..2 {
            let reply = self
                .key_call(
                    Op::UserIndex,
                    &self.shared.scripts.user_index,
                    &key,
                    &["reserve", user_id, room_id, &max_s, &max_r],
                )
                .await?;
            let outcome = scripts::text(reply).map_err(|e| self.shared.calls.error(e, None))?;
            let (what, limit) = match outcome.as_str() {
                "ok" | "new" => {
                    if replacing {
                        // Checked with room for the life it replaces; it
                        // counted that one already.
                        self.user_release(user_id, room_id, 1, false).await;
                    }
                    return Ok(Ok(outcome == "new"));
                }
                "sessions per user" => ("sessions per user", limits.max_sessions_per_user),
                "rooms per user" => ("rooms per user", limits.max_rooms_per_user),
                other => {
                    return Err(self.shared.calls.error(
                        scripts::shape("a reserve outcome", &Value::SimpleString(other.into())),
                        None,
                    ))
                }
            };
            if attempt == 0 {
                // At a limit: first make sure the index is not counting
                // what its rooms no longer have.
                self.heal_user(user_id).await?;
                continue;
            }
            return Ok(Err(Error::LimitReached { what, limit }));
        }
        unreachable!("the loop returns")
    }

    /// Uncounts `sessions` of `user_id` in `room_id` (negative: counts
    /// them), and forgets the room when the user `left` it. A second step:
    /// a failure is logged and healed later.
    pub(super) async fn user_release(
        &self,
        user_id: &str,
        room_id: &str,
        sessions: i64,
        left: bool,
    ) {
        let key = self.shared.keys.user_index(user_id);
        let n = sessions.to_string();
        let left = if left { "1" } else { "0" };
        if let Err(err) = self
            .key_call(
                Op::UserIndex,
                &self.shared.scripts.user_index,
                &key,
                &["release", user_id, room_id, &n, left],
            )
            .await
        {
            tracing::debug!(%err, user_id, room_id, "user index not updated; it heals at its next use");
        }
    }

    /// Rewrites `user_id`'s index from what its rooms say.
    async fn heal_user(&self, user_id: &str) -> Result<(), Error> {
        let seen_at = self.now_ms().await;
        let rooms = self.user_rooms(user_id).await?;
        let mut args: Vec<String> = vec![
            "heal".into(),
            user_id.into(),
            String::new(),
            seen_at.to_string(),
        ];
        for (room, state) in &rooms {
            args.push(room.to_string());
            match state {
                Some((sessions, _)) => {
                    args.push("1".into());
                    args.push(sessions.to_string());
                }
                None => {
                    args.push("0".into());
                    args.push("0".into());
                }
            }
        }
        let key = self.shared.keys.user_index(user_id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.key_call(Op::UserIndex, &self.shared.scripts.user_index, &key, &args)
            .await?;
        Ok(())
    }

    /// The time as the scripts see it, ms.
    async fn now_ms(&self) -> Millis {
        if let Some(clock) = &self.shared.config.clock {
            return clock.now();
        }
        let time: Result<(u64, u64), Error> = self
            .timed(Op::Read, None, |mut conn| async move {
                redis::cmd("TIME").query_async(&mut conn).await
            })
            .await;
        match time {
            Ok((secs, micros)) => secs * 1000 + micros / 1000,
            Err(_) => self.shared.clock.now(),
        }
    }

    /// Reserves a session (and a room) against the limits in all: `None`
    /// when reserved, else the limit reached.
    async fn totals_reserve(&self, room: bool) -> Result<Option<Error>, Error> {
        let limits = &self.shared.config.limits;
        let key = self.shared.keys.totals();
        let (max_s, max_r) = (
            limits.max_sessions.to_string(),
            limits.max_rooms.to_string(),
        );
        let reply = self
            .key_call(
                Op::Totals,
                &self.shared.scripts.totals,
                &key,
                &["reserve", &max_s, if room { "1" } else { "0" }, &max_r],
            )
            .await?;
        Ok(
            match scripts::text(reply)
                .map_err(|e| self.shared.calls.error(e, None))?
                .as_str()
            {
                "" => None,
                "sessions" => Some(Error::LimitReached {
                    what: "sessions",
                    limit: limits.max_sessions,
                }),
                "rooms" => Some(Error::LimitReached {
                    what: "rooms",
                    limit: limits.max_rooms,
                }),
                other => {
                    return Err(self.shared.calls.error(
                        scripts::shape("a totals outcome", &Value::SimpleString(other.into())),
                        None,
                    ))
                }
            },
        )
    }

    /// Gives back `sessions` and `rooms` to the limits in all (negative:
    /// takes them). A second step: a failure is logged.
    pub(super) async fn totals_release(&self, sessions: i64, rooms: i64) {
        let key = self.shared.keys.totals();
        let (s, r) = (sessions.to_string(), rooms.to_string());
        if let Err(err) = self
            .key_call(
                Op::Totals,
                &self.shared.scripts.totals,
                &key,
                &["release", &s, &r],
            )
            .await
        {
            tracing::debug!(%err, "totals not updated");
        }
    }

    /// Gives up a session id's claim, if `owner` holds it. A second step.
    pub(super) async fn unclaim(&self, session_id: &str, owner: &str) {
        let key = self.shared.keys.claims(session_id);
        if let Err(err) = self
            .key_call(
                Op::Claim,
                &self.shared.scripts.claim,
                &key,
                &["release", session_id, owner],
            )
            .await
        {
            tracing::debug!(%err, session_id, "claim not released; it is taken over when found stale");
        }
    }

    /// Gives back what a failed create reserved (and `ended` expired
    /// sessions' counts).
    async fn give_back(&self, s: &Slow<'_>, owner: &str, r: Reserved, ended: u32) {
        let users = i64::from(r.user) + i64::from(ended);
        let sessions = i64::from(r.session) + i64::from(ended);
        tokio::join!(
            async {
                if r.claim {
                    self.unclaim(s.session_id, owner).await;
                }
            },
            async {
                if users > 0 {
                    self.user_release(s.user_id, s.room_id, users, r.user_new_room)
                        .await;
                }
            },
            async {
                if sessions > 0 || r.room {
                    self.totals_release(sessions, i64::from(r.room)).await;
                }
            },
        );
    }

    /// Ends a session at once; idempotent.
    pub async fn disconnect(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        incarnation: Option<u64>,
    ) -> Result<(), Error> {
        let limits = &self.shared.config.limits;
        limits.check_id("room_id", room_id)?;
        limits.check_id("user_id", user_id)?;
        limits.check_id("session_id", session_id)?;
        let keys = self.shared.keys.room(room_id);
        let inc = incarnation.map_or(String::new(), |i| i.to_string());
        let retention = (limits.retention.as_millis() as Millis).to_string();
        let reply = self
            .room_call(
                Op::Disconnect,
                &self.shared.scripts.disconnect,
                room_id,
                &keys,
                &[user_id, session_id, &inc, &retention],
            )
            .await?;
        if scripts::number(reply).map_err(self.corrupt(room_id))? == 1 {
            ActivityCounters::bump(&self.shared.counters.sessions_disconnected);
            self.session_ended(room_id, user_id, session_id).await;
        }
        Ok(())
    }

    /// The second steps of an ended session.
    pub(super) async fn session_ended(&self, room_id: &str, user_id: &str, session_id: &str) {
        let owner = format!("{room_id}{US}{user_id}");
        tokio::join!(
            self.unclaim(session_id, &owner),
            self.user_release(user_id, room_id, 1, false),
            self.totals_release(1, 0),
        );
    }

    /// Replaces a listed user's data; empty data clears it.
    pub async fn update_room_user(
        &self,
        room_id: &str,
        user_id: &str,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), Error> {
        let limits = &self.shared.config.limits;
        limits.check_id("room_id", room_id)?;
        limits.check_id("user_id", user_id)?;
        let data = limits.check_data(data)?;
        let json = data.map_or(String::new(), |d| serde_json::to_string(&*d).expect("JSON"));
        let keys = self.shared.keys.room(room_id);
        let reply = self
            .room_call(
                Op::Update,
                &self.shared.scripts.update,
                room_id,
                &keys,
                &[user_id, &json],
            )
            .await?;
        match scripts::text(reply)
            .map_err(self.corrupt(room_id))?
            .as_str()
        {
            "absent" => Err(Error::UserNotInRoom {
                room_id: room_id.to_owned(),
                user_id: user_id.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Removes a user and all their sessions from a room.
    pub async fn remove_room_user(&self, room_id: &str, user_id: &str) -> Result<(), Error> {
        let limits = &self.shared.config.limits;
        limits.check_id("room_id", room_id)?;
        limits.check_id("user_id", user_id)?;
        let keys = self.shared.keys.room(room_id);
        let reply = self
            .room_call(
                Op::Remove,
                &self.shared.scripts.remove_user,
                room_id,
                &keys,
                &[user_id],
            )
            .await?;
        let corrupt = self.corrupt(room_id);
        let mut reply = Reply::new(reply).map_err(&corrupt)?;
        if reply.is_empty() {
            return Ok(());
        }
        let deleted = reply.number().map_err(&corrupt)? == 1;
        let mut ended = Vec::new();
        while !reply.is_empty() {
            ended.push(reply.text().map_err(&corrupt)?);
        }
        let owner = format!("{room_id}{US}{user_id}");
        for session_id in &ended {
            ActivityCounters::bump(&self.shared.counters.sessions_removed);
            self.unclaim(session_id, &owner).await;
        }
        self.user_release(user_id, room_id, ended.len() as i64, true)
            .await;
        self.totals_release(ended.len() as i64, i64::from(deleted))
            .await;
        Ok(())
    }

    /// Removes a room with all its users and sessions.
    pub async fn remove_room(&self, room_id: &str) -> Result<(), Error> {
        self.shared.config.limits.check_id("room_id", room_id)?;
        let keys = self.shared.keys.room(room_id);
        let reply = self
            .room_call(
                Op::Remove,
                &self.shared.scripts.remove_room,
                room_id,
                &keys,
                &[],
            )
            .await?;
        let corrupt = self.corrupt(room_id);
        let mut reply = Reply::new(reply).map_err(&corrupt)?;
        if reply.is_empty() {
            return Ok(());
        }
        let mut users = Vec::new();
        loop {
            let user = reply.text().map_err(&corrupt)?;
            if user.is_empty() {
                break;
            }
            users.push((user, reply.number().map_err(&corrupt)?));
        }
        let mut sessions = 0;
        while !reply.is_empty() {
            let session_id = reply.text().map_err(&corrupt)?;
            let user_id = reply.text().map_err(&corrupt)?;
            ActivityCounters::bump(&self.shared.counters.sessions_removed);
            sessions += 1;
            self.unclaim(&session_id, &format!("{room_id}{US}{user_id}"))
                .await;
        }
        for (user_id, n) in &users {
            self.user_release(user_id, room_id, *n as i64, true).await;
        }
        self.totals_release(sessions, 1).await;
        Ok(())
    }

    /// The room's listing now: the first `limit` users (0 = default,
    /// capped); only online users when `online_only`.
    pub async fn list_room(
        &self,
        room_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Snapshot, Error> {
        let limits = &self.shared.config.limits;
        limits.check_id("room_id", room_id)?;
        self.snapshot(room_id, limits.list_limit(limit), online_only)
            .await
    }

    /// Reads a room's listing in one step.
    pub(super) async fn snapshot(
        &self,
        room_id: &str,
        limit: usize,
        online_only: bool,
    ) -> Result<Snapshot, Error> {
        let keys = self.shared.keys.room(room_id);
        let limit_arg = limit.to_string();
        let reply = self
            .room_call(
                Op::Read,
                &self.shared.scripts.snapshot,
                room_id,
                &keys,
                &[&limit_arg, if online_only { "1" } else { "0" }],
            )
            .await?;
        let corrupt = self.corrupt(room_id);
        let mut reply = Reply::new(reply).map_err(&corrupt)?;
        let version = reply.number().map_err(&corrupt)?;
        let online_count = reply.number().map_err(&corrupt)? as u32;
        let total_count = reply.number().map_err(&corrupt)? as u32;
        let mut users = Vec::new();
        while !reply.is_empty() {
            let user_id = reply.text().map_err(&corrupt)?;
            let score = reply.float().map_err(&corrupt)?;
            let data = reply.text().map_err(&corrupt)?;
            let data = if data.is_empty() {
                None
            } else {
                let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&data)
                    .map_err(|e| {
                    corrupt(scripts::shape(
                        &format!("user data ({e})"),
                        &Value::SimpleString(data.clone()),
                    ))
                })?;
                Some(Arc::new(map))
            };
            users.push(UserPresence {
                user_id: Id::from(user_id),
                last_disconnected: (score > ONLINE).then(|| (-score) as Millis),
                data,
            });
        }
        Ok(Snapshot {
            room_id: Id::from(room_id),
            users,
            online_count,
            total_count,
            version,
            memo: Default::default(),
        })
    }

    /// The rooms of a user's index with what each room says of the user:
    /// `(sessions, since)` (since 0 while online), `None` where the room
    /// does not list them (an index entry to heal).
    async fn user_rooms(&self, user_id: &str) -> Result<Vec<(Id, Option<(u64, Millis)>)>, Error> {
        let key = self.shared.keys.user_index(user_id);
        let user = user_id.to_owned();
        let entry: Option<String> = self
            .timed(Op::Read, None, |mut conn| async move {
                redis::cmd("HGET")
                    .arg(&key)
                    .arg(&user)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let rooms: Vec<Id> = entry
            .iter()
            .flat_map(|e| e.split(RS))
            .filter_map(|record| record.split(US).next())
            .filter(|room| !room.is_empty())
            .map(Id::from)
            .collect();
        let field = format!("u{user_id}");
        let reads = rooms.iter().map(|room| {
            let keys = self.shared.keys.room(room);
            let field = field.clone();
            async move {
                let value: Result<Option<String>, Error> = self
                    .timed(Op::Read, Some(room), |mut conn| async move {
                        redis::cmd("HGET")
                            .arg(&keys.hash)
                            .arg(&field)
                            .query_async(&mut conn)
                            .await
                    })
                    .await;
                (room.clone(), value)
            }
        });
        let mut out = Vec::new();
        for (room, value) in futures_util::future::join_all(reads).await {
            let state = match value? {
                None => None,
                Some(value) => {
                    let mut fields = value.splitn(4, US).skip(1);
                    let mut next = || fields.next().and_then(|f| f.parse::<u64>().ok());
                    let state = next().zip(next());
                    if state.is_none() {
                        return Err(Error::Corrupt {
                            room_id: room.to_string(),
                            detail: format!("user value {value:?}"),
                        });
                    }
                    state
                }
            };
            out.push((room, state));
        }
        Ok(out)
    }

    /// The rooms where the user is listed, in [`user_rooms_order`].
    pub async fn list_user(
        &self,
        user_id: &str,
        online_only: bool,
        limit: u32,
    ) -> Result<Vec<RoomPresence>, Error> {
        let limits = &self.shared.config.limits;
        limits.check_id("user_id", user_id)?;
        let limit = limits.list_limit(limit);
        let mut rooms: Vec<RoomPresence> = self
            .user_rooms(user_id)
            .await?
            .into_iter()
            .filter_map(|(room_id, state)| {
                let (sessions, since) = state?;
                Some(RoomPresence {
                    room_id,
                    last_disconnected: (sessions == 0).then_some(since),
                })
            })
            .filter(|r| !online_only || r.last_disconnected.is_none())
            .collect();
        rooms.sort_by(user_rooms_order);
        rooms.truncate(limit);
        Ok(rooms)
    }

    /// Subscribes to a room's snapshots: the current one first, then the
    /// latest after each change.
    pub async fn watch(&self, room_id: &str) -> Result<Subscription, Error> {
        let limits = &self.shared.config.limits;
        limits.check_id("room_id", room_id)?;
        if let Some(subscription) = self.shared.hub.join(room_id) {
            return Ok(subscription);
        }
        // Subscribed before the first read, so no change can fall between.
        self.subscribe(room_id).await?;
        let first = self
            .snapshot(room_id, limits.max_list_limit as usize, false)
            .await?;
        let subscription = self.shared.hub.subscribe(room_id, || first)?;
        // A notification that came before the hub had the room is not lost.
        self.check_rooms(vec![Id::from(room_id)]).await;
        Ok(subscription)
    }
}

/// What the slow path of a heartbeat works on.
struct Slow<'a> {
    room_id: &'a str,
    user_id: &'a str,
    session_id: &'a str,
    ttl: Millis,
    keys: &'a RoomKeys,
}

/// What a create reserved, to give back if it fails.
#[derive(Clone, Copy)]
struct Reserved {
    claim: bool,
    user: bool,
    /// The user's index entry for the room was made by this reservation.
    user_new_room: bool,
    session: bool,
    room: bool,
}

/// The operations whose latency is measured.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// A heartbeat's fast path.
    Heartbeat,
    /// A session's creation in its room.
    Create,
    /// Session id claims.
    Claim,
    /// User index updates.
    UserIndex,
    /// The limits in all.
    Totals,
    /// Disconnects.
    Disconnect,
    /// Data updates.
    Update,
    /// RemoveRoomUser, RemoveRoom.
    Remove,
    /// Listings, snapshots, versions.
    Read,
    /// Expiry and retention sweeps.
    Sweep,
}

const OPS: [(Op, &str); 10] = [
    (Op::Heartbeat, "heartbeat"),
    (Op::Create, "create"),
    (Op::Claim, "claim"),
    (Op::UserIndex, "user_index"),
    (Op::Totals, "totals"),
    (Op::Disconnect, "disconnect"),
    (Op::Update, "update"),
    (Op::Remove, "remove"),
    (Op::Read, "read"),
    (Op::Sweep, "sweep"),
];

/// Upper bounds of the latency buckets, seconds: 100 µs … ~1.6 s, then
/// everything slower.
pub const LATENCY_BUCKETS: [f64; 9] = [
    0.0001,
    0.0004,
    0.0016,
    0.0064,
    0.0256,
    0.1024,
    0.4096,
    1.6384,
    f64::INFINITY,
];

/// Call latencies by operation: relaxed atomics, read at scrape time.
#[derive(Default)]
pub struct Latencies {
    ops: [OpLatency; 10],
}

#[derive(Default)]
struct OpLatency {
    buckets: [AtomicU64; 9],
    count: AtomicU64,
    sum_ns: AtomicU64,
}

/// One operation's latencies: its name, the count of calls in each of
/// [`LATENCY_BUCKETS`] (each bucket counts the calls above the bound
/// before it), the sum of seconds, the count.
#[derive(Debug, Clone)]
pub struct LatencySnapshot {
    /// The operation.
    pub op: &'static str,
    /// (upper bound, calls in the bucket).
    pub buckets: Vec<(f64, u64)>,
    /// Seconds in all.
    pub sum: f64,
    /// Calls.
    pub count: u64,
}

impl Latencies {
    pub(super) fn record(&self, op: Op, elapsed: Duration) {
        let o = &self.ops[op as usize];
        let secs = elapsed.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            o.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        o.count.fetch_add(1, Ordering::Relaxed);
        o.sum_ns
            .fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    pub(super) fn read(&self) -> Vec<LatencySnapshot> {
        OPS.iter()
            .map(|(op, name)| {
                let o = &self.ops[*op as usize];
                let buckets = LATENCY_BUCKETS
                    .iter()
                    .zip(&o.buckets)
                    .map(|(bound, n)| (*bound, n.load(Ordering::Relaxed)))
                    .collect();
                LatencySnapshot {
                    op: name,
                    buckets,
                    sum: o.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    count: o.count.load(Ordering::Relaxed),
                }
            })
            .collect()
    }
}
