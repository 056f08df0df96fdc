//! Lifeguard suspicion timers: a suspect is declared `Dead` after a timeout that starts at
//! `max = beta * min` and shrinks towards `min = alpha * log10(n) * period` as independent
//! confirmations arrive: `max - (max - min) * log(C + 1) / log(K + 1)`.
//!
//! A confirmation is independent when it comes from a member other than the suspect, the
//! original accuser and earlier confirmers: another member's accusation (carried in the
//! update) or this node's own failed probe of the suspect. Relayed copies of one accusation
//! are not independent and do not count (counting them made false deaths under 20% loss ~50x
//! more frequent in the simulator).
//!
//! A timer running out is not enough to remove a member: the suspicion records its evidence
//! (the distinct accusers, and whether this node's own probe failed) and the state machine
//! declares the suspect dead only on evidence a single Byzantine member cannot manufacture
//! (see [`crate::membership::swim`]).

use std::cell::Cell;
use std::collections::BTreeMap;

use crate::id::NodeId;
use crate::membership::SwimConfig;
use crate::time::{Duration, Instant};

/// One running suspicion.
#[derive(Clone, Debug)]
pub(crate) struct Suspicion {
    /// The suspect's incarnation the suspicion is about.
    pub incarnation: u64,
    /// When it started here.
    pub started: Instant,
    /// When the suspect is declared dead unless it refutes first.
    pub deadline: Instant,
    /// Distinct members that accused the suspect at this incarnation, first one first
    /// (this node is not among them; see `own`). At most [`MAX_ACCUSERS`].
    pub accusers: Vec<NodeId>,
    /// This node's own probe of the suspect (direct and indirect) failed at this incarnation.
    pub own: bool,
    /// Times the timer ran out without enough evidence (each time this node probes the
    /// suspect itself before deciding).
    pub verifications: u32,
}

/// Most accusers remembered per suspicion (a quorum of `f + 1` is looked for only among
/// them; the member table holds at most a few hundred members).
pub(crate) const MAX_ACCUSERS: usize = 128;

impl Suspicion {
    /// A suspicion of a member at `incarnation` from `now`, raised by `accuser` (`None`: by
    /// this node's own failed probe).
    pub(crate) fn new(
        incarnation: u64,
        now: Instant,
        timeout: Duration,
        accuser: Option<NodeId>,
    ) -> Self {
        Suspicion {
            incarnation,
            started: now,
            deadline: now + timeout,
            accusers: accuser.into_iter().collect(),
            own: accuser.is_none(),
            verifications: 0,
        }
    }

    /// Independent confirmations beyond the first piece of evidence.
    fn confirmations(&self) -> u32 {
        (self.accusers.len() as u32 + self.own as u32).saturating_sub(1)
    }
}

/// The suspicion timeout for a mesh of `n` members after `c` independent confirmations.
pub(crate) fn timeout(cfg: &SwimConfig, n: u64, c: u32) -> Duration {
    let log10 = (n.max(1) as f64).log10().max(1.0);
    let min = cfg
        .probe_interval
        .mul_f64(cfg.suspicion_alpha as f64 * log10);
    let max = min * cfg.suspicion_beta.max(1);
    let k = cfg.suspicion_confirmations.max(1) as f64;
    let frac = ((c as f64 + 1.0).ln() / (k + 1.0).ln()).min(1.0);
    let t = max.as_secs_f64() - (max.as_secs_f64() - min.as_secs_f64()) * frac;
    Duration::from_secs_f64(t.max(min.as_secs_f64()))
}

/// The running suspicions, by suspect, with the earliest deadline cached.
#[derive(Clone, Debug, Default)]
pub(crate) struct Suspicions {
    by_node: BTreeMap<NodeId, Suspicion>,
    /// Earliest deadline; `None` means "recompute".
    earliest: Cell<Option<Instant>>,
}

impl Suspicions {
    /// Starts (or restarts) the suspicion of `n`.
    pub(crate) fn insert(&mut self, n: NodeId, s: Suspicion) {
        self.earliest.set(None);
        self.by_node.insert(n, s);
    }

    /// Ends the suspicion of `n`, if any.
    pub(crate) fn remove(&mut self, n: &NodeId) {
        if self.by_node.contains_key(n) {
            self.earliest.set(None);
            self.by_node.remove(n);
        }
    }

    /// The suspects, in id order.
    pub(crate) fn suspects(&self) -> Vec<NodeId> {
        self.by_node.keys().copied().collect()
    }

