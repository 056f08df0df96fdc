//! Ed25519 verification of a batch of signatures, one verdict each.
//!
//! # Rule set: ZIP-215, plus "no small-order keys"
//!
//! Every verdict this module returns, from [`verify_one`], [`verify_batch`],
//! [`Verifier`] or the [`workers`] pool, follows one rule set. A signature
//! `(R_bytes, S_bytes)` on message `M` under key `A_bytes` is valid when:
//!
//! 1. `S_bytes` is a canonical scalar, `S < ℓ` (RFC 8032 §5.1.7). This stops
//!    signature malleability (`S + ℓ` is rejected).
//! 2. `A_bytes` and `R_bytes` decode as curve points under ZIP-215: the
//!    y-coordinate may be non-canonical (`y ≥ p` is reduced) and the sign bit
//!    may be set with `x = 0`. This is exactly
//!    `curve25519_dalek::edwards::CompressedEdwardsY::decompress`.
//! 3. **Mesh rule:** `A` is not of small order (`[8]A ≠ 0`). A small-order
//!    key has no secret behind it, so anyone can "sign" for it; the mesh never
//!    has a use for such a key. (`R` may be of small order, as ZIP-215 allows.)
//! 4. With `k = SHA-512(R_bytes ‖ A_bytes ‖ M) mod ℓ` over the bytes *as
//!    received*, the cofactored equation holds: `[8]([S]B − [k]A − R) = 0`.
//!
//! Rules 1–3 are checked per item before any curve equation. The batch path
//! checks rule 4 for `n` items at once with random 128-bit weights `z_i`:
//!
//! ```text
//! [8]( −(Σ z_i·S_i)·B + Σ z_i·R_i + Σ (z_i·k_i)·A_i ) = 0
//! ```
//!
//! # Why batch and single verdicts agree
//!
//! Let `P_i = R_i + [k_i]A_i − [S_i]B`. Item `i` is valid exactly when
//! `[8]P_i = 0`, and `[8]P_i` always lies in the prime-order subgroup. The
//! batch equation is `Σ z_i·[8]P_i = 0`. If every item is valid it holds for
//! every choice of `z` (no false rejects, ever). If some `[8]P_j ≠ 0` it holds
//! for at most a `2^-128` fraction of the `z_j` values, so a batch containing
//! an invalid signature passes with probability at most `2^-128`. Because the
//! equation is *cofactored*, torsion components of `A` or `R` (mixed-order
//! keys, small-order `R`) cancel in both paths alike; a cofactorless batch
//! equation could not promise this (the weights would multiply the torsion
//! part differently from the single check), which is why the dalek-strict
//! rules (cofactorless, rejecting small-order `R`) were not chosen.
//!
//! # Why the weights must be secret
//!
//! The `2^-128` bound holds only if the sender cannot predict `z`. With known
//! `z`, a forger can build two invalid signatures whose errors cancel in the
//! weighted sum and get both accepted. Each [`Verifier`] therefore draws `z`
//! from its own ChaCha12 CSPRNG ([`rand::rngs::StdRng`]) seeded once from the
//! OS random source, fresh for every call, after the whole batch is fixed: no
//! input can depend on the weights that judge it. If the OS random source
//! fails, the verifier does not batch at all: it checks each item alone (same
//! verdicts, slower).
//!
//! # Finding the bad signatures
//!
//! A failed batch is bisected. Only the left half's weighted sum is computed;
//! the right half's is the parent's minus the left's, exact because they use
//! the same weights, so each level costs one multiscalar multiplication of
//! half the size. A failed single item is invalid with certainty
//! (`[8]·z·P ≠ 0` implies `[8]P ≠ 0`), so leaves cost nothing. Reusing the
//! weights across the sub-sums is sound: each of the at most `2n − 1` sums of
//! the bisection tree wrongly passes with probability at most `2^-128`, so a
//! whole call errs with probability below `2n·2^-128`. With one bad signature
//! in 64 this takes 1 + 6 = 7 equations (the bound asserted by the tests is
//! `2·log2(64) + 1 = 13`), against 64 for one-by-one. [`BatchReport`] counts
//! them.
//!
//! The first split adapts to the recent failure rate `f` (a moving average
//! over calls): while `f·n < 1` the whole batch is one equation; otherwise the
//! batch starts as groups of about `1/f` items. A flood of forgeries (`f`
//! near 1) is thus checked one by one, the cheapest way to reject them, so an
//! attacker cannot make bisection cost more than single verification.
//!
//! # Key cache
//!
//! Decoding a point (a field square root, about 8 k ticks) is a large share of
//! a batched signature, and origins repeat in mesh traffic, so each
//! [`Verifier`] keeps the last [`KEY_CACHE_SLOTS`] decoded public keys
//! (direct-mapped, seeded index, full 32-byte compare; only keys that pass
//! rules 2 and 3 are stored). Verdicts are unchanged; only `R` is always
//! decoded.
//!
//! # Backends
//!
//! Both paths run on `curve25519-dalek` 5: the batch equation through
//! `EdwardsPoint::vartime_multiscalar_mul` and the single one through
//! `vartime_double_scalar_mul_basepoint`. With
//! `--cfg curve25519_dalek_backend="avx512"` (set in `.cargo/config.toml`)
//! dalek compiles the AVX-512 IFMA and the AVX2 vector backends and picks one
//! at run time from CPUID (`backend.rs`, `get_selected_backend`), falling back
//! to its portable serial backend on CPUs with neither. dalek uses Straus
//! below 190 terms and Pippenger from 190 (a batch of 95 or more). Padding
//! smaller sums with zero terms to force Pippenger was measured and does not
//! pay in steady state (`bench/examples/costs.rs`: at 129 terms, Straus about
//! 0.71 M ticks, padded Pippenger about 0.75 M). Verification is
//! variable-time, which is fine: every input is public.

