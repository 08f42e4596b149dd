//! Token parsing: no input may panic, and none but the signer's own output
//! may verify.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use presenced::token::Signer;

static SIGNER: LazyLock<Signer> = LazyLock::new(|| Signer::new(&[b"fuzzing key, at least thirty-two bytes long"], None));

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(room) = SIGNER.verify_room(text) {
        // Only possible for a token the signer signed itself.
        assert_eq!(SIGNER.room_token(&room), text.trim());
    }
    let _ = SIGNER.verify_session(text);
});
