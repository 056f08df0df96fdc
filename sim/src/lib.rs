//! Deterministic simulator running many [`mesh_protocol::Node`] cores in one process.
//!
//! - **Clock**: virtual nanoseconds; an event queue keyed by `(time, seq)` (a `BinaryHeap`), so
//!   ties resolve in insertion order and a run is a pure function of its [`SimConfig`].
//! - **Network model** (seeded): nodes sit at random points of a unit square; one-way latency is
//!   `base + span * distance + U[0, jitter)` (defaults 10 ms, 50 ms, 5 ms), so RTT-aware peer
//!   choice has something to find. The fixed per-hop part matters: with a tiny one, the fastest
//!   paths (and so the Plumtree tree) take many short hops.
//!   Each message is lost with probability [`SimConfig::loss`]. A partition assigns every node to
//!   one of two groups and drops every message between groups until it heals.
//! - **Churn**: [`SimConfig::churn`] of the nodes crash during the broadcast phase and restart
//!   5-15 s later with empty state (incarnation 0) and join again through a random live node.
//! - **Bootstrap**: nodes start one by one and join through a random earlier node
//!   (HyParView join + forward-join walks), then the mesh warms up before broadcasts start.
//!
//! The [`Report`] gives, per broadcast, rounds (hops) and time to full delivery and payload
//! transmissions; plus false failure detections and, for partition runs, convergence after the
//! heal. The same config (seed included) always yields the same report. Setting the environment
//! variable `MESH_SIM_DEBUG` prints hop histograms and late or missing deliveries to stderr.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use mesh_protocol::membership::statement::{sign_accusation, sign_self};
use mesh_protocol::wire::MemberUpdate;
use mesh_protocol::{
    Command, Event, Instant, Message, ModelAuth, MsgId, Node, NodeConfig, NodeId, Reachability,
    Status,
};
use mesh_protocol::{MemberState, Signature};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of nodes.
    pub nodes: usize,
    /// Seed for everything random (network, script, every node's RNG).
    pub seed: u64,
    /// Per-message loss probability (0.0..1.0), applied to every message all run long.
    pub loss: f64,
    /// Fraction of nodes that crash during the broadcast phase and restart 5-15 s later.
    pub churn: f64,
    /// Split the mesh in two halves during the broadcast phase, then heal.
    pub partition: bool,
    /// How long the partition lasts (ms).
    pub partition_ms: u64,
    /// Number of broadcasts.
    pub broadcasts: usize,
    /// Gap between broadcasts (ms).
    pub broadcast_interval_ms: u64,
    /// Payload bytes per broadcast.
    pub payload: usize,
    /// Latency model: fixed per-hop one-way latency (µs).
    pub latency_base_us: u64,
    /// Latency model: extra one-way latency across the whole unit square (µs).
    pub latency_span_us: u64,
    /// Latency model: uniform per-message jitter (µs).
    pub latency_jitter_us: u64,
    /// Gap between node starts during bootstrap (µs).
    pub join_spacing_us: u64,
    /// Quiet time between the last join and the first broadcast (ms).
    pub warmup_ms: u64,
    /// Give up this long after the last scripted action (ms).
    pub max_tail_ms: u64,
    /// Core settings (defaults from [`NodeConfig::for_size`] with [`SimConfig::new`]).
    pub node: NodeConfig,
    /// Fraction of nodes that are Byzantine (chosen by the seed, never node 0, the lowest id,
    /// unless [`SimConfig::byzantine_root`]). They never publish and are not counted as
    /// receivers. What they do is [`SimConfig::tree_attack`]; with [`TreeAttack::None`] they
    /// behave honestly, which is the honest-only run of the same seed and topology.
    pub byzantine: f64,
    /// Node 0 (the lowest id, so the tree's rightful root) is Byzantine too.
    pub byzantine_root: bool,
    /// What the Byzantine nodes do to the tree.
    pub tree_attack: TreeAttack,
    /// What the Byzantine nodes do to membership.
    pub member_attack: MemberAttack,
}

/// A Byzantine behaviour against membership, run by the simulator on a Byzantine node's
/// SWIM messages (its core runs honestly inside; only the piggybacked updates are changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberAttack {
    /// Honest.
    None,
    /// Every SWIM message carries, after the sender's own statement: a validly signed
    /// `Dead` accusation about the honest member all Byzantine nodes target this second (at
    /// its real incarnation, with its real proof, when the sender holds it), a `Suspect` one
    /// about a random honest member it knows, `Dead` at `u64::MAX` with a made-up proof, and a
    /// Sybil join: a made-up id's `Alive` signed with the sender's own key (or unsigned).
    FalseAccusations,
}

/// A Byzantine behaviour against the tree, run by the simulator on a Byzantine node's output
/// (its core runs honestly inside; only what it sends is changed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeAttack {
    /// Honest.
    None,
    /// Attract the tree, then drop: beacons claim one hop from the root (the real root and
    /// signed wave), and every payload (`Gossip`) and announcement (`IHave`) is dropped.
    Withhold,
    /// Claim the root 00..00 (lower than every id) at hop 0 in a far-future wave, signed with
    /// the attacker's own key (all it holds), and drop every payload and announcement.
    FakeRoot,
}

impl SimConfig {
    /// A loss-free, churn-free run of `nodes` nodes with 10 broadcasts.
    pub fn new(nodes: usize, seed: u64) -> Self {
        let mut node = NodeConfig::for_size(nodes as u64);
        // one-way latency is at most ~90 ms: a 400 ms direct timeout is generous
        node.gossip.anti_entropy_interval = mesh_protocol::Duration::from_secs(3);
        SimConfig {
            nodes,
            seed,
            loss: 0.0,
            churn: 0.0,
            partition: false,
            partition_ms: 60_000,
            broadcasts: 10,
            broadcast_interval_ms: 1000,
            payload: 64,
            latency_base_us: 10_000,
            latency_span_us: 50_000,
            latency_jitter_us: 5_000,
            join_spacing_us: 1000,
            warmup_ms: 10_000,
            max_tail_ms: 120_000,
            node,
            byzantine: 0.0,
            byzantine_root: false,
            tree_attack: TreeAttack::None,
            member_attack: MemberAttack::None,
        }
    }
}

