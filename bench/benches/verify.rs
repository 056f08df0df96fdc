//! Criterion view of the verify table: ring and dalek single verify, dalek's
//! `verify_batch`, and ours at batch 8..128 with 0, 1 and 8 bad signatures
//! per 64. Throughput is in signatures, so the report reads as time per
//! signature. `ticks` (src/bin/ticks.rs) prints the same comparison as TSC
//! ticks with ratios; this file is for criterion's history and plots.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use dataplane::verify::{Verifier, VerifyItem};
use ed25519_dalek::{Signature, VerifyingKey};
use mesh_bench::{Signed, corpus};

const N: usize = 256;
const MSG_LEN: usize = 56 + 128;

fn items(set: &[Signed]) -> Vec<VerifyItem<'_>> {
    set.iter()
        .map(|s| VerifyItem {
            public_key: &s.key,
            message: &s.msg,
            signature: &s.sig,
        })
        .collect()
}

fn baselines(c: &mut Criterion) {
    let valid = corpus(N, N, MSG_LEN, 0, 1);
    let mut g = c.benchmark_group("baseline");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("ring_single", |b| {
        use ring::signature::{ED25519, UnparsedPublicKey};
        b.iter(|| {
            for s in &valid {
                black_box(UnparsedPublicKey::new(&ED25519, &s.key).verify(&s.msg, &s.sig)).ok();
            }
        })
    });
    g.bench_function("dalek_single_strict", |b| {
        b.iter(|| {
            for s in &valid {
                let ok = VerifyingKey::from_bytes(&s.key).is_ok_and(|k| {
                    k.verify_strict(&s.msg, &Signature::from_bytes(&s.sig))
                        .is_ok()
                });
                black_box(ok);
            }
        })
    });
    g.bench_function("dalek_verify_batch_64", |b| {
        b.iter(|| {
            for chunk in valid.chunks(64) {
                let msgs: Vec<&[u8]> = chunk.iter().map(|s| &s.msg[..]).collect();
                let sigs: Vec<Signature> = chunk
                    .iter()
                    .map(|s| Signature::from_bytes(&s.sig))
                    .collect();
                let keys: Vec<VerifyingKey> = chunk
                    .iter()
                    .map(|s| VerifyingKey::from_bytes(&s.key).unwrap_or_default())
                    .collect();
                black_box(ed25519_dalek::verify_batch(&msgs, &sigs, &keys)).ok();
            }
        })
    });
    g.finish();
}

fn ours(c: &mut Criterion) {
    for (label, bad) in [("all_valid", 0), ("1_bad_per_64", 1), ("8_bad_per_64", 8)] {
        let set = corpus(N, N, MSG_LEN, bad, 10 + bad as u64);
        let all = items(&set);
        let mut g = c.benchmark_group(format!("ours_{label}"));
        g.throughput(Throughput::Elements(N as u64));
        let mut verifier = Verifier::new();
        let mut verdicts = vec![false; 128];
        for batch in [8usize, 16, 32, 64, 128] {
            g.bench_with_input(BenchmarkId::from_parameter(batch), &batch, |b, &batch| {
                b.iter(|| {
                    for chunk in all.chunks(batch) {
                        verifier.verify_batch(chunk, &mut verdicts);
                    }
                    black_box(&verdicts);
                })
            });
        }
        g.finish();
    }
}

fn config() -> Criterion {
    // Short runs: the development machines are shared.
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = baselines, ours
}
criterion_main!(benches);
