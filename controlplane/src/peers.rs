//! Peer table: bootstrap, join, peer exchange and liveness, as a sans-IO
//! state machine (time comes in as an argument; datagrams to send come out of
//! [`PeerTable::poll_transmit`]).
//!
//! A peer is *live* once this node has received a validly signed datagram
//! from it at its address. Addresses learned second-hand (peer lists) are only
//! *pending*: the node sends them a `Join` and never forwards data to them
//! until they answer, so a forged peer list cannot turn the mesh into a
//! reflector aimed at a third party. A live peer that stays silent for
//! `peer_timeout` is dropped from the live set; a `Leave` drops it at once.
//!
//! Peers that stopped answering (not those that left) are remembered for
//! `forget_after` and probed with a `Join` every few seconds, together with
//! the seeds. That is how the two sides of a healed partition find each
//! other again without anyone re-joining by hand; anti-entropy then carries
//! the messages published on each side to the other. The same memory gives
//! partition detection: with `n` known members (self included) and
//! `f = ⌊(n − 1)/3⌋`, a node that reaches fewer than `n − f` says it is cut off.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use dataplane::identity::NodeId;
use rand::Rng;
use rand::rngs::SmallRng;
use rand::seq::IteratorRandom;

use crate::control::{ControlMsg, MAX_PEERS_PER_LIST};

/// Monotonic time in nanoseconds from an arbitrary origin.
pub type Nanos = u64;

/// Peer-table settings.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// Seed addresses.
    pub bootstrap: Vec<SocketAddr>,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Silence after which a live peer is dropped.
    pub peer_timeout: Duration,
    /// Peer-list exchange interval.
    pub exchange_interval: Duration,
    /// Most live peers.
    pub max_peers: usize,
    /// How long a peer that stopped answering is remembered (and probed)
    /// before it is forgotten.
    pub forget_after: Duration,
}

/// A live peer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its node id.
    pub id: NodeId,
    /// Its mesh address.
    pub addr: SocketAddr,
    /// When it was last heard from.
    pub last_heard: Nanos,
}

/// Something the table wants the driver to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A peer became live.
    Up(NodeId, SocketAddr),
    /// A peer left or timed out.
    Down(NodeId, SocketAddr),
    /// This node can reach fewer than `n − f` of the `n` members it knows
    /// (itself included, `f = ⌊(n − 1) / 3⌋`): it is cut off from the mesh.
    PartitionDetected {
        /// Members reachable, this node included.
        reachable: usize,
        /// Members known, this node included.
        known: usize,
    },
    /// Enough members are reachable again.
    PartitionHealed {
        /// Members reachable, this node included.
        reachable: usize,
        /// Members known, this node included.
        known: usize,
    },
}

/// Seeds are re-joined this often even when the node has peers, so that two
/// halves of a healed partition find each other again.
const SEED_REFRESH: Duration = Duration::from_secs(5);

/// The peer table.
pub struct PeerTable {
    me: NodeId,
    cfg: PeerConfig,
    live: HashMap<NodeId, PeerInfo>,
    /// Peers that timed out: last address and when they were last heard.
    unreachable: HashMap<NodeId, (SocketAddr, Nanos)>,
    partitioned: bool,
    pending: HashMap<SocketAddr, Nanos>,
    out: VecDeque<(SocketAddr, ControlMsg)>,
    events: VecDeque<PeerEvent>,
    next_heartbeat: Nanos,
    next_exchange: Nanos,
    next_seed_refresh: Nanos,
    version: u64,
    rng: SmallRng,
}

fn ns(d: Duration) -> Nanos {
    d.as_nanos() as Nanos
}

impl PeerTable {
    /// A table for node `me`; joins the seeds on the first timeout.
    pub fn new(me: NodeId, cfg: PeerConfig, rng: SmallRng) -> PeerTable {
        PeerTable {
            me,
            cfg,
            live: HashMap::new(),
            unreachable: HashMap::new(),
            partitioned: false,
            pending: HashMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_heartbeat: 0,
            next_exchange: 0,
            next_seed_refresh: 0,
            version: 0,
            rng,
        }
    }