/// Per-broadcast outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct BroadcastReport {
    /// Nodes up when it was published and still up at the end (who must have it).
    pub eligible: u32,
    /// Eligible nodes that delivered it.
    pub delivered: u32,
    /// Largest hop count at first delivery among eligible nodes.
    pub max_round: u16,
    /// 99th percentile of that hop count.
    pub p99_round: u16,
    /// Time from publish to the last eligible delivery (ms), if all delivered.
    pub time_to_full_ms: Option<u64>,
    /// `Gossip` transmissions of this message (lost ones included).
    pub payload_tx: u64,
}

/// Rooted-tree outcome.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeReport {
    /// `Beacon`s sent, all run long.
    pub beacons: u64,
    /// Parent changes, summed over the nodes alive at the end.
    pub parent_changes: u64,
    /// Distinct roots followed by the nodes alive at the end (1 = one tree).
    pub roots_at_end: u32,
    /// Deepest node's hop count from its root at the end.
    pub max_depth: u16,
    /// Beacons dropped as invalid (bad wave signature or impossible hop count).
    pub beacons_invalid: u64,
    /// Withholding events reported against parents, and penalties imposed.
    pub withheld_penalties: (u64, u64),
    /// Honest nodes whose parent is Byzantine at the end.
    pub honest_under_byzantine: u32,
    /// Honest nodes following a root that is not an honest node's id at the end.
    pub honest_on_fake_root: u32,
}

/// Partition-heal outcome.
#[derive(Clone, Debug, PartialEq)]
pub struct HealReport {
    /// Most nodes reporting `Partitioned`/`Isolated` at once during the split.
    pub max_nodes_detecting: u32,
    /// Time from heal until the overlay is one component, every eligible message is everywhere,
    /// no live node believes another live node dead and every node's partition detector says
    /// `Connected` again (ms), if reached.
    pub converged_after_ms: Option<u64>,
    /// Overlay components (active views, undirected) among live nodes at the end.
    pub components_at_end: u32,
    /// `(observer, subject)` pairs of live nodes where the observer believes the subject dead,
    /// at the end.
    pub stale_dead_at_end: u64,
    /// Nodes not `Connected` at the end.
    pub not_connected_at_end: u32,
}

/// The outcome of a run. `PartialEq` so determinism can be asserted.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    /// Node count.
    pub nodes: usize,
    /// Per broadcast.
    pub broadcasts: Vec<BroadcastReport>,
    /// Delivered / eligible over all broadcasts.
    pub delivery_ratio: f64,
    /// Largest `max_round`.
    pub max_round: u16,
    /// Largest `p99_round`.
    pub p99_round: u16,
    /// Largest `time_to_full_ms` (None if some broadcast never fully delivered).
    pub max_time_to_full_ms: Option<u64>,
    /// Median and 99th percentile of publish-to-delivery time over every eligible delivery
    /// of every broadcast (ms).
    pub delivery_ms_p50_p99: (f64, f64),
    /// Byzantine nodes.
    pub byzantine: u32,
    /// Messages the Byzantine nodes dropped (payloads and announcements).
    pub byzantine_dropped: u64,
    /// Payload transmissions per node per broadcast, first broadcast (tree not yet pruned).
    pub payload_tx_first: f64,
    /// Payload transmissions per node per broadcast, the others (after the tree formed).
    pub payload_tx_rest: f64,
    /// SWIM probes started.
    pub probes: u64,
    /// Suspicions raised by probers.
    pub suspicions: u64,
    /// Distinct `(node, incarnation)` of live, reachable nodes declared dead.
    pub false_dead_incidents: u64,
    /// Distinct live honest nodes some honest node declared dead (Byzantine runs: must be 0).
    pub honest_removed: u64,
    /// Membership statements dropped for a bad signature, summed over live honest nodes.
    pub invalid_statements: u64,
    /// Accusations dropped (unknown accuser or over its rate), summed over live honest nodes.
    pub accusations_dropped: u64,
    /// `Dead` beliefs adopted by observers about live, reachable nodes.
    pub false_dead_observations: u64,
    /// Crash-detections: `Dead` beliefs about crashed nodes (true positives).
    pub true_dead_observations: u64,
    /// Messages sent (all kinds) and lost in the network model.
    pub messages_sent: u64,
    /// Messages dropped by loss or partition.
    pub messages_dropped: u64,
    /// Bytes sent (encoded sizes).
    pub bytes_sent: u64,
    /// Mean active-view size at the end.
    pub mean_active: f64,
    /// Mean member-table size at the end.
    pub mean_members: f64,
    /// Partition-heal outcome, for partition runs.
    pub heal: Option<HealReport>,
    /// Active-view links dropped (either end counted) after the first broadcast.
    pub view_drops: u64,
    /// `Graft`s sent (tree repairs) and `Prune`s sent, all run long.
    pub grafts_prunes: (u64, u64),
    /// Rooted-tree figures (zero when the rooted tree is off).
    pub tree: TreeReport,
    /// Virtual time at the end (ms).
    pub end_ms: u64,
    /// Events processed.
    pub events: u64,
}

