//! The wire side of `presence.v1` that code generation cannot do for us:
//! a snapshot encoded once per change and shared by all its watchers, and
//! the service's codec (prost with a small per-stream buffer).
//!
//! `WatchRoomResponse` is written by hand (`build.rs` maps the proto type
//! here with `extern_path`): besides the usual decoded form it can carry
//! its own encoding, which the codec then copies out as is. A room's
//! watchers all receive the same `Arc<Snapshot>`; the first of them to send
//! a given view (its `limit`, clamped to the room's size) encodes it into
//! the snapshot's memo, the others copy those bytes. The bytes are exactly
//! what prost would have written for the decoded form, so clients see no
//! difference.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::encoding::{DecodeContext, WireType};
use prost::{DecodeError, Message};
use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

use super::{convert, pb};
use crate::presence::Snapshot;

/// Initial encode buffer of a response stream. tonic's default (8 KiB) is
/// held by every open stream, most of it unused by a presence snapshot: an
/// idle watch stream costs what this costs. It grows when a message needs it.
const ENCODE_BUFFER_BYTES: usize = 512;
/// tonic's default: encode at most this much before yielding.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

/// `presence.v1.WatchRoomResponse`.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct WatchRoomResponse {
    /// The room's listing. `None` in a response built with
    /// [`WatchRoomResponse::pre_encoded`]: such a response is for sending.
    pub snapshot: Option<pb::RoomSnapshot>,
    /// The encoded message (field 1 with its tag and length), when it was
    /// encoded ahead of time.
    encoded: Option<Bytes>,
}

impl WatchRoomResponse {
    /// A response holding `snapshot`.
    pub fn new(snapshot: pb::RoomSnapshot) -> Self {
        Self {
            snapshot: Some(snapshot),
            encoded: None,
        }
    }

    /// The response for a watcher showing `limit` users of `snapshot`,
    /// encoded once per view of the snapshot and shared.
    pub fn shared(snapshot: &Snapshot, limit: usize) -> Self {
        let view = limit.min(snapshot.users.len());
        let encoded = snapshot.memo.get_or_insert_with(view as u64, || {
            Self::new(convert::snapshot(snapshot, view)).encode_to_bytes()
        });
        Self {
            snapshot: None,
            encoded: Some(encoded),
        }
    }

    fn encode_to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode_raw(&mut buf);
        buf.freeze()
    }
}

impl Message for WatchRoomResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match (&self.encoded, &self.snapshot) {
            (Some(bytes), _) => buf.put_slice(bytes),
            (None, Some(snapshot)) => prost::encoding::message::encode(1, snapshot, buf),
            (None, None) => {}
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag == 1 {
            self.encoded = None;
            let snapshot = self.snapshot.get_or_insert_with(Default::default);
            prost::encoding::message::merge(wire_type, snapshot, buf, ctx).map_err(|mut e| {
                e.push("WatchRoomResponse", "snapshot");
                e
            })
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, ctx)
        }
    }

    fn encoded_len(&self) -> usize {
        match (&self.encoded, &self.snapshot) {
            (Some(bytes), _) => bytes.len(),
            (None, Some(snapshot)) => prost::encoding::message::encoded_len(1, snapshot),
            (None, None) => 0,
        }
    }

    fn clear(&mut self) {
        self.snapshot = None;
        self.encoded = None;
    }
}

/// The codec of `presence.v1` (client and server): prost, with a small
/// initial encode buffer per stream, and a message that does not decode
/// (garbage, a `Struct` nested too deep) refused as INVALID_ARGUMENT: it is
/// the sender's error, not the receiver's failure (prost's decoder says
/// INTERNAL).
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = Decoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::new(
            ENCODE_BUFFER_BYTES,
            YIELD_THRESHOLD_BYTES,
        ))
    }

    fn decoder(&mut self) -> Self::Decoder {
        Decoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// prost's decoder, with decode failures as INVALID_ARGUMENT.
#[derive(Debug)]
pub struct Decoder<U>(ProstDecoder<U>);

impl<U: Message + Default> tonic::codec::Decoder for Decoder<U> {
    type Item = U;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<U>, Self::Error> {
        self.0.decode(buf).map_err(|status| {
            tonic::Status::invalid_argument(format!(
                "the message does not decode: {}",
                status.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::presence::UserPresence;

    fn snapshot(users: usize) -> Snapshot {
        Snapshot {
            room_id: "room".into(),
            users: (0..users)
                .map(|i| UserPresence {
                    user_id: format!("user-{i}").into(),
                    last_disconnected: (i % 2 == 1).then_some(1_700_000_000_123),
                    data: None,
                })
                .collect(),
            online_count: users.div_ceil(2) as u32,
            total_count: users as u32,
            version: 42,
            memo: Default::default(),
        }
    }

    #[test]
    fn shared_encoding_is_what_prost_writes() {
        let s = snapshot(7);
        for limit in [0, 3, 7, 100] {
            let plain = WatchRoomResponse::new(convert::snapshot(&s, limit)).encode_to_vec();
            let shared = WatchRoomResponse::shared(&s, limit).encode_to_vec();
            assert_eq!(plain, shared, "limit {limit}");
            let decoded = WatchRoomResponse::decode(shared.as_slice()).unwrap();
            assert_eq!(decoded.snapshot, Some(convert::snapshot(&s, limit)));
        }
    }

    #[test]
    fn views_larger_than_the_room_share_one_encoding() {
        let s = snapshot(5);
        let a = WatchRoomResponse::shared(&s, 10).encoded.unwrap();
        let b = WatchRoomResponse::shared(&s, 1000).encoded.unwrap();
        assert_eq!(a.as_ptr(), b.as_ptr(), "one encoding, shared");
        let c = WatchRoomResponse::shared(&s, 2).encoded.unwrap();
        assert_ne!(a.as_ptr(), c.as_ptr());
    }
}
