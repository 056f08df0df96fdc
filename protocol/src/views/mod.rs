//! HyParView-like bounded partial views.
//!
//! Each node keeps a small *active* view (symmetric neighbours: the links gossip and probes
//! use; ~`log2(n) + 1`) and a larger *passive* view (~6x, a reservoir of replacements kept fresh
//! by shuffles and by SWIM probing a few passive members). No node ever holds the full member
//! list, so memory is `O(log n)` per node even at 1M members.
//!
//! - Join: the joiner sends `Join` to a contact; the contact adds it to its active view, answers
//!   `JoinAck` with a passive sample, and starts a `ForwardJoin` random walk on each of its other
//!   active links; the walk adds the joiner to a passive view at `ttl == prwl` and to an active
//!   view where it ends (`ttl == 0` or a node with a single neighbour).
//! - Failure or `Disconnect`: the neighbour leaves the active view; a passive member is promoted
//!   with `Neighbor` (high priority when the active view is empty, which must be accepted).
//! - Shuffle: periodically a sample of both views walks `arwl` hops; the end node answers with a
//!   passive sample; both integrate what they got into their passive views.
//!
//! View changes are reported as [`ViewDelta`]s for the composed node (Plumtree's eager/lazy sets
//! follow the active view).

use std::collections::VecDeque;

use rand::seq::SliceRandom;
use rand::{Rng, RngCore};

use crate::id::NodeId;
use crate::time::{Duration, Instant, scale};
use crate::wire::{MAX_NODES, Message};

/// HyParView settings.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    /// Active view capacity (links used for gossip and probing). Default `floor(log2 n) + 1`
    /// clamped to 3..=24 ([`ViewConfig::for_size`]). Larger: more redundancy and lazy-push
    /// traffic; smaller: less fault tolerance.
    pub active_size: usize,
    /// Passive view capacity (replacement reservoir). Default 6x active. Memory: 32 bytes each.
    pub passive_size: usize,
    /// Active random walk length (ForwardJoin and Shuffle). Default 6.
    pub arwl: u8,
    /// Walk step at which a ForwardJoin adds the joiner to a passive view. Default 3.
    pub prwl: u8,
    /// Shuffle period. Default 10 s (jittered +-25%).
    pub shuffle_interval: Duration,
    /// Active members put in a shuffle sample. Default 3.
    pub shuffle_active: usize,
    /// Passive members put in a shuffle sample. Default 4.
    pub shuffle_passive: usize,
    /// How long to wait for a `NeighborReply` before trying another candidate. Default 2 s.
    pub neighbor_timeout: Duration,
    /// How long to wait for a `JoinAck` before retrying the join. Default 3 s.
    pub join_timeout: Duration,
}

impl ViewConfig {
    /// Sizes for a mesh of about `n` nodes: active `floor(log2 n) + 1` (3..=24), passive 6x.
    pub fn for_size(n: u64) -> Self {
        let log2 = 63 - n.max(2).leading_zeros() as usize;
        let active = (log2 + 1).clamp(3, 24);
        ViewConfig {
            active_size: active,
            passive_size: active * 6,
            arwl: 6,
            prwl: 3,
            shuffle_interval: Duration::from_secs(10),
            shuffle_active: 3,
            shuffle_passive: 4,
            neighbor_timeout: Duration::from_secs(2),
            join_timeout: Duration::from_secs(3),
        }
    }
}

impl Default for ViewConfig {
    fn default() -> Self {
        ViewConfig::for_size(1000)
    }
}

/// A change of the active view.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViewDelta {
    /// The node became an active neighbour.
    Up(NodeId),
    /// The node stopped being an active neighbour.
    Down(NodeId),
}

#[derive(Clone, Debug)]
struct Pending {
    peer: NodeId,
    deadline: Instant,
    victim: Option<NodeId>,
}

/// Active and passive views of one node.
#[derive(Clone, Debug)]
pub struct Views {
    cfg: ViewConfig,
    me: NodeId,
    active: Vec<NodeId>,
    passive: Vec<NodeId>,
    pending: Option<Pending>,
    next_shuffle: Instant,
    join: Option<(NodeId, Instant)>,
    deltas: Vec<ViewDelta>,
}

/// Outgoing messages shared by the parts of the composed node.
pub(crate) type Outbox = VecDeque<(NodeId, Message)>;

fn sample<R: RngCore>(from: &[NodeId], k: usize, skip: &[NodeId], rng: &mut R) -> Vec<NodeId> {
    let mut v: Vec<NodeId> = from.iter().filter(|n| !skip.contains(n)).copied().collect();
    v.shuffle(rng);
    v.truncate(k);
    v
}