pub mod workers;

use core::cell::RefCell;

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sha2::{Digest, Sha512};

/// One signature to check.
#[derive(Clone, Copy, Debug)]
pub struct VerifyItem<'a> {
    /// Signer's public key bytes.
    pub public_key: &'a [u8; 32],
    /// Signed message.
    pub message: &'a [u8],
    /// Signature bytes: `R` (32 bytes) then `S` (32 bytes).
    pub signature: &'a [u8; 64],
}

impl<'a> VerifyItem<'a> {
    /// What the verifier checks for a signed datagram: its origin's key over its signed
    /// bytes.
    pub fn of(packet: &crate::wire::Packet<'a>) -> VerifyItem<'a> {
        VerifyItem {
            public_key: packet.origin(),
            message: packet.signed_bytes(),
            signature: packet.signature(),
        }
    }
}

impl VerifyItem<'static> {
    /// A placeholder item (all-zero key and signature; never valid: the
    /// all-zero key is a point of order 4), for initialising fixed-size arrays
    /// without allocation.
    pub const EMPTY: VerifyItem<'static> = VerifyItem {
        public_key: &[0; 32],
        message: &[],
        signature: &[0; 64],
    };
}

/// Verifies one signature under the module's rule set.
pub fn verify_one(item: &VerifyItem<'_>) -> bool {
    decode(item).is_some_and(|d| single_equation(&d))
}

/// Verifies every item; `verdicts[i]` is true when `items[i]` is valid.
///
/// Uses a [`Verifier`] private to the calling thread (created on first use,
/// seeded from the OS). Gives the same verdicts as calling [`verify_one`] on
/// each item. Only the first `min(items.len(), verdicts.len())` items are
/// checked; extra entries of `verdicts` are left untouched.
pub fn verify_batch(items: &[VerifyItem<'_>], verdicts: &mut [bool]) {
    thread_local! {
        static LOCAL: RefCell<Option<Verifier>> = const { RefCell::new(None) };
    }
    LOCAL.with(|cell| match cell.try_borrow_mut() {
        Ok(mut slot) => {
            slot.get_or_insert_with(Verifier::new)
                .verify_batch(items, verdicts);
        }
        // Only reachable if verification re-entered itself on this thread;
        // stay correct without the scratch space.
        Err(_) => {
            for (item, v) in items.iter().zip(verdicts.iter_mut()) {
                *v = verify_one(item);
            }
        }
    });
}

/// What one [`Verifier::verify_batch`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Items checked.
    pub items: u32,
    /// Items found invalid (rejected by rules 1–3 or by the equation).
    pub failures: u32,
    /// Items rejected before any equation (non-canonical `S`, undecodable
    /// point, small-order key).
    pub rejected_early: u32,
    /// Batch (multiscalar) equations evaluated.
    pub batch_equations: u32,
    /// Single-signature equations evaluated.
    pub single_equations: u32,
}