    /// The earliest deadline (`Instant::MAX` if none).
    pub(crate) fn next_deadline(&self) -> Instant {
        match self.earliest.get() {
            Some(m) => m,
            None => {
                let m = self
                    .by_node
                    .values()
                    .map(|s| s.deadline)
                    .min()
                    .unwrap_or(Instant::MAX);
                self.earliest.set(Some(m));
                m
            }
        }
    }

    /// The suspicion of `n`, if any.
    pub(crate) fn get(&self, n: &NodeId) -> Option<&Suspicion> {
        self.by_node.get(n)
    }

    /// Removes and returns the suspicions whose deadline has passed, in id order.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<(NodeId, Suspicion)> {
        if self.next_deadline() > now {
            return Vec::new();
        }
        let expired: Vec<NodeId> = self
            .by_node
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(n, _)| *n)
            .collect();
        self.earliest.set(None);
        expired
            .into_iter()
            .filter_map(|n| self.by_node.remove(&n).map(|s| (n, s)))
            .collect()
    }

    /// Moves the deadline of the suspicion of `node` at `incarnation` to `started + min` if
    /// that is earlier (another member declared it dead).
    pub(crate) fn hurry(&mut self, node: &NodeId, incarnation: u64, min: Duration) {
        if let Some(s) = self.by_node.get_mut(node)
            && s.incarnation == incarnation
            && s.started + min < s.deadline
        {
            s.deadline = s.started + min;
            self.earliest.set(None);
        }
    }

    /// Records `by` (`None`: this node's own failed probe) as evidence for the suspicion of
    /// `node` at `incarnation` if it is new: another accuser, or the first own failure. The
    /// first `k` independent confirmations move the deadline to `started +
    /// timeout(confirmations)`. Returns whether it was new.
    pub(crate) fn confirm(
        &mut self,
        node: NodeId,
        incarnation: u64,
        by: Option<NodeId>,
        k: usize,
        timeout: impl FnOnce(u32) -> Duration,
    ) -> bool {
        let Some(s) = self.by_node.get_mut(&node) else {
            return false;
        };
        if s.incarnation != incarnation {
            return false;
        }
        match by {
            None if s.own => return false,
            None => s.own = true,
            Some(b) if b == node || s.accusers.contains(&b) => return false,
            Some(_) if s.accusers.len() >= MAX_ACCUSERS => return false,
            Some(b) => s.accusers.push(b),
        }
        let c = s.confirmations();
        if c as usize <= k && c > 0 {
            s.deadline = s.deadline.min(s.started + timeout(c));
            self.earliest.set(None);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn suspicion_timeout_shrinks_with_confirmations_down_to_the_minimum() {
        let cfg = SwimConfig::default();
        let t0 = timeout(&cfg, 10_000, 0);
        let t1 = timeout(&cfg, 10_000, 1);
        let t3 = timeout(&cfg, 10_000, 3);
        assert_eq!(t0, Duration::from_secs(120)); // beta * alpha * log10(n) * 1s = 6 * 5 * 4
        assert!(t1 < t0 && t3 < t1);
        assert_eq!(t3, Duration::from_secs(20));
        assert_eq!(timeout(&cfg, 10_000, 50), t3);
    }

    #[test]
    fn only_independent_confirmations_count_and_expiry_takes_the_due_ones() {
        let mut s = Suspicions::default();
        let start = Instant::from_nanos(1_000);
        s.insert(
            n(1),
            Suspicion::new(3, start, Duration::from_secs(30), Some(n(2))),
        );
        let t = |c: u32| Duration::from_secs(30 / (c as u64 + 1));
        assert!(!s.confirm(n(1), 3, Some(n(2)), 3, t), "the accuser itself");
        assert!(!s.confirm(n(1), 3, Some(n(1)), 3, t), "the suspect");
        assert!(!s.confirm(n(1), 2, Some(n(3)), 3, t), "another incarnation");
        assert!(s.confirm(n(1), 3, Some(n(3)), 3, t));
        assert!(
            !s.confirm(n(1), 3, Some(n(3)), 3, t),
            "the same confirmer twice"
        );
        assert_eq!(s.next_deadline(), start + Duration::from_secs(15));
        assert!(s.confirm(n(1), 3, None, 3, t), "own failed probe");
        assert!(!s.confirm(n(1), 3, None, 3, t), "own failure counts once");
        assert_eq!(s.next_deadline(), start + Duration::from_secs(10));
        assert!(s.take_expired(start + Duration::from_secs(9)).is_empty());
        let due = s.take_expired(start + Duration::from_secs(10));
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, n(1));
        assert_eq!(due[0].1.accusers, vec![n(2), n(3)]);
        assert!(due[0].1.own);
        assert!(s.suspects().is_empty());
        assert_eq!(s.next_deadline(), Instant::MAX);
    }
}
