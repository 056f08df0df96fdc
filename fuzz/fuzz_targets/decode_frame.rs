//! Any bytes into the mutual-TLS control-frame decoder (address hints plus one core message,
//! what an authenticated member can send): no panic, and an accepted frame re-encodes to a
//! frame that decodes to the same value.
#![no_main]

use controlplane::frames::{decode_frame, encode_frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((hints, msg)) = decode_frame(data) {
        let mut again = Vec::new();
        encode_frame(&hints, &msg, &mut again);
        assert_eq!(decode_frame(&again).ok(), Some((hints, msg)));
    }
});
