//! What this node delivered to its agents: one body per `(origin, sequence)`, never the same
//! message twice, across restarts.
//!
//! - **Replays.** Every delivered message id is kept for the replay window (a message older
//!   than that is dropped as `stale` by the fast path anyway) and appended to a journal
//!   (`delivered-<node id>.log` in `node.state_dir`). At start the journal is read back (and
//!   rewritten without expired entries), so a restarted node does not hand its agents again
//!   what it delivered before: neither a replayed datagram nor what anti-entropy brings back.
//! - **Equivocation.** Two validly signed messages with the same origin and sequence and
//!   different bodies: the first one seen is delivered, the second never is; the pair is the
//!   evidence ([`Verdict::Equivocation`]) the driver gossips and the origin is flagged.
//!
//! The journal is written with `write(2)` once per driver step (the kernel's page cache
//! survives a crash of `meshd`; a power loss can lose the last writes, whose messages could
//! then be delivered once more). A journal with a torn last record (a crash mid-write) is
//! read up to its last whole record.
//!
//! Bounded: at most `capacity` entries; past it the oldest are forgotten first (they can
//! then only come back as replays within the replay window if the fast path's seen-cache
//! lost them too).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use mesh_protocol::{MsgId, NodeId};

/// Bytes of one journal record: id, origin, sequence, origin timestamp.
const RECORD: usize = 16 + 32 + 8 + 8;

/// What the ledger says about a message the fast path accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Never delivered here: deliver it.
    New,
    /// Delivered before (possibly before a restart): do not deliver again.
    Again,
    /// Another message with the same origin and sequence was delivered: this one must never
    /// be; `first` is the delivered one's id.
    Equivocation {
        /// The message delivered for that `(origin, sequence)`.
        first: MsgId,
    },
}

#[derive(Clone, Copy)]
struct Record {
    id: MsgId,
    origin: NodeId,
    sequence: u64,
    timestamp_us: u64,
}

impl Record {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.origin.0);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.timestamp_us.to_le_bytes());
    }

    fn decode(b: &[u8]) -> Option<Record> {
        let b: &[u8; RECORD] = b.try_into().ok()?;
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[..16]);
        let mut origin = [0u8; 32];
        origin.copy_from_slice(&b[16..48]);
        let le = |r: &[u8]| {
            let mut x = [0u8; 8];
            x.copy_from_slice(r);
            u64::from_le_bytes(x)
        };
        Some(Record {
            id: MsgId(id),
            origin: NodeId(origin),
            sequence: le(&b[48..56]),
            timestamp_us: le(&b[56..64]),
        })
    }
}

/// The delivered-message ledger.
pub(super) struct Ledger {
    ids: HashSet<MsgId>,
    by_seq: HashMap<(NodeId, u64), MsgId>,
    /// In delivery order, for expiry and the capacity bound.
    order: VecDeque<Record>,
    window_us: u64,
    capacity: usize,
    journal: Option<File>,
    path: Option<PathBuf>,
    pending: Vec<u8>,
    /// Origins caught equivocating (bounded by `capacity`).
    flagged: HashSet<NodeId>,
}

impl Ledger {
    /// An in-memory ledger (no journal).
    pub(super) fn in_memory(window_us: u64, capacity: usize) -> Ledger {
        Ledger {
            ids: HashSet::new(),
            by_seq: HashMap::new(),
            order: VecDeque::new(),
            window_us,
            capacity: capacity.max(1),
            journal: None,
            path: None,
            pending: Vec::new(),
            flagged: HashSet::new(),
        }
    }

