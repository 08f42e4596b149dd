//! Token parsing: no input may panic, and none but the codec's own output
//! may verify.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use presenced::token::Codec;

static CODEC: LazyLock<Codec> = LazyLock::new(|| Codec::new(&[b"fuzzing key, at least thirty-two bytes long"], None));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(room) = CODEC.verify_room(text) {
        // Only possible for a token the codec signed itself.
        assert_eq!(CODEC.room_token(&room), text.trim());
    }
    let _ = CODEC.verify_session(text);
});