impl BatchReport {
    /// Batch plus single equations: the curve work this call cost.
    pub fn equations(&self) -> u32 {
        self.batch_equations + self.single_equations
    }
}

/// A decoded item: everything the equations need, computed once per item so
/// that bisection never decodes or hashes twice.
#[derive(Clone, Copy)]
struct Decoded {
    a: EdwardsPoint,
    r: EdwardsPoint,
    s: Scalar,
    k: Scalar,
}

/// Rules 1–3 and the challenge hash. `None` means invalid.
fn decode(item: &VerifyItem<'_>) -> Option<Decoded> {
    decode_with(item, decode_key)
}

/// Rule 2 for `A` (ZIP-215 decoding), then rule 3: `A` not of small order.
fn decode_key(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    CompressedEdwardsY(*bytes)
        .decompress()
        .filter(|a| !a.is_small_order())
}

/// [`decode`] with the key decoded by `key` (which must agree with
/// [`decode_key`]).
fn decode_with(
    item: &VerifyItem<'_>,
    key: impl FnOnce(&[u8; 32]) -> Option<EdwardsPoint>,
) -> Option<Decoded> {
    let mut s_bytes = [0u8; 32];
    s_bytes.copy_from_slice(&item.signature[32..]);
    // Rule 1: canonical S (cheapest check first).
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let a = key(item.public_key)?;
    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&item.signature[..32]);
    let r = CompressedEdwardsY(r_bytes).decompress()?;
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(item.public_key);
    h.update(item.message);
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Some(Decoded { a, r, s, k })
}

/// A key's bytes and its decoded point.
type KeySlot = Option<([u8; 32], EdwardsPoint)>;

/// Decoded public keys, direct-mapped by a seeded hash of the key bytes.
///
/// Decoding a key (a square root in the field) is about a quarter of the cost
/// of a batched signature, and mesh traffic repeats origins, so each verifier
/// remembers the last key seen in each slot. Only keys that pass rules 2 and 3
/// are stored, and an entry is used only when all 32 bytes match, so verdicts
/// are exactly those of [`decode_key`]. A sender can evict entries by
/// choosing keys, which only costs it the decoding it would pay anyway.
struct KeyCache {
    slots: Box<[KeySlot]>,
    seed: u64,
    hits: u64,
}

impl KeyCache {
    fn new(slots: usize, seed: u64) -> KeyCache {
        KeyCache {
            slots: vec![None; slots.next_power_of_two()].into_boxed_slice(),
            seed,
            hits: 0,
        }
    }

    fn get(&mut self, bytes: &[u8; 32]) -> Option<EdwardsPoint> {
        if self.slots.len() <= 1 {
            return decode_key(bytes);
        }
        let mut w = [0u8; 8];
        w.copy_from_slice(&bytes[..8]);
        let h = (u64::from_le_bytes(w) ^ self.seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = (h >> (64 - self.slots.len().trailing_zeros())) as usize;
        if let Some((k, p)) = &self.slots[slot]
            && k == bytes
        {
            self.hits += 1;
            return Some(*p);
        }
        let a = decode_key(bytes)?;
        self.slots[slot] = Some((*bytes, a));
        Some(a)
    }
}

/// Rule 4 for one item: `[8]([S]B − [k]A − R) = 0`.
fn single_equation(d: &Decoded) -> bool {
    let sb_minus_ka = EdwardsPoint::vartime_double_scalar_mul_basepoint(&d.k, &-d.a, &d.s);
    (sb_minus_ka - d.r).mul_by_cofactor().is_identity()
}

/// A batch verifier with its own CSPRNG and scratch space. One per thread
/// (it is `Send`, not `Sync`); [`workers::VerifyPool`] gives each worker one.
pub struct Verifier {
    /// `None` when the OS random source failed: then every item is checked
    /// alone, which needs no randomness.
    rng: Option<StdRng>,
    keys: KeyCache,
    decoded: Vec<Decoded>,
    /// Positions (in the caller's batch) of items that passed rules 1–3.
    live: Vec<usize>,
    /// Weights of the current call, one per live item.
    zs: Vec<Scalar>,
    /// Moving average of the fraction of equation-checked items that failed.
    fail_rate: f64,
    scalars: Vec<Scalar>,
    points: Vec<EdwardsPoint>,
    totals: BatchReport,
}

impl core::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Verifier")
            .field("batching", &self.is_batching())
            .field("totals", &self.totals)
            .finish_non_exhaustive()
    }
}

