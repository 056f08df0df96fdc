//! The stages every backend runs on a received batch, and on every repaired
//! datagram the control plane hands back:
//! parse → replay window → admission → dedup probe → verify → payload check
//! → accepted.
//!
//! [`Pipeline::process`] is pure computation over borrowed buffers (no I/O, no
//! clock reads: `now` comes in), so the UDP backend, the AF_XDP backend, the
//! benchmarks and the tests all drive the same code. Every packet of a batch
//! ends in exactly one place: accepted, or one [`DropReason`] counter, so
//! `received == accepted + Σ dropped` holds at all times.
//!
//! Accepted packets are *not* yet recorded as seen: the driver calls
//! [`Pipeline::commit`] once it has handed the message on. A message the driver
//! could not hand on (queue full) stays unseen and can arrive again through
//! anti-entropy instead of being lost.

use crate::dedup::{SeenCache, SeenStats};
use crate::verify::{self, VerifyItem};
use crate::wire::{self, DecodeError, Packet};

mesh_types::labels! {
    /// Why a packet was dropped. Values are stable: they index counter arrays;
    /// names are the `mesh.drop.reason` members in `registry/`.
    pub enum DropReason {
        /// Shorter than header + signature.
        Truncated = 0 => "truncated",
        /// Longer than the datagram limit.
        Oversized = 1 => "oversized",
        /// Wrong magic.
        BadMagic = 2 => "bad_magic",
        /// Unsupported version.
        BadVersion = 3 => "bad_version",
        /// Unknown kind.
        BadKind = 4 => "bad_kind",
        /// Non-zero reserved bytes or flags.
        BadReserved = 5 => "bad_reserved",
        /// Length field disagrees with the datagram.
        LengthMismatch = 6 => "length_mismatch",
        /// Timestamp older than the replay window.
        Stale = 7 => "stale",
        /// Timestamp further in the future than the allowed clock skew.
        FromFuture = 8 => "from_future",
        /// Already seen.
        Duplicate = 9 => "duplicate",
        /// Signature (or public key) invalid.
        BadSignature = 10 => "bad_signature",
        /// Accepted, but the next stage's queue was full.
        QueueFull = 11 => "queue_full",
        /// Valid signature but the payload does not follow its kind's format.
        BadPayload = 12 => "bad_payload",
        /// Origin is not an admitted member (mutual TLS on): dropped before
        /// its signature is checked.
        UnknownOrigin = 13 => "unknown_origin",
    }
}

impl From<DecodeError> for DropReason {
    fn from(e: DecodeError) -> DropReason {
        match e {
            DecodeError::Truncated => DropReason::Truncated,
            DecodeError::Oversized => DropReason::Oversized,
            DecodeError::BadMagic => DropReason::BadMagic,
            DecodeError::BadVersion => DropReason::BadVersion,
            DecodeError::BadKind => DropReason::BadKind,
            DecodeError::BadReserved => DropReason::BadReserved,
            DecodeError::LengthMismatch => DropReason::LengthMismatch,
        }
    }
}

/// Pipeline settings (see `meshd` config docs for meaning and defaults).
#[derive(Clone, Copy, Debug)]
pub struct PipelineConfig {
    /// Messages whose origin timestamp is older than this are dropped as stale (µs).
    pub replay_window_us: u64,
    /// Messages stamped further ahead than this are dropped (µs).
    pub max_clock_skew_us: u64,
    /// Seen-cache slots.
    pub dedup_capacity: usize,
    /// Seed of the seen-cache hash; take it from the OS random source.
    pub dedup_seed: u64,
}

impl PipelineConfig {
    /// The replay-window rule: a message stamped `ts_us` (origin clock) is
    /// `Stale` when older than the window at local time `wall_us`, and
    /// `FromFuture` when further ahead than the allowed skew. Drivers that
    /// take messages outside the pipeline (repairs) apply the same rule.
    pub fn check_timestamp(&self, ts_us: u64, wall_us: u64) -> Result<(), DropReason> {
        if ts_us.saturating_add(self.replay_window_us) < wall_us {
            return Err(DropReason::Stale);
        }
        if ts_us > wall_us.saturating_add(self.max_clock_skew_us) {
            return Err(DropReason::FromFuture);
        }
        Ok(())
    }
}

/// Decides whether a message origin (Ed25519 public key) is an admitted
/// member. Called once per screened message; must not block (read a
/// lock-free snapshot).
pub type Admission = std::sync::Arc<dyn Fn(&[u8; 32]) -> bool + Send + Sync>;

