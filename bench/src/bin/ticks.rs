//! Prints the verify table and the per-stage tick budget in one run.
//!
//! ```text
//! ticks                      # full table (release build; see scripts/bench-verify)
//! ticks --stages-only N      # only the non-crypto stages, N batches of 64
//!                            # (run under callgrind to count instructions)
//! ```
//!
//! Every figure is measured side by side in this one process; ratios are the
//! point, absolute times vary with the (shared) machine.

use std::cell::RefCell;
use std::hint::black_box;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use dataplane::dedup::SeenCache;
use dataplane::identity::Identity;
use dataplane::verify::{self, Verifier, VerifyItem};
use dataplane::wire::{self, Kind, Packet, Unsigned};
use ed25519_dalek::{Signature, VerifyingKey};
use mesh_bench::{Signed, corpus, forward, peers, quantile, tsc};
use rand::SeedableRng;
use rand::rngs::SmallRng;

/// Signatures per measured round of the verify table.
const ROUND: usize = 512;
/// Rounds per row (the median is reported).
const ROUNDS: usize = 21;
/// Batches of 64 for the stage budget.
const STAGE_BATCHES: usize = 3000;
/// Signed bytes per message: the 56 signed header bytes + a 128-byte payload.
const MSG_LEN: usize = 56 + 128;

struct Clock {
    hz: f64,
    overhead: u64,
}

impl Clock {
    fn us(&self, ticks: f64) -> f64 {
        ticks / self.hz * 1e6
    }
}

/// A verifier run over a corpus.
type RunFn<'a> = Box<dyn FnMut(&[Signed]) + 'a>;

/// One row of the verify table: a verifier run over a corpus, timed in
/// every round.
struct Row<'a> {
    name: String,
    set: &'a [Signed],
    /// Signatures per timed call.
    chunk: usize,
    run: RunFn<'a>,
    verifier: Option<Rc<RefCell<Verifier>>>,
    /// `samples[c][r]`: ticks for chunk `c` in round `r`.
    samples: Vec<Vec<f64>>,
}

impl<'a> Row<'a> {
    fn new(
        name: impl Into<String>,
        set: &'a [Signed],
        chunk: usize,
        run: RunFn<'a>,
        verifier: Option<Rc<RefCell<Verifier>>>,
    ) -> Row<'a> {
        Row {
            name: name.into(),
            set,
            chunk,
            run,
            verifier,
            samples: vec![Vec::with_capacity(ROUNDS); set.len().div_ceil(chunk)],
        }
    }

    /// Ticks per signature: for each chunk the median over rounds (robust to
    /// preemption by other processes, which only ever adds), summed over
    /// chunks (so chunks with and without bad signatures weigh what they
    /// cost), divided by the signatures.
    fn ticks_per_sig(&mut self) -> f64 {
        let total: f64 = self.samples.iter_mut().map(|v| quantile(v, 0.5)).sum();
        total / self.set.len() as f64
    }
}