impl Default for Verifier {
    fn default() -> Self {
        Verifier::new()
    }
}

/// Default scratch capacity, in items (the receive batch size).
const DEFAULT_CAPACITY: usize = 64;

/// Decoded keys each verifier remembers (about 200 bytes each).
pub const KEY_CACHE_SLOTS: usize = 256;

impl Verifier {
    /// A verifier whose weights come from a CSPRNG seeded from the OS random
    /// source. If that source fails, the verifier still gives correct
    /// verdicts but checks each item alone ([`Verifier::is_batching`] is
    /// false); callers should report that loudly.
    pub fn new() -> Verifier {
        let mut seed = [0u8; 32];
        let rng = getrandom::fill(&mut seed)
            .ok()
            .map(|()| StdRng::from_seed(seed));
        Verifier::with_rng(rng)
    }

    /// A verifier with a fixed seed, for reproducible tests and benchmarks.
    /// Never use it on traffic: a sender who knows the seed can forge a pair
    /// of signatures that passes the batch equation.
    pub fn from_seed(seed: [u8; 32]) -> Verifier {
        Verifier::with_rng(Some(StdRng::from_seed(seed)))
    }

    fn with_rng(mut rng: Option<StdRng>) -> Verifier {
        let cache_seed = rng.as_mut().map_or(0, |r| r.random());
        Verifier {
            rng,
            keys: KeyCache::new(KEY_CACHE_SLOTS, cache_seed),
            decoded: Vec::with_capacity(DEFAULT_CAPACITY),
            live: Vec::with_capacity(DEFAULT_CAPACITY),
            zs: Vec::with_capacity(DEFAULT_CAPACITY),
            fail_rate: 0.0,
            scalars: Vec::with_capacity(2 * DEFAULT_CAPACITY + 1),
            points: Vec::with_capacity(2 * DEFAULT_CAPACITY + 1),
            totals: BatchReport::default(),
        }
    }

    /// True when batch equations are used (the CSPRNG was seeded).
    pub fn is_batching(&self) -> bool {
        self.rng.is_some()
    }

    /// Sums of every [`BatchReport`] this verifier produced.
    pub fn totals(&self) -> BatchReport {
        self.totals
    }

    /// Public keys found already decoded in the key cache so far.
    pub fn key_cache_hits(&self) -> u64 {
        self.keys.hits
    }

    /// Verifies `items`; `verdicts[i]` is true when `items[i]` is valid. Only
    /// the first `min(items.len(), verdicts.len())` items are checked.
    /// Verdicts equal those of [`verify_one`] (see the module docs for the
    /// `2^-128` bound).
    pub fn verify_batch(&mut self, items: &[VerifyItem<'_>], verdicts: &mut [bool]) -> BatchReport {
        let n = items.len().min(verdicts.len());
        self.verify_with(n, |i| items[i], verdicts)
    }

    /// Like [`Verifier::verify_batch`], reading item `i` from `item(i)` for
    /// `i < n` (so callers with their own storage need not build a slice).
    /// `verdicts` must hold at least `n` entries; extra items are ignored.
    pub fn verify_with<'a>(
        &mut self,
        n: usize,
        item: impl Fn(usize) -> VerifyItem<'a>,
        verdicts: &mut [bool],
    ) -> BatchReport {
        let n = n.min(verdicts.len());
        let mut report = BatchReport {
            items: n as u32,
            ..BatchReport::default()
        };
        self.decoded.clear();
        self.live.clear();
        for (i, v) in verdicts[..n].iter_mut().enumerate() {
            *v = false;
            let keys = &mut self.keys;
            match decode_with(&item(i), |k| keys.get(k)) {
                Some(d) => {
                    // `decoded[j]` belongs to `live[j]`.
                    self.decoded.push(d);
                    self.live.push(i);
                }
                None => report.rejected_early += 1,
            }
        }
        let live = core::mem::take(&mut self.live);
        let m = live.len();
        match self.rng.as_mut() {
            Some(rng) => {
                self.zs.clear();
                self.zs
                    .extend((0..m).map(|_| Scalar::from(rng.random::<u128>())));
                let chunk = self.first_split(m);
                let mut lo = 0;
                while lo < m {
                    let hi = (lo + chunk).min(m);
                    if hi - lo == 1 {
                        // The single equation is cheaper than a batch of one.
                        report.single_equations += 1;
                        verdicts[live[lo]] = single_equation(&self.decoded[lo]);
                    } else {
                        report.batch_equations += 1;
                        let sum = self.weighted_sum(lo, hi);
                        if is_zero(&sum) {
                            for &i in &live[lo..hi] {
                                verdicts[i] = true;
                            }
                        } else {
                            self.settle(lo, hi, &sum, &live, verdicts, &mut report);
                        }
                    }
                    lo = hi;
                }
            }
            None => {
                for (d, &i) in self.decoded.iter().zip(&live) {
                    report.single_equations += 1;
                    verdicts[i] = single_equation(d);
                }
            }
        }
        if m > 0 {
            let bad = live.iter().filter(|&&i| !verdicts[i]).count();
            let rate = bad as f64 / m as f64;
            self.fail_rate = 0.75 * self.fail_rate + 0.25 * rate;
        }
        self.live = live;
        let valid = verdicts[..n].iter().filter(|&&v| v).count() as u32;
        report.failures = report.items - valid;
        let t = &mut self.totals;
        t.items += report.items;
        t.failures += report.failures;
        t.rejected_early += report.rejected_early;
        t.batch_equations += report.batch_equations;
        t.single_equations += report.single_equations;
        report
    }

