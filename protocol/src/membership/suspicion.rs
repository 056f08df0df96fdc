//! Lifeguard suspicion timers: a suspect is declared `Dead` after a timeout that starts at
//! `max = beta * min` and shrinks towards `min = alpha * log10(n) * period` as independent
//! confirmations arrive: `max - (max - min) * log(C + 1) / log(K + 1)`.
//!
//! A confirmation is independent when it comes from a member other than the suspect, the
//! original accuser and earlier confirmers: another member's accusation (carried in the
//! update) or this node's own failed probe of the suspect. Relayed copies of one accusation
//! are not independent and do not count (counting them made false deaths under 20% loss ~50x
//! more frequent in the simulator).

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
    /// Who raised it (from the update's accuser, or this node).
    pub accuser: Option<NodeId>,
    /// Independent confirmations (other accusers, or this node's own failed probe).
    pub confirmers: Vec<NodeId>,
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

    /// Removes and returns the suspicions whose deadline has passed, as `(suspect,
    /// incarnation)` in id order.
    pub(crate) fn take_expired(&mut self, now: Instant) -> Vec<(NodeId, u64)> {
        if self.next_deadline() > now {
            return Vec::new();
        }
        let expired: Vec<(NodeId, u64)> = self
            .by_node
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(n, s)| (*n, s.incarnation))
            .collect();
        for (n, _) in &expired {
            self.remove(n);
        }
        expired
    }

    /// Counts `by` as a confirmation of the suspicion of `node` at `incarnation` if it is
    /// independent and fewer than `k` were counted; the deadline moves to `started +
    /// timeout(confirmations)`. Returns whether it counted.
    pub(crate) fn confirm(
        &mut self,
        node: NodeId,
        incarnation: u64,
        by: NodeId,
        k: usize,
        timeout: impl FnOnce(u32) -> Duration,
    ) -> bool {
        let Some(s) = self.by_node.get_mut(&node) else {
            return false;
        };
        if s.incarnation != incarnation
            || by == node
            || s.accuser == Some(by)
            || s.confirmers.contains(&by)
            || s.confirmers.len() >= k
        {
            return false;
        }
        let t = timeout(s.confirmers.len() as u32 + 1);
        s.confirmers.push(by);
        s.deadline = s.started + t;
        self.earliest.set(None);
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
            Suspicion {
                incarnation: 3,
                started: start,
                deadline: start + Duration::from_secs(30),
                accuser: Some(n(2)),
                confirmers: Vec::new(),
            },
        );
        let t = |c: u32| Duration::from_secs(30 / (c as u64 + 1));
        assert!(!s.confirm(n(1), 3, n(2), 3, t), "the accuser itself");
        assert!(!s.confirm(n(1), 3, n(1), 3, t), "the suspect");
        assert!(!s.confirm(n(1), 2, n(3), 3, t), "another incarnation");
        assert!(s.confirm(n(1), 3, n(3), 3, t));
        assert!(!s.confirm(n(1), 3, n(3), 3, t), "the same confirmer twice");
        assert_eq!(s.next_deadline(), start + Duration::from_secs(15));
        assert!(s.take_expired(start + Duration::from_secs(14)).is_empty());
        assert_eq!(
            s.take_expired(start + Duration::from_secs(15)),
            vec![(n(1), 3)]
        );
        assert!(s.suspects().is_empty());
        assert_eq!(s.next_deadline(), Instant::MAX);
    }
}
