//! Request validation and the engine behind it: arbitrary ids, intervals and
//! data never panic, and a refused request changes nothing.
#![no_main]

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use presenced::presence::{Limits, ManualClock, Memory};

static ENGINE: LazyLock<Memory> = LazyLock::new(|| {
    let limits = Limits {
        max_id_bytes: 16,
        max_data_bytes: 64,
        ..Limits::default()
    };
    Memory::new(limits, Arc::new(ManualClock::new(1_800_000_000_000)))
});

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\u{1}');
    let (room, user, session) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    let interval_ms: u64 = parts.next().and_then(|p| p.parse().ok()).unwrap_or(5_000);
    let json = parts.next().unwrap_or("{}");
    let before = ENGINE.stats();
    if ENGINE
        .heartbeat(room, user, session, Duration::from_millis(interval_ms))
        .is_err()
    {
        assert_eq!(ENGINE.stats().sessions, before.sessions);
    }
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(json) {
        let _ = ENGINE.update_room_user(room, user, map);
    }
    let _ = ENGINE.list_room(room, false, 0);
    let _ = ENGINE.list_user(user, false, 0);
    ENGINE.sweep();
});
