//! Redis memory per idle session: `used_memory` (`INFO memory`) growth
//! while one presenced creates N sessions in N/10 rooms (one user per
//! session), per session and per room; then where the bytes are: every
//! key's `MEMORY USAGE` and `OBJECT ENCODING`, summed by kind of key (room
//! hashes, listing orders, due indexes, session claims, user indexes…).

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use crate::ctx::{fmt_count, presence_clients, Ctx, Population};
use crate::redis_server::RedisServer;
use crate::report::{Report, Row};
use crate::server::connect_many;

struct Sizes {
    sessions: u64,
    rooms: u64,
}

const QUICK: Sizes = Sizes {
    sessions: 10_000,
    rooms: 1_000,
};

const FULL: Sizes = Sizes {
    sessions: 100_000,
    rooms: 10_000,
};

/// Keys whose usage is asked in one pipeline.
const BATCH: usize = 500;

/// The kind of a key of the layout (`src/presence/redis/keys.rs`).
fn kind(key: &str) -> &'static str {
    let Some((tag, rest)) = key.split_once('}') else {
        return "other";
    };
    let group = tag.rsplit(':').next().unwrap_or("");
    match (group.chars().next(), rest) {
        (Some('r'), r) if r.starts_with(":h:") => "room hash (sessions, users, counters)",
        (Some('r'), r) if r.starts_with(":o:") => "room listing order (zset)",
        (Some('r'), ":due") => "room group due index (zset)",
        (Some('r'), ":n") => "room group totals",
        (Some('i'), ":s") => "session claims (index group hash)",
        (Some('i'), ":u") => "user indexes (index group hash)",
        (Some('t'), _) => "instance totals",
        (Some('k'), _) => "token key",
        _ => "other",
    }
}

/// Per kind of key: keys, bytes, and how many have each encoding.
#[derive(Default)]
struct Kind {
    keys: u64,
    bytes: u64,
    encodings: BTreeMap<String, u64>,
}

/// Every key's `MEMORY USAGE … SAMPLES 0` and `OBJECT ENCODING`, by kind.
async fn breakdown(redis: &RedisServer) -> Result<BTreeMap<&'static str, Kind>, String> {
    let mut conn = redis.conn().await?;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor = 0u64;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("SCAN: {e}"))?;
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut kinds: BTreeMap<&'static str, Kind> = BTreeMap::new();
    for chunk in keys.chunks(BATCH) {
        let mut pipe = redis::pipe();
        for k in chunk {
            pipe.cmd("MEMORY").arg("USAGE").arg(k).arg("SAMPLES").arg(0);
            pipe.cmd("OBJECT").arg("ENCODING").arg(k);
        }
        let replies: Vec<Option<redis::Value>> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("MEMORY USAGE: {e}"))?;
        for (k, pair) in chunk.iter().zip(replies.chunks(2)) {
            let entry = kinds.entry(kind(k)).or_default();
            entry.keys += 1;
            if let Some(Some(v)) = pair.first() {
                entry.bytes += redis::from_redis_value::<u64>(v.clone()).unwrap_or(0);
            }
            let enc = pair
                .get(1)
                .cloned()
                .flatten()
                .and_then(|v| redis::from_redis_value::<String>(v).ok())
                .unwrap_or_else(|| "?".into());
            *entry.encodings.entry(enc).or_default() += 1;
        }
    }
    Ok(kinds)
}

pub async fn run(ctx: &Ctx) -> Result<Report, String> {
    ctx.needs_own_servers("redis-memory")?;
    let s = ctx.sizes(&QUICK, &FULL);
    let mut rep = Report::default();
    let redis = RedisServer::start(ctx, "memory").await?;
    let x = ctx
        .own_presenced("redis-memory", &["--store", &redis.url()])
        .await?;
    let clients = presence_clients(&connect_many(x.addr, 4).await?);
    let pop = Population::new(ctx, "rmem", 12, s.rooms, 600);
    let settle = || tokio::time::sleep(Duration::from_millis(500));
    settle().await;
    let m0 = redis.used_memory().await?;
    // Each room with its first session, then the other sessions join them.
    let a = pop.create(&clients, 0, s.rooms).await;
    settle().await;
    let m1 = redis.used_memory().await?;
    let b = pop.create(&clients, s.rooms, s.sessions).await;
    settle().await;
    let m2 = redis.used_memory().await?;
    rep.check(
        format!(
            "redis-memory: {} sessions created ({} errors{})",
            s.sessions,
            a.errors + b.errors,
            a.first_error
                .as_deref()
                .or(b.first_error.as_deref())
                .map(|e| format!(", first: {e}"))
                .unwrap_or_default()
        ),
        a.errors == 0 && b.errors == 0,
    );
    let per_session = m2.saturating_sub(m0) as f64 / s.sessions as f64;
    let per_room = m1.saturating_sub(m0) as f64 / s.rooms as f64;
    let per_joining = m2.saturating_sub(m1) as f64 / (s.sessions - s.rooms) as f64;
    let info = redis.info("memory").await?;
    let kinds = breakdown(&redis).await?;
    let counted: u64 = kinds.values().map(|k| k.bytes).sum();
    let mut table = serde_json::Map::new();
    for (name, k) in &kinds {
        table.insert(
            (*name).to_string(),
            json!({
                "keys": k.keys,
                "bytes": k.bytes,
                "bytes_per_session": (k.bytes as f64 / s.sessions as f64).round(),
                "encodings": k.encodings,
            }),
        );
        rep.notes.push(format!(
            "redis-memory: {name}: {} keys, {} B, {:.0} B per session; encodings {:?}",
            k.keys,
            k.bytes,
            k.bytes as f64 / s.sessions as f64,
            k.encodings
        ));
    }
    rep.notes.push(format!(
        "redis-memory: MEMORY USAGE of every key adds up to {:.0} B per session; used_memory grew {per_session:.0} B per session (the rest: the keyspace's own tables, allocator rounding)",
        counted as f64 / s.sessions as f64
    ));
    let mut row = Row::new(
        "redis-memory",
        format!(
            "{} sessions in {} rooms, one user each, via one presenced",
            fmt_count(s.sessions),
            fmt_count(s.rooms)
        ),
    );
    row.ops = s.sessions;
    row.extra = json!({
        "used_memory_per_session_bytes": per_session.round(),
        "used_memory_per_room_with_first_session_bytes": per_room.round(),
        "used_memory_per_joining_session_bytes": per_joining.round(),
        "used_memory_mib": {"before": round_mib(m0), "rooms_created": round_mib(m1), "all": round_mib(m2)},
        "used_memory_dataset": info.get("used_memory_dataset"),
        "mem_allocator": info.get("mem_allocator"),
        "by_kind_of_key": table,
        "session_shape": "one user per session, 10 sessions per room, uuid session ids, ~22-byte user ids, ~30-byte room ids",
    });
    rep.check(
        format!("redis-memory: {per_session:.0} B per session is plausible"),
        per_session > 20.0 && per_session < 50_000.0,
    );
    rep.goal(
        "Redis memory per idle session",
        "≤ 300 B",
        format!(
            "{per_session:.0} B per session in all ({per_joining:.0} B per session joining a room, {per_room:.0} B per room with its first session)"
        ),
        Some(per_session <= 300.0),
    );
    rep.rows.push(row);
    Ok(rep)
}

fn round_mib(bytes: u64) -> f64 {
    crate::stats::round2(crate::stats::mib(bytes))
}