/// Times every chunk of every row once per round, rows interleaved so that
/// load from other processes spreads evenly over them; the first round is a
/// warm-up.
fn measure(clock: &Clock, rows: &mut [Row<'_>]) {
    for round in 0..=ROUNDS {
        for row in rows.iter_mut() {
            for (c, chunk) in row.set.chunks(row.chunk).enumerate() {
                let t0 = tsc::now();
                (row.run)(chunk);
                let t1 = tsc::now();
                if round > 0 {
                    let t = (t1 - t0).saturating_sub(clock.overhead) as f64;
                    row.samples[c].push(t);
                }
            }
        }
    }
}

fn ring_single(items: &[Signed]) {
    use ring::signature::{ED25519, UnparsedPublicKey};
    for s in items {
        let ok = UnparsedPublicKey::new(&ED25519, &s.key)
            .verify(&s.msg, &s.sig)
            .is_ok();
        assert_eq!(ok, s.valid);
    }
}

fn dalek_single(items: &[Signed]) {
    for s in items {
        let ok = VerifyingKey::from_bytes(&s.key).is_ok_and(|k| {
            k.verify_strict(&s.msg, &Signature::from_bytes(&s.sig))
                .is_ok()
        });
        assert_eq!(ok, s.valid);
    }
}

fn dalek_batch(items: &[Signed], batch: usize) {
    let mut msgs: Vec<&[u8]> = Vec::with_capacity(batch);
    let mut sigs = Vec::with_capacity(batch);
    let mut keys = Vec::with_capacity(batch);
    for chunk in items.chunks(batch) {
        msgs.clear();
        sigs.clear();
        keys.clear();
        for s in chunk {
            msgs.push(&s.msg);
            sigs.push(Signature::from_bytes(&s.sig));
            // Decoding keys is part of the work (they arrive as bytes).
            keys.push(VerifyingKey::from_bytes(&s.key).unwrap_or_default());
        }
        let ok = ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok();
        assert_eq!(ok, chunk.iter().all(|s| s.valid));
    }
}

fn ours(items: &[Signed], batch: usize, verifier: &mut Verifier) {
    let mut verdicts = vec![false; batch];
    let mut buf: Vec<VerifyItem<'_>> = Vec::with_capacity(batch);
    for chunk in items.chunks(batch) {
        buf.clear();
        buf.extend(chunk.iter().map(|s| VerifyItem {
            public_key: &s.key,
            message: &s.msg,
            signature: &s.sig,
        }));
        verifier.verify_batch(&buf, &mut verdicts);
        for (s, v) in chunk.iter().zip(&verdicts) {
            assert_eq!(s.valid, *v);
        }
    }
}

fn verify_table(clock: &Clock) {
    // Every signature has its own key, as in a mesh with many publishers.
    let valid = corpus(ROUND, ROUND, MSG_LEN, 0, 1);
    let bad1 = corpus(ROUND, ROUND, MSG_LEN, 1, 2);
    let bad8 = corpus(ROUND, ROUND, MSG_LEN, 8, 3);
    // Mesh traffic also repeats origins: the same shapes signed by 64 keys in
    // turn, where our key cache skips most key decoding (dalek's verify_batch
    // has no cache: `VerifyingKey::from_bytes` decodes every time).
    let valid64 = corpus(ROUND, 64, MSG_LEN, 0, 4);
    let bad1_64 = corpus(ROUND, 64, MSG_LEN, 1, 5);
    let bad8_64 = corpus(ROUND, 64, MSG_LEN, 8, 6);

    let mut rows: Vec<Row<'_>> = vec![
        Row::new(
            "ring 0.17 single verify",
            &valid,
            16,
            Box::new(ring_single),
            None,
        ),
        Row::new(
            "ed25519-dalek 3 single verify_strict",
            &valid,
            16,
            Box::new(dalek_single),
            None,
        ),
        Row::new(
            "ed25519-dalek 3 verify_batch, 64, all valid",
            &valid,
            64,
            Box::new(|i| dalek_batch(i, 64)),
            None,
        ),
    ];
    for (label, set) in [
        ("all valid", &valid),
        ("1 bad/64", &bad1),
        ("8 bad/64", &bad8),
    ] {
        for batch in [8, 16, 32, 64, 128] {
            rows.push(new_ours_row(
                format!("ours, batch {batch}, {label}"),
                set,
                batch,
            ));
        }
    }
    rows.push(Row::new(
        "ed25519-dalek 3 verify_batch, 64, all valid, 64 repeating keys",
        &valid64,
        64,
        Box::new(|i| dalek_batch(i, 64)),
        None,
    ));
    for (label, set) in [
        ("all valid", &valid64),
        ("1 bad/64", &bad1_64),
        ("8 bad/64", &bad8_64),
    ] {
        rows.push(new_ours_row(
            format!("ours, batch 64, {label}, 64 repeating keys"),
            set,
            64,
        ));
    }
    measure(clock, &mut rows);

    let ring = rows[0].ticks_per_sig();
    println!(
        "## Ed25519 verify, per signature ({ROUND} signatures per corpus, {ROUNDS} interleaved rounds)"
    );
    println!();
    println!(
        "| verifier | equations per 64 sigs | key-cache hits | µs/sig | ticks/sig | speed-up vs ring single |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for row in &mut rows {
        let ticks = row.ticks_per_sig();
        let (eq, hits) = row.verifier.as_ref().map_or_else(
            || ("-".to_string(), "-".to_string()),
            |v| {
                let v = v.borrow();
                let t = v.totals();
                let items = f64::from(t.items.max(1));
                (
                    format!("{:.1}", f64::from(t.equations()) / items * 64.0),
                    format!("{:.0}%", v.key_cache_hits() as f64 / items * 100.0),
                )
            },
        );
        println!(
            "| {} | {eq} | {hits} | {:.2} | {:.0} | {:.2}x |",
            row.name,
            clock.us(ticks),
            ticks,
            ring / ticks
        );
    }
    println!();
}

