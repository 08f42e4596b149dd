//! Request validation, the same for every store: ids, intervals, user data
//! and listing limits. Each check names the request field and the limit
//! that applied, so the caller's INVALID_ARGUMENT says what to fix.

use std::sync::Arc;
use std::time::Duration;

use super::clock::Millis;
use super::model::{Error, Limits, UserData};

/// A session lives this many intervals after its last heartbeat (× 10).
const DEADLINE_TENTHS_OF_INTERVAL: u64 = 25;

impl Limits {
    /// Checks an id: non-empty, at most `max_id_bytes`, and free of control
    /// characters (NUL, newlines, escapes: they have no place in an id, break
    /// logs and terminals, and the Redis store uses them as separators).
    pub fn check_id(&self, field: &'static str, id: &str) -> Result<(), Error> {
        if id.is_empty() {
            return Err(Error::invalid(field, "must not be empty"));
        }
        if id.len() > self.max_id_bytes {
            return Err(Error::invalid(
                field,
                format!(
                    "is {} bytes long, the limit is {} bytes",
                    id.len(),
                    self.max_id_bytes
                ),
            ));
        }
        if let Some((at, c)) = id.char_indices().find(|(_, c)| c.is_control()) {
            return Err(Error::invalid(
                field,
                format!(
                    "must not contain control characters (U+{:04X} at byte {at})",
                    c as u32
                ),
            ));
        }
        Ok(())
    }

    /// Checks the ids of a heartbeat and its interval, and returns the
    /// session lifetime it gives (2.5 × interval), in milliseconds.
    pub fn check_heartbeat(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        interval: Duration,
    ) -> Result<Millis, Error> {
        self.check_id("room_id", room_id)?;
        self.check_id("user_id", user_id)?;
        self.check_id("session_id", session_id)?;
        self.session_ttl(interval)
    }

    /// Checks a heartbeat interval and returns the session lifetime it gives
    /// (2.5 × interval), in milliseconds.
    pub fn session_ttl(&self, interval: Duration) -> Result<Millis, Error> {
        if interval < self.min_interval || interval > self.max_interval {
            return Err(Error::invalid(
                "interval",
                format!(
                    "is {}, it must be from {} to {}",
                    humantime::format_duration(interval),
                    humantime::format_duration(self.min_interval),
                    humantime::format_duration(self.max_interval)
                ),
            ));
        }
        Ok(interval.as_millis() as Millis * DEADLINE_TENTHS_OF_INTERVAL / 10)
    }

    /// Checks user data against `max_data_bytes`; empty data becomes `None`.
    pub fn check_data(
        &self,
        data: serde_json::Map<String, serde_json::Value>,
    ) -> Result<Option<UserData>, Error> {
        if data.is_empty() {
            return Ok(None);
        }
        let size = serde_json::to_vec(&data).map_or(usize::MAX, |v| v.len());
        if size > self.max_data_bytes {
            return Err(Error::invalid(
                "data",
                format!(
                    "is {size} bytes as JSON, the limit is {} bytes",
                    self.max_data_bytes
                ),
            ));
        }
        Ok(Some(Arc::new(data)))
    }

    /// Resolves a caller's `limit` (0 = default) against the cap.
    pub fn list_limit(&self, requested: u32) -> usize {
        let limit = if requested == 0 {
            self.default_list_limit
        } else {
            requested
        };
        limit.min(self.max_list_limit) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_bounded_and_free_of_control_characters() {
        let limits = Limits {
            max_id_bytes: 8,
            ..Limits::default()
        };
        assert!(limits.check_id("room_id", "chat:42").is_ok());
        assert!(
            limits.check_id("room_id", "é✓").is_ok(),
            "any printable text"
        );
        let err = limits.check_id("room_id", "").unwrap_err();
        assert_eq!(err.to_string(), "room_id must not be empty");
        let err = limits.check_id("user_id", "123456789").unwrap_err();
        assert_eq!(
            err.to_string(),
            "user_id is 9 bytes long, the limit is 8 bytes"
        );
        let err = limits.check_id("session_id", "a\0b").unwrap_err();
        assert_eq!(
            err.to_string(),
            "session_id must not contain control characters (U+0000 at byte 1)"
        );
        for bad in ["\n", "a\tb", "\u{1b}[31m", "x\u{7f}", "\u{85}"] {
            assert!(limits.check_id("room_id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn list_limits_default_and_clamp() {
        let limits = Limits::default();
        assert_eq!(limits.list_limit(0), 100);
        assert_eq!(limits.list_limit(7), 7);
        assert_eq!(limits.list_limit(5000), 1000);
    }

    #[test]
    fn a_session_lives_two_and_a_half_intervals() {
        let limits = Limits::default();
        assert_eq!(limits.session_ttl(Duration::from_secs(4)).unwrap(), 10_000);
        assert!(limits.session_ttl(Duration::from_millis(999)).is_err());
        assert!(limits.session_ttl(Duration::from_secs(601)).is_err());
    }
}