    /// Changes whenever the live set changes (to republish the forward set).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Live peers, in no particular order.
    pub fn live(&self) -> impl Iterator<Item = &PeerInfo> {
        self.live.values()
    }

    /// Number of live peers.
    pub fn live_count(&self) -> usize {
        self.live.len()
    }

    /// Members this node knows, itself included (live + unreachable + 1).
    pub fn known_count(&self) -> usize {
        self.live.len() + self.unreachable.len() + 1
    }

    /// Ids of peers that stopped answering and are still remembered.
    pub fn unreachable_ids(&self) -> impl Iterator<Item = &NodeId> {
        self.unreachable.keys()
    }

    /// Peers that stopped answering and are still remembered.
    pub fn unreachable_count(&self) -> usize {
        self.unreachable.len()
    }

    /// True while this node reaches fewer than `n − f` known members.
    pub fn partitioned(&self) -> bool {
        self.partitioned
    }

    fn update_partition(&mut self) {
        let known = self.known_count();
        let reachable = self.live.len() + 1;
        let f = (known - 1) / 3;
        let cut = reachable < known - f;
        if cut != self.partitioned {
            self.partitioned = cut;
            self.events.push_back(if cut {
                PeerEvent::PartitionDetected { reachable, known }
            } else {
                PeerEvent::PartitionHealed { reachable, known }
            });
        }
    }

    /// Number of pending addresses.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The live peer at `addr`, if any.
    pub fn peer_at(&self, addr: SocketAddr) -> Option<&PeerInfo> {
        self.live.values().find(|p| p.addr == addr)
    }

    /// A random live peer.
    pub fn random_live(&mut self) -> Option<SocketAddr> {
        self.live.values().map(|p| p.addr).choose(&mut self.rng)
    }

    /// Handles a validly signed datagram from `origin` at `from`.
    pub fn handle_message(
        &mut self,
        now: Nanos,
        from: SocketAddr,
        origin: NodeId,
        msg: &ControlMsg,
    ) {
        if origin == self.me {
            return;
        }
        if let ControlMsg::Leave = msg {
            if let Some(p) = self.live.remove(&origin) {
                self.version += 1;
                self.events.push_back(PeerEvent::Down(p.id, p.addr));
            }
            // A clean departure is not a failure: forget it at once.
            self.unreachable.remove(&origin);
            self.update_partition();
            return;
        }
        let was_live = self.mark_live(now, from, origin);
        match msg {
            ControlMsg::Join if !was_live => {
                let list = self.sample_peers(Some(origin));
                self.out.push_back((from, ControlMsg::PeerList(list)));
            }
            ControlMsg::PeerList(peers) => {
                for (id, addr) in peers {
                    if *id == self.me
                        || self.live.contains_key(id)
                        || self.pending.contains_key(addr)
                    {
                        continue;
                    }
                    if self.pending.len() >= 2 * self.cfg.max_peers {
                        break;
                    }
                    self.pending.insert(*addr, now);
                    self.out.push_back((*addr, ControlMsg::Join));
                }
            }
            _ => {}
        }
    }

    /// Records `origin` as live at `from`; returns whether it already was.
    fn mark_live(&mut self, now: Nanos, from: SocketAddr, origin: NodeId) -> bool {
        self.pending.remove(&from);
        self.unreachable.remove(&origin);
        if let Some(p) = self.live.get_mut(&origin) {
            p.last_heard = now;
            if p.addr != from {
                p.addr = from;
                self.version += 1;
            }
            return true;
        }
        if self.live.len() >= self.cfg.max_peers {
            return false;
        }
        // Another id at the same address (a restart with a new key) replaces it.
        let stale: Vec<NodeId> = self
            .live
            .values()
            .filter(|p| p.addr == from)
            .map(|p| p.id)
            .collect();
        for id in stale {
            if let Some(p) = self.live.remove(&id) {
                self.events.push_back(PeerEvent::Down(p.id, p.addr));
            }
        }
        self.live.insert(
            origin,
            PeerInfo {
                id: origin,
                addr: from,
                last_heard: now,
            },
        );
        self.version += 1;
        self.events.push_back(PeerEvent::Up(origin, from));
        self.update_partition();
        false
    }