    /// Size of the first batch equations for `m` live items: the whole batch
    /// while failures are rare, smaller groups when they are not. With a
    /// recent failure rate `f` (moving average over calls, of items that got
    /// as far as an equation), groups hold about `1/f` items, so a group
    /// holds about one bad signature; at `f` near 1 (a flood of forgeries)
    /// every item is checked alone, which is the cheapest way to reject
    /// them, rather than bisecting down to each of them.
    fn first_split(&self, m: usize) -> usize {
        if self.fail_rate * (m as f64) < 1.0 {
            return m.max(1);
        }
        let group = (1.0 / self.fail_rate) as usize;
        // Round down to a power of two so that the groups bisect evenly.
        let group = 1usize << group.max(1).ilog2();
        group.clamp(1, m.max(1))
    }

    /// Settles `decoded[lo..hi]` (item positions `live[lo..hi]`) whose
    /// weighted sum `sum` failed the check, writing a verdict for each.
    ///
    /// Only the left half's sum is computed; the right half's is
    /// `sum − left`, exact because both use the same weights. A single item
    /// whose sum failed is invalid with certainty (`[8]·z·P ≠ 0` implies
    /// `[8]P ≠ 0`), so leaves cost nothing.
    fn settle(
        &mut self,
        lo: usize,
        hi: usize,
        sum: &EdwardsPoint,
        live: &[usize],
        verdicts: &mut [bool],
        report: &mut BatchReport,
    ) {
        if hi - lo <= 1 {
            if let Some(&i) = live.get(lo) {
                verdicts[i] = false;
            }
            return;
        }
        let mid = lo + (hi - lo) / 2;
        report.batch_equations += 1;
        let left = self.weighted_sum(lo, mid);
        let right = sum - left;
        for (a, b, part) in [(lo, mid, left), (mid, hi, right)] {
            if is_zero(&part) {
                for &i in &live[a..b] {
                    verdicts[i] = true;
                }
            } else {
                self.settle(a, b, &part, live, verdicts, report);
            }
        }
    }

    /// `Σ z_i·(R_i + [k_i]A_i − [S_i]B)` over `decoded[lo..hi]`, one
    /// multiscalar multiplication: `−(Σ z_i·S_i)·B + Σ z_i·R_i + Σ (z_i·k_i)·A_i`.
    /// Rule 4 holds for all of them (up to `2^-128`) when `[8]` of it is zero.
    fn weighted_sum(&mut self, lo: usize, hi: usize) -> EdwardsPoint {
        self.scalars.clear();
        self.points.clear();
        let mut b_coefficient = Scalar::ZERO;
        for (d, z) in self.decoded[lo..hi].iter().zip(&self.zs[lo..hi]) {
            b_coefficient += z * d.s;
            self.scalars.push(*z);
            self.points.push(d.r);
            self.scalars.push(z * d.k);
            self.points.push(d.a);
        }
        self.scalars.push(-b_coefficient);
        self.points.push(ED25519_BASEPOINT_POINT);
        EdwardsPoint::vartime_multiscalar_mul(&self.scalars, &self.points)
    }
}

/// True when `[8]P` is the identity.
fn is_zero(p: &EdwardsPoint) -> bool {
    p.mul_by_cofactor().is_identity()
}