/// Largest batch [`Pipeline::process`] takes.
pub const MAX_BATCH: usize = 256;

/// Per-pipeline counters (plain integers: one pipeline per thread).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters {
    /// Datagrams given to the pipeline.
    pub received: u64,
    /// Accepted messages (every accepted message is a data message).
    pub accepted: u64,
    /// Drops by [`DropReason`] value.
    pub dropped: [u64; DropReason::COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            received: 0,
            accepted: 0,
            dropped: [0; DropReason::COUNT],
        }
    }
}

impl Counters {
    /// Sum of all drops.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }
    /// All accepted (the same as `accepted`, beside [`Counters::dropped_total`]).
    pub fn accepted_total(&self) -> u64 {
        self.accepted
    }
}

/// A packet that passed every stage (or, from [`Pipeline::screen_batch`],
/// every stage before verification).
#[derive(Clone, Copy, Debug)]
pub struct Accepted<'a> {
    /// Index in the input batch.
    pub index: usize,
    /// The validated view.
    pub packet: Packet<'a>,
    /// Seen-cache key, for [`Pipeline::commit`].
    pub key: u64,
}

impl<'a> Accepted<'a> {
    /// What the verifier checks for this message.
    pub fn verify_item(&self) -> VerifyItem<'a> {
        VerifyItem::of(&self.packet)
    }
}

/// The receive pipeline of one backend thread.
pub struct Pipeline {
    cfg: PipelineConfig,
    seen: SeenCache,
    counters: Counters,
    admit: Option<Admission>,
    // Scratch, allocated once (emptied between uses; see `recycle`).
    first: Vec<Accepted<'static>>,
    deferred: Vec<Accepted<'static>>,
    next: Vec<Accepted<'static>>,
    copies: Vec<Accepted<'static>>,
    accepted_keys: Vec<u64>,
    verdicts: Vec<bool>,
    /// Batch indices of the last screen's duplicates.
    dups: Vec<u16>,
}

/// Seen-cache entries outlive the replay window by this much, so a message
/// can never be both unseen and inside the window.
const DEDUP_TTL_MARGIN_US: u64 = 1_000_000;

impl Pipeline {
    /// A pipeline with its own seen-cache.
    pub fn new(cfg: PipelineConfig) -> Pipeline {
        let ttl_us = cfg.replay_window_us + cfg.max_clock_skew_us + DEDUP_TTL_MARGIN_US;
        Pipeline {
            seen: SeenCache::new(
                cfg.dedup_capacity,
                ttl_us.saturating_mul(1_000),
                cfg.dedup_seed,
            ),
            cfg,
            counters: Counters::default(),
            admit: None,
            first: Vec::with_capacity(MAX_BATCH),
            deferred: Vec::with_capacity(MAX_BATCH),
            next: Vec::with_capacity(MAX_BATCH),
            copies: Vec::with_capacity(MAX_BATCH),
            accepted_keys: Vec::with_capacity(MAX_BATCH),
            verdicts: vec![false; MAX_BATCH],
            dups: Vec::with_capacity(MAX_BATCH),
        }
    }

    /// Only messages whose origin `admit` accepts pass (checked before the
    /// dedup probe and the signature); others count as `unknown_origin`.
    pub fn set_admission(&mut self, admit: Option<Admission>) {
        self.admit = admit;
    }

    /// Counters so far.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Seen-cache counters so far.
    pub fn seen_stats(&self) -> SeenStats {
        self.seen.stats()
    }

    /// Batch indices, in the batch last given to [`Pipeline::process`] or
    /// [`Pipeline::screen_batch`], of the datagrams dropped as copies of an
    /// accepted message (seen in an earlier batch, or, in `process`,
    /// accepted earlier in this one). A Plumtree driver turns those from an
    /// eager peer into prunes. (The verify-pool driver learns of same-batch
    /// copies later, from [`Pipeline::resolve_deferred`].)
    pub fn last_duplicates(&self) -> &[u16] {
        &self.dups
    }

    /// Moves an accepted message to the `queue_full` drop column: the driver
    /// could not hand it on. It is not committed as seen.
    pub fn count_queue_full(&mut self) {
        let c = &mut self.counters.accepted;
        *c = c.saturating_sub(1);
        self.counters.dropped[DropReason::QueueFull as usize] += 1;
    }

