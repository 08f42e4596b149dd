//! Capability tokens: a room token lets its holder read one room, a session
//! token lets its holder end one session.
//!
//! A token is `base64url(payload || HMAC-SHA256(key, payload))` where the
//! payload is `[format version][kind][key id: u32 BE][expiry: u64 BE, unix
//! seconds, 0 = never][fields]`, each field a u16 BE length and its bytes.
//! The kind is inside the MAC, so a room token can never pass as a session
//! token or the reverse. The key id lets several keys verify while the first
//! signs, so a key can be rotated without logging anyone out. Verification is
//! constant time (`Mac::verify_slice`). Tokens are not encrypted: they reveal
//! the ids they name, which their holder knows anyway.
//!
//! Room tokens expire (`--room-token-ttl`). Their expiry is rounded up to a
//! half-TTL boundary so that every heartbeat within the same half window gets
//! the *same* token: watchers that re-subscribe when the token changes do so
//! once per half TTL, not on every heartbeat.
//!
//! A session token names one *incarnation* of its session (a store-given
//! number that changes when a session id is used again after it ended), so
//! a token kept from an earlier session cannot end a newer one with the
//! same id. It expires [`SESSION_TOKEN_GRACE`] after the session's deadline
//! as of the heartbeat that issued it; every heartbeat hands out a fresh
//! one.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

const FORMAT_VERSION: u8 = 1;
const MAC_LEN: usize = 32;
const HEADER_LEN: usize = 1 + 1 + 4 + 8;
/// Longest token accepted for decoding, in characters; longer input is
/// refused before any work is done on it.
pub const MAX_TOKEN_CHARS: usize = 4096;
/// Shortest accepted `--token-key`, in bytes.
pub const MIN_KEY_BYTES: usize = 32;
/// How long a session token outlives the deadline of the heartbeat that
/// issued it: room for clock skew between instances and the store.
pub const SESSION_TOKEN_GRACE: Duration = Duration::from_secs(60);

/// What a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// List and watch one room.
    Room = 1,
    /// Disconnect one session.
    Session = 2,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Room => "room token",
            Kind::Session => "session token",
        }
    }
}

