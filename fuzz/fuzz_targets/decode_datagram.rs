//! Any bytes into the datagram decoder and, when it accepts them, into every
//! accessor and the data-payload splitter: no panic, consistent lengths.
#![no_main]

use dataplane::wire::{self, Packet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Packet::parse(data) {
        assert_eq!(wire::HEADER_LEN + p.payload().len() + wire::SIGNATURE_LEN, data.len());
        let _ = p.message_id();
        let _ = p.signed_bytes();
        let _ = wire::split_data_payload(p.payload());
    }
});
