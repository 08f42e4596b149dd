//! Restart without losing presence: the embedded store's state in one file
//! under `--data-dir`.
//!
//! The file is written periodically and at graceful shutdown, atomically:
//! a temporary file in the same directory is written, flushed to disk and
//! renamed over the old one (then the directory is synced), so a crash at
//! any moment leaves either the previous complete file or the new one. It is
//! read back at start. A file that cannot be parsed (truncated, corrupt, or
//! of another format version) is reported, renamed aside
//! (`presence-state.json.corrupt-<unix ms>`) and the service starts empty:
//! never a crash, and the evidence is kept.
//!
//! One process per directory: a `presence.lock` file in it is locked
//! (`flock`) for the persister's life, and a second process asked to use
//! the same directory refuses to start. Temporary files have unique names.
//!
//! Format: one JSON object, `{"format": "presenced-state", "version": 1,
//! "written_at": <unix ms>, "next_incarnation": <n>, "rooms": [...]}`; each room has its `id`,
//! `version`, its `users` in listing order (`id`, `last_disconnected` when
//! offline, `data`) and its `sessions` (`id`, `user`, `deadline` in unix ms,
//! `ttl` in ms, `incarnation`). What happens to restored sessions is described at
//! [`Memory::import`].

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Memory;
use crate::presence::clock::{Clock, Millis, SystemClock};

/// The state file's name inside the data directory.
pub const STATE_FILE: &str = "presence-state.json";
/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "presence.lock";
/// The `format` field of a state file.
pub const FORMAT: &str = "presenced-state";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;

/// The whole persisted state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct State {
    /// Always [`FORMAT`].
    pub format: String,
    /// Always [`VERSION`] for files this build writes.
    pub version: u32,
    /// When the state was taken, unix ms.
    pub written_at: Millis,
    /// The next session incarnation the store would have given (absent in
    /// files of earlier builds).
    #[serde(default)]
    pub next_incarnation: u64,
    /// Every room with users.
    pub rooms: Vec<RoomState>,
}

impl State {
    /// A state of the current format taken at `written_at`.
    pub fn new(written_at: Millis, rooms: Vec<RoomState>) -> Self {
        Self {
            format: FORMAT.to_owned(),
            version: VERSION,
            written_at,
            next_incarnation: 0,
            rooms,
        }
    }
}

/// One room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomState {
    /// The room's id.
    pub id: String,
    /// The room's version when the state was taken.
    pub version: u64,
    /// Users in listing order.
    pub users: Vec<UserState>,
    /// Live sessions.
    #[serde(default)]
    pub sessions: Vec<SessionState>,
}

/// One user of a room.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserState {
    /// The user's id.
    pub id: String,
    /// When the user went offline, unix ms; absent while online.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_disconnected: Option<Millis>,
    /// The user's data in the room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}

/// One live session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionState {
    /// The session's id.
    pub id: String,
    /// Its user's id.
    pub user: String,
    /// When it expires without a heartbeat, unix ms.
    pub deadline: Millis,
    /// Its lifetime per heartbeat (2.5 × interval), ms.
    pub ttl: Millis,
    /// Which life of the session this is (0 in files of earlier builds: a
    /// new one is given at restore).
    #[serde(default)]
    pub incarnation: u64,
}

/// What [`Memory::import`] restored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Restored {
    /// Rooms restored.
    pub rooms: usize,
    /// Users (online and offline) restored, counted per room.
    pub users: usize,
    /// Sessions restored.
    pub sessions: usize,
    /// Rooms not restored because `max_rooms` was reached.
    pub rooms_dropped: usize,
    /// Sessions not restored: `max_sessions` or the per-user-and-room bound
    /// was reached (or their room was dropped).
    pub sessions_dropped: usize,
    /// When the state was written, unix ms.
    pub written_at: Millis,
}

/// What [`Persister::load`] found.
#[derive(Debug)]
pub enum Loaded {
    /// No state file: a first start.
    Missing,
    /// The state was read and imported.
    Restored(Restored),
    /// The file was unreadable as a state; it was renamed to `moved_to`.
    SetAside {
        /// Why it was refused.
        reason: String,
        /// Where it is now.
        moved_to: PathBuf,
    },
}

/// How many writes succeeded or failed; for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Writes {
    /// Complete state files written.
    pub writes: u64,
    /// Writes that failed (the previous file is intact).
    pub failures: u64,
    /// When the last successful write took its state, unix ms (0: never).
    pub last_success: Millis,
}

/// A file-system problem with the data directory.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct Error {
    /// The file or directory concerned.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: io::Error,
}