impl Report {
    /// False failure detections per probe.
    pub fn false_positive_rate(&self) -> f64 {
        self.false_dead_incidents as f64 / self.probes.max(1) as f64
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        use std::fmt::Write;
        let _ = writeln!(
            s,
            "{:>4} {:>8} {:>9} {:>6} {:>5} {:>10} {:>10}",
            "msg", "eligible", "delivered", "rounds", "p99", "full_ms", "payload_tx"
        );
        for (i, b) in self.broadcasts.iter().enumerate() {
            let t = b.time_to_full_ms.map_or("-".to_string(), |t| t.to_string());
            let _ = writeln!(
                s,
                "{:>4} {:>8} {:>9} {:>6} {:>5} {:>10} {:>10}",
                i, b.eligible, b.delivered, b.max_round, b.p99_round, t, b.payload_tx
            );
        }
        let _ = writeln!(s, "nodes                          {}", self.nodes);
        let _ = writeln!(
            s,
            "delivery ratio                 {:.6}",
            self.delivery_ratio
        );
        let _ = writeln!(
            s,
            "max / p99 rounds (log2(n)+3 = {:.1}) {} / {}",
            (self.nodes as f64).log2() + 3.0,
            self.max_round,
            self.p99_round
        );
        let _ = writeln!(
            s,
            "max time to full delivery ms   {:?}",
            self.max_time_to_full_ms
        );
        let _ = writeln!(
            s,
            "delivery ms p50 / p99          {:.1} / {:.1}",
            self.delivery_ms_p50_p99.0, self.delivery_ms_p50_p99.1
        );
        let _ = writeln!(
            s,
            "byzantine nodes / dropped      {} / {}",
            self.byzantine, self.byzantine_dropped
        );
        let _ = writeln!(
            s,
            "payload tx/node/bcast first    {:.3}",
            self.payload_tx_first
        );
        let _ = writeln!(
            s,
            "payload tx/node/bcast rest     {:.3}",
            self.payload_tx_rest
        );
        let _ = writeln!(
            s,
            "probes / suspicions            {} / {}",
            self.probes, self.suspicions
        );
        let _ = writeln!(
            s,
            "false dead incidents (rate)    {} ({:.2e}/probe)",
            self.false_dead_incidents,
            self.false_positive_rate()
        );
        let _ = writeln!(
            s,
            "honest removed / invalid / acc dropped {} / {} / {}",
            self.honest_removed, self.invalid_statements, self.accusations_dropped
        );
        let _ = writeln!(
            s,
            "false / true dead observations {} / {}",
            self.false_dead_observations, self.true_dead_observations
        );
        let _ = writeln!(
            s,
            "messages sent / dropped        {} / {}",
            self.messages_sent, self.messages_dropped
        );
        let _ = writeln!(
            s,
            "bytes sent per node            {}",
            self.bytes_sent / self.nodes.max(1) as u64
        );
        let _ = writeln!(
            s,
            "mean active / member table     {:.1} / {:.1}",
            self.mean_active, self.mean_members
        );
        if let Some(h) = &self.heal {
            let _ = writeln!(
                s,
                "partition: max detecting       {}",
                h.max_nodes_detecting
            );
            let _ = writeln!(
                s,
                "heal: converged after ms       {:?}",
                h.converged_after_ms
            );
            let _ = writeln!(
                s,
                "heal: components / stale dead  {} / {}",
                h.components_at_end, h.stale_dead_at_end
            );
            let _ = writeln!(
                s,
                "heal: not connected at end     {}",
                h.not_connected_at_end
            );
        }
        let _ = writeln!(s, "view drops after 1st bcast     {}", self.view_drops);
        let _ = writeln!(
            s,
            "grafts / prunes                {} / {}",
            self.grafts_prunes.0, self.grafts_prunes.1
        );
        let _ = writeln!(
            s,
            "tree: roots / depth / beacons  {} / {} / {} ({:.1} per node per s)",
            self.tree.roots_at_end,
            self.tree.max_depth,
            self.tree.beacons,
            self.tree.beacons as f64
                / self.nodes.max(1) as f64
                / (self.end_ms.max(1) as f64 / 1000.0)
        );
        let _ = writeln!(
            s,
            "tree: parent changes           {}",
            self.tree.parent_changes
        );
        let _ = writeln!(
            s,
            "tree: invalid beacons          {}",
            self.tree.beacons_invalid
        );
        let _ = writeln!(
            s,
            "tree: withheld / penalties     {} / {}",
            self.tree.withheld_penalties.0, self.tree.withheld_penalties.1
        );
        let _ = writeln!(
            s,
            "tree: honest under byz / fake  {} / {}",
            self.tree.honest_under_byzantine, self.tree.honest_on_fake_root
        );
        let _ = writeln!(
            s,
            "virtual end ms / events        {} / {}",
            self.end_ms, self.events
        );
        s
    }
}

#[derive(Debug)]
enum Action {
    Spawn(u32),
    Broadcast(usize),
    Crash(u32),
    Restart(u32),
    PartitionStart,
    PartitionEnd,
    Check,
}

#[derive(Debug)]
enum Kind {
    Deliver { to: u32, from: u32, msg: Message },
    Timer { node: u32 },
    Act(Action),
}

struct Ev {
    at: u64,
    seq: u64,
    kind: Kind,
}