/// A row for our verifier at `batch`, with its own [`Verifier`].
fn new_ours_row(name: String, set: &[Signed], batch: usize) -> Row<'_> {
    let v = Rc::new(RefCell::new(Verifier::new()));
    assert!(v.borrow().is_batching(), "OS random source unavailable");
    let inner = Rc::clone(&v);
    Row::new(
        name,
        set,
        batch,
        Box::new(move |i| ours(i, batch, &mut inner.borrow_mut())),
        Some(v),
    )
}

/// `batches` batches of 64 datagrams, each message from its own origin.
fn signed_datagrams(batches: usize) -> Vec<Vec<u8>> {
    let ids: Vec<Identity> = (0..64u8).map(|i| Identity::from_seed([i; 32])).collect();
    let payload = [0x5au8; 128];
    let mut out = Vec::with_capacity(batches * 64);
    for b in 0..batches {
        for (i, id) in ids.iter().enumerate() {
            let mut d = Vec::new();
            let ok = id.seal(
                Kind::Data,
                8,
                b as u64,
                1_700_000_000_000_000 + (b * 64 + i) as u64,
                &payload,
                &mut d,
            );
            assert!(ok.is_ok());
            out.push(d);
        }
    }
    out
}

/// Datagrams with arbitrary (not valid) signatures: the non-crypto stages do
/// not look at signature validity, and building these costs no crypto, which
/// keeps the callgrind count clean.
fn unsigned_datagrams(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut d = Vec::new();
            let u = Unsigned {
                kind: Kind::Data,
                hop_limit: 8,
                origin: [(i % 64) as u8; 32],
                sequence: i as u64,
                timestamp_us: 1_700_000_000_000_000 + i as u64,
                payload: &[0x5a; 128],
            };
            assert!(u.write_unsigned(&mut d).is_ok());
            let mut sig = [0u8; 64];
            for (j, b) in sig.iter_mut().enumerate() {
                *b = (i * 31 + j * 7) as u8;
            }
            wire::finish(&mut d, &sig);
            d
        })
        .collect()
}

/// A seen-cache as a node would run it: 1 Mi slots, 60 s expiry, pre-filled
/// with half a million other messages so probes meet occupied buckets.
fn warm_cache(seed: u64) -> SeenCache {
    let mut c = SeenCache::new(1 << 20, 60_000_000_000, seed);
    for i in 0..(1u64 << 19) {
        let k = c.key(&i.to_le_bytes());
        c.insert(k, 0);
    }
    c
}

/// How far `--stages-only` goes: stages are cumulative, so the difference
/// between two levels is the cost of one stage.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Parse,
    Dedup,
    Forward,
}

/// The non-crypto stages over one batch, up to `level`: parse, dedup probe,
/// forward decision. Returns a count that keeps the work observable.
#[inline(never)]
fn non_crypto_batch(
    level: Level,
    batch: &[Vec<u8>],
    cache: &mut SeenCache,
    peers: &[SocketAddr],
    rng: &mut SmallRng,
) -> usize {
    let mut count = 0;
    let mut out = [peers[0]; 3];
    for (i, d) in batch.iter().enumerate() {
        let Ok(p) = black_box(Packet::parse(d)) else {
            continue;
        };
        if level == Level::Parse {
            count += usize::from(p.hop_limit());
            continue;
        }
        let key = cache.key(p.signature());
        if black_box(cache.contains(key, 1)) {
            continue;
        }
        if level == Level::Dedup {
            count += 1;
            continue;
        }
        count += forward(p.hop_limit(), peers[i % peers.len()], peers, rng, &mut out);
    }
    black_box(&out);
    count
}