fn at(path: &Path) -> impl FnOnce(io::Error) -> Error + '_ {
    move |source| Error {
        path: path.to_owned(),
        source,
    }
}

/// Saves and restores one store's state in one directory. Cheap to clone.
#[derive(Clone)]
pub struct Persister {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    /// How often the state is written.
    every: Duration,
    /// Holds the directory's lock while open.
    _lock: File,
    store: Memory,
    /// Serializes writers (the periodic task and the final save); a std
    /// mutex held only inside the blocking `save`, never across an await.
    writing: Mutex<()>,
    writes: AtomicU64,
    failures: AtomicU64,
    last_success: AtomicU64,
}

impl Persister {
    /// A persister of `store` in `dir` (created if missing) writing every
    /// `every`. Fails when another process holds the directory.
    pub fn new(dir: impl Into<PathBuf>, every: Duration, store: Memory) -> Result<Self, Error> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(at(&dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(at(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(at(&dir)(io::Error::new(
                    io::ErrorKind::ResourceBusy,
                    "in use by another presenced process (its presence.lock is locked)",
                )))
            }
            Err(fs::TryLockError::Error(err)) => return Err(at(&lock_path)(err)),
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir,
                every,
                _lock: lock,
                store,
                writing: Mutex::new(()),
                writes: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                last_success: AtomicU64::new(0),
            }),
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.inner.dir.join(STATE_FILE)
    }

