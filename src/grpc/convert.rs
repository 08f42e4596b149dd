//! Conversions between protobuf messages and engine types, done once at the
//! edge. Inbound conversions fail with INVALID_ARGUMENT naming the field.

use std::time::Duration;

use prost_types::value::Kind;
use tonic::Status;

use super::pb;
use crate::presence::{self, Millis};

/// A heartbeat interval: present and non-negative (the range is the
/// engine's to check, so its message names the configured bounds).
pub fn interval(interval: Option<prost_types::Duration>) -> Result<Duration, Status> {
    let interval = interval.ok_or_else(|| Status::invalid_argument("interval is required"))?;
    Duration::try_from(interval)
        .map_err(|_| Status::invalid_argument("interval must be a non-negative duration"))
}

/// Per-user data: a protobuf `Struct` as a JSON object. Absent = empty.
pub fn data(
    data: Option<prost_types::Struct>,
) -> Result<serde_json::Map<String, serde_json::Value>, Status> {
    let Some(data) = data else {
        return Ok(serde_json::Map::new());
    };
    data.fields
        .into_iter()
        .map(|(k, v)| Ok((k, json_value(v)?)))
        .collect()
}

fn json_value(value: prost_types::Value) -> Result<serde_json::Value, Status> {
    use serde_json::Value as J;
    Ok(match value.kind {
        None | Some(Kind::NullValue(_)) => J::Null,
        Some(Kind::BoolValue(b)) => J::Bool(b),
        Some(Kind::NumberValue(n)) => J::Number(
            serde_json::Number::from_f64(n)
                .ok_or_else(|| Status::invalid_argument("data: numbers must be finite"))?,
        ),
        Some(Kind::StringValue(s)) => J::String(s),
        Some(Kind::ListValue(list)) => J::Array(
            list.values
                .into_iter()
                .map(json_value)
                .collect::<Result<_, _>>()?,
        ),
        Some(Kind::StructValue(s)) => J::Object(
            s.fields
                .into_iter()
                .map(|(k, v)| Ok((k, json_value(v)?)))
                .collect::<Result<_, Status>>()?,
        ),
    })
}

fn proto_struct(map: &serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), proto_value(v)))
            .collect(),
    }
}

fn proto_value(value: &serde_json::Value) -> prost_types::Value {
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(*b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        J::String(s) => Kind::StringValue(s.clone()),
        J::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.iter().map(proto_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(proto_struct(map)),
    };
    prost_types::Value { kind: Some(kind) }
}

fn timestamp(ms: Millis) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

/// A snapshot truncated to its first `limit` users.
pub fn snapshot(snapshot: &presence::Snapshot, limit: usize) -> pb::RoomSnapshot {
    pb::RoomSnapshot {
        room_id: snapshot.room_id.to_string(),
        users: snapshot
            .users(limit)
            .iter()
            .map(|user| pb::UserPresence {
                user_id: user.user_id.to_string(),
                online: user.online(),
                last_disconnected: user.last_disconnected.map(timestamp),
                data: user.data.as_deref().map(proto_struct),
            })
            .collect(),
        online_count: snapshot.online_count,
        total_count: snapshot.total_count,
        version: snapshot.version,
    }
}

/// One room of a user.
pub fn room_presence(room: presence::RoomPresence) -> pb::RoomPresence {
    pb::RoomPresence {
        room_id: room.room_id.to_string(),
        online: room.last_disconnected.is_none(),
        last_disconnected: room.last_disconnected.map(timestamp),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_round_trips_through_json() {
        let json = serde_json::json!({
            "typing": true, "colour": "#f80", "cursor": {"x": 1.5, "y": -2.0},
            "tags": ["a", null, 3.0]
        });
        let map = json.as_object().unwrap().clone();
        let back = data(Some(proto_struct(&map))).unwrap();
        assert_eq!(serde_json::Value::Object(back), json);
    }

    #[test]
    fn non_finite_numbers_are_refused() {
        let mut s = prost_types::Struct::default();
        s.fields.insert(
            "n".into(),
            prost_types::Value {
                kind: Some(Kind::NumberValue(f64::NAN)),
            },
        );
        assert_eq!(
            data(Some(s)).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
    }

    #[test]
    fn intervals_must_be_present_and_non_negative() {
        assert!(interval(None).is_err());
        let negative = prost_types::Duration {
            seconds: -1,
            nanos: 0,
        };
        assert!(interval(Some(negative)).is_err());
        let five = prost_types::Duration {
            seconds: 5,
            nanos: 0,
        };
        assert_eq!(interval(Some(five)).unwrap(), Duration::from_secs(5));
    }
}
