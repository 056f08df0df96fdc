//! The verify worker pool: verdicts come back right, counters add up, full
//! queues are counted, bad config is refused.

use std::num::NonZeroUsize;
use std::time::Duration;

use dataplane::verify::workers::{PoolConfig, PoolError, VerifyBatch, VerifyPool};
use ed25519_dalek::{Signer, SigningKey};

const WAIT: Duration = Duration::from_secs(30);

fn nz(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap()
}

/// A batch of `n` signatures by distinct keys; items in `bad` have their
/// message changed after signing.
fn batch(tag: u64, n: usize, bad: &[usize]) -> VerifyBatch {
    let mut b = VerifyBatch::with_capacity(n, n * 32);
    b.tag = tag;
    for i in 0..n {
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&(tag * 1000 + i as u64).to_le_bytes());
        let sk = SigningKey::from_bytes(&seed);
        let mut msg = format!("batch {tag} item {i}").into_bytes();
        let sig = sk.sign(&msg).to_bytes();
        if bad.contains(&i) {
            msg.push(b'?');
        }
        b.push(&sk.verifying_key().to_bytes(), &msg, &sig);
    }
    b
}

#[test]
fn batches_with_known_bad_signatures_come_back_with_the_right_verdicts_and_counts() {
    let cfg = PoolConfig {
        workers: nz(2),
        ..PoolConfig::default()
    };
    let mut pool = VerifyPool::start(&cfg).unwrap();
    assert_eq!(pool.workers(), 2);
    let plans: [(u64, usize, &[usize]); 4] = [
        (1, 64, &[5]),
        (2, 16, &[]),
        (3, 32, &[0, 1, 2, 31]),
        (4, 1, &[0]),
    ];
    for (tag, n, bad) in plans {
        pool.submit(batch(tag, n, bad)).unwrap();
    }
    let mut seen = 0;
    while seen < plans.len() {
        let b = pool.recv_timeout(WAIT).expect("a verified batch");
        let (_, n, bad) = plans.iter().find(|p| p.0 == b.tag).unwrap();
        assert_eq!(b.verdicts().len(), *n);
        for (i, v) in b.verdicts().iter().enumerate() {
            assert_eq!(*v, !bad.contains(&i), "batch {} item {i}", b.tag);
        }
        seen += 1;
    }
    let stats = pool.stats();
    assert_eq!(stats.iter().map(|s| s.batches).sum::<u64>(), 4);
    assert_eq!(
        stats.iter().map(|s| s.signatures).sum::<u64>(),
        64 + 16 + 32 + 1
    );
    assert_eq!(stats.iter().map(|s| s.failures).sum::<u64>(), 1 + 4 + 1);
    assert_eq!(stats.iter().map(|s| s.queue_full).sum::<u64>(), 0);
    assert!(stats.iter().all(|s| s.batching && !s.pinned));
}

#[test]
fn a_returned_batch_can_be_cleared_and_reused() {
    let mut pool = VerifyPool::start(&PoolConfig::default()).unwrap();
    pool.submit(batch(7, 4, &[2])).unwrap();
    let mut b = pool.recv_timeout(WAIT).unwrap();
    assert_eq!(b.verdicts(), &[true, true, false, true]);
    b.clear();
    assert!(b.is_empty() && b.verdicts().is_empty());
    let fresh = batch(8, 2, &[]);
    for i in 0..fresh.len() {
        let it = fresh.item(i).unwrap();
        b.push(it.public_key, it.message, it.signature);
    }
    assert!(b.item(2).is_none());
    pool.submit(b).unwrap();
    assert_eq!(pool.recv_timeout(WAIT).unwrap().verdicts(), &[true, true]);
}

#[test]
fn full_queues_hand_the_batch_back_and_count_queue_full() {
    // One worker, one queue slot, one result slot, and nobody draining
    // results: at most 1 (results) + 1 (in the worker) + 1 (queued) batches
    // can be taken, so of 6 submissions at least 3 are refused.
    let cfg = PoolConfig {
        workers: nz(1),
        cores: Vec::new(),
        queue_depth: nz(1),
        results_depth: nz(1),
    };
    let mut pool = VerifyPool::start(&cfg).unwrap();
    let mut refused = 0;
    let mut taken = Vec::new();
    for tag in 0..6 {
        match pool.submit(batch(tag, 1, &[])) {
            Ok(()) => taken.push(tag),
            Err(back) => {
                assert_eq!(back.tag, tag, "the refused batch comes back");
                refused += 1;
            }
        }
    }
    assert!(refused >= 3, "refused {refused}");
    assert_eq!(pool.stats()[0].queue_full, refused);
    // Draining lets every accepted batch through.
    let mut got = Vec::new();
    while got.len() < taken.len() {
        got.push(pool.recv_timeout(WAIT).expect("accepted batch").tag);
    }
    got.sort();
    assert_eq!(got, taken);
    assert_eq!(pool.stats()[0].batches, taken.len() as u64);
}

#[test]
fn workers_are_pinned_to_the_configured_cores() {
    let Some(ids) = core_affinity::get_core_ids() else {
        eprintln!("skipped: core ids not available on this system");
        return;
    };
    let cores: Vec<usize> = ids.iter().map(|c| c.id).collect();
    let cfg = PoolConfig {
        workers: nz(cores.len().min(2)),
        cores,
        ..PoolConfig::default()
    };
    let mut pool = VerifyPool::start(&cfg).unwrap();
    // A round trip through every worker proves each has started (and pinned).
    for tag in 0..pool.workers() as u64 {
        pool.submit(batch(tag, 1, &[])).unwrap();
    }
    for _ in 0..pool.workers() {
        pool.recv_timeout(WAIT).unwrap();
    }
    assert!(pool.stats().iter().all(|s| s.pinned), "{:?}", pool.stats());
}

#[test]
fn a_core_that_does_not_exist_is_refused_with_its_number() {
    let cfg = PoolConfig {
        cores: vec![100_000],
        ..PoolConfig::default()
    };
    let err = VerifyPool::start(&cfg).unwrap_err();
    assert!(matches!(err, PoolError::NoSuchCore { core: 100_000, .. }));
    assert!(err.to_string().contains("100000"), "{err}");
}

#[test]
fn dropping_a_pool_with_undrained_results_does_not_hang() {
    let cfg = PoolConfig {
        workers: nz(2),
        queue_depth: nz(2),
        results_depth: nz(1),
        ..PoolConfig::default()
    };
    let mut pool = VerifyPool::start(&cfg).unwrap();
    for tag in 0..6 {
        let _ = pool.submit(batch(tag, 2, &[]));
    }
    drop(pool);
}