    /// Opens (or creates) the journal at `path`, loads the entries younger than the window
    /// at wall time `now_us`, and rewrites it with only those.
    pub(super) fn open(
        path: &Path,
        window_us: u64,
        capacity: usize,
        now_us: u64,
    ) -> std::io::Result<(Ledger, usize)> {
        let mut l = Ledger::in_memory(window_us, capacity);
        let mut bytes = Vec::new();
        match File::open(path) {
            Ok(mut f) => {
                f.read_to_end(&mut bytes)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let torn = bytes.len() % RECORD;
        if torn != 0 {
            tracing::warn!(path = %path.display(), bytes = torn, "delivered journal ends in a torn record (crash mid-write): ignored");
        }
        for chunk in bytes.chunks_exact(RECORD) {
            if let Some(r) = Record::decode(chunk)
                && now_us.saturating_sub(r.timestamp_us) <= window_us
            {
                l.remember(r);
            }
        }
        // Rewrite without the expired entries, then append from there.
        let tmp = path.with_extension("log.tmp");
        {
            let mut f = File::create(&tmp)?;
            let mut out = Vec::with_capacity(l.order.len() * RECORD);
            for r in &l.order {
                r.encode(&mut out);
            }
            f.write_all(&out)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        l.journal = Some(OpenOptions::new().append(true).open(path)?);
        l.path = Some(path.to_owned());
        let loaded = l.order.len();
        Ok((l, loaded))
    }

    /// Messages remembered.
    pub(super) fn len(&self) -> usize {
        self.order.len()
    }

    /// Origins caught equivocating.
    pub(super) fn flagged(&self) -> usize {
        self.flagged.len()
    }

    /// Whether `origin` was caught equivocating.
    pub(super) fn is_flagged(&self, origin: &NodeId) -> bool {
        self.flagged.contains(origin)
    }

    /// Flags `origin` (evidence seen here or received); true if it was not flagged yet.
    pub(super) fn flag(&mut self, origin: NodeId) -> bool {
        if self.flagged.len() >= self.capacity {
            return false;
        }
        self.flagged.insert(origin)
    }

    /// Checks a message and, when new, records it as delivered.
    pub(super) fn check(
        &mut self,
        id: MsgId,
        origin: NodeId,
        sequence: u64,
        timestamp_us: u64,
        now_us: u64,
    ) -> Verdict {
        self.expire(now_us);
        if self.ids.contains(&id) {
            return Verdict::Again;
        }
        if let Some(first) = self.by_seq.get(&(origin, sequence)) {
            return Verdict::Equivocation { first: *first };
        }
        let r = Record {
            id,
            origin,
            sequence,
            timestamp_us,
        };
        self.remember(r);
        if self.journal.is_some() {
            r.encode(&mut self.pending);
        }
        Verdict::New
    }

    fn remember(&mut self, r: Record) {
        while self.order.len() >= self.capacity {
            self.forget_oldest();
        }
        if !self.ids.insert(r.id) {
            return;
        }
        if let Entry::Vacant(v) = self.by_seq.entry((r.origin, r.sequence)) {
            v.insert(r.id);
        }
        self.order.push_back(r);
    }

    fn forget_oldest(&mut self) {
        if let Some(old) = self.order.pop_front() {
            self.ids.remove(&old.id);
            if self.by_seq.get(&(old.origin, old.sequence)) == Some(&old.id) {
                self.by_seq.remove(&(old.origin, old.sequence));
            }
        }
    }

    /// Forgets entries whose origin timestamp left the replay window (the fast path drops
    /// such messages as `stale`). Delivery order approximates timestamp order, so this stops
    /// at the first young entry.
    fn expire(&mut self, now_us: u64) {
        while self
            .order
            .front()
            .is_some_and(|r| now_us.saturating_sub(r.timestamp_us) > self.window_us)
        {
            self.forget_oldest();
        }
    }

    /// Writes what was recorded since the last call to the journal.
    pub(super) fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        if let Some(f) = &mut self.journal
            && let Err(e) = f.write_all(&self.pending)
        {
            tracing::warn!(path = ?self.path, error = %e, "delivered journal write failed: a restart may re-deliver these messages");
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::id as n;

    fn m(b: u8) -> MsgId {
        MsgId([b; 16])
    }
    const W: u64 = 120_000_000;

    #[test]
    fn one_body_per_origin_and_sequence_and_never_twice() {
        let mut l = Ledger::in_memory(W, 100);
        let now = 1_000_000_000;
        assert_eq!(l.check(m(1), n(1), 7, now, now), Verdict::New);
        assert_eq!(l.check(m(1), n(1), 7, now, now), Verdict::Again);
        assert_eq!(
            l.check(m(2), n(1), 7, now, now),
            Verdict::Equivocation { first: m(1) }
        );
        assert_eq!(
            l.check(m(3), n(2), 7, now, now),
            Verdict::New,
            "other origin"
        );
        assert_eq!(
            l.check(m(4), n(1), 8, now, now),
            Verdict::New,
            "next sequence"
        );
        assert!(l.flag(n(1)) && !l.flag(n(1)) && l.is_flagged(&n(1)));
    }

    #[test]
    fn entries_expire_with_the_replay_window_and_the_capacity_holds() {
        let mut l = Ledger::in_memory(W, 3);
        for i in 0..5u8 {
            l.check(m(i), n(1), u64::from(i), 0, 0);
        }
        assert_eq!(l.len(), 3);
        assert_eq!(l.check(m(4), n(1), 4, 0, 0), Verdict::Again);
        assert_eq!(l.check(m(0), n(1), 0, 0, 0), Verdict::New, "evicted first");
        l.check(m(9), n(1), 9, W + 5, W + 5);
        assert_eq!(l.len(), 1, "everything stamped 0 left the window");
    }

    #[test]
    fn the_journal_survives_a_restart_and_a_torn_tail() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("delivered-test.log");
        let now = 10_000_000_000;
        {
            let (mut l, loaded) = Ledger::open(&path, W, 100, now).expect("open");
            assert_eq!(loaded, 0);
            assert_eq!(l.check(m(1), n(1), 1, now, now), Verdict::New);
            assert_eq!(l.check(m(2), n(1), 2, now - W - 1, now), Verdict::New);
            l.flush();
        }
        // a crash mid-write leaves half a record
        let mut f = OpenOptions::new().append(true).open(&path).expect("append");
        f.write_all(&[0xAB; RECORD / 2]).expect("torn");
        drop(f);
        let (mut l, loaded) = Ledger::open(&path, W, 100, now).expect("reopen");
        assert_eq!(loaded, 1, "the expired entry and the torn tail are dropped");
        assert_eq!(
            l.check(m(1), n(1), 1, now, now),
            Verdict::Again,
            "no re-delivery"
        );
        assert_eq!(
            l.check(m(3), n(1), 1, now, now),
            Verdict::Equivocation { first: m(1) }
        );
        let len = std::fs::metadata(&path).expect("meta").len() as usize;
        assert_eq!(len % RECORD, 0, "rewritten whole");
    }
}