    fn sample_peers(&mut self, exclude: Option<NodeId>) -> Vec<(NodeId, SocketAddr)> {
        self.live
            .values()
            .filter(|p| Some(p.id) != exclude)
            .map(|p| (p.id, p.addr))
            .choose_multiple(&mut self.rng, MAX_PEERS_PER_LIST)
    }

    /// Runs due timers. Extra calls are harmless.
    pub fn handle_timeout(&mut self, now: Nanos) {
        // Expire silent peers.
        let timeout = ns(self.cfg.peer_timeout);
        let dead: Vec<NodeId> = self
            .live
            .values()
            .filter(|p| now.saturating_sub(p.last_heard) > timeout)
            .map(|p| p.id)
            .collect();
        for id in dead {
            if let Some(p) = self.live.remove(&id) {
                self.version += 1;
                self.events.push_back(PeerEvent::Down(p.id, p.addr));
                self.unreachable.insert(p.id, (p.addr, p.last_heard));
            }
        }
        let forget = ns(self.cfg.forget_after);
        self.unreachable
            .retain(|_, (_, last)| now.saturating_sub(*last) <= forget);
        self.update_partition();
        self.pending
            .retain(|_, since| now.saturating_sub(*since) <= timeout);

        if now >= self.next_heartbeat {
            self.next_heartbeat = now + ns(self.cfg.heartbeat_interval);
            let addrs: Vec<SocketAddr> = self.live.values().map(|p| p.addr).collect();
            for a in addrs {
                self.out.push_back((a, ControlMsg::Join));
            }
            // Without peers, keep knocking on the seeds.
            if self.live.is_empty() {
                self.join_seeds();
            }
        }
        if now >= self.next_seed_refresh {
            let jitter = self.rng.random_range(0..=ns(SEED_REFRESH) / 4);
            self.next_seed_refresh = now + ns(SEED_REFRESH) + jitter;
            self.join_seeds();
        }
        if now >= self.next_exchange {
            self.next_exchange = now + ns(self.cfg.exchange_interval);
            if let Some(target) = self
                .live
                .values()
                .map(|p| (p.id, p.addr))
                .choose(&mut self.rng)
            {
                let list = self.sample_peers(Some(target.0));
                self.out.push_back((target.1, ControlMsg::PeerList(list)));
            }
        }
    }

    /// Knocks on the seeds and on remembered unreachable peers.
    fn join_seeds(&mut self) {
        let seeds: Vec<SocketAddr> = self
            .cfg
            .bootstrap
            .iter()
            .chain(self.unreachable.values().map(|(a, _)| a))
            .filter(|s| !self.live.values().any(|p| p.addr == **s))
            .copied()
            .collect();
        for s in seeds {
            self.out.push_back((s, ControlMsg::Join));
        }
    }

    /// Tells every live peer this node is leaving.
    pub fn leave(&mut self) {
        let addrs: Vec<SocketAddr> = self.live.values().map(|p| p.addr).collect();
        for a in addrs {
            self.out.push_back((a, ControlMsg::Leave));
        }
    }

    /// Next datagram to send. Changes after `handle_message`,
    /// `handle_timeout` and `leave`.
    pub fn poll_transmit(&mut self) -> Option<(SocketAddr, ControlMsg)> {
        self.out.pop_front()
    }

