//! The Lua scripts, one file per atomic operation (`lua/`), each loaded
//! with the shared `prelude.lua` in front, called by EVALSHA (EVAL when
//! the node does not have it yet: after a restart, on a new node), and
//! their replies read back.

use redis::{RedisError, Value};

use super::conn::Conn;

const PRELUDE: &str = include_str!("lua/prelude.lua");

/// One script.
pub struct Script {
    body: String,
    sha: String,
}

impl Script {
    fn new(op: &str) -> Self {
        let body = format!("{PRELUDE}\n{op}");
        let sha = redis::Script::new(&body).get_hash().to_owned();
        Self { body, sha }
    }

    /// Runs the script with `keys` (all in one slot) and `args`.
    pub async fn call(
        &self,
        conn: &mut Conn,
        keys: &[&str],
        args: &[String],
    ) -> Result<Value, RedisError> {
        let mut evalsha = redis::cmd("EVALSHA");
        evalsha.arg(&self.sha).arg(keys.len()).arg(keys).arg(args);
        match evalsha.query_async(conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                let mut eval = redis::cmd("EVAL");
                eval.arg(&self.body).arg(keys.len()).arg(keys).arg(args);
                eval.query_async(conn).await
            }
            other => other,
        }
    }
}

/// Every script of the store.
pub struct Scripts {
    pub heartbeat: Script,
    pub create: Script,
    pub disconnect: Script,
    pub update: Script,
    pub remove_user: Script,
    pub remove_room: Script,
    pub expire: Script,
    pub snapshot: Script,
    pub claim: Script,
    pub user_index: Script,
    pub totals: Script,
    pub token_key: Script,
}

impl Scripts {
    /// All of them, with their hashes.
    pub fn load() -> Self {
        Self {
            heartbeat: Script::new(include_str!("lua/heartbeat.lua")),
            create: Script::new(include_str!("lua/create.lua")),
            disconnect: Script::new(include_str!("lua/disconnect.lua")),
            update: Script::new(include_str!("lua/update.lua")),
            remove_user: Script::new(include_str!("lua/remove_user.lua")),
            remove_room: Script::new(include_str!("lua/remove_room.lua")),
            expire: Script::new(include_str!("lua/expire.lua")),
            snapshot: Script::new(include_str!("lua/snapshot.lua")),
            claim: Script::new(include_str!("lua/claim.lua")),
            user_index: Script::new(include_str!("lua/user_index.lua")),
            totals: Script::new(include_str!("lua/totals.lua")),
            token_key: Script::new(include_str!("lua/token_key.lua")),
        }
    }
}

/// A script's reply, read item by item. Anything not of the expected shape
/// is an error (the store's data is not what this build wrote).
pub struct Reply {
    items: std::vec::IntoIter<Value>,
}

/// A reply of the wrong shape.
pub fn shape(what: &str, value: &Value) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected script reply",
        format!("{what}: {value:?}"),
    ))
}

impl Reply {
    /// The items of an array reply.
    pub fn new(value: Value) -> Result<Self, RedisError> {
        match value {
            Value::Array(items) => Ok(Self {
                items: items.into_iter(),
            }),
            other => Err(shape("an array", &other)),
        }
    }

    /// True when no item is left.
    pub fn is_empty(&self) -> bool {
        self.items.len() == 0
    }

    fn next(&mut self) -> Result<Value, RedisError> {
        self.items
            .next()
            .ok_or_else(|| shape("another item", &Value::Nil))
    }

    /// The next item as text.
    pub fn text(&mut self) -> Result<String, RedisError> {
        text(self.next()?)
    }

    /// The next item as a number (an integer or its text).
    pub fn number(&mut self) -> Result<u64, RedisError> {
        number(self.next()?)
    }

    /// The next item as a float (a sorted-set score).
    pub fn float(&mut self) -> Result<f64, RedisError> {
        let value = self.next()?;
        match &value {
            Value::Int(n) => Ok(*n as f64),
            _ => text(value.clone())?
                .parse()
                .map_err(|_| shape("a score", &value)),
        }
    }
}

/// A reply item as text.
pub fn text(value: Value) -> Result<String, RedisError> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes)
            .map_err(|e| shape("UTF-8 text", &Value::BulkString(e.into_bytes()))),
        Value::SimpleString(s) => Ok(s),
        Value::VerbatimString { text, .. } => Ok(text),
        Value::Int(n) => Ok(n.to_string()),
        other => Err(shape("text", &other)),
    }
}

/// A reply item as a non-negative number.
pub fn number(value: Value) -> Result<u64, RedisError> {
    match value {
        Value::Int(n) => u64::try_from(n).map_err(|_| shape("a number", &Value::Int(n))),
        other => {
            let shown = other.clone();
            text(other)?.parse().map_err(|_| shape("a number", &shown))
        }
    }
}
