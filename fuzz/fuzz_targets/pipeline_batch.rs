//! Splits the input into a batch of datagrams and runs the whole receive
//! pipeline: every datagram ends accepted or in exactly one drop counter.
//! Each piece goes in twice: as raw bytes (malformed datagrams) and as the
//! payload of a validly signed data message (malformed payloads, which must
//! end as `bad_payload`, never accepted).
#![no_main]

use dataplane::identity::Identity;
use dataplane::pipeline::{Pipeline, PipelineConfig};
use dataplane::wire::{self, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = Pipeline::new(PipelineConfig {
        replay_window_us: u64::MAX / 4,
        max_clock_skew_us: u64::MAX / 4,
        dedup_capacity: 1024,
        dedup_seed: 1,
    });
    let id = Identity::from_seed([1; 32]);
    let pieces: Vec<&[u8]> = data.split(|b| *b == 0xFF).take(32).collect();
    let mut signed = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let mut d = Vec::new();
        let payload = &piece[..piece.len().min(wire::MAX_PAYLOAD)];
        if id
            .seal(Kind::Data, 2, i as u64, 1 << 50, payload, &mut d)
            .is_ok()
        {
            signed.push(d);
        }
    }
    let mut batch: Vec<&[u8]> = pieces.clone();
    batch.extend(signed.iter().map(|d| &d[..]));
    let mut out = Vec::new();
    p.process(1, 1 << 50, &batch, &mut out);
    let c = p.counters();
    assert_eq!(c.received, c.accepted_total() + c.dropped_total());
    for a in &out {
        assert!(wire::split_data_payload(a.packet.payload()).is_some());
    }
});