    /// Reads the state file, if any, into the store. A file that is not a
    /// valid state is renamed aside and reported in the result; only an
    /// I/O error (unreadable file, failed rename) is an `Err`.
    pub fn load(&self) -> Result<Loaded, Error> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Loaded::Missing),
            Err(err) => return Err(at(&path)(err)),
        };
        let reason = match serde_json::from_slice::<State>(&bytes) {
            Ok(state) if state.format == FORMAT && state.version == VERSION => {
                return Ok(Loaded::Restored(self.inner.store.import(state)));
            }
            Ok(state) => format!(
                "format {:?} version {} is not {FORMAT:?} version {VERSION}",
                state.format, state.version
            ),
            Err(err) => format!("not a valid state file: {err}"),
        };
        let moved_to = self
            .inner
            .dir
            .join(format!("{STATE_FILE}.corrupt-{}", SystemClock.now()));
        fs::rename(&path, &moved_to).map_err(at(&path))?;
        Ok(Loaded::SetAside { reason, moved_to })
    }

    /// Writes the store's state now (blocking: call it from a blocking
    /// thread in async code). Returns the number of bytes written.
    pub fn save(&self) -> Result<u64, Error> {
        let _writing = self.inner.writing.lock().unwrap_or_else(|e| e.into_inner());
        let state = self.inner.store.export();
        let result = self.write(&state);
        match &result {
            Ok(_) => {
                self.inner.writes.fetch_add(1, Ordering::Relaxed);
                self.inner
                    .last_success
                    .store(state.written_at, Ordering::Relaxed);
            }
            Err(_) => {
                self.inner.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    fn write(&self, state: &State) -> Result<u64, Error> {
        let path = self.path();
        let tmp = self.inner.dir.join(format!(
            "{STATE_FILE}.tmp-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        let written = self.write_to(&tmp, state);
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        let bytes = written?;
        fs::rename(&tmp, &path).map_err(at(&path))?;
        // Make the rename itself durable.
        File::open(&self.inner.dir)
            .and_then(|dir| dir.sync_all())
            .map_err(at(&self.inner.dir))?;
        Ok(bytes)
    }

    fn write_to(&self, tmp: &Path, state: &State) -> Result<u64, Error> {
        let file = File::create(tmp).map_err(at(tmp))?;
        let mut out = BufWriter::with_capacity(1 << 16, file);
        serde_json::to_writer(&mut out, state).map_err(|e| at(tmp)(e.into()))?;
        out.flush().map_err(at(tmp))?;
        let file = out.into_inner().map_err(|e| at(tmp)(e.into_error()))?;
        file.sync_all().map_err(at(tmp))?;
        Ok(file.metadata().map_err(at(tmp))?.len())
    }

    /// [`Persister::save`] on a blocking thread, logging the outcome.
    pub async fn save_now(&self) -> Result<u64, Error> {
        let this = self.clone();
        let result = tokio::task::spawn_blocking(move || this.save())
            .await
            .unwrap_or_else(|err| {
                Err(Error {
                    path: self.path(),
                    source: io::Error::other(format!("writer panicked: {err}")),
                })
            });
        match &result {
            Ok(bytes) => {
                tracing::debug!(bytes, path = %self.path().display(), "presence state written")
            }
            Err(err) => error!(%err, "cannot write the presence state; the previous file is kept"),
        }
        result
    }

    /// Writes the state every `every` until `cancel`.
    pub async fn run(self, cancel: CancellationToken) {
        info!(
            path = %self.path().display(),
            every = %humantime::format_duration(self.inner.every),
            "presence state is saved periodically and at shutdown"
        );
        let mut ticks = tokio::time::interval(self.inner.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; the state was just loaded
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = cancel.cancelled() => return,
            }
            let _ = self.save_now().await;
        }
    }

    /// Writes so far.
    pub fn writes(&self) -> Writes {
        Writes {
            writes: self.inner.writes.load(Ordering::Relaxed),
            failures: self.inner.failures.load(Ordering::Relaxed),
            last_success: self.inner.last_success.load(Ordering::Relaxed),
        }
    }
}

/// Logs what [`Persister::load`] found.
pub fn report(loaded: &Loaded, path: &Path) {
    match loaded {
        Loaded::Missing => info!(path = %path.display(), "no saved presence state; starting empty"),
        Loaded::Restored(r) => {
            info!(
                path = %path.display(),
                rooms = r.rooms,
                users = r.users,
                sessions = r.sessions,
                written_at_ms = r.written_at,
                "presence state restored"
            );
            if r.rooms_dropped + r.sessions_dropped > 0 {
                warn!(
                    rooms_dropped = r.rooms_dropped,
                    sessions_dropped = r.sessions_dropped,
                    "saved presence state exceeds the configured limits; the excess was not restored"
                );
            }
        }
        Loaded::SetAside { reason, moved_to } => warn!(
            path = %path.display(),
            moved_to = %moved_to.display(),
            %reason,
            "saved presence state is unreadable; set aside, starting empty"
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::presence::{Limits, ManualClock};

    const T0: Millis = 1_700_000_000_000;

    fn store(clock: &ManualClock) -> Memory {
        Memory::new(Limits::default(), Arc::new(clock.clone()))
    }

    fn online(store: &Memory, room: &str) -> Vec<(String, bool)> {
        store
            .list_room(room, false, 0)
            .unwrap()
            .users
            .iter()
            .map(|u| (u.user_id.to_string(), u.online()))
            .collect()
    }

    #[test]
    fn a_restored_session_gets_one_interval_of_grace_after_its_deadline_passed() {
        let clock = ManualClock::new(T0);
        let before = store(&clock);
        let ten = Duration::from_secs(10);
        before.heartbeat("r", "alice", "a1", ten).unwrap();
        before.heartbeat("r", "bob", "b1", ten).unwrap();
        before.heartbeat("r", "carol", "c1", ten).unwrap();
        clock.advance(1000);
        before.disconnect("r", "bob", "b1", None).unwrap();
        let mut data = serde_json::Map::new();
        data.insert("typing".into(), true.into());
        before.update_room_user("r", "alice", data.clone()).unwrap();
        let version = before.list_room("r", false, 0).unwrap().version;
        let state = before.export();

        // Down for a minute: every deadline (25 s) has passed.
        clock.advance(60_000);
        let after = store(&clock);
        let restored = after.import(state);
        assert_eq!(
            (restored.rooms, restored.users, restored.sessions),
            (1, 3, 2)
        );
        let snapshot = after.list_room("r", false, 0).unwrap();
        assert!(snapshot.version >= version, "versions only grow");
        assert_eq!(
            online(&after, "r"),
            [
                ("alice".into(), true),
                ("carol".into(), true),
                ("bob".into(), false)
            ]
        );
        assert_eq!(snapshot.users[0].data.as_deref(), Some(&data));
        assert_eq!(snapshot.users[2].last_disconnected, Some(T0 + 1000));
        assert_eq!(after.stats().sessions, 2);

        // One interval (10 s) of grace: alive at 9.9 s, gone after 10 s.
        clock.advance(9_900);
        after.sweep();
        assert_eq!(after.stats().sessions, 2);
        after.heartbeat("r", "alice", "a1", ten).unwrap(); // alice came back
        clock.advance(200);
        after.sweep();
        assert_eq!(
            online(&after, "r"),
            [
                ("alice".into(), true),
                ("carol".into(), false),
                ("bob".into(), false)
            ]
        );
        // The restored session id still belongs to its room.
        assert!(after.heartbeat("other", "alice", "a1", ten).is_err());
        assert!(after.list_room("r", false, 0).unwrap().version > snapshot.version);
    }

    #[test]
    fn a_restore_keeps_to_the_limits_in_force_now() {
        let clock = ManualClock::new(T0);
        let before = store(&clock);
        let sec = Duration::from_secs(10);
        for (room, user, session) in [
            ("a", "u1", "s1"),
            ("a", "u1", "s2"),
            ("a", "u2", "s3"),
            ("b", "u3", "s4"),
            ("c", "u4", "s5"),
        ] {
            before.heartbeat(room, user, session, sec).unwrap();
        }
        let after = Memory::new(
            Limits {
                max_rooms: 2,
                max_sessions: 3,
                max_sessions_per_user_room: 1,
                ..Limits::default()
            },
            Arc::new(clock.clone()),
        );
        let restored = after.import(before.export());
        assert_eq!(restored.rooms + restored.rooms_dropped, 3);
        assert_eq!((restored.rooms, restored.rooms_dropped), (2, 1));
        assert_eq!(restored.sessions + restored.sessions_dropped, 5);
        let stats = after.stats();
        assert_eq!((stats.rooms, stats.sessions), (2, restored.sessions));
        assert!(stats.sessions <= 3);
        // At the limit now: a new room is refused as it would be live.
        assert!(after.heartbeat("d", "u5", "s6", sec).is_err());

        // With room for every room, the other bounds: u1 keeps one of its
        // two sessions in "a", and at most three sessions come back.
        let roomy = Memory::new(
            Limits {
                max_sessions: 3,
                max_sessions_per_user_room: 1,
                ..Limits::default()
            },
            Arc::new(clock.clone()),
        );
        let restored = roomy.import(before.export());
        assert_eq!((restored.rooms, restored.rooms_dropped), (3, 0));
        assert_eq!((restored.sessions, restored.sessions_dropped), (3, 2));
        let a = roomy.list_room("a", false, 0).unwrap();
        assert_eq!(a.total_count, 2, "both users of a are listed");
        assert!(a.online_count >= 1);
        assert_eq!(roomy.stats().sessions, 3);
    }

    #[test]
    fn an_unexpired_session_keeps_its_later_deadline() {
        let clock = ManualClock::new(T0);
        let before = store(&clock);
        before
            .heartbeat("r", "u", "s", Duration::from_secs(100))
            .unwrap();
        let state = before.export();
        clock.advance(1000);
        let after = store(&clock);
        after.import(state);
        // Deadline T0 + 250 s, beyond now + one interval (100 s).
        clock.advance(200_000);
        after.sweep();
        assert_eq!(after.stats().sessions, 1);
        clock.advance(50_000);
        after.sweep();
        assert_eq!(after.stats().sessions, 0);
    }

    #[test]
    fn files_round_trip_and_bad_files_are_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(T0);
        let before = store(&clock);
        before
            .heartbeat("room", "user", "session", Duration::from_secs(10))
            .unwrap();
        let persister = Persister::new(dir.path(), Duration::from_secs(10), before).unwrap();
        let bytes = persister.save().unwrap();
        assert!(bytes > 0);
        assert_eq!(persister.writes().writes, 1);
        let good = fs::read(persister.path()).unwrap();
        // One process per directory: a second persister is refused while
        // the first holds it.
        let err = Persister::new(dir.path(), Duration::from_secs(10), store(&clock))
            .err()
            .expect("the directory is locked");
        assert!(
            err.to_string()
                .contains("in use by another presenced process"),
            "{err}"
        );
        drop(persister);

        let after = Persister::new(dir.path(), Duration::from_secs(10), store(&clock)).unwrap();
        match after.load().unwrap() {
            Loaded::Restored(r) => assert_eq!(r.sessions, 1),
            other => panic!("{other:?}"),
        }

        for (name, bad) in [
            ("truncated", good[..good.len() / 2].to_vec()),
            ("garbage", b"\x00\xffnot json".to_vec()),
            ("other version", good.clone().replace_version()),
            ("empty", Vec::new()),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let persister =
                Persister::new(dir.path(), Duration::from_secs(10), store(&clock)).unwrap();
            fs::write(persister.path(), &bad).unwrap();
            match persister.load().unwrap() {
                Loaded::SetAside { moved_to, .. } => {
                    assert_eq!(fs::read(&moved_to).unwrap(), bad, "{name}: kept as it was");
                    assert!(!persister.path().exists(), "{name}");
                }
                other => panic!("{name}: {other:?}"),
            }
            assert_eq!(persister.inner.store.stats().sessions, 0, "{name}");
            // And the next start finds no file: a first start.
            assert!(matches!(persister.load().unwrap(), Loaded::Missing));
        }
    }

    trait ReplaceVersion {
        fn replace_version(self) -> Vec<u8>;
    }

    impl ReplaceVersion for Vec<u8> {
        fn replace_version(self) -> Vec<u8> {
            String::from_utf8(self)
                .unwrap()
                .replacen("\"version\":1,", "\"version\":99,", 1)
                .into_bytes()
        }
    }
}