fn stage_budget(clock: &Clock) {
    let data = signed_datagrams(64);
    let mut cache = warm_cache(0x5eed);
    let peers = peers();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut verifier = Verifier::new();
    let stages = [
        "parse",
        "dedup probe (batch: keys and prefetches, then probes)",
        "verify (ours, batch 64)",
        "forward decision",
        "dedup probe, one at a time (no prefetch; alternate batches)",
    ];
    let mut samples: [Vec<f64>; 5] = Default::default();
    let mut totals_nc = Vec::with_capacity(STAGE_BATCHES);
    let mut views: Vec<Packet<'_>> = Vec::with_capacity(64);
    let mut keys = [0u64; 64];
    let mut fresh = [false; 64];
    let mut items = [VerifyItem::EMPTY; 64];
    let mut verdicts = [false; 64];
    let mut out = [peers[0]; 3];
    for round in 0..STAGE_BATCHES + 50 {
        let b = round % (data.len() / 64);
        let batch = &data[b * 64..b * 64 + 64];
        views.clear();

        let t0 = tsc::now();
        for d in batch {
            if let Ok(p) = Packet::parse(d) {
                views.push(p);
            }
        }
        let t1 = tsc::now();
        let prefetched = round % 2 == 0;
        if prefetched {
            // As the pipeline does it: every key and its bucket prefetch
            // first, then the probes, so the cache misses overlap.
            for (j, p) in views.iter().enumerate() {
                keys[j] = cache.key(p.signature());
                cache.prefetch(keys[j]);
            }
            for j in 0..views.len() {
                fresh[j] = !cache.contains(keys[j], 1);
            }
        } else {
            for (j, p) in views.iter().enumerate() {
                keys[j] = cache.key(p.signature());
                fresh[j] = !cache.contains(keys[j], 1);
            }
        }
        let t2 = tsc::now();
        for (j, p) in views.iter().enumerate() {
            items[j] = VerifyItem::of(p);
        }
        verifier.verify_batch(&items[..views.len()], &mut verdicts);
        let t3 = tsc::now();
        let mut sent = 0;
        for (j, p) in views.iter().enumerate() {
            if verdicts[j] && fresh[j] {
                sent += forward(p.hop_limit(), peers[j % 8], &peers, &mut rng, &mut out);
            }
        }
        let t4 = tsc::now();
        black_box((sent, &out, &keys));
        assert_eq!(views.len(), 64);
        assert!(verdicts.iter().all(|&v| v));
        if round < 50 {
            continue; // warm-up
        }
        let per = |a: u64, b: u64| (b - a).saturating_sub(clock.overhead) as f64 / 64.0;
        samples[0].push(per(t0, t1));
        if prefetched {
            samples[1].push(per(t1, t2));
        } else {
            samples[4].push(per(t1, t2));
        }
        samples[2].push(per(t2, t3));
        samples[3].push(per(t3, t4));
        if prefetched {
            totals_nc.push(per(t0, t2) + per(t3, t4));
        }
    }
    println!(
        "## Hot-path budget, TSC ticks per message ({STAGE_BATCHES} batches of 64; read cost {} ticks removed)",
        clock.overhead
    );
    println!();
    println!("| stage | p50 ticks/msg | p99 ticks/msg | p50 ns/msg |");
    println!("| --- | ---: | ---: | ---: |");
    for (name, s) in stages.iter().zip(samples.iter_mut()) {
        let p50 = quantile(s, 0.5);
        let p99 = quantile(s, 0.99);
        println!(
            "| {name} | {p50:.1} | {p99:.1} | {:.1} |",
            clock.us(p50) * 1e3
        );
    }
    let p50 = quantile(&mut totals_nc, 0.5);
    let p99 = quantile(&mut totals_nc, 0.99);
    println!(
        "| all non-crypto stages | {p50:.1} | {p99:.1} | {:.1} |",
        clock.us(p50) * 1e3
    );
    println!();
}

/// `--stages-only N LEVEL`: N batches of 64 through the non-crypto stages
/// up to LEVEL (`parse`, `dedup` or `forward`), for callgrind. Setup is the
/// same for every N, so the difference of two runs divided by the extra
/// messages is the per-message instruction count.
fn stages_only(batches: usize, level: Level) {
    let data = unsigned_datagrams(64 * 16);
    let mut cache = SeenCache::new(1 << 16, 60_000_000_000, 0x5eed);
    let peers = peers();
    let mut rng = SmallRng::seed_from_u64(7);
    let mut count = 0;
    for b in 0..batches {
        let i = b % 16;
        count += non_crypto_batch(
            level,
            &data[i * 64..i * 64 + 64],
            &mut cache,
            &peers,
            &mut rng,
        );
    }
    println!("count {count}");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--stages-only") {
        let n = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1);
        let level = match args.get(3).map(String::as_str) {
            Some("parse") => Level::Parse,
            Some("dedup") => Level::Dedup,
            _ => Level::Forward,
        };
        stages_only(n, level);
        return;
    }
    let core = mesh_bench::pin_to_last_core();
    let clock = Clock {
        hz: tsc::hz(Duration::from_millis(100)),
        overhead: tsc::read_overhead(100_000),
    };
    // Prime the thread-local verifier so that setup is not measured.
    let _ = verify::verify_one(&VerifyItem::EMPTY);
    println!(
        "TSC {:.3} GHz, counter read {} ticks, pinned to core {}",
        clock.hz / 1e9,
        clock.overhead,
        core.map_or_else(|| "none".to_string(), |c| c.to_string())
    );
    println!();
    verify_table(&clock);
    stage_budget(&clock);
}
