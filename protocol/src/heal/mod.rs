//! Partition healing: the membership CRDT and the partition detector.
//!
//! ## Membership as a state-based CRDT
//! A member's state is a [`MemberState`] `(incarnation, status)`, ordered lexicographically with
//! `Alive < Suspect < Dead < Left` inside one incarnation. That order is total, so
//! [`MemberState::join`] (the maximum) is a join-semilattice: commutative, associative and
//! idempotent (property-tested below). A member map ([`MemberCrdt`]) is the pointwise join of
//! such states keyed by [`NodeId`]; merging two maps is again a semilattice join, so replicas
//! that have seen the same updates in any order, any number of times, agree.
//!
//! The SWIM rules fall out of the order: `Suspect(i)` overrides `Alive(i)`, `Dead(i)` overrides
//! both, and only the member itself can override a claim about it, by *refuting* with
//! `Alive(i + 1)`. That is also how two sides of a healed partition re-merge: each side declared
//! the other `Dead(i)`; when a heal probe crosses, the probed node sees the claim about itself,
//! refutes with `Alive(i + 1)`, and that larger state wins everywhere it is gossiped.
//!
//! The composed node keeps a *bounded* table (see [`crate::membership::MemberTable`]) that
//! applies the same join per entry; evicting an entry forgets it (the table is a cache of the
//! CRDT, not the whole CRDT), which is what keeps memory bounded at 1M members.
//!
//! ## Partition detection
//! [`PartitionDetector`] compares how many of the members a node *should* reach (alive,
//! suspected, or declared dead within [`PartitionConfig::window`]) with how many it currently
//! believes alive. With `n` expected and `f = (n - 1) / 3` tolerated faults, fewer than `n - f`
//! reachable means [`Reachability::Partitioned`]; an empty active view means
//! [`Reachability::Isolated`]. While not connected the node probes departed members and seeds
//! more often (see [`crate::NodeConfig::heal_interval_partitioned`]).
//!
//! ## Heal probes
//! `probes.rs` schedules them: a few members declared dead and one seed per heal period, a
//! rejoin through a seed when isolated, and a boost while a heal is under way.

use std::collections::BTreeMap;

mod probes;

pub(crate) use probes::{ActiveView, HealProbes, HealTimers};

use crate::id::NodeId;
use crate::time::Duration;

/// A member's liveness status, in lattice order (later variants win within one incarnation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Status {
    /// Answering probes.
    Alive = 0,
    /// A probe failed; it will be declared dead unless it refutes in time.
    Suspect = 1,
    /// Declared failed (suspicion timed out).
    Dead = 2,
    /// Left gracefully.
    Left = 3,
}

impl Status {
    /// Decodes the wire value.
    pub fn from_u8(v: u8) -> Option<Status> {
        match v {
            0 => Some(Status::Alive),
            1 => Some(Status::Suspect),
            2 => Some(Status::Dead),
            3 => Some(Status::Left),
            _ => None,
        }
    }
}

/// One lattice element: what is believed about a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberState {
    /// Incremented only by the member itself, to refute suspicion or come back.
    pub incarnation: u64,
    /// Liveness claim at that incarnation.
    pub status: Status,
}

impl MemberState {
    /// `Alive` at `incarnation`.
    pub fn alive(incarnation: u64) -> Self {
        MemberState {
            incarnation,
            status: Status::Alive,
        }
    }

    /// The lattice join (least upper bound): the larger of the two.
    pub fn join(self, other: MemberState) -> MemberState {
        self.max(other)
    }

    /// Whether `other` would change this state when joined into it.
    pub fn is_superseded_by(&self, other: &MemberState) -> bool {
        other > self
    }
}

/// The unbounded member-map CRDT (pointwise [`MemberState::join`]). The node keeps a bounded
/// cache of it; this type is the reference semantics and what the lattice laws are tested on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberCrdt(pub BTreeMap<NodeId, MemberState>);

impl MemberCrdt {
    /// Joins one update in; returns whether the map changed.
    pub fn apply(&mut self, node: NodeId, state: MemberState) -> bool {
        match self.0.get_mut(&node) {
            Some(cur) if !cur.is_superseded_by(&state) => false,
            Some(cur) => {
                *cur = state;
                true
            }
            None => {
                self.0.insert(node, state);
                true
            }
        }
    }

    /// Joins a whole replica in (state-based merge); returns whether anything changed.
    pub fn merge(&mut self, other: &MemberCrdt) -> bool {
        let mut changed = false;
        for (n, s) in &other.0 {
            changed |= self.apply(*n, *s);
        }
        changed
    }
}

/// What a node believes about its connectivity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reachability {
    /// At least `n - f` of the expected members are reachable.
    Connected,
    /// Fewer than `n - f` of the expected members are reachable: probably cut off.
    Partitioned,
    /// No active neighbour at all.
    Isolated,
}

/// A partition verdict with its inputs (for the metric, log line and `meshctl status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The verdict.
    pub state: Reachability,
    /// Members believed alive.
    pub reachable: u32,
    /// Members that should be reachable (alive, suspected, or recently declared dead).
    pub expected: u32,
}

/// Partition detector settings.
#[derive(Clone, Debug)]
pub struct PartitionConfig {
    /// How long a member declared dead still counts as "should be reachable". Default 10 min:
    /// long enough to span a real partition, short enough that crashed nodes stop counting.
    pub window: Duration,
    /// Below this many expected members no `Partitioned` verdict is given (tiny meshes).
    /// Default 4.
    pub min_expected: u32,
}