/// The claims of a session token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionClaims {
    /// The session's room.
    pub room_id: String,
    /// The session's user.
    pub user_id: String,
    /// The session id.
    pub session_id: String,
    /// Which life of the session (see [`crate::presence::Lease`]).
    pub incarnation: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a token this server could have issued (encoding, length, layout).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// The signature does not match: forged, altered or from another key.
    #[error("invalid {0}: signature does not match")]
    BadSignature(&'static str),
    /// A valid token of the other kind.
    #[error("expected a {expected}, got a {got}")]
    WrongKind {
        /// The kind the call needs.
        expected: &'static str,
        /// The kind presented.
        got: &'static str,
    },
    /// Signed by a key this server no longer has.
    #[error("{0} signed by an unknown key")]
    UnknownKey(&'static str),
    /// Past its expiry time.
    #[error("{0} has expired")]
    Expired(&'static str),
}

/// Signs and verifies tokens. Cheap to clone.
#[derive(Clone)]
pub struct Signer {
    /// Key ids and keyed MACs; the first signs, all verify.
    keys: Vec<(u32, HmacSha256)>,
    /// Lifetime of room tokens; `None` = they never expire.
    room_ttl: Option<Duration>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<String> = self
            .keys
            .iter()
            .map(|(id, _)| format!("{id:08x}"))
            .collect();
        f.debug_struct("Signer")
            .field("key_ids", &ids)
            .field("room_ttl", &self.room_ttl)
            .finish()
    }
}

impl Signer {
    /// A codec signing with the first of `keys` and verifying with all of
    /// them (each any length; use at least 32 random bytes).
    pub fn new<K: AsRef<[u8]>>(keys: &[K], room_ttl: Option<Duration>) -> Self {
        assert!(!keys.is_empty(), "at least one token key");
        let keys = keys
            .iter()
            .map(|key| {
                let key = key.as_ref();
                (
                    key_id(key),
                    HmacSha256::new_from_slice(key).expect("HMAC accepts keys of any length"),
                )
            })
            .collect();
        Self { keys, room_ttl }
    }

    /// A codec with a fresh random key: its tokens die with the process.
    pub fn random(room_ttl: Option<Duration>) -> Self {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the OS random source is available");
        Self::new(&[key], room_ttl)
    }

    /// A token for reading `room_id`.
    pub fn room_token(&self, room_id: &str) -> String {
        let expiry = self.room_ttl.map_or(0, |ttl| {
            let half = (ttl.as_secs() / 2).max(1);
            (now_secs() / half + 2) * half
        });
        self.sign(Kind::Room, expiry, &[room_id])
    }

    /// A token for ending one incarnation of a session whose deadline is
    /// `deadline` (unix ms); it expires [`SESSION_TOKEN_GRACE`] later.
    pub fn session_token(
        &self,
        room_id: &str,
        user_id: &str,
        session_id: &str,
        incarnation: u64,
        deadline: u64,
    ) -> String {
        let expiry = deadline.div_ceil(1000) + SESSION_TOKEN_GRACE.as_secs();
        let incarnation = incarnation.to_string();
        self.sign(
            Kind::Session,
            expiry,
            &[room_id, user_id, session_id, &incarnation],
        )
    }

    /// The room a room token grants.
    pub fn verify_room(&self, token: &str) -> Result<String, Error> {
        let mut fields = self.verify(Kind::Room, token, 1)?;
        Ok(fields.pop().expect("one field"))
    }

    /// The session a session token grants.
    pub fn verify_session(&self, token: &str) -> Result<SessionClaims, Error> {
        let name = Kind::Session.name();
        let mut fields = self.verify(Kind::Session, token, 4)?.into_iter();
        let mut next = || fields.next().expect("four fields");
        Ok(SessionClaims {
            room_id: next(),
            user_id: next(),
            session_id: next(),
            incarnation: next().parse().map_err(|_| Error::Malformed(name))?,
        })
    }

    fn sign(&self, kind: Kind, expiry: u64, fields: &[&str]) -> String {
        let (key_id, mac) = &self.keys[0];
        let len = HEADER_LEN + fields.iter().map(|f| 2 + f.len()).sum::<usize>();
        let mut buf = Vec::with_capacity(len + MAC_LEN);
        buf.extend_from_slice(&[FORMAT_VERSION, kind as u8]);
        buf.extend_from_slice(&key_id.to_be_bytes());
        buf.extend_from_slice(&expiry.to_be_bytes());
        for field in fields {
            let n = u16::try_from(field.len()).expect("ids are bounded far below 64 KiB");
            buf.extend_from_slice(&n.to_be_bytes());
            buf.extend_from_slice(field.as_bytes());
        }
        let mut mac = mac.clone();
        mac.update(&buf);
        buf.extend_from_slice(&mac.finalize().into_bytes());
        URL_SAFE_NO_PAD.encode(buf)
    }

    fn verify(&self, kind: Kind, token: &str, n_fields: usize) -> Result<Vec<String>, Error> {
        let name = kind.name();
        if token.is_empty() {
            return Err(Error::Malformed(name));
        }
        if token.len() > MAX_TOKEN_CHARS {
            return Err(Error::Malformed(name));
        }
        let bytes = URL_SAFE_NO_PAD
            .decode(token.trim())
            .map_err(|_| Error::Malformed(name))?;
        if bytes.len() < HEADER_LEN + MAC_LEN || bytes[0] != FORMAT_VERSION {
            return Err(Error::Malformed(name));
        }
        let (payload, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        let key_id = u32::from_be_bytes(payload[2..6].try_into().expect("4 bytes"));
        let Some((_, mac)) = self.keys.iter().find(|(id, _)| *id == key_id) else {
            return Err(Error::UnknownKey(name));
        };
        let mut mac = mac.clone();
        mac.update(payload);
        mac.verify_slice(tag)
            .map_err(|_| Error::BadSignature(name))?;
        // Signed by us: from here on the layout is ours.
        let got = match payload[1] {
            1 => Kind::Room,
            2 => Kind::Session,
            _ => return Err(Error::Malformed(name)),
        };
        if got != kind {
            return Err(Error::WrongKind {
                expected: name,
                got: got.name(),
            });
        }
        let expiry = u64::from_be_bytes(payload[6..HEADER_LEN].try_into().expect("8 bytes"));
        if expiry != 0 && expiry <= now_secs() {
            return Err(Error::Expired(name));
        }
        let mut rest = &payload[HEADER_LEN..];
        let mut fields = Vec::with_capacity(n_fields);
        while !rest.is_empty() {
            if rest.len() < 2 {
                return Err(Error::Malformed(name));
            }
            let n = u16::from_be_bytes([rest[0], rest[1]]) as usize;
            let field = rest.get(2..2 + n).ok_or(Error::Malformed(name))?;
            fields.push(String::from_utf8(field.to_vec()).map_err(|_| Error::Malformed(name))?);
            rest = &rest[2 + n..];
        }
        if fields.len() != n_fields {
            return Err(Error::Malformed(name));
        }
        Ok(fields)
    }
}

/// A key's id: the first four bytes of its SHA-256, so every instance given
/// the same key derives the same id.
fn key_id(key: &[u8]) -> u32 {
    let digest = Sha256::new()
        .chain_update(b"presenced token key id\0")
        .chain_update(key)
        .finalize();
    u32::from_be_bytes(digest[..4].try_into().expect("4 bytes"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A deadline a minute from now, unix ms.
    fn later() -> u64 {
        (now_secs() + 60) * 1000
    }

    #[test]
    fn round_trips() {
        let codec = Signer::random(None);
        let room = codec.room_token("chat:42");
        assert_eq!(codec.verify_room(&room).unwrap(), "chat:42");
        let session = codec.session_token("chat:42", "alice", "s1", 77, later());
        let claims = codec.verify_session(&session).unwrap();
        assert_eq!(claims.room_id, "chat:42");
        assert_eq!(claims.user_id, "alice");
        assert_eq!(claims.session_id, "s1");
        assert_eq!(claims.incarnation, 77);
    }

    #[test]
    fn kinds_never_cross() {
        let codec = Signer::random(None);
        let room = codec.room_token("r");
        let session = codec.session_token("r", "u", "s", 1, later());
        assert!(matches!(
            codec.verify_session(&room),
            Err(Error::WrongKind { .. })
        ));
        assert!(matches!(
            codec.verify_room(&session),
            Err(Error::WrongKind { .. })
        ));
    }

    #[test]
    fn another_key_is_refused() {
        let a = Signer::new(&[b"a key that is long enough to be a real key...."], None);
        let b = Signer::new(&[b"another key, just as long as the first one....."], None);
        assert_eq!(
            b.verify_room(&a.room_token("r")),
            Err(Error::UnknownKey("room token"))
        );
        // The same key on another instance verifies.
        let a2 = Signer::new(&[b"a key that is long enough to be a real key...."], None);
        assert_eq!(a2.verify_room(&a.room_token("r")).unwrap(), "r");
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_until_the_old_key_is_removed() {
        let old: &[u8] = b"the old key, thirty-two bytes or more.....";
        let new: &[u8] = b"the new key, thirty-two bytes or more.....";
        let before = Signer::new(&[old], None);
        let rotating = Signer::new(&[new, old], None);
        let after = Signer::new(&[new], None);
        let old_token = before.room_token("r");
        let new_token = rotating.room_token("r");
        assert_eq!(rotating.verify_room(&old_token).unwrap(), "r");
        assert_eq!(after.verify_room(&new_token).unwrap(), "r");
        assert_eq!(
            after.verify_room(&old_token),
            Err(Error::UnknownKey("room token"))
        );
    }

    #[test]
    fn room_tokens_expire_and_are_stable_within_half_their_ttl() {
        let codec = Signer::random(Some(Duration::from_secs(3600)));
        let a = codec.room_token("r");
        let b = codec.room_token("r");
        assert_eq!(a, b, "same token within the window");
        assert_eq!(codec.verify_room(&a).unwrap(), "r");
        // Forge nothing: sign an already-expired token with the real key.
        let expired = codec.sign(Kind::Room, now_secs() - 1, &["r"]);
        assert_eq!(
            codec.verify_room(&expired),
            Err(Error::Expired("room token"))
        );
        let session = codec.session_token("r", "u", "s", 1, later());
        assert!(codec.verify_session(&session).is_ok());
    }

    #[test]
    fn session_tokens_expire_a_grace_after_their_sessions_deadline() {
        let codec = Signer::random(None);
        let grace = SESSION_TOKEN_GRACE.as_millis() as u64;
        let now_ms = now_secs() * 1000;
        let fresh = codec.session_token("r", "u", "s", 1, now_ms + 25_000);
        assert!(codec.verify_session(&fresh).is_ok());
        // Its session's deadline passed a grace ago (and a second more).
        let old = codec.session_token("r", "u", "s", 1, now_ms - grace - 1000);
        assert_eq!(
            codec.verify_session(&old),
            Err(Error::Expired("session token"))
        );
        // Within the grace it still verifies (skew between clocks).
        let late = codec.session_token("r", "u", "s", 1, now_ms - grace / 2);
        assert!(codec.verify_session(&late).is_ok());
    }

    #[test]
    fn garbage_and_truncation_are_malformed_or_bad() {
        let codec = Signer::random(None);
        let token = codec.room_token("room");
        for bad in ["", "!!!", "a", &token[..token.len() - 1], &token[..10]] {
            assert!(codec.verify_room(bad).is_err(), "{bad:?} accepted");
        }
        assert!(codec.verify_room(&"A".repeat(MAX_TOKEN_CHARS + 1)).is_err());
    }

    proptest! {
        #[test]
        fn every_issued_token_verifies(room in ".{1,64}", user in ".{1,64}", session in ".{1,64}") {
            let codec = Signer::random(None);
            prop_assert_eq!(codec.verify_room(&codec.room_token(&room)).unwrap(), room.clone());
            let claims = codec.verify_session(&codec.session_token(&room, &user, &session, 9, later())).unwrap();
            prop_assert_eq!((claims.room_id, claims.user_id, claims.session_id, claims.incarnation), (room, user, session, 9));
        }

        #[test]
        fn every_byte_flip_is_refused(room in "[a-z]{1,32}", pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let codec = Signer::random(None);
            let token = codec.room_token(&room);
            let mut bytes = URL_SAFE_NO_PAD.decode(&token).unwrap();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            let forged = URL_SAFE_NO_PAD.encode(&bytes);
            prop_assert!(codec.verify_room(&forged).is_err());
        }

        #[test]
        fn every_truncation_extension_or_character_change_is_refused(
            room in "[a-z:0-9]{1,32}",
            user in "[a-z]{1,16}",
            cut in any::<prop::sample::Index>(),
            pos in any::<prop::sample::Index>(),
            ch in prop::sample::select(b"ABCxyz019-_=.+/ ".to_vec()),
            tail in "[A-Za-z0-9_-]{1,8}",
        ) {
            let codec = Signer::random(Some(Duration::from_secs(3600)));
            for token in [codec.room_token(&room), codec.session_token(&room, &user, "s", 3, later())] {
                let truncated = &token[..cut.index(token.len())];
                prop_assert!(codec.verify_room(truncated).is_err());
                prop_assert!(codec.verify_session(truncated).is_err());
                let extended = format!("{token}{tail}");
                prop_assert!(codec.verify_room(&extended).is_err());
                prop_assert!(codec.verify_session(&extended).is_err());
                let mut changed = token.clone().into_bytes();
                let i = pos.index(changed.len());
                if changed[i] != ch {
                    changed[i] = ch;
                    let changed = String::from_utf8(changed).unwrap();
                    prop_assert!(codec.verify_room(&changed).is_err());
                    prop_assert!(codec.verify_session(&changed).is_err());
                }
            }
        }
    }
}
