//! The bounded member table: what this node knows about each member it remembers (views,
//! recently heard members, departed members kept for partition healing), a cache of the
//! membership CRDT (see [`crate::heal`]). When full, the least useful entry is evicted.

use std::collections::HashMap;

use foldhash::fast::FixedState;

use crate::auth::Signature;
use crate::heal::{MemberState, Status};
use crate::id::NodeId;
use crate::time::{Duration, Instant};

/// What a node knows about one member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Lattice state (see [`crate::heal`]).
    pub state: MemberState,
    /// When `state` last changed here.
    pub changed_at: Instant,
    /// Smoothed RTT in microseconds, if measured.
    pub rtt_us: Option<u32>,
    /// The highest incarnation the member itself signed `Alive` for, with that signature
    /// (relayed with its liveness, and the proof every accusation about it carries).
    pub alive_sig: Option<(u64, Signature)>,
    /// The member's own signature over `Left(state.incarnation)`, when it left.
    pub left_sig: Option<Signature>,
    /// This node heard from the member first-hand (a message whose authenticated sender it
    /// was): only such members count towards a quorum of accusers.
    pub direct: bool,
    /// The member spoke of itself at a lower incarnation than this node holds (it restarted):
    /// the next message to it carries what this node holds, so it signs above it.
    pub behind: bool,
    /// Start of the member's current accusation window and the accusations it made in it.
    pub accusations: (Instant, u32),
}

impl MemberInfo {
    fn new(state: MemberState, now: Instant) -> Self {
        MemberInfo {
            state,
            changed_at: now,
            rtt_us: None,
            alive_sig: None,
            left_sig: None,
            direct: false,
            behind: false,
            accusations: (now, 0),
        }
    }
}

/// The bounded member table: a cache of the membership CRDT.
///
/// A hash map keyed with a per-node secret seed (taken from the injected RNG), so peers cannot
/// grind ids into one bucket, and iteration is still deterministic for a given seed.
#[derive(Clone, Debug)]
pub struct MemberTable {
    entries: HashMap<NodeId, MemberInfo, FixedState>,
    capacity: usize,
}

/// Outcome of [`MemberTable::apply`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// Already known at an equal or later state.
    Unchanged,
    /// New or changed; `old` is the previous state if the member was known.
    Changed {
        /// The previous state.
        old: Option<MemberState>,
    },
}

impl MemberTable {
    /// An empty table holding at most `capacity` members; `seed` keys the hash.
    pub fn new(capacity: usize, seed: u64) -> Self {
        MemberTable {
            entries: HashMap::with_hasher(FixedState::with_seed(seed)),
            capacity: capacity.max(1),
        }
    }

    /// The entry for `n`.
    pub fn get(&self, n: &NodeId) -> Option<&MemberInfo> {
        self.entries.get(n)
    }

    /// Most entries held.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// All entries (order fixed by the seed and the history).
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &MemberInfo)> {
        self.entries.iter()
    }

    /// Joins `state` into the entry for `node`, inserting it if absent. When full, a new member
    /// is only inserted if `evict` is set: then the least useful unpinned entry goes (left,
    /// then long-dead, then the stalest alive/suspect, then recently dead). Eviction scans the
    /// table, so gossip about strangers does not evict (only view members do).
    pub fn apply(
        &mut self,
        now: Instant,
        node: NodeId,
        state: MemberState,
        window: Duration,
        evict: bool,
        pinned: impl Fn(&NodeId) -> bool,
    ) -> Applied {
        if let Some(e) = self.entries.get_mut(&node) {
            if !e.state.is_superseded_by(&state) {
                return Applied::Unchanged;
            }
            let old = e.state;
            e.state = state;
            e.changed_at = now;
            return Applied::Changed { old: Some(old) };
        }
        if self.entries.len() >= self.capacity {
            if !evict {
                return Applied::Unchanged;
            }
            let victim = self
                .entries
                .iter()
                .filter(|(n, _)| !pinned(n))
                .min_by_key(|(n, e)| {
                    let class = match e.state.status {
                        Status::Left => 0,
                        Status::Dead if now.saturating_since(e.changed_at) >= window => 1,
                        Status::Alive | Status::Suspect => 2,
                        Status::Dead => 3,
                    };
                    (class, e.changed_at, **n)
                })
                .map(|(n, _)| *n);
            match victim {
                Some(v) => {
                    self.entries.remove(&v);
                }
                None => return Applied::Unchanged,
            }
        }
        self.entries.insert(node, MemberInfo::new(state, now));
        Applied::Changed { old: None }
    }

    /// The entry for `n`, to update its signatures and flags.
    pub(crate) fn get_mut(&mut self, n: &NodeId) -> Option<&mut MemberInfo> {
        self.entries.get_mut(n)
    }

    /// Folds an RTT sample into the member's estimate.
    pub fn record_rtt(&mut self, n: &NodeId, sample: Duration) {
        if let Some(e) = self.entries.get_mut(n) {
            let us = u32::try_from(sample.as_micros()).unwrap_or(u32::MAX);
            e.rtt_us = Some(crate::topology::ewma(e.rtt_us, us));
        }
    }

    /// `(reachable, expected)` for the partition detector: alive members, and alive + suspect
    /// + dead-within-`window` members.
    pub fn reachability(&self, now: Instant, window: Duration) -> (u32, u32) {
        let mut reach = 0;
        let mut expected = 0;
        for e in self.entries.values() {
            match e.state.status {
                Status::Alive => {
                    reach += 1;
                    expected += 1;
                }
                Status::Suspect => expected += 1,
                Status::Dead if now.saturating_since(e.changed_at) < window => expected += 1,
                _ => {}
            }
        }
        (reach, expected)
    }

    /// Members currently in `status`.
    pub fn with_status(&self, status: Status) -> Vec<NodeId> {
        self.entries
            .iter()
            .filter(|(_, e)| e.state.status == status)
            .map(|(n, _)| *n)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn a_full_table_evicts_left_then_stale_entries_but_never_pinned_ones() {
        let mut t = MemberTable::new(2, 1);
        let w = Duration::from_secs(10);
        let now = Instant::ZERO;
        t.apply(now, n(1), MemberState::alive(0), w, true, |_| false);
        t.apply(
            now,
            n(2),
            MemberState {
                incarnation: 0,
                status: Status::Left,
            },
            w,
            true,
            |_| false,
        );
        assert_eq!(
            t.apply(now, n(3), MemberState::alive(0), w, false, |_| false),
            Applied::Unchanged
        );
        t.apply(now, n(3), MemberState::alive(0), w, true, |_| false);
        assert!(t.get(&n(2)).is_none());
        assert_eq!(
            t.apply(now, n(4), MemberState::alive(0), w, true, |_| true),
            Applied::Unchanged
        );
        assert_eq!(t.len(), 2);
        assert_eq!(t.reachability(now, w), (2, 2));
    }
}