impl Default for PartitionConfig {
    fn default() -> Self {
        PartitionConfig {
            window: Duration::from_secs(600),
            min_expected: 4,
        }
    }
}

/// Tracks the [`PartitionStatus`] and reports changes.
#[derive(Clone, Debug)]
pub struct PartitionDetector {
    cfg: PartitionConfig,
    status: PartitionStatus,
}

impl PartitionDetector {
    /// A detector that starts `Connected` with nothing expected.
    pub fn new(cfg: PartitionConfig) -> Self {
        PartitionDetector {
            cfg,
            status: PartitionStatus {
                state: Reachability::Connected,
                reachable: 0,
                expected: 0,
            },
        }
    }

    /// The settings.
    pub fn config(&self) -> &PartitionConfig {
        &self.cfg
    }

    /// The last verdict.
    pub fn status(&self) -> PartitionStatus {
        self.status
    }

    /// The verdict for the given counts, without updating state.
    pub fn classify(&self, reachable: u32, expected: u32, active_peers: usize) -> Reachability {
        let f = expected.saturating_sub(1) / 3;
        if active_peers == 0 && expected > 0 {
            Reachability::Isolated
        } else if expected >= self.cfg.min_expected && reachable < expected - f {
            Reachability::Partitioned
        } else {
            Reachability::Connected
        }
    }

    /// Re-evaluates; returns the new status if the verdict changed.
    pub fn update(
        &mut self,
        reachable: u32,
        expected: u32,
        active_peers: usize,
    ) -> Option<PartitionStatus> {
        let state = self.classify(reachable, expected, active_peers);
        let changed = state != self.status.state;
        self.status = PartitionStatus {
            state,
            reachable,
            expected,
        };
        changed.then_some(self.status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn state() -> impl Strategy<Value = MemberState> {
        (0u64..4, 0u8..4).prop_map(|(incarnation, s)| MemberState {
            incarnation,
            status: Status::from_u8(s).unwrap_or(Status::Alive),
        })
    }
    fn crdt() -> impl Strategy<Value = MemberCrdt> {
        proptest::collection::btree_map((0u8..6).prop_map(|b| NodeId([b; 32])), state(), 0..6)
            .prop_map(MemberCrdt)
    }
    fn merged(a: &MemberCrdt, b: &MemberCrdt) -> MemberCrdt {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    proptest! {
        #[test]
        fn state_join_is_commutative_associative_idempotent(a in state(), b in state(), c in state()) {
            prop_assert_eq!(a.join(b), b.join(a));
            prop_assert_eq!(a.join(b).join(c), a.join(b.join(c)));
            prop_assert_eq!(a.join(a), a);
        }

        #[test]
        fn map_merge_is_commutative_associative_idempotent(a in crdt(), b in crdt(), c in crdt()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
            prop_assert_eq!(merged(&a, &a), a.clone());
            // merge is inflationary: the result dominates both inputs
            let ab = merged(&a, &b);
            for (n, s) in &a.0 {
                prop_assert!(ab.0.get(n).is_some_and(|x| x >= s));
            }
        }
    }

    proptest! {
        /// The refutation rule signed membership relies on: whatever is claimed about a
        /// member at an incarnation it signed (always below `u64::MAX`, see
        /// `membership::statement`), its fresh `Alive(i + 1)` wins the join, in any order.
        #[test]
        fn a_fresh_alive_beats_every_claim_about_an_older_incarnation(
            i in 0u64..u64::MAX, s in 0u8..4, j in 0u64..u64::MAX,
        ) {
            let claim = MemberState {
                incarnation: i.min(j),
                status: Status::from_u8(s).unwrap_or(Status::Dead),
            };
            let fresh = MemberState::alive(i.max(j).saturating_add(1).max(claim.incarnation + 1));
            prop_assert!(claim.is_superseded_by(&fresh));
            prop_assert_eq!(claim.join(fresh), fresh);
            prop_assert_eq!(fresh.join(claim), fresh);
        }
    }

    #[test]
    fn only_a_higher_incarnation_refutes_a_death() {
        let dead = MemberState {
            incarnation: 3,
            status: Status::Dead,
        };
        assert_eq!(dead.join(MemberState::alive(3)), dead);
        assert_eq!(dead.join(MemberState::alive(4)), MemberState::alive(4));
        let sus = MemberState {
            incarnation: 3,
            status: Status::Suspect,
        };
        assert!(MemberState::alive(3).is_superseded_by(&sus));
    }

    #[test]
    fn detector_flags_fewer_than_n_minus_f_reachable() {
        let mut d = PartitionDetector::new(PartitionConfig::default());
        // n = 100, f = 33: 67 reachable is fine, 66 is a partition.
        assert_eq!(d.update(67, 100, 5), None);
        assert_eq!(
            d.update(66, 100, 5).map(|s| s.state),
            Some(Reachability::Partitioned)
        );
        assert_eq!(
            d.update(66, 100, 0).map(|s| s.state),
            Some(Reachability::Isolated)
        );
        assert_eq!(
            d.update(3, 3, 1).map(|s| s.state),
            Some(Reachability::Connected)
        );
        assert_eq!(
            d.classify(0, 3, 1),
            Reachability::Connected,
            "tiny meshes never partition"
        );
    }
}
