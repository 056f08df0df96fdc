//! Shared helpers for the benchmarks: the time-stamp counter, a corpus of
//! signed messages, and the forward decision (`dataplane::forward::choose_peers`).
//!
//! Ticks follow `ARCHITECTURE.md` ("The tick budget"): one tick is one count of
//! the invariant TSC, read with `lfence; rdtsc; lfence`; the calibrated cost of
//! a read is subtracted from every interval.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use rand::Rng;

/// The time-stamp counter.
pub mod tsc {
    use super::{Duration, Instant};

    /// Reads the TSC, fenced so that earlier instructions have finished and
    /// later ones have not started.
    #[inline(always)]
    pub fn now() -> u64 {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_mm_lfence, _rdtsc};
            // SAFETY: `lfence` and `rdtsc` exist on every x86-64 CPU (SSE2 is
            // part of the x86-64 baseline) and touch no memory.
            unsafe {
                _mm_lfence();
                let t = _rdtsc();
                _mm_lfence();
                t
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            // No TSC: fall back to nanoseconds (the tables then read in ns).
            use std::sync::OnceLock;
            static ORIGIN: OnceLock<Instant> = OnceLock::new();
            ORIGIN.get_or_init(Instant::now).elapsed().as_nanos() as u64
        }
    }

    /// The cost of one [`now`] call as seen by back-to-back reads: the
    /// minimum over `rounds` pairs (the minimum, not the mean, because
    /// interrupts only ever add).
    pub fn read_overhead(rounds: usize) -> u64 {
        (0..rounds)
            .map(|_| {
                let a = now();
                let b = now();
                b.wrapping_sub(a)
            })
            .min()
            .unwrap_or(0)
    }

    /// TSC ticks per second, measured against the monotonic clock over
    /// `window` (best of three windows).
    pub fn hz(window: Duration) -> f64 {
        (0..3)
            .map(|_| {
                let (i0, t0) = (Instant::now(), now());
                while i0.elapsed() < window {
                    core::hint::spin_loop();
                }
                let (t1, i1) = (now(), Instant::now());
                (t1 - t0) as f64 / (i1 - i0).as_secs_f64()
            })
            .fold(0.0, f64::max)
    }
}

/// One signed message in memory, ready to verify.
#[derive(Clone, Debug)]
pub struct Signed {
    /// Signer's public key.
    pub key: [u8; 32],
    /// The signed bytes.
    pub msg: Vec<u8>,
    /// The signature.
    pub sig: [u8; 64],
    /// Whether the signature is valid (false: the message was changed after
    /// signing, so every cheap check passes and only the equation fails).
    pub valid: bool,
}

/// `n` signed messages of `msg_len` bytes from `keys` distinct signers (in
/// turn), with exactly `bad_per_64` invalid ones at random positions in every
/// block of 64. Deterministic for a given `seed`.
pub fn corpus(n: usize, keys: usize, msg_len: usize, bad_per_64: usize, seed: u64) -> Vec<Signed> {
    use rand::SeedableRng;
    use rand::seq::index::sample;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let signers: Vec<SigningKey> = (0..keys.max(1))
        .map(|_| SigningKey::from_bytes(&rng.random()))
        .collect();
    let mut out: Vec<Signed> = (0..n)
        .map(|i| {
            let sk = &signers[i % signers.len()];
            let mut msg = vec![0u8; msg_len];
            rng.fill(&mut msg[..]);
            Signed {
                key: sk.verifying_key().to_bytes(),
                sig: sk.sign(&msg).to_bytes(),
                msg,
                valid: true,
            }
        })
        .collect();
    for block in out.chunks_mut(64) {
        let k = bad_per_64.min(block.len());
        for j in sample(&mut rng, block.len(), k) {
            let s = &mut block[j];
            if s.msg.is_empty() {
                s.sig[0] ^= 1;
            } else {
                s.msg[0] ^= 1;
            }
            s.valid = false;
        }
    }
    out
}

/// Eight peer addresses on a private /24, for the forward decision.
pub fn peers() -> Vec<SocketAddr> {
    (0..8)
        .map(|i| SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 10 + i), 7946)))
        .collect()
}

/// The forward decision of eager push: when the hop limit allows, choose up
/// to `out.len()` distinct peers at random, never the one the message came
/// from. Returns how many were chosen. No allocation, no division.
///
/// This is the node's own decision, `dataplane::forward::choose_peers`. The draw
/// is `(u32 · n) >> 32`, biased by at most `n / 2^32`, which does not matter
/// for gossip fan-out.
pub fn forward<R: Rng>(
    hop_limit: u8,
    from: SocketAddr,
    peers: &[SocketAddr],
    rng: &mut R,
    out: &mut [SocketAddr],
) -> usize {
    if hop_limit <= 1 {
        return 0;
    }
    dataplane::forward::choose_peers(rng, peers, Some(from), out)
}

/// The `q`-quantile (0..=1) of `v` by nearest rank; sorts `v`.
pub fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Pins the calling thread to the last core it may run on, if it can; the
/// benchmarks then do not migrate mid-measurement. Returns the core id.
pub fn pin_to_last_core() -> Option<usize> {
    let id = core_affinity::get_core_ids()?.pop()?;
    core_affinity::set_for_current(id).then_some(id.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn forward_never_picks_the_sender_or_a_peer_twice() {
        let peers = peers();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let mut out = [peers[0]; 3];
        for round in 0..1000 {
            let from = peers[round % 8];
            assert_eq!(forward(5, from, &peers, &mut rng, &mut out), 3);
            assert!(!out.contains(&from));
            assert!(out[0] != out[1] && out[1] != out[2] && out[0] != out[2]);
        }
        assert_eq!(forward(1, peers[0], &peers, &mut rng, &mut out), 0);
    }

    #[test]
    fn corpus_has_the_requested_bad_density() {
        let c = corpus(128, 4, 10, 8, 3);
        assert_eq!(c.iter().filter(|s| !s.valid).count(), 16);
        assert_eq!(c[..64].iter().filter(|s| !s.valid).count(), 8);
    }

    #[test]
    fn quantile_picks_by_rank() {
        let mut v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&mut v, 0.5), 50.0);
        assert_eq!(quantile(&mut v, 0.99), 99.0);
    }
}