    /// Next event. Changes after `handle_message` and `handle_timeout`.
    pub fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }

    /// Earliest instant `handle_timeout` has work. Changes after
    /// `handle_timeout`.
    pub fn poll_timeout(&self) -> Nanos {
        self.next_heartbeat
            .min(self.next_exchange)
            .min(self.next_seed_refresh)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn cfg(bootstrap: Vec<SocketAddr>) -> PeerConfig {
        PeerConfig {
            bootstrap,
            heartbeat_interval: Duration::from_millis(100),
            peer_timeout: Duration::from_millis(300),
            exchange_interval: Duration::from_millis(200),
            max_peers: 8,
            forget_after: Duration::from_secs(10),
        }
    }

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 7400))
    }

    fn drain(t: &mut PeerTable) -> Vec<(SocketAddr, ControlMsg)> {
        std::iter::from_fn(|| t.poll_transmit()).collect()
    }

    #[test]
    fn first_timeout_joins_the_seeds() {
        let mut t = PeerTable::new(
            NodeId([0; 32]),
            cfg(vec![addr(1), addr(2)]),
            SmallRng::seed_from_u64(1),
        );
        t.handle_timeout(0);
        let out = drain(&mut t);
        assert!(out.contains(&(addr(1), ControlMsg::Join)));
        assert!(out.contains(&(addr(2), ControlMsg::Join)));
    }

    #[test]
    fn a_join_from_a_new_peer_makes_it_live_and_gets_a_peer_list() {
        let mut t = PeerTable::new(NodeId([0; 32]), cfg(vec![]), SmallRng::seed_from_u64(1));
        t.handle_message(0, addr(3), NodeId([3; 32]), &ControlMsg::Join);
        assert_eq!(t.live_count(), 1);
        assert_eq!(
            t.poll_event(),
            Some(PeerEvent::Up(NodeId([3; 32]), addr(3)))
        );
        let out = drain(&mut t);
        assert!(matches!(&out[..], [(a, ControlMsg::PeerList(_))] if *a == addr(3)));
        // A heartbeat from a live peer gets no reply.
        t.handle_message(1, addr(3), NodeId([3; 32]), &ControlMsg::Join);
        assert!(drain(&mut t).is_empty());
    }

    #[test]
    fn learned_peers_stay_pending_until_they_answer() {
        let mut t = PeerTable::new(NodeId([0; 32]), cfg(vec![]), SmallRng::seed_from_u64(1));
        let list =
            ControlMsg::PeerList(vec![(NodeId([5; 32]), addr(5)), (NodeId([0; 32]), addr(9))]);
        t.handle_message(0, addr(3), NodeId([3; 32]), &list);
        assert_eq!(t.live_count(), 1, "only the sender is live");
        assert_eq!(t.pending_count(), 1, "self is never added");
        assert!(drain(&mut t).contains(&(addr(5), ControlMsg::Join)));
        t.handle_message(1, addr(5), NodeId([5; 32]), &ControlMsg::PeerList(vec![]));
        assert_eq!(t.live_count(), 2);
        assert_eq!(t.pending_count(), 0);
    }

    #[test]
    fn silent_peers_time_out_and_leave_removes_at_once() {
        let mut t = PeerTable::new(NodeId([0; 32]), cfg(vec![]), SmallRng::seed_from_u64(1));
        t.handle_message(0, addr(3), NodeId([3; 32]), &ControlMsg::Join);
        t.handle_message(0, addr(4), NodeId([4; 32]), &ControlMsg::Join);
        t.handle_message(
            ns(Duration::from_millis(250)),
            addr(4),
            NodeId([4; 32]),
            &ControlMsg::Join,
        );
        let v = t.version();
        t.handle_timeout(ns(Duration::from_millis(350)));
        assert_eq!(t.live_count(), 1);
        assert!(t.version() > v);
        t.handle_message(
            ns(Duration::from_millis(360)),
            addr(4),
            NodeId([4; 32]),
            &ControlMsg::Leave,
        );
        assert_eq!(t.live_count(), 0);
    }

    #[test]
    fn live_set_is_bounded() {
        let mut t = PeerTable::new(NodeId([0; 32]), cfg(vec![]), SmallRng::seed_from_u64(1));
        for i in 1..=20u8 {
            t.handle_message(0, addr(i), NodeId([i; 32]), &ControlMsg::Join);
        }
        assert_eq!(t.live_count(), 8);
    }
}

