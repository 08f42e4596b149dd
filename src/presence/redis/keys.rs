//! The key layout. Every key starts with the configured prefix and a hash
//! tag, so a Cluster places it by the tag alone:
//!
//! - **room groups** `{P:r<g>}`, g = hash(room id) mod [`ROOM_GROUPS`]:
//!   a room's hash `…:h:<room>` and order `…:o:<room>`, the group's due
//!   index `…:due` and totals `…:n`, and the room's channel `…:c:<room>`.
//!   Each room script touches one group, so one slot; the rooms spread
//!   over 256 slots, so a hot slot is not the whole Cluster.
//! - **index groups** `{P:i<g>}`: session claims `…:s` (by session id)
//!   and user indexes `…:u` (by user id), g = hash(id) mod
//!   [`INDEX_GROUPS`].
//! - `{P:t}` the totals behind `--max-sessions` and `--max-rooms`, and
//!   `{P:k}` the shared token key.
//!
//! The hash is FNV-1a (64 bit): stable across instances, builds and
//! platforms, which is all a group needs.

/// Room groups (slots a Cluster spreads rooms over).
pub const ROOM_GROUPS: u64 = 256;
/// Index groups.
pub const INDEX_GROUPS: u64 = 1024;

/// The keys of one room and its group.
#[derive(Debug, Clone)]
pub struct RoomKeys {
    /// The room hash.
    pub hash: String,
    /// The listing order.
    pub order: String,
    /// The group's due index.
    pub due: String,
    /// The group's totals.
    pub totals: String,
    /// The room's notification channel.
    pub channel: String,
}

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The layout under `prefix` (no braces in it).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The keys of `room_id`.
    pub fn room(&self, room_id: &str) -> RoomKeys {
        let tag = self.room_group_tag(group(room_id, ROOM_GROUPS));
        RoomKeys {
            hash: format!("{tag}:h:{room_id}"),
            order: format!("{tag}:o:{room_id}"),
            due: format!("{tag}:due"),
            totals: format!("{tag}:n"),
            channel: format!("{tag}:c:{room_id}"),
        }
    }

    /// The due index and totals of room group `g`.
    pub fn group(&self, g: u64) -> (String, String) {
        let tag = self.room_group_tag(g);
        (format!("{tag}:due"), format!("{tag}:n"))
    }

    /// The room a channel name is for, if it is one of ours.
    pub fn room_of_channel<'a>(&self, channel: &'a str) -> Option<&'a str> {
        let rest = channel
            .strip_prefix('{')?
            .strip_prefix(self.prefix.as_str())?;
        let (_, room) = rest.split_once("}:c:")?;
        Some(room)
    }

    fn room_group_tag(&self, g: u64) -> String {
        format!("{{{}:r{g}}}", self.prefix)
    }

    /// The claims hash of `session_id`'s index group.
    pub fn claims(&self, session_id: &str) -> String {
        format!("{{{}:i{}}}:s", self.prefix, group(session_id, INDEX_GROUPS))
    }

    /// The user index hash of `user_id`'s index group.
    pub fn user_index(&self, user_id: &str) -> String {
        format!("{{{}:i{}}}:u", self.prefix, group(user_id, INDEX_GROUPS))
    }

    /// The totals behind the limits on sessions and rooms in all.
    pub fn totals(&self) -> String {
        format!("{{{}:t}}", self.prefix)
    }

    /// The shared token key.
    pub fn token_key(&self) -> String {
        format!("{{{}:k}}:token-key", self.prefix)
    }
}

/// FNV-1a of `id`, mod `groups`.
fn group(id: &str, groups: u64) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash % groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rooms_keys_share_one_hash_tag_and_rooms_spread() {
        let keys = Keys::new("presence");
        let room = keys.room("chat:42");
        let tag = |k: &str| k[..k.find('}').unwrap() + 1].to_owned();
        for k in [&room.order, &room.due, &room.totals, &room.channel] {
            assert_eq!(tag(k), tag(&room.hash));
        }
        assert_eq!(keys.room_of_channel(&room.channel), Some("chat:42"));
        assert_eq!(keys.room_of_channel("{other:r1}:c:x"), None);
        let groups: std::collections::HashSet<String> = (0..2000)
            .map(|i| tag(&keys.room(&format!("room-{i}")).hash))
            .collect();
        assert!(groups.len() > 200, "{} groups", groups.len());
        // Stable: the same everywhere.
        assert_eq!(group("chat:42", ROOM_GROUPS), group("chat:42", ROOM_GROUPS));
        assert_eq!(group("", 7), 0xcbf2_9ce4_8422_2325 % 7);
    }
}
