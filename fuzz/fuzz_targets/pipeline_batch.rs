//! Splits the input into a batch of datagrams and runs the whole receive
//! pipeline: every datagram ends accepted or in exactly one drop counter.
#![no_main]

use dataplane::pipeline::{Pipeline, PipelineConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = Pipeline::new(PipelineConfig {
        replay_window_us: u64::MAX / 4,
        max_clock_skew_us: u64::MAX / 4,
        dedup_capacity: 1024,
        dedup_seed: 1,
    });
    let batch: Vec<&[u8]> = data.split(|b| *b == 0xFF).take(64).collect();
    let mut out = Vec::new();
    p.process(1, 1 << 50, &batch, &mut out);
    let c = p.counters();
    assert_eq!(c.received, c.accepted_total() + c.dropped_total());
});