impl PartialEq for Ev {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Ev {}
impl PartialOrd for Ev {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Ev {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Slot {
    node: Option<Node<SmallRng>>,
    wake: u64,
    x: f32,
    y: f32,
    group: u8,
    life: u32,
    state: Option<Reachability>,
}

struct Bcast {
    at: u64,
    up_at_publish: Vec<bool>,
    delivered_at: Vec<u64>,
    round: Vec<u16>,
    tx: u64,
}

const MS: u64 = 1_000_000;

/// The model-signature secret of the simulated mesh (xored with the seed).
const MESH_SECRET: u64 = 0x6d65_7368_2f73_696d;

/// Node id for index `i`: the index in the first 4 bytes (so the simulator maps back), the
/// rest filled from a hash so ids look random.
pub fn node_id(i: u32) -> NodeId {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    let mut h = splitmix(i as u64 ^ 0x9e37_79b9);
    for c in b[4..].chunks_mut(8) {
        h = splitmix(h);
        let n = c.len();
        c.copy_from_slice(&h.to_le_bytes()[..n]);
    }
    NodeId(b)
}

fn index_of(n: &NodeId) -> u32 {
    u32::from_le_bytes([n.0[0], n.0[1], n.0[2], n.0[3]])
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

struct Sim {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Ev>>,
    slots: Vec<Slot>,
    rng: SmallRng,
    bcasts: Vec<Bcast>,
    by_id: BTreeMap<MsgId, usize>,
    partitioned: bool,
    partition_seen: bool,
    heal_at: Option<u64>,
    converged_at: Option<u64>,
    max_detecting: u32,
    detecting: u32,
    pending_script: u64,
    last_script: u64,
    false_incidents: BTreeSet<(u32, u64)>,
    honest_removed: BTreeSet<u32>,
    false_obs: u64,
    true_obs: u64,
    sent: u64,
    dropped: u64,
    bytes: u64,
    events: u64,
    done: bool,
    first_bcast_at: u64,
    view_drops: u64,
    beacons: u64,
    /// Byzantine nodes by index.
    byz: Vec<bool>,
    byz_dropped: u64,
}

impl Sim {
    fn push(&mut self, at: u64, kind: Kind) {
        self.seq += 1;
        self.queue.push(Reverse(Ev {
            at,
            seq: self.seq,
            kind,
        }));
    }

    fn script(&mut self, at: u64, a: Action) {
        self.pending_script += 1;
        self.last_script = self.last_script.max(at);
        self.push(at, Kind::Act(a));
    }

    fn alive(&self, i: u32) -> bool {
        self.slots[i as usize].node.is_some()
    }

    fn latency(&mut self, a: u32, b: u32) -> u64 {
        let (sa, sb) = (&self.slots[a as usize], &self.slots[b as usize]);
        let d = ((sa.x - sb.x).powi(2) + (sa.y - sb.y).powi(2)).sqrt() as f64;
        let c = &self.cfg;
        (c.latency_base_us + (d * c.latency_span_us as f64) as u64) * 1000
            + self.rng.random_range(0..c.latency_jitter_us.max(1) * 1000)
    }

    fn new_node(&mut self, i: u32) -> Node<SmallRng> {
        let s = &mut self.slots[i as usize];
        s.life += 1;
        let rng =
            SmallRng::seed_from_u64(splitmix(self.cfg.seed ^ ((i as u64) << 20) ^ s.life as u64));
        Node::new(
            self.cfg.node.clone(),
            node_id(i),
            0,
            Instant::from_nanos(self.now),
            rng,
            Box::new(ModelAuth::new(node_id(i), self.cfg.seed ^ MESH_SECRET)),
        )
    }

    fn random_alive(&mut self, below: u32, not: u32) -> Option<u32> {
        for _ in 0..64 {
            let j = self.rng.random_range(0..below.max(1));
            if j != not && self.alive(j) {
                return Some(j);
            }
        }
        None
    }

    /// Drains a node's outputs and re-arms its timer.
    fn drain(&mut self, i: u32) {
        let Some(node) = self.slots[i as usize].node.as_mut() else {
            return;
        };
        let mut outs = Vec::new();
        while let Some(t) = node.poll_transmit() {
            outs.push(t);
        }
        let mut evs = Vec::new();
        while let Some(e) = node.poll_event() {
            evs.push(e);
        }
        let wake = node.poll_timeout().map(|t| t.as_nanos().max(self.now));
        let slot = &mut self.slots[i as usize];
        if let Some(w) = wake
            && (w < slot.wake || slot.wake < self.now || slot.wake == u64::MAX)
        {
            slot.wake = w;
            self.push(w, Kind::Timer { node: i });
        }
        for (to, msg) in outs {
            self.send(i, to, msg);
        }
        for e in evs {
            self.observe(i, e);
        }
    }

    fn send(&mut self, from: u32, to: NodeId, msg: Message) {
        let to = index_of(&to);
        if to as usize >= self.slots.len() {
            return;
        }
        let Some(msg) = self.byzantine_output(from, msg) else {
            self.byz_dropped += 1;
            return;
        };
        self.sent += 1;
        self.bytes += msg.encoded_len() as u64;
        if matches!(msg, Message::Beacon { .. }) {
            self.beacons += 1;
        }
        if let Message::Gossip { id, .. } = &msg
            && let Some(&b) = self.by_id.get(id)
        {
            self.bcasts[b].tx += 1;
        }
        let cut =
            self.partitioned && self.slots[from as usize].group != self.slots[to as usize].group;
        if cut || (self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss)) {
            self.dropped += 1;
            return;
        }
        let at = self.now + self.latency(from, to);
        self.push(at, Kind::Deliver { to, from, msg });
    }

    /// What a Byzantine node sends instead of `msg` (`None`: nothing).
    fn byzantine_output(&self, from: u32, msg: Message) -> Option<Message> {
        let msg = self.false_accusations(from, msg);
        let attack = self.cfg.tree_attack;
        if attack == TreeAttack::None || !self.byz[from as usize] {
            return Some(msg);
        }
        match msg {
            Message::Gossip { .. } | Message::IHave { .. } => None,
            Message::Beacon {
                root,
                seq,
                hops,
                child,
                sig,
            } => Some(match attack {
                TreeAttack::FakeRoot => {
                    let root = NodeId([0; 32]);
                    let seq = 1_000_000 + (self.now / (1000 * MS)) as u32;
                    let stmt = mesh_protocol::tree::wave_statement(&root, seq);
                    let sig = self.slots[from as usize]
                        .node
                        .as_ref()
                        .map_or([0; 64], |n| n.auth().sign(&stmt));
                    Message::Beacon {
                        root,
                        seq,
                        hops: 0,
                        child,
                        sig,
                    }
                }
                _ => Message::Beacon {
                    root,
                    seq,
                    hops: hops.min(1),
                    child,
                    sig,
                },
            }),
            other => Some(other),
        }
    }

    /// [`MemberAttack::FalseAccusations`] on a Byzantine node's SWIM message.
    fn false_accusations(&self, from: u32, msg: Message) -> Message {
        if self.cfg.member_attack == MemberAttack::None || !self.byz[from as usize] {
            return msg;
        }
        let Some(node) = self.slots[from as usize].node.as_ref() else {
            return msg;
        };
        let me = node_id(from);
        let n = self.slots.len() as u64;
        let second = self.now / (1000 * MS);
        let honest = |j: u64| -> Option<u32> {
            let j = (j % n.max(1)) as u32;
            (!self.byz[j as usize]).then_some(j)
        };
        let proof = |j: u32| node.members().get(&node_id(j)).and_then(|e| e.alive_sig);
        let mut bad = Vec::new();
        // the common victim of this second (all Byzantine nodes collude on it)
        if let Some(v) = honest(splitmix(self.cfg.seed ^ second))
            && let Some((inc, sig)) = proof(v)
        {
            let dead = MemberState {
                incarnation: inc,
                status: Status::Dead,
            };
            bad.push(sign_accusation(node.auth(), me, node_id(v), dead, sig));
        }
        // a random honest member it knows, suspected
        let known: Vec<(NodeId, (u64, Signature))> = node
            .members()
            .iter()
            .filter(|(k, _)| !self.byz[index_of(k) as usize % self.byz.len()])
            .filter_map(|(k, e)| e.alive_sig.map(|p| (*k, p)))
            .take(32)
            .collect();
        let pick = splitmix(self.now ^ from as u64) as usize;
        if let Some((t, (inc, sig))) = known.get(pick % known.len().max(1)).copied() {
            let sus = MemberState {
                incarnation: inc,
                status: Status::Suspect,
            };
            bad.push(sign_accusation(node.auth(), me, t, sus, sig));
            // dead at u64::MAX: no proof exists, so a made-up one
            let mut forged = sign_accusation(
                node.auth(),
                me,
                t,
                MemberState {
                    incarnation: u64::MAX,
                    status: Status::Dead,
                },
                [0xab; 64],
            );
            forged.sig[0] ^= 1;
            bad.push(forged);
        }
        // a Sybil join: an id nobody holds, signed with the attacker's key or not at all
        let mut sybil_id = [0u8; 32];
        sybil_id[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        sybil_id[4..12].copy_from_slice(&splitmix(pick as u64).to_le_bytes());
        let sybil = NodeId(sybil_id);
        let mut join = sign_self(node.auth(), me, MemberState::alive(0));
        join.node = sybil;
        if pick.is_multiple_of(2) {
            join.sig = [0; 64];
        }
        bad.push(join);
        let rewrite = |updates: Vec<MemberUpdate>| {
            let mut v: Vec<MemberUpdate> = updates.into_iter().take(1).collect();
            v.extend(bad.iter().copied());
            v
        };
        match msg {
            Message::Ping { seq, updates } => Message::Ping {
                seq,
                updates: rewrite(updates),
            },
            Message::Ack { seq, updates } => Message::Ack {
                seq,
                updates: rewrite(updates),
            },
            Message::PingReq {
                seq,
                target,
                updates,
            } => Message::PingReq {
                seq,
                target,
                updates: rewrite(updates),
            },
            other => other,
        }
    }

    fn observe(&mut self, i: u32, e: Event) {
        match e {
            Event::Delivered(d) => {
                if let Some(&b) = self.by_id.get(&d.id) {
                    let bc = &mut self.bcasts[b];
                    if bc.delivered_at[i as usize] == u64::MAX {
                        bc.delivered_at[i as usize] = self.now;
                        bc.round[i as usize] = d.round;
                    }
                }
            }
            Event::MemberChanged { node, state } if state.status == Status::Dead => {
                let s = index_of(&node);
                if (s as usize) < self.slots.len() {
                    if !self.alive(s) {
                        self.true_obs += 1;
                    } else if !self.partition_seen {
                        self.false_obs += 1;
                        self.false_incidents.insert((s, state.incarnation));
                        if !self.byz[i as usize] && !self.byz[s as usize] {
                            self.honest_removed.insert(s);
                        }
                    }
                }
            }
            Event::NeighborDown(_) if self.now >= self.first_bcast_at => self.view_drops += 1,
            Event::Partition(st) => {
                let slot = &mut self.slots[i as usize];
                let was = slot.state.is_some_and(|s| s != Reachability::Connected);
                let is = st.state != Reachability::Connected;
                slot.state = Some(st.state);
                if is && !was {
                    self.detecting += 1;
                } else if was && !is {
                    self.detecting -= 1;
                }
                if self.partitioned {
                    self.max_detecting = self.max_detecting.max(self.detecting);
                }
            }
            _ => {}
        }
    }

    fn act(&mut self, a: Action) {
        if !matches!(a, Action::Check) {
            self.pending_script = self.pending_script.saturating_sub(1);
        }
        match a {
            Action::Spawn(i) => {
                let mut node = self.new_node(i);
                let now = Instant::from_nanos(self.now);
                if i > 0 {
                    if let Some(c) = self.random_alive(i, i) {
                        let _ = node.handle_command(now, Command::Join(node_id(c)));
                    }
                    let seeds: Vec<NodeId> = (0..3)
                        .filter_map(|_| self.random_alive(i, i))
                        .map(node_id)
                        .collect();
                    let _ = node.handle_command(now, Command::AddSeeds(seeds));
                }
                self.slots[i as usize].node = Some(node);
                self.slots[i as usize].wake = u64::MAX;
                self.drain(i);
            }
            Action::Broadcast(b) => {
                let want = if self.partitioned { (b % 2) as u8 } else { 0 };
                let n = self.slots.len() as u32;
                let mut origin = None;
                for _ in 0..1000 {
                    let j = self.rng.random_range(0..n);
                    if self.alive(j)
                        && !self.byz[j as usize]
                        && (!self.partitioned || self.slots[j as usize].group == want)
                    {
                        origin = Some(j);
                        break;
                    }
                }
                let Some(o) = origin else { return };
                // (the first half of what 32-byte ids were, so runs compare across that change)
                let mut id = [0u8; 16];
                for (k, c) in id.chunks_mut(8).enumerate() {
                    c.copy_from_slice(
                        &splitmix(self.cfg.seed ^ (b as u64 * 4 + k as u64 + 1)).to_le_bytes(),
                    );
                }
                let id = MsgId(id);
                // Byzantine nodes are not receivers that must get it
                let up: Vec<bool> = (0..n)
                    .map(|j| self.alive(j) && !self.byz[j as usize])
                    .collect();
                self.by_id.insert(id, self.bcasts.len());
                self.bcasts.push(Bcast {
                    at: self.now,
                    up_at_publish: up,
                    delivered_at: vec![u64::MAX; n as usize],
                    round: vec![0; n as usize],
                    tx: 0,
                });
                let payload = vec![b as u8; self.cfg.payload];
                if let Some(node) = self.slots[o as usize].node.as_mut() {
                    let _ = node.handle_command(
                        Instant::from_nanos(self.now),
                        Command::Broadcast { id, payload },
                    );
                }
                self.drain(o);
            }
            Action::Crash(i) => {
                self.slots[i as usize].node = None;
                if self.slots[i as usize]
                    .state
                    .is_some_and(|s| s != Reachability::Connected)
                {
                    self.detecting -= 1;
                }
                self.slots[i as usize].state = None;
            }
            Action::Restart(i) => {
                let n = self.slots.len() as u32;
                let mut node = self.new_node(i);
                if let Some(c) = self.random_alive(n, i) {
                    let _ = node
                        .handle_command(Instant::from_nanos(self.now), Command::Join(node_id(c)));
                }
                self.slots[i as usize].node = Some(node);
                self.slots[i as usize].wake = u64::MAX;
                self.drain(i);
            }
            Action::PartitionStart => {
                self.partitioned = true;
                self.partition_seen = true;
            }
            Action::PartitionEnd => {
                self.partitioned = false;
                self.heal_at = Some(self.now);
            }
            Action::Check => {
                self.check();
                if !self.done {
                    self.push(self.now + 1000 * MS, Kind::Act(Action::Check));
                }
            }
        }
    }

    fn all_delivered(&self) -> bool {
        self.bcasts.iter().all(|b| {
            (0..self.slots.len()).all(|j| {
                !b.up_at_publish[j] || !self.alive(j as u32) || b.delivered_at[j] != u64::MAX
            })
        })
    }

    fn components(&self) -> u32 {
        let n = self.slots.len();
        let mut adj: Vec<Vec<u32>> = vec![Vec::new(); n];
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(node) = &s.node {
                for p in node.active_view() {
                    let j = index_of(p);
                    if (j as usize) < n && self.alive(j) {
                        adj[i].push(j);
                        adj[j as usize].push(i as u32);
                    }
                }
            }
        }
        let mut seen = vec![false; n];
        let mut comps = 0;
        for start in 0..n {
            if seen[start] || !self.alive(start as u32) {
                continue;
            }
            comps += 1;
            let mut stack = vec![start as u32];
            seen[start] = true;
            while let Some(v) = stack.pop() {
                for &w in &adj[v as usize] {
                    if !seen[w as usize] {
                        seen[w as usize] = true;
                        stack.push(w);
                    }
                }
            }
        }
        comps
    }

    fn stale_dead(&self) -> u64 {
        let mut c = 0;
        for s in &self.slots {
            if let Some(node) = &s.node {
                for (m, e) in node.members().iter() {
                    let j = index_of(m);
                    if e.state.status == Status::Dead
                        && (j as usize) < self.slots.len()
                        && self.alive(j)
                    {
                        c += 1;
                    }
                }
            }
        }
        c
    }

    fn check(&mut self) {
        if self.pending_script > 0 {
            return;
        }
        if !self.all_delivered() {
            return;
        }
        if self.partition_seen {
            let all_connected = self.slots.iter().all(|s| {
                s.node
                    .as_ref()
                    .is_none_or(|n| n.partition_status().state == Reachability::Connected)
            });
            if self.converged_at.is_none()
                && all_connected
                && self.components() == 1
                && self.stale_dead() == 0
            {
                self.converged_at = Some(self.now);
            }
            if self.converged_at.is_none() {
                return;
            }
        }
        self.done = true;
    }

    fn run(&mut self) {
        let n = self.cfg.nodes as u32;
        for i in 0..n {
            self.script(i as u64 * self.cfg.join_spacing_us * 1000, Action::Spawn(i));
        }
        let t0 = n as u64 * self.cfg.join_spacing_us * 1000 + self.cfg.warmup_ms * MS;
        self.first_bcast_at = t0;
        let bint = self.cfg.broadcast_interval_ms * MS;
        let bend = t0 + self.cfg.broadcasts as u64 * bint;
        let mut bstart = t0;
        if self.cfg.partition {
            // split, let the failure detector notice, publish on both sides, heal
            self.script(t0, Action::PartitionStart);
            bstart = t0 + self.cfg.partition_ms / 2 * MS;
            self.script(t0 + self.cfg.partition_ms * MS, Action::PartitionEnd);
        }
        for b in 0..self.cfg.broadcasts {
            self.script(bstart + b as u64 * bint, Action::Broadcast(b));
        }
        let churners = (self.cfg.churn * n as f64).round() as u32;
        let span = (bend - t0).max(1000 * MS);
        let mut chosen = BTreeSet::new();
        while (chosen.len() as u32) < churners.min(n.saturating_sub(1)) {
            chosen.insert(self.rng.random_range(1..n));
        }
        for i in chosen {
            let at = t0 + self.rng.random_range(0..span);
            let down = self.rng.random_range(5_000..15_000) * MS;
            self.script(at, Action::Crash(i));
            self.script(at + down, Action::Restart(i));
        }
        self.push(t0, Kind::Act(Action::Check));
        let deadline = self.last_script + self.cfg.max_tail_ms * MS;
        while let Some(Reverse(ev)) = self.queue.pop() {
            if self.done || ev.at > deadline {
                break;
            }
            self.now = ev.at;
            self.events += 1;
            match ev.kind {
                Kind::Deliver { to, from, msg } => {
                    if let Some(node) = self.slots[to as usize].node.as_mut() {
                        node.handle_message(Instant::from_nanos(self.now), node_id(from), msg);
                        self.drain(to);
                    }
                }
                Kind::Timer { node } => {
                    let slot = &mut self.slots[node as usize];
                    if slot.wake != ev.at {
                        continue;
                    }
                    slot.wake = u64::MAX;
                    if let Some(nd) = slot.node.as_mut() {
                        nd.handle_timeout(Instant::from_nanos(self.now));
                        self.drain(node);
                    }
                }
                Kind::Act(a) => self.act(a),
            }
        }
    }

    fn report(&self) -> Report {
        let n = self.slots.len();
        let mut broadcasts = Vec::new();
        let (mut elig_all, mut del_all) = (0u64, 0u64);
        let mut times: Vec<u64> = Vec::new();
        for b in &self.bcasts {
            times.extend(
                (0..n)
                    .filter(|&j| {
                        b.up_at_publish[j] && self.alive(j as u32) && b.delivered_at[j] != u64::MAX
                    })
                    .map(|j| b.delivered_at[j] - b.at),
            );
            let (mut elig, mut del, mut maxr, mut last) = (0u32, 0u32, 0u16, 0u64);
            let mut rounds = Vec::new();
            for j in 0..n {
                if b.up_at_publish[j] && self.alive(j as u32) {
                    elig += 1;
                    if b.delivered_at[j] != u64::MAX {
                        del += 1;
                        maxr = maxr.max(b.round[j]);
                        rounds.push(b.round[j]);
                        last = last.max(b.delivered_at[j]);
                    }
                }
            }
            elig_all += elig as u64;
            del_all += del as u64;
            let full = (del == elig).then(|| (last - b.at) / MS);
            rounds.sort_unstable();
            let p99 = rounds
                .get((rounds.len() * 99 / 100).min(rounds.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0);
            broadcasts.push(BroadcastReport {
                eligible: elig,
                delivered: del,
                max_round: maxr,
                p99_round: p99,
                time_to_full_ms: full,
                payload_tx: b.tx,
            });
        }
        if std::env::var_os("MESH_SIM_DEBUG").is_some() {
            for b in &self.bcasts {
                let mut h = [0u32; 40];
                for j in 0..n {
                    if b.delivered_at[j] != u64::MAX {
                        h[(b.round[j] as usize).min(39)] += 1;
                    }
                }
                eprintln!(
                    "rounds histogram {:?}",
                    &h[..h.iter().rposition(|x| *x > 0).map_or(0, |i| i + 1)]
                );
            }
            if let Some(b) = self.bcasts.first() {
                for j in 0..n {
                    if b.up_at_publish[j]
                        && self.alive(j as u32)
                        && b.delivered_at[j] != u64::MAX
                        && b.delivered_at[j] > b.at + 5000 * MS
                    {
                        eprintln!(
                            "late at {j}: {} ms, round {}",
                            (b.delivered_at[j] - b.at) / MS,
                            b.round[j]
                        );
                    }
                    if b.up_at_publish[j] && self.alive(j as u32) && b.delivered_at[j] == u64::MAX {
                        let node = self.slots[j].node.as_ref().map(|x| {
                            (
                                x.active_view().iter().map(index_of).collect::<Vec<_>>(),
                                x.status(),
                            )
                        });
                        eprintln!("missing at {j} life {}: {:?}", self.slots[j].life, node);
                        if let Some((act, _)) = &node {
                            for a in act {
                                let other = self.slots[*a as usize].node.as_ref().map(|x| {
                                    x.active_view().iter().map(index_of).collect::<Vec<_>>()
                                });
                                eprintln!("   peer {a}: {:?}", other);
                            }
                        }
                    }
                }
            }
        }
        let per = |b: &[Bcast]| {
            if b.is_empty() {
                0.0
            } else {
                b.iter().map(|x| x.tx).sum::<u64>() as f64 / (b.len() * n) as f64
            }
        };
        times.sort_unstable();
        let pct = |q: usize| {
            times
                .get((times.len() * q / 100).min(times.len().saturating_sub(1)))
                .map_or(0.0, |t| *t as f64 / MS as f64)
        };
        let delivery_ms_p50_p99 = (pct(50), pct(99));
        let max_time = broadcasts
            .iter()
            .map(|b| b.time_to_full_ms)
            .try_fold(0u64, |a, t| t.map(|t| a.max(t)));
        let (mut probes, mut suspicions, mut act, mut mem, mut live) =
            (0, 0, 0usize, 0usize, 0usize);
        let mut not_connected = 0;
        let (mut grafts, mut prunes) = (0, 0);
        let (mut invalid_statements, mut accusations_dropped) = (0, 0);
        let mut tree = TreeReport::default();
        let mut roots = BTreeSet::new();
        for (i, s) in self.slots.iter().enumerate() {
            if let Some(node) = &s.node {
                let st = node.stats();
                tree.parent_changes += st.tree.parent_changes;
                tree.beacons_invalid += st.tree.beacons_invalid;
                tree.withheld_penalties.0 += st.tree.withheld;
                tree.withheld_penalties.1 += st.tree.penalties;
                if let Some(t) = node.tree() {
                    roots.insert(t.root());
                    tree.max_depth = tree.max_depth.max(t.hops());
                    if !self.byz[i] {
                        let r = index_of(&t.root()) as usize;
                        if r >= n || node_id(r as u32) != t.root() || self.byz[r] {
                            tree.honest_on_fake_root += 1;
                        }
                        if t.parent().is_some_and(|p| {
                            let j = index_of(&p) as usize;
                            j < n && self.byz[j]
                        }) {
                            tree.honest_under_byzantine += 1;
                        }
                    }
                }
                probes += st.swim.probes;
                suspicions += st.swim.suspicions_raised;
                if !self.byz[i] {
                    invalid_statements += st.swim.invalid_statements;
                    accusations_dropped +=
                        st.swim.unknown_accusers + st.swim.accusations_rate_limited;
                }
                grafts += st.gossip.grafts;
                prunes += st.gossip.prunes;
                act += node.active_view().len();
                mem += node.members().len();
                live += 1;
                if node.partition_status().state != Reachability::Connected {
                    not_connected += 1;
                }
            }
        }
        let heal = self.partition_seen.then(|| HealReport {
            max_nodes_detecting: self.max_detecting,
            converged_after_ms: match (self.heal_at, self.converged_at) {
                (Some(h), Some(c)) => Some((c - h) / MS),
                _ => None,
            },
            components_at_end: self.components(),
            stale_dead_at_end: self.stale_dead(),
            not_connected_at_end: not_connected,
        });
        Report {
            nodes: n,
            delivery_ratio: if elig_all == 0 {
                1.0
            } else {
                del_all as f64 / elig_all as f64
            },
            max_round: broadcasts.iter().map(|b| b.max_round).max().unwrap_or(0),
            p99_round: broadcasts.iter().map(|b| b.p99_round).max().unwrap_or(0),
            max_time_to_full_ms: max_time,
            delivery_ms_p50_p99,
            byzantine: self.byz.iter().filter(|b| **b).count() as u32,
            byzantine_dropped: self.byz_dropped,
            payload_tx_first: per(&self.bcasts[..self.bcasts.len().min(1)]),
            payload_tx_rest: per(self.bcasts.get(1..).unwrap_or(&[])),
            broadcasts,
            probes,
            suspicions,
            false_dead_incidents: self.false_incidents.len() as u64,
            honest_removed: self.honest_removed.len() as u64,
            invalid_statements,
            accusations_dropped,
            false_dead_observations: self.false_obs,
            true_dead_observations: self.true_obs,
            messages_sent: self.sent,
            messages_dropped: self.dropped,
            bytes_sent: self.bytes,
            mean_active: act as f64 / live.max(1) as f64,
            mean_members: mem as f64 / live.max(1) as f64,
            heal,
            view_drops: self.view_drops,
            grafts_prunes: (grafts, prunes),
            tree: TreeReport {
                beacons: self.beacons,
                roots_at_end: roots.len() as u32,
                ..tree
            },
            end_ms: self.now / MS,
            events: self.events,
        }
    }
}

/// The Byzantine nodes of a run: drawn from the seed alone (not from the run's RNG), so a run
/// and its honest-only twin ([`TreeAttack::None`]) share topology and script.
fn byzantine_set(cfg: &SimConfig) -> Vec<bool> {
    let n = cfg.nodes;
    let mut byz = vec![false; n];
    let mut rng = SmallRng::seed_from_u64(splitmix(cfg.seed ^ 0xb7a2_713e));
    let want = ((cfg.byzantine * n as f64).round() as usize).min(n.saturating_sub(1));
    let mut have = 0;
    if cfg.byzantine_root && want > 0 && n > 1 {
        byz[0] = true;
        have = 1;
    }
    while have < want {
        let j = rng.random_range(1..n);
        if !byz[j] {
            byz[j] = true;
            have += 1;
        }
    }
    byz
}

/// p99 delivery-time inflation of `attacked` against `honest` (the same config with
/// [`TreeAttack::None`]): the ratio of their [`Report::delivery_ms_p50_p99`] p99s.
pub fn p99_inflation(attacked: &Report, honest: &Report) -> f64 {
    attacked.delivery_ms_p50_p99.1 / honest.delivery_ms_p50_p99.1.max(f64::MIN_POSITIVE)
}

/// Runs one simulation to completion (everything delivered and, for partition runs, re-merged)
/// or until [`SimConfig::max_tail_ms`] after the last scripted action.
pub fn run(cfg: &SimConfig) -> Report {
    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let groups_rng = &mut rng;
    let slots: Vec<Slot> = (0..cfg.nodes)
        .map(|_| Slot {
            node: None,
            wake: u64::MAX,
            x: groups_rng.random::<f32>(),
            y: groups_rng.random::<f32>(),
            group: groups_rng.random_range(0..2u8),
            life: 0,
            state: None,
        })
        .collect();
    let mut sim = Sim {
        cfg: cfg.clone(),
        now: 0,
        seq: 0,
        queue: BinaryHeap::new(),
        slots,
        rng,
        bcasts: Vec::new(),
        by_id: BTreeMap::new(),
        partitioned: false,
        partition_seen: false,
        heal_at: None,
        converged_at: None,
        max_detecting: 0,
        detecting: 0,
        pending_script: 0,
        last_script: 0,
        false_incidents: BTreeSet::new(),
        honest_removed: BTreeSet::new(),
        false_obs: 0,
        true_obs: 0,
        sent: 0,
        dropped: 0,
        bytes: 0,
        events: 0,
        done: false,
        first_bcast_at: 0,
        view_drops: 0,
        beacons: 0,
        byz: byzantine_set(cfg),
        byz_dropped: 0,
    };
    sim.run();
    sim.report()
}
