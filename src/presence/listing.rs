//! The listing order, the same for every store.
//!
//! A room lists its **online users first, in the order they came online**,
//! then its **offline users, most recently disconnected first**; offline
//! users who left in the same millisecond keep the order in which they had
//! come online. The order is stable: a heartbeat or a data change moves
//! nobody, so a face pile does not jump around. A user who comes back
//! online goes to the end of the online users.
//!
//! A user's rooms (`ListUser`) list the **rooms where the user is online
//! first, by room id**, then the others, most recently left first (ties by
//! room id).
//!
//! [`Rank`] is the room order as a value: stores keep it per user and sort
//! by it. The Redis store keeps the same order in a sorted set, encoded by
//! its scripts (score: online, or minus the time offline; member: the
//! sequence number, fixed width, then the user id); the conformance suite
//! checks that both agree.

use std::cmp::Ordering;

use super::clock::Millis;
use super::model::RoomPresence;

/// A user's place in a room's listing. Ordering by `Rank` is the listing
/// order. Packed into two words (an enum would take three): `class` is 0
/// while online, else `u64::MAX - since`, and `seq` is the sequence number
/// the user got when they last came online (a per-room counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rank {
    class: u64,
    seq: u64,
}

impl Rank {
    /// Online since the room's sequence number `seq`.
    pub fn online(seq: u64) -> Self {
        Rank { class: 0, seq }
    }

    /// Offline since `since` (saturated so that it never reads as online),
    /// having come online at sequence number `seq`.
    pub fn offline(since: Millis, seq: u64) -> Self {
        Rank {
            class: u64::MAX - since.min(u64::MAX - 1),
            seq,
        }
    }

    /// True while online.
    pub fn is_online(&self) -> bool {
        self.class == 0
    }

    /// When the user went offline; `None` while online.
    pub fn offline_since(&self) -> Option<Millis> {
        (!self.is_online()).then(|| u64::MAX - self.class)
    }

    /// The sequence number the user got when they last came online.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// The order of a user's rooms in `ListUser`: online rooms first by room
/// id, then offline rooms most recently left first, then by room id.
pub fn user_rooms_order(a: &RoomPresence, b: &RoomPresence) -> Ordering {
    match (a.last_disconnected, b.last_disconnected) {
        (None, None) => a.room_id.cmp(&b.room_id),
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some(x), Some(y)) => y.cmp(&x).then_with(|| a.room_id.cmp(&b.room_id)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::Id;

    #[test]
    fn online_by_arrival_then_offline_most_recent_first() {
        let mut ranks = [
            ("left-early", Rank::offline(100, 1)),
            ("second", Rank::online(7)),
            ("left-late", Rank::offline(300, 0)),
            ("first", Rank::online(2)),
            ("left-late-too", Rank::offline(300, 5)),
        ];
        ranks.sort_by_key(|(_, rank)| *rank);
        let names: Vec<_> = ranks.iter().map(|(name, _)| *name).collect();
        assert_eq!(
            names,
            [
                "first",
                "second",
                "left-late",
                "left-late-too",
                "left-early"
            ]
        );
        assert_eq!(Rank::offline(300, 5).offline_since(), Some(300));
        assert_eq!(Rank::online(3).offline_since(), None);
        assert!(!Rank::offline(0, 0).is_online(), "offline since the epoch");
    }

    #[test]
    fn a_users_rooms_online_by_id_then_most_recently_left() {
        let room = |id: &str, left: Option<Millis>| RoomPresence {
            room_id: Id::from(id),
            last_disconnected: left,
        };
        let mut rooms = [
            room("a", Some(10)),
            room("z", None),
            room("c", Some(30)),
            room("b", None),
            room("d", Some(30)),
        ];
        rooms.sort_by(user_rooms_order);
        let ids: Vec<&str> = rooms.iter().map(|r| &*r.room_id).collect();
        assert_eq!(ids, ["b", "z", "c", "d", "a"]);
    }
}