fn jitter<R: RngCore>(d: Duration, rng: &mut R) -> Duration {
    scale(d, rng.random_range(75..=125), 100)
}

impl Views {
    /// Empty views for node `me`; the first shuffle is due one interval after `now`.
    pub fn new(cfg: ViewConfig, me: NodeId, now: Instant) -> Self {
        let next_shuffle = now + cfg.shuffle_interval;
        Views {
            cfg,
            me,
            active: Vec::new(),
            passive: Vec::new(),
            pending: None,
            next_shuffle,
            join: None,
            deltas: Vec::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &ViewConfig {
        &self.cfg
    }

    /// Active neighbours.
    pub fn active(&self) -> &[NodeId] {
        &self.active
    }

    /// Passive reservoir.
    pub fn passive(&self) -> &[NodeId] {
        &self.passive
    }

    /// Whether `n` is an active neighbour.
    pub fn is_active(&self, n: &NodeId) -> bool {
        self.active.contains(n)
    }

    /// Whether a join is still waiting for its `JoinAck`.
    pub fn joining(&self) -> bool {
        self.join.is_some()
    }

    /// Takes the active-view changes since the last call.
    pub fn take_deltas(&mut self) -> Vec<ViewDelta> {
        std::mem::take(&mut self.deltas)
    }

    /// Earliest deadline: shuffle, neighbour-request timeout, join retry.
    pub fn poll_timeout(&self) -> Instant {
        let mut t = self.next_shuffle;
        if let Some(p) = &self.pending {
            t = t.min(p.deadline);
        }
        if let Some((_, d)) = self.join {
            t = t.min(d);
        }
        t
    }

    pub(crate) fn add_active<R: RngCore>(
        &mut self,
        peer: NodeId,
        victim: Option<NodeId>,
        out: &mut Outbox,
        rng: &mut R,
    ) {
        if peer == self.me || self.active.contains(&peer) {
            return;
        }
        self.passive.retain(|p| *p != peer);
        if self.active.len() >= self.cfg.active_size {
            let i = victim
                .and_then(|v| self.active.iter().position(|a| *a == v))
                .unwrap_or_else(|| rng.random_range(0..self.active.len()));
            let dropped = self.active.swap_remove(i);
            out.push_back((dropped, Message::Disconnect { leaving: false }));
            self.deltas.push(ViewDelta::Down(dropped));
            self.add_passive(dropped, rng);
        }
        self.active.push(peer);
        self.deltas.push(ViewDelta::Up(peer));
    }

    pub(crate) fn add_passive<R: RngCore>(&mut self, peer: NodeId, rng: &mut R) {
        if peer == self.me
            || self.active.contains(&peer)
            || self.passive.contains(&peer)
            || self.cfg.passive_size == 0
        {
            return;
        }
        if self.passive.len() >= self.cfg.passive_size {
            let i = rng.random_range(0..self.passive.len());
            self.passive.swap_remove(i);
        }
        self.passive.push(peer);
    }

    /// Forgets `peer` (failed or left) in both views; returns whether it was active.
    pub fn remove(&mut self, peer: &NodeId) -> bool {
        self.passive.retain(|p| p != peer);
        if let Some(p) = &self.pending
            && p.peer == *peer
        {
            self.pending = None;
        }
        if let Some(i) = self.active.iter().position(|a| a == peer) {
            self.active.swap_remove(i);
            self.deltas.push(ViewDelta::Down(*peer));
            true
        } else {
            false
        }
    }

    /// Starts (or restarts) a join through `contact`.
    pub(crate) fn join(&mut self, now: Instant, contact: NodeId, out: &mut Outbox) {
        if contact == self.me {
            return;
        }
        self.join = Some((contact, now + self.cfg.join_timeout));
        out.push_back((contact, Message::Join));
    }

    pub(crate) fn on_join<R: RngCore>(&mut self, from: NodeId, out: &mut Outbox, rng: &mut R) {
        if from == self.me {
            return;
        }
        self.add_active(from, None, out, rng);
        let nodes = sample(&self.passive, MAX_NODES, &[from], rng);
        out.push_back((from, Message::JoinAck { nodes }));
        for p in self.active.iter().filter(|p| **p != from) {
            out.push_back((
                *p,
                Message::ForwardJoin {
                    joiner: from,
                    ttl: self.cfg.arwl,
                },
            ));
        }
    }

    pub(crate) fn on_forward_join<R: RngCore>(
        &mut self,
        from: NodeId,
        joiner: NodeId,
        ttl: u8,
        out: &mut Outbox,
        rng: &mut R,
    ) {
        if joiner == self.me {
            return;
        }
        let next: Vec<NodeId> = self
            .active
            .iter()
            .filter(|p| **p != from && **p != joiner)
            .copied()
            .collect();
        if ttl == 0 || self.active.len() <= 1 || next.is_empty() {
            if !self.active.contains(&joiner) {
                self.add_active(joiner, None, out, rng);
                let nodes = sample(&self.passive, MAX_NODES / 2, &[joiner], rng);
                out.push_back((joiner, Message::JoinAck { nodes }));
            }
            return;
        }
        if ttl == self.cfg.prwl {
            self.add_passive(joiner, rng);
        }
        let to = next[rng.random_range(0..next.len())];
        out.push_back((
            to,
            Message::ForwardJoin {
                joiner,
                ttl: ttl - 1,
            },
        ));
    }

    pub(crate) fn on_join_ack<R: RngCore>(
        &mut self,
        from: NodeId,
        nodes: &[NodeId],
        out: &mut Outbox,
        rng: &mut R,
    ) {
        self.join = None;
        self.add_active(from, None, out, rng);
        for n in nodes {
            self.add_passive(*n, rng);
        }
    }

    pub(crate) fn on_neighbor<R: RngCore>(
        &mut self,
        from: NodeId,
        high: bool,
        out: &mut Outbox,
        rng: &mut R,
    ) {
        let accept =
            high || self.active.len() < self.cfg.active_size || self.active.contains(&from);
        if accept {
            self.add_active(from, None, out, rng);
        } else {
            self.add_passive(from, rng);
        }
        out.push_back((from, Message::NeighborReply { accepted: accept }));
    }

    pub(crate) fn on_neighbor_reply<R: RngCore>(
        &mut self,
        from: NodeId,
        accepted: bool,
        out: &mut Outbox,
        rng: &mut R,
    ) {
        let mut victim = None;
        if let Some(p) = &self.pending
            && p.peer == from
        {
            victim = p.victim;
            self.pending = None;
        }
        if accepted {
            self.add_active(from, victim, out, rng);
        }
    }

    pub(crate) fn on_disconnect<R: RngCore>(&mut self, from: NodeId, leaving: bool, rng: &mut R) {
        self.remove(&from);
        if !leaving {
            self.add_passive(from, rng);
        }
    }

    pub(crate) fn on_shuffle<R: RngCore>(
        &mut self,
        from: NodeId,
        origin: NodeId,
        ttl: u8,
        nodes: Vec<NodeId>,
        out: &mut Outbox,
        rng: &mut R,
    ) {
        if origin == self.me {
            return;
        }
        let next: Vec<NodeId> = self
            .active
            .iter()
            .filter(|p| **p != from && **p != origin)
            .copied()
            .collect();
        if ttl > 1 && !next.is_empty() {
            let to = next[rng.random_range(0..next.len())];
            out.push_back((
                to,
                Message::Shuffle {
                    origin,
                    ttl: ttl - 1,
                    nodes,
                },
            ));
            return;
        }
        let reply = sample(&self.passive, nodes.len(), &nodes, rng);
        out.push_back((origin, Message::ShuffleReply { nodes: reply }));
        for n in nodes {
            self.add_passive(n, rng);
        }
    }

    pub(crate) fn on_shuffle_reply<R: RngCore>(&mut self, nodes: &[NodeId], rng: &mut R) {
        for n in nodes {
            self.add_passive(*n, rng);
        }
    }

    /// Sends a `Neighbor` request to `peer` now (used by fill, rebalancing and partition heal).
    pub(crate) fn request_neighbor(
        &mut self,
        now: Instant,
        peer: NodeId,
        high: bool,
        victim: Option<NodeId>,
        out: &mut Outbox,
    ) {
        if peer == self.me || self.active.contains(&peer) {
            return;
        }
        out.push_back((
            peer,
            Message::Neighbor {
                high_priority: high,
            },
        ));
        if self.pending.is_none() {
            self.pending = Some(Pending {
                peer,
                deadline: now + self.cfg.neighbor_timeout,
                victim,
            });
        }
    }

    /// Whether a neighbour request is outstanding.
    pub fn has_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// Timer work: neighbour-request timeout, join retry, shuffle. Returns the candidate whose
    /// request timed out (the caller may count it as a failure).
    pub(crate) fn on_timeout<R: RngCore>(
        &mut self,
        now: Instant,
        out: &mut Outbox,
        rng: &mut R,
    ) -> Option<NodeId> {
        let mut failed = None;
        if let Some(p) = &self.pending
            && p.deadline <= now
        {
            // keep the candidate (SWIM decides liveness; under loss a lost reply is common),
            // but move it to the back so another one is tried next
            failed = Some(p.peer);
            let peer = p.peer;
            if let Some(i) = self.passive.iter().position(|x| *x == peer) {
                let x = self.passive.remove(i);
                self.passive.insert(0, x);
            }
            self.pending = None;
        }
        if let Some((contact, d)) = self.join
            && d <= now
        {
            // retry through the contact, or through a passive member if we know any
            let to = if self.passive.is_empty() {
                contact
            } else {
                self.passive[rng.random_range(0..self.passive.len())]
            };
            self.join(now, to, out);
        }
        if self.next_shuffle <= now {
            self.next_shuffle = now + jitter(self.cfg.shuffle_interval, rng);
            if !self.active.is_empty() {
                let to = self.active[rng.random_range(0..self.active.len())];
                let mut nodes = vec![self.me];
                nodes.extend(sample(&self.active, self.cfg.shuffle_active, &[to], rng));
                nodes.extend(sample(&self.passive, self.cfg.shuffle_passive, &[to], rng));
                nodes.truncate(MAX_NODES);
                out.push_back((
                    to,
                    Message::Shuffle {
                        origin: self.me,
                        ttl: self.cfg.arwl,
                        nodes,
                    },
                ));
            }
        }
        failed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn n(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    #[test]
    fn sizes_follow_log2_n() {
        assert_eq!(ViewConfig::for_size(10_000).active_size, 14);
        assert_eq!(ViewConfig::for_size(1_000_000).active_size, 20);
        assert_eq!(ViewConfig::for_size(1_000_000).passive_size, 120);
        assert_eq!(ViewConfig::for_size(2).active_size, 3);
    }

    #[test]
    fn a_full_active_view_demotes_a_member_to_passive_with_a_disconnect() {
        let mut cfg = ViewConfig::for_size(8);
        cfg.active_size = 2;
        let mut v = Views::new(cfg, n(0), Instant::ZERO);
        let mut out = Outbox::new();
        let mut rng = SmallRng::seed_from_u64(7);
        for i in 1..=3 {
            v.add_active(n(i), None, &mut out, &mut rng);
        }
        assert_eq!(v.active().len(), 2);
        assert_eq!(v.passive().len(), 1);
        assert!(matches!(
            out.pop_front(),
            Some((_, Message::Disconnect { leaving: false }))
        ));
        assert!(v.active().contains(&n(3)));
    }

    #[test]
    fn join_is_acked_and_forwarded_to_the_other_neighbours() {
        let mut v = Views::new(ViewConfig::for_size(64), n(0), Instant::ZERO);
        let mut out = Outbox::new();
        let mut rng = SmallRng::seed_from_u64(7);
        v.add_active(n(1), None, &mut out, &mut rng);
        v.add_active(n(2), None, &mut out, &mut rng);
        v.on_join(n(9), &mut out, &mut rng);
        let msgs: Vec<_> = out.drain(..).collect();
        assert!(
            msgs.iter()
                .any(|(to, m)| *to == n(9) && matches!(m, Message::JoinAck { .. }))
        );
        assert_eq!(
            msgs.iter()
                .filter(|(_, m)| matches!(m, Message::ForwardJoin { ttl: 6, .. }))
                .count(),
            2
        );
        assert!(v.is_active(&n(9)));
    }

    #[test]
    fn a_forward_join_walk_ends_in_an_active_view_at_ttl_zero() {
        let mut v = Views::new(ViewConfig::for_size(64), n(0), Instant::ZERO);
        let mut out = Outbox::new();
        let mut rng = SmallRng::seed_from_u64(7);
        v.add_active(n(1), None, &mut out, &mut rng);
        v.add_active(n(2), None, &mut out, &mut rng);
        v.on_forward_join(n(1), n(9), 3, &mut out, &mut rng);
        assert!(v.passive().contains(&n(9)), "prwl step adds to passive");
        assert!(
            matches!(out.pop_back(), Some((to, Message::ForwardJoin { ttl: 2, .. })) if to == n(2))
        );
        v.on_forward_join(n(1), n(8), 0, &mut out, &mut rng);
        assert!(v.is_active(&n(8)));
    }
}