#[cfg(test)]
mod partition_tests {
    use super::*;
    use rand::SeedableRng;

    fn addr(i: u8) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, i], 7400))
    }

    fn table() -> PeerTable {
        PeerTable::new(
            NodeId([0; 32]),
            PeerConfig {
                bootstrap: vec![],
                heartbeat_interval: Duration::from_millis(100),
                peer_timeout: Duration::from_millis(300),
                exchange_interval: Duration::from_millis(200),
                max_peers: 16,
                forget_after: Duration::from_secs(10),
            },
            SmallRng::seed_from_u64(3),
        )
    }

    #[test]
    fn losing_more_than_f_members_is_a_partition_and_their_return_heals_it() {
        let mut t = table();
        // 6 peers + self = 7 known, f = 2: cut off below 5 reachable.
        for i in 1..=6u8 {
            t.handle_message(0, addr(i), NodeId([i; 32]), &ControlMsg::Join);
        }
        while t.poll_event().is_some() {}
        // Peers 1 and 2 keep answering; 3..6 go silent.
        let late = ns(Duration::from_millis(400));
        for i in 1..=2u8 {
            t.handle_message(late - 1, addr(i), NodeId([i; 32]), &ControlMsg::Join);
        }
        t.handle_timeout(late);
        assert!(t.partitioned());
        assert_eq!(
            (t.live_count(), t.unreachable_count(), t.known_count()),
            (2, 4, 7)
        );
        let events: Vec<PeerEvent> = std::iter::from_fn(|| t.poll_event()).collect();
        assert!(
            events.contains(&PeerEvent::PartitionDetected {
                reachable: 3,
                known: 7
            }),
            "{events:?}"
        );
        // Unreachable peers are probed along with the seeds.
        t.handle_timeout(late + ns(Duration::from_secs(7)));
        let probes: Vec<SocketAddr> = std::iter::from_fn(|| t.poll_transmit())
            .filter(|(_, m)| *m == ControlMsg::Join)
            .map(|(a, _)| a)
            .collect();
        for i in 3..=6u8 {
            assert!(probes.contains(&addr(i)), "peer {i} not probed: {probes:?}");
        }
        // The other side answers: healed.
        let back = late + ns(Duration::from_secs(7));
        for i in 3..=6u8 {
            t.handle_message(back, addr(i), NodeId([i; 32]), &ControlMsg::Join);
        }
        assert!(!t.partitioned());
        let events: Vec<PeerEvent> = std::iter::from_fn(|| t.poll_event()).collect();
        assert!(
            events
                .iter()
                .any(|e| matches!(e, PeerEvent::PartitionHealed { .. }))
        );
    }

    #[test]
    fn one_crash_in_seven_is_not_a_partition_and_a_leave_is_forgotten() {
        let mut t = table();
        for i in 1..=6u8 {
            t.handle_message(0, addr(i), NodeId([i; 32]), &ControlMsg::Join);
        }
        let late = ns(Duration::from_millis(400));
        for i in 1..=5u8 {
            t.handle_message(late - 1, addr(i), NodeId([i; 32]), &ControlMsg::Join);
        }
        t.handle_timeout(late);
        assert!(!t.partitioned());
        assert_eq!(t.unreachable_count(), 1);
        t.handle_message(late, addr(5), NodeId([5; 32]), &ControlMsg::Leave);
        assert_eq!(t.known_count(), 6);
        // Forgotten after forget_after.
        t.handle_timeout(late + ns(Duration::from_secs(11)));
        assert_eq!(t.unreachable_count(), 0);
    }
}