    /// Records an accepted message as seen, after the driver handed it on.
    /// `now_ns` is the monotonic clock.
    pub fn commit(&mut self, key: u64, now_ns: u64) {
        self.seen.insert(key, now_ns);
    }

    /// Marks a locally originated message as seen so echoes are dropped.
    pub fn mark_seen(&mut self, signature: &[u8; 64], now_ns: u64) {
        let k = self.seen.key(signature);
        self.seen.insert(k, now_ns);
    }

    /// Parse, replay window and dedup probe of one datagram; counts the drop
    /// and returns `None` when it does not pass.
    #[inline]
    fn screen<'a>(&mut self, wall_us: u64, bytes: &'a [u8]) -> Option<(Packet<'a>, u64)> {
        let p = match Packet::parse(bytes) {
            Ok(p) => p,
            Err(e) => {
                self.counters.dropped[DropReason::from(e) as usize] += 1;
                return None;
            }
        };
        if let Err(r) = self.cfg.check_timestamp(p.timestamp_us(), wall_us) {
            self.counters.dropped[r as usize] += 1;
            return None;
        }
        if let Some(admit) = &self.admit
            && !admit(p.origin())
        {
            self.counters.dropped[DropReason::UnknownOrigin as usize] += 1;
            return None;
        }
        let key = self.seen.key(p.signature());
        self.seen.prefetch(key);
        Some((p, key))
    }

    /// The screening rule both verify paths share. Parse, replay window,
    /// admission and dedup probe over a batch, in two passes (the first
    /// computes every key and prefetches its bucket, the second probes, so
    /// the cache misses of the batch overlap); then the survivors are
    /// grouped: the first copy of each message goes to `first`, to be
    /// verified, and later copies in the same batch to `deferred`, to wait
    /// for the first copy's verdict ([`Pipeline::resolve_deferred`]): a
    /// forgery that reuses the real signature and arrives first must not
    /// suppress the real message.
    fn screen_into<'a>(
        &mut self,
        now_ns: u64,
        wall_us: u64,
        batch: &[&'a [u8]],
        first: &mut Vec<Accepted<'a>>,
        deferred: &mut Vec<Accepted<'a>>,
    ) {
        let batch = &batch[..batch.len().min(MAX_BATCH)];
        self.counters.received += batch.len() as u64;
        let mut views: [Option<(Packet<'a>, u64)>; MAX_BATCH] = [None; MAX_BATCH];
        for (v, bytes) in views.iter_mut().zip(batch) {
            *v = self.screen(wall_us, bytes);
        }
        self.dups.clear();
        let start = first.len();
        for (index, v) in views.iter().enumerate().take(batch.len()) {
            let Some((packet, key)) = *v else {
                continue;
            };
            if self.seen.contains(key, now_ns) {
                self.counters.dropped[DropReason::Duplicate as usize] += 1;
                self.dups.push(index as u16);
                continue;
            }
            let a = Accepted { index, packet, key };
            if first[start..].iter().any(|f| f.key == key) {
                deferred.push(a);
            } else {
                first.push(a);
            }
        }
    }

    /// The stages before signature verification, for drivers that verify on
    /// other cores ([`crate::verify::workers`]): parse, replay window,
    /// admission and dedup probe, with the same rule as
    /// [`Pipeline::process`]. The first copy of each message is appended to
    /// `first`; later copies of it in the same batch go to `deferred`. Each
    /// entry of `first` must later be settled with [`Pipeline::settle`] (or
    /// [`Pipeline::count_unverified_drop`]), and then `deferred` given to
    /// [`Pipeline::resolve_deferred`] with the keys accepted, to keep the
    /// counters balanced.
    pub fn screen_batch<'a>(
        &mut self,
        now_ns: u64,
        wall_us: u64,
        batch: &[&'a [u8]],
        first: &mut Vec<Accepted<'a>>,
        deferred: &mut Vec<Accepted<'a>>,
    ) {
        self.screen_into(now_ns, wall_us, batch, first, deferred);
    }

    /// Counts the verdict of a screened message and returns whether it is
    /// accepted: `bad_signature` when `valid` is false, `bad_payload` when
    /// the signature is valid but the payload breaks its kind's format (a
    /// data message that is not `[topic_len][topic][body]`), so nothing
    /// malformed is handed on and `received = accepted + Σ dropped` holds
    /// for payloads too.
    pub fn settle(&mut self, a: &Accepted<'_>, valid: bool) -> bool {
        if !valid {
            self.counters.dropped[DropReason::BadSignature as usize] += 1;
            return false;
        }
        if wire::split_data_payload(a.packet.payload()).is_none() {
            self.counters.dropped[DropReason::BadPayload as usize] += 1;
            return false;
        }
        self.counters.accepted += 1;
        true
    }

    /// [`Pipeline::settle`] for a verdict that comes back after later
    /// batches were screened (the verify pool): a copy of the message may
    /// have been accepted and committed meanwhile, and then this one is a
    /// `duplicate` (returns false).
    pub fn settle_late(&mut self, now_ns: u64, a: &Accepted<'_>, valid: bool) -> bool {
        if valid && self.seen.contains(a.key, now_ns) {
            self.counters.dropped[DropReason::Duplicate as usize] += 1;
            return false;
        }
        self.settle(a, valid)
    }

    /// The second half of the screening rule, once the first copies'
    /// verdicts are in (`accepted`: the keys accepted): a deferred copy of an
    /// accepted message is a `duplicate` (counted, and appended to `dups` for
    /// the driver's duplicate notices); of the others, the first copy of each
    /// message moves to `next`, to be verified in turn (the earlier copy may
    /// have been a forgery that reused the real signature), and later copies
    /// stay in `deferred` for `next`'s verdicts.
    pub fn resolve_deferred<'a>(
        &mut self,
        accepted: &[u64],
        deferred: &mut Vec<Accepted<'a>>,
        next: &mut Vec<Accepted<'a>>,
        dups: &mut Vec<Accepted<'a>>,
    ) {
        let start = next.len();
        let mut keep = 0;
        for i in 0..deferred.len() {
            let d = deferred[i];
            if accepted.contains(&d.key) {
                self.counters.dropped[DropReason::Duplicate as usize] += 1;
                dups.push(d);
            } else if next[start..].iter().any(|n| n.key == d.key) {
                deferred[keep] = d;
                keep += 1;
            } else {
                next.push(d);
            }
        }
        deferred.truncate(keep);
    }

    /// Counts a screened message dropped before its verdict (e.g. every
    /// verify queue full). It is not marked seen and can arrive again.
    pub fn count_unverified_drop(&mut self, reason: DropReason) {
        self.counters.dropped[reason as usize] += 1;
    }

    /// Runs the stages over `batch` (at most [`MAX_BATCH`] datagrams; extra
    /// ones are ignored and not counted), verifying inline. `now_ns` is the
    /// monotonic clock for the seen-cache, `wall_us` the wall clock for the
    /// replay window. Accepted packets are appended to `out` in input order.
    pub fn process<'a>(
        &mut self,
        now_ns: u64,
        wall_us: u64,
        batch: &[&'a [u8]],
        out: &mut Vec<Accepted<'a>>,
    ) {
        let start = out.len();
        let mut first = recycle(std::mem::take(&mut self.first));
        let mut deferred = recycle(std::mem::take(&mut self.deferred));
        let mut next = recycle(std::mem::take(&mut self.next));
        let mut copies = recycle(std::mem::take(&mut self.copies));
        let mut accepted = std::mem::take(&mut self.accepted_keys);
        accepted.clear();
        self.screen_into(now_ns, wall_us, batch, &mut first, &mut deferred);
        // Rounds: verify the first copies as one batch, then let the deferred
        // copies of the rejected ones take their place.
        while !first.is_empty() {
            let mut items: [VerifyItem<'a>; MAX_BATCH] = [VerifyItem::EMPTY; MAX_BATCH];
            let n = first.len().min(MAX_BATCH);
            for (item, a) in items.iter_mut().zip(&first) {
                *item = a.verify_item();
            }
            verify::verify_batch(&items[..n], &mut self.verdicts[..n]);
            for (slot, a) in first.iter().enumerate().take(n) {
                if self.settle(a, self.verdicts[slot]) {
                    accepted.push(a.key);
                    out.push(*a);
                }
            }
            next.clear();
            copies.clear();
            self.resolve_deferred(&accepted, &mut deferred, &mut next, &mut copies);
            self.dups.extend(copies.iter().map(|c| c.index as u16));
            std::mem::swap(&mut first, &mut next);
        }
        out[start..].sort_by_key(|a| a.index);
        self.first = recycle(first);
        self.deferred = recycle(deferred);
        self.next = recycle(next);
        self.copies = recycle(copies);
        self.accepted_keys = accepted;
    }
}

/// Reuses a vector's allocation for another element type of the same size
/// and alignment (in practice: the same type with borrows of another
/// lifetime): the vector is emptied first, and in-place collection keeps its
/// buffer, so scratch vectors of borrowed views cost no allocation per batch.
pub(crate) fn recycle<T, U>(mut v: Vec<T>) -> Vec<U> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("vector was cleared"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::wire::Kind;

    const NOW_US: u64 = 1_800_000_000_000_000;

    fn pipeline() -> Pipeline {
        Pipeline::new(PipelineConfig {
            replay_window_us: 60_000_000,
            max_clock_skew_us: 5_000_000,
            dedup_capacity: 4096,
            dedup_seed: 42,
        })
    }

    fn msg(id: &Identity, seq: u64, ts: u64) -> Vec<u8> {
        let mut out = Vec::new();
        id.seal(Kind::Data, 3, seq, ts, b"\x01tbody", &mut out)
            .unwrap();
        out
    }

    fn balanced(p: &Pipeline) {
        let c = p.counters();
        assert_eq!(c.received, c.accepted_total() + c.dropped_total());
    }

    #[test]
    fn valid_messages_pass_and_every_bad_one_has_its_reason() {
        let id = Identity::from_seed([1; 32]);
        let good = msg(&id, 1, NOW_US);
        let mut tampered = msg(&id, 2, NOW_US);
        let n = tampered.len();
        tampered[n - 70] ^= 1;
        let stale = msg(&id, 3, NOW_US - 61_000_000);
        let future = msg(&id, 4, NOW_US + 6_000_000);
        let junk = vec![0u8; 10];
        let mut p = pipeline();
        let mut out = Vec::new();
        let batch: Vec<&[u8]> = vec![&good, &tampered, &stale, &future, &junk];
        p.process(0, NOW_US, &batch, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].index, 0);
        let c = p.counters();
        assert_eq!(c.dropped[DropReason::BadSignature as usize], 1);
        assert_eq!(c.dropped[DropReason::Stale as usize], 1);
        assert_eq!(c.dropped[DropReason::FromFuture as usize], 1);
        assert_eq!(c.dropped[DropReason::Truncated as usize], 1);
        balanced(&p);
    }

    #[test]
    fn committed_messages_are_duplicates_and_uncommitted_ones_are_not() {
        let id = Identity::from_seed([2; 32]);
        let a = msg(&id, 1, NOW_US);
        let b = msg(&id, 2, NOW_US);
        let mut p = pipeline();
        let mut out = Vec::new();
        p.process(0, NOW_US, &[&a, &b], &mut out);
        assert_eq!(out.len(), 2);
        p.commit(out[0].key, 0);
        // `b` was not committed (say its queue was full): it may come again.
        let mut out2 = Vec::new();
        p.process(1, NOW_US, &[&a, &b], &mut out2);
        assert_eq!(out2.len(), 1);
        assert_eq!(out2[0].index, 1);
        assert_eq!(p.counters().dropped[DropReason::Duplicate as usize], 1);
        balanced(&p);
    }

    #[test]
    fn a_forged_copy_reusing_a_real_signature_cannot_suppress_the_real_message() {
        let id = Identity::from_seed([3; 32]);
        let real = msg(&id, 1, NOW_US);
        let mut forged = real.clone();
        forged[crate::wire::HEADER_LEN + 2] ^= 0x40; // same signature, other body
        let mut p = pipeline();
        let mut out = Vec::new();
        // The forgery arrives first, in the same batch and in an earlier one.
        p.process(0, NOW_US, &[&forged], &mut out);
        assert!(out.is_empty());
        p.process(1, NOW_US, &[&forged, &real], &mut out);
        assert_eq!(
            out.len(),
            1,
            "the real copy is verified on its own and accepted"
        );
        assert_eq!(out[0].index, 1);
        assert_eq!(p.counters().dropped[DropReason::BadSignature as usize], 2);
        balanced(&p);
    }

    #[test]
    fn duplicates_are_reported_by_batch_index_in_both_drivers() {
        let id = Identity::from_seed([5; 32]);
        let a = msg(&id, 1, NOW_US);
        let b = msg(&id, 2, NOW_US);
        let mut p = pipeline();
        let mut out = Vec::new();
        p.process(0, NOW_US, &[&a], &mut out);
        p.commit(out[0].key, 0);
        assert!(p.last_duplicates().is_empty());
        // index 0: seen in an earlier batch; 2: second copy of `b` in this one
        out.clear();
        p.process(1, NOW_US, &[&a, &b, &b], &mut out);
        assert_eq!(p.last_duplicates(), &[0, 2]);
        // the verify-pool driver's screen reports copies seen before at once, and a
        // same-batch copy once the first copy's verdict is in
        let (mut first, mut deferred) = (Vec::new(), Vec::new());
        p.screen_batch(2, NOW_US, &[&b, &a, &b], &mut first, &mut deferred);
        assert_eq!(p.last_duplicates(), &[1]);
        assert_eq!((first.len(), deferred.len()), (1, 1));
        assert!(p.settle(&first[0], true));
        let (mut next, mut dups) = (Vec::new(), Vec::new());
        p.resolve_deferred(&[first[0].key], &mut deferred, &mut next, &mut dups);
        assert!(next.is_empty() && deferred.is_empty());
        assert_eq!(dups.iter().map(|d| d.index).collect::<Vec<_>>(), [2]);
        balanced(&p);
    }

    /// The verify-pool driver's view of the pipeline: screen, verify the first copies (here
    /// inline, as a pool worker would), settle, resolve the deferred copies, repeat.
    fn pool_round_trip<'a>(p: &mut Pipeline, batch: &[&'a [u8]]) -> Vec<Accepted<'a>> {
        let (mut first, mut deferred) = (Vec::new(), Vec::new());
        p.screen_batch(0, NOW_US, batch, &mut first, &mut deferred);
        let mut out = Vec::new();
        let mut accepted = Vec::new();
        while !first.is_empty() {
            for a in &first {
                let ok = crate::verify::verify_one(&a.verify_item());
                if p.settle_late(0, a, ok) {
                    accepted.push(a.key);
                    out.push(*a);
                }
            }
            let (mut next, mut dups) = (Vec::new(), Vec::new());
            p.resolve_deferred(&accepted, &mut deferred, &mut next, &mut dups);
            first = next;
        }
        out
    }

    #[test]
    fn on_the_pool_path_a_forged_copy_first_in_a_batch_cannot_suppress_the_real_one() {
        let id = Identity::from_seed([8; 32]);
        let real = msg(&id, 1, NOW_US);
        // Same signature bytes, tampered body.
        let mut tampered = real.clone();
        tampered[crate::wire::HEADER_LEN + 2] ^= 0x40;
        // Same signature bytes, someone else's key.
        let mut wrong_key = real.clone();
        wrong_key[16..48].copy_from_slice(&Identity::from_seed([9; 32]).node_id().0);
        let mut p = pipeline();
        let out = pool_round_trip(&mut p, &[&tampered, &wrong_key, &real, &real]);
        assert_eq!(out.len(), 1, "the real message is accepted");
        assert_eq!(out[0].index, 2);
        let c = p.counters();
        assert_eq!(c.dropped[DropReason::BadSignature as usize], 2);
        assert_eq!(
            c.dropped[DropReason::Duplicate as usize],
            1,
            "the real one's copy"
        );
        balanced(&p);
    }

    #[test]
    fn second_copy_in_one_batch_is_a_duplicate_of_an_accepted_first() {
        let id = Identity::from_seed([4; 32]);
        let a = msg(&id, 1, NOW_US);
        let mut p = pipeline();
        let mut out = Vec::new();
        p.process(0, NOW_US, &[&a, &a, &a], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(p.counters().dropped[DropReason::Duplicate as usize], 2);
        balanced(&p);
    }

    #[test]
    fn screen_and_settle_keep_the_same_books_as_process() {
        let id = Identity::from_seed([5; 32]);
        let good = msg(&id, 1, NOW_US);
        let mut bad = msg(&id, 2, NOW_US);
        let n = bad.len();
        bad[n - 1] ^= 1;
        let stale = msg(&id, 3, 1);
        let batch: Vec<&[u8]> = vec![&good, &bad, &stale, &good];
        let mut p = pipeline();
        let out = pool_round_trip(&mut p, &batch);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].index, 0);
        let c = p.counters();
        assert_eq!(c.accepted_total(), 1);
        assert_eq!(c.dropped[DropReason::BadSignature as usize], 1);
        assert_eq!(c.dropped[DropReason::Stale as usize], 1);
        assert_eq!(c.dropped[DropReason::Duplicate as usize], 1);
        balanced(&p);
        let mut inline = pipeline();
        let mut out = Vec::new();
        inline.process(0, NOW_US, &batch, &mut out);
        assert_eq!(inline.counters(), p.counters());
    }

    #[test]
    fn a_validly_signed_data_message_with_a_malformed_payload_is_bad_payload_on_both_paths() {
        let id = Identity::from_seed([11; 32]);
        let seal = |seq: u64, payload: &[u8]| {
            let mut out = Vec::new();
            id.seal(Kind::Data, 3, seq, NOW_US, payload, &mut out)
                .unwrap();
            out
        };
        // topic length past the end, empty topic, topic not UTF-8, no payload at all
        let bad: Vec<Vec<u8>> = [&b"\x05ab"[..], b"\x00body", b"\x02\xff\xfe", b""]
            .iter()
            .enumerate()
            .map(|(i, p)| seal(i as u64 + 1, p))
            .collect();
        let good = seal(9, b"\x01tbody");
        let mut batch: Vec<&[u8]> = bad.iter().map(|b| &b[..]).collect();
        batch.push(&good);
        let mut inline = pipeline();
        let mut out = Vec::new();
        inline.process(0, NOW_US, &batch, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].index, 4);
        assert_eq!(
            inline.counters().dropped[DropReason::BadPayload as usize],
            4
        );
        balanced(&inline);
        let mut pool = pipeline();
        let out = pool_round_trip(&mut pool, &batch);
        assert_eq!(out.len(), 1);
        assert_eq!(pool.counters(), inline.counters());
    }

    proptest::proptest! {
        /// Every datagram ends in exactly one place on both verify paths, for any mix of
        /// signed messages with arbitrary payloads, tampered copies, repeats and junk, and
        /// only messages with a valid topic and body are accepted.
        #[test]
        fn every_datagram_ends_accepted_or_in_one_drop_counter_on_both_paths(
            parts in proptest::collection::vec(
                (0u8..4, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)),
                1..40,
            ),
        ) {
            let id = Identity::from_seed([12; 32]);
            let mut datagrams: Vec<Vec<u8>> = Vec::new();
            for (i, (what, bytes)) in parts.iter().enumerate() {
                let mut d = Vec::new();
                id.seal(Kind::Data, 3, i as u64, NOW_US, bytes, &mut d).unwrap();
                match what {
                    0 => {}
                    1 => { let n = d.len(); d[n - 70] ^= 1; }
                    2 => d = datagrams.last().cloned().unwrap_or(d),
                    _ => d = bytes.clone(),
                }
                datagrams.push(d);
            }
            let batch: Vec<&[u8]> = datagrams.iter().map(|d| &d[..]).collect();
            let mut inline = pipeline();
            let mut out = Vec::new();
            inline.process(0, NOW_US, &batch, &mut out);
            balanced(&inline);
            for a in &out {
                proptest::prop_assert!(crate::wire::split_data_payload(a.packet.payload()).is_some());
            }
            let mut pool = pipeline();
            let pooled = pool_round_trip(&mut pool, &batch);
            balanced(&pool);
            proptest::prop_assert_eq!(pool.counters(), inline.counters());
            proptest::prop_assert_eq!(pooled.len(), out.len());
        }
    }

    #[test]
    fn with_admission_on_only_member_origins_pass() {
        let member = Identity::from_seed([6; 32]);
        let outsider = Identity::from_seed([7; 32]);
        let allowed = member.node_id().0;
        let mut p = pipeline();
        p.set_admission(Some(std::sync::Arc::new(move |k: &[u8; 32]| *k == allowed)));
        let a = msg(&member, 1, NOW_US);
        let b = msg(&outsider, 1, NOW_US);
        let mut out = Vec::new();
        p.process(0, NOW_US, &[&a, &b], &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].index, 0);
        assert_eq!(p.counters().dropped[DropReason::UnknownOrigin as usize], 1);
        balanced(&p);
    }

    #[test]
    fn oversized_batches_are_cut_to_the_limit() {
        let junk = [0u8; 4];
        let batch: Vec<&[u8]> = vec![&junk; MAX_BATCH + 10];
        let mut p = pipeline();
        let mut out = Vec::new();
        p.process(0, NOW_US, &batch, &mut out);
        assert_eq!(p.counters().received, MAX_BATCH as u64);
        balanced(&p);
    }
}
