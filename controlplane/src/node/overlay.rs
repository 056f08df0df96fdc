//! The control task's side of `overlay.mode = "hyparview"`: it runs a
//! [`mesh_protocol::Node`] and does its I/O.
//!
//! - Core messages travel as mutual-TLS frames ([`crate::overlay::encode_frame`]) with
//!   address hints; a node not yet connected is dialled (expecting its id) and up to
//!   [`MAX_QUEUED`] frames wait for the handshake.
//! - Frames to one peer go out in order, through one writer task per peer.
//! - Core payloads never travel in core frames: the fast path forwards each new data message
//!   to the core's eager set ([`mesh_protocol::Node::eager_peers`], published through the
//!   tile's arc-swapped `ForwardSet`; a local publish goes to the whole active view on the
//!   rooted tree), and a core `Gossip` (a graft or pull answer) is sent as the stored signed
//!   datagram, over mutual TLS when connected, else over UDP. A `Gossip` arriving in a core
//!   frame is refused: it would let a peer mark ids as seen without a signed message behind
//!   them.
//! - Accepted data messages are fed to the core (from the sender's address), so it
//!   announces them lazily, answers grafts and pulls, runs push-pull anti-entropy and, on
//!   Plumtree's own tree, prunes.
//! - Seeds are dialled by address until their id is known, then handed to the core, which
//!   joins through the first and probes the rest while cut off.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use dataplane::tile::ForwardSet;
use dataplane::wire::{self, Kind, Packet};
use mesh_protocol::{
    Command as CoreCommand, Event, Message, MsgId, Node as Core, NodeConfig as CoreConfig,
    NodeId as CoreId, Reachability, Status as MemberStatus,
};
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio::sync::mpsc;

use super::{Control, PeerView, data_addr_of};
use crate::config::Config;
use crate::metrics::{FRAME_OUTCOMES, MEMBER_STATUSES};
use crate::overlay::{AddressBook, Admitted, data_id, decode_frame, encode_frame, msg_id};
use crate::peers::Nanos;

/// Frames kept per node while its handshake runs.
pub(super) const MAX_QUEUED: usize = 32;
/// Seed re-dial period while this node has no neighbour, and afterwards.
const SEED_RETRY_ISOLATED_NS: Nanos = 1_000_000_000;
const SEED_RETRY_NS: Nanos = 10_000_000_000;

/// Result of a dial started by the overlay.
pub(super) enum DialDone {
    /// A seed answered (with its id) or not.
    Seed(SocketAddr, Option<CoreId>),
    /// A dial to a known node finished.
    Peer(CoreId, SocketAddr, bool),
}

/// The overlay part of `meshd status`.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OverlayStatus {
    /// HyParView active view size.
    pub active: usize,
    /// Passive view size.
    pub passive: usize,
    /// Plumtree eager set size (the fast path's forward set).
    pub eager: usize,
    /// Plumtree lazy set size.
    pub lazy: usize,
    /// Member table by status (`alive`, `suspect`, `dead`, `left`).
    pub members: HashMap<String, usize>,
    /// This node's SWIM incarnation.
    pub incarnation: u64,
    /// Lifeguard local health multiplier (0 = healthy).
    pub local_health: u32,
    /// `connected`, `partitioned` or `isolated`.
    pub partition: String,
    /// Members believed alive.
    pub reachable: u32,
    /// Members that should be reachable.
    pub expected: u32,
    /// Origins the fast path admits.
    pub admitted: usize,
    /// Known node addresses.
    pub address_book: usize,
    /// The rooted dissemination tree (`None` with `tree = "plumtree"`).
    pub tree: Option<TreeStatus>,
}

/// This node's place in the rooted tree.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct TreeStatus {
    /// The root's node id (hex): the lowest live id this node's side of the mesh knows.
    pub root: String,
    /// Whether this node is the root.
    pub is_root: bool,
    /// Hops from the root.
    pub hops: u16,
    /// The root's current beacon wave.
    pub wave: u32,
    /// Parent's node id (hex); `None` at the root or while re-attaching.
    pub parent: Option<String>,
    /// Neighbours that hang off this node.
    pub children: usize,
    /// Parent changes since start.
    pub parent_changes: u64,
}

/// Frames queued per peer; further ones are refused (counted `unsent`).
const FRAME_QUEUE: usize = 1024;
/// Peers with a writer task. Past this, idle writers are dropped (their tasks end), so
/// the map does not grow with every node ever contacted.
const MAX_WRITERS: usize = 4096;

/// Starts the task that writes `to`'s frames in order; it ends at the first send error
/// (the connection is gone) and the next frame starts a new one.
fn spawn_frame_writer(tr: Arc<mesh_transport::Transport>, to: CoreId) -> mpsc::Sender<Vec<u8>> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(FRAME_QUEUE);
    let peer = mesh_transport::NodeId(to.0);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if let Err(e) = tr.send(&peer, &f).await {
                tracing::debug!(%peer, error = %e, "overlay frame not sent");
                return;
            }
        }
    });
    tx
}

/// State of the overlay driver.
pub(super) struct OverlayState {
    core: Core<SmallRng>,
    book: AddressBook,
    admitted: Admitted,
    seeds: Vec<SocketAddr>,
    seed_ids: HashMap<SocketAddr, CoreId>,
    seeds_dialing: HashSet<SocketAddr>,
    next_seed_dial: Nanos,
    dialing: HashSet<CoreId>,
    queued: HashMap<CoreId, Vec<Vec<u8>>>,
    dial_tx: mpsc::Sender<DialDone>,
    /// Core counters at the last metrics refresh (the exported ones take the deltas).
    last: mesh_protocol::NodeStats,
    forward_version: u64,
    /// The active view the forward set's origin list was built from.
    forward_active: Vec<CoreId>,
    frame: Vec<u8>,
    /// Duplicate reports that arrived before their message (the verify pool hands the first
    /// copy on after its duplicates were screened): applied when it arrives.
    early_dups: std::collections::VecDeque<(MsgId, CoreId)>,
}

/// The core's settings from `[overlay]` and `[gossip]`.
pub(super) fn core_config(cfg: &Config) -> CoreConfig {
    let o = &cfg.overlay;
    let ms = std::time::Duration::from_millis;
    let mut c = CoreConfig::for_size(o.expected_size);
    c.swim.probe_interval = ms(o.probe_interval_ms);
    c.swim.probe_timeout = ms(o.probe_timeout_ms);
    c.swim.suspicion_alpha = o.suspicion_alpha;
    c.swim.suspicion_beta = o.suspicion_beta;
    c.partition.window = ms(o.partition_window_ms);
    c.gossip.external_eager = true;
    c.gossip.anti_entropy_interval = ms(cfg.gossip.anti_entropy_interval_ms);
    c.gossip.ihave_timeout = ms(o.ihave_timeout_ms);
    c.gossip.prune_after_duplicates = o.prune_after_duplicates;
    c.gossip.directional_prune = o.directional_prune;
    c.gossip.graft_timeout = ms(o.ihave_timeout_ms.div_ceil(2));
    c.tree.enabled = o.tree == crate::config::TreeMode::Rooted;
    c.tree.beacon_interval = ms(o.beacon_interval_ms);
    c.tree.root_timeout = ms(o.root_timeout_ms);
    c.tree.settle = ms(o.beacon_interval_ms.div_ceil(4));
    c.gossip.retention = ms(cfg.gossip.retention_ms);
    c.gossip.max_store = cfg.gossip.max_stored_messages;
    c
}

impl OverlayState {
    pub(super) fn new(
        cfg: &Config,
        me: [u8; 32],
        now: Nanos,
        rng: SmallRng,
        dial_tx: mpsc::Sender<DialDone>,
    ) -> Self {
        let core = Core::new(
            core_config(cfg),
            CoreId(me),
            0,
            mesh_protocol::Instant::from_nanos(now),
            rng,
        );
        OverlayState {
            core,
            book: AddressBook::new(cfg.overlay.address_book_capacity),
            admitted: Admitted::new(me, cfg.overlay.admitted_capacity),
            seeds: cfg.node.bootstrap.clone(),
            seed_ids: HashMap::new(),
            seeds_dialing: HashSet::new(),
            next_seed_dial: 0,
            dialing: HashSet::new(),
            queued: HashMap::new(),
            dial_tx,
            last: Default::default(),
            forward_version: u64::MAX,
            forward_active: Vec::new(),
            frame: Vec::with_capacity(2048),
            early_dups: std::collections::VecDeque::new(),
        }
    }

    /// When the control task must call [`Control::overlay_timeout`] next.
    pub(super) fn next_deadline(&self) -> Nanos {
        let core = self
            .core
            .poll_timeout()
            .map_or(Nanos::MAX, |t| t.as_nanos());
        let seeds = if self.seed_ids.len() < self.seeds.len() {
            self.next_seed_dial
        } else {
            Nanos::MAX
        };
        core.min(seeds)
    }
}

fn t(now: Nanos) -> mesh_protocol::Instant {
    mesh_protocol::Instant::from_nanos(now)
}

impl Control {
    /// Runs `f` on the overlay state (taken out of `self` so both can be borrowed).
    fn with_overlay<T>(&mut self, f: impl FnOnce(&mut Self, &mut OverlayState) -> T) -> Option<T> {
        let mut o = self.overlay.take()?;
        let r = f(self, &mut o);
        self.overlay = Some(o);
        Some(r)
    }

    /// Timer work: the core's timers, due seed dials.
    pub(super) fn overlay_timeout(&mut self, now: Nanos) {
        self.with_overlay(|this, o| {
            o.core.handle_timeout(t(now));
            if now >= o.next_seed_dial && o.seed_ids.len() < o.seeds.len() {
                let isolated = o.core.active_view().is_empty();
                o.next_seed_dial = now
                    + if isolated {
                        SEED_RETRY_ISOLATED_NS
                    } else {
                        SEED_RETRY_NS
                    };
                this.dial_seeds(o);
            }
            this.overlay_metrics(o);
        });
    }

    fn dial_seeds(&mut self, o: &mut OverlayState) {
        let Some(tr) = self.transport.clone() else {
            return;
        };
        for addr in o.seeds.clone() {
            if o.seed_ids.contains_key(&addr) || !o.seeds_dialing.insert(addr) {
                continue;
            }
            let Some(ctrl) = Self::control_addr_of(addr) else {
                continue;
            };
            let (tr, done) = (tr.clone(), o.dial_tx.clone());
            tokio::spawn(async move {
                let id = match tr.connect(ctrl, None).await {
                    Ok(c) => Some(CoreId(c.node_id.0)),
                    Err(e) => {
                        tracing::debug!(%ctrl, error = %e, "seed dial failed");
                        None
                    }
                };
                let _ = done.send(DialDone::Seed(addr, id)).await;
            });
        }
    }

    /// A dial finished.
    pub(super) fn overlay_dial_done(&mut self, d: DialDone) {
        let now = self.now();
        self.with_overlay(|this, o| match d {
            DialDone::Seed(addr, id) => {
                o.seeds_dialing.remove(&addr);
                let Some(id) = id else { return };
                if id.0 == this.shared.id.0 {
                    // our own address in the seed list
                    o.seed_ids.insert(addr, id);
                    return;
                }
                tracing::info!(seed = %addr, node = %hex::encode(&id.0[..4]), "seed answered");
                o.seed_ids.insert(addr, id);
                o.book.learn_verified(id, addr);
                o.admitted.admit(&id);
                let _ = o
                    .core
                    .handle_command(t(now), CoreCommand::AddSeeds(vec![id]));
                if o.core.active_view().is_empty() {
                    let _ = o.core.handle_command(t(now), CoreCommand::Join(id));
                }
            }
            DialDone::Peer(id, addr, ok) => {
                o.dialing.remove(&id);
                let frames = o.queued.remove(&id).unwrap_or_default();
                if ok {
                    o.book.learn_verified(id, addr);
                    o.admitted.admit(&id);
                    this.send_frames(id, frames);
                } else {
                    o.book.forget_hint(&id);
                    this.count_frames("unsent", frames.len());
                }
            }
        });
    }

    fn count_frames(&self, outcome: &str, n: usize) {
        debug_assert!(FRAME_OUTCOMES.contains(&outcome));
        self.shared
            .metrics
            .overlay_frames
            .with_label_values(&[outcome])
            .inc_by(n as u64);
    }

    /// Sends frames to a connected node, in order, on one task.
    fn send_frames(&self, to: CoreId, frames: Vec<Vec<u8>>) {
        let Some(tr) = self.transport.clone() else {
            self.count_frames("unsent", frames.len());
            return;
        };
        if frames.is_empty() {
            return;
        }
        let Ok(mut senders) = self.frame_senders.lock() else {
            self.count_frames("unsent", frames.len());
            return;
        };
        if !senders.contains_key(&to) && senders.len() >= MAX_WRITERS {
            senders.retain(|_, q| !q.is_closed() && q.capacity() < FRAME_QUEUE);
        }
        let (mut sent, mut unsent) = (0, 0);
        for f in frames {
            let q = senders
                .entry(to)
                .or_insert_with(|| spawn_frame_writer(tr.clone(), to));
            let f = match q.try_send(f) {
                Ok(()) => {
                    sent += 1;
                    continue;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    unsent += 1;
                    continue;
                }
                // the writer stopped after a send error: start a new one
                Err(mpsc::error::TrySendError::Closed(f)) => f,
            };
            let q = spawn_frame_writer(tr.clone(), to);
            match q.try_send(f) {
                Ok(()) => sent += 1,
                Err(_) => unsent += 1,
            }
            senders.insert(to, q);
        }
        drop(senders);
        self.count_frames("sent", sent);
        self.count_frames("unsent", unsent);
    }

    /// A frame from an authenticated member (first byte `FRAME_OVERLAY`).
    pub(super) fn overlay_frame(
        &mut self,
        id: mesh_transport::NodeId,
        remote: SocketAddr,
        frame: &[u8],
    ) {
        let now = self.now();
        self.with_overlay(|this, o| {
            let from = CoreId(id.0);
            if let Some(data) = data_addr_of(remote) {
                o.book.learn_verified(from, data);
            }
            o.admitted.admit(&from);
            let (hints, msg) = match decode_frame(frame) {
                Ok(x) => x,
                Err(e) => {
                    this.count_frames("invalid", 1);
                    tracing::debug!(%remote, error = %e, "bad overlay frame");
                    return;
                }
            };
            if matches!(msg, Message::Gossip { .. }) {
                // Payloads only travel as signed datagrams.
                this.count_frames("invalid", 1);
                return;
            }
            let me = CoreId(this.shared.id.0);
            for (n, a) in hints {
                if n != me && n != from {
                    o.book.learn_hint(n, a);
                }
            }
            // A member vouches for the members it names.
            for n in msg.mentioned_nodes() {
                o.admitted.admit(&n);
            }
            this.count_frames("received", 1);
            o.core.handle_message(t(now), from, msg);
        });
    }

    /// A data message the fast path accepted (first time here): tell the core, so it
    /// announces it lazily and can answer grafts and pulls.
    pub(super) fn overlay_data(&mut self, p: &Packet<'_>, from: SocketAddr, local: bool) {
        let now = self.now();
        let hop_limit = self.cfg.gossip.hop_limit;
        self.with_overlay(|_, o| {
            let id = msg_id(&p.message_id());
            let sender = if local { None } else { o.book.id_at(&from) };
            match sender {
                Some(sender) => {
                    let round = u16::from(hop_limit.saturating_sub(p.hop_limit()));
                    o.core.handle_message(
                        t(now),
                        sender,
                        Message::Gossip {
                            id,
                            round,
                            payload: Vec::new(),
                        },
                    );
                }
                None => {
                    // Local, or from an address not in the book: record it as ours to
                    // announce (a duplicate id is fine).
                    let _ = o.core.handle_command(
                        t(now),
                        CoreCommand::Broadcast {
                            id,
                            payload: Vec::new(),
                        },
                    );
                }
            }
            // duplicates reported before this first copy was handed on
            let early: Vec<CoreId> = o
                .early_dups
                .iter()
                .filter(|(d, _)| *d == id)
                .map(|(_, f)| *f)
                .collect();
            if !early.is_empty() {
                o.early_dups.retain(|(d, _)| *d != id);
                for from in early {
                    dup_to_core(o, now, id, from);
                }
            }
        });
    }

    /// A copy of an accepted message came from an eager peer: the core prunes that link
    /// (the tree already reaches this node another way).
    pub(super) fn overlay_duplicate(&mut self, m: &dataplane::tile::Inbound) {
        let Ok(sig) = <&[u8; 64]>::try_from(&m.bytes[..]) else {
            return;
        };
        let now = self.now();
        let id = msg_id(&wire::MessageId::from_signature(sig));
        self.with_overlay(|_, o| {
            let Some(from) = o.book.id_at(&m.from) else {
                return;
            };
            if o.core.has_message(&id) {
                dup_to_core(o, now, id, from);
            } else {
                if o.early_dups.len() >= MAX_EARLY_DUPS {
                    o.early_dups.pop_front();
                }
                o.early_dups.push_back((id, from));
            }
        });
    }

    /// A graft or pull answer over mutual TLS: an authenticated member vouches for the
    /// message's origin. Checked like the fast path checks a datagram (kind, replay window,
    /// clock skew, signature), then stored, delivered, told to the core, and handed to the
    /// fast path to forward to the eager set.
    pub(super) fn overlay_repair(
        &mut self,
        peer: mesh_transport::NodeId,
        remote: SocketAddr,
        datagram: &[u8],
    ) {
        let wall = dataplane::tile::wall_us();
        let ok = Packet::parse(datagram).ok().filter(|p| {
            p.kind() == Kind::Data
                && self
                    .pipeline_cfg
                    .check_timestamp(p.timestamp_us(), wall)
                    .is_ok()
                && dataplane::verify::verify_one(&dataplane::verify::VerifyItem {
                    public_key: p.origin(),
                    message: p.signed_bytes(),
                    signature: p.signature(),
                })
        });
        let Some(p) = ok else {
            self.count_frames("invalid", 1);
            return;
        };
        self.count_frames("received", 1);
        let from = CoreId(peer.0);
        let Some(data) = data_addr_of(remote) else {
            return;
        };
        self.with_overlay(|_, o| {
            o.book.learn_verified(from, data);
            o.admitted.admit(&CoreId(*p.origin()));
        });
        let now = self.now();
        if self.accept_data(now, &p, wall, false) {
            if let Some(tile) = self.tiles.first() {
                let _ = tile.command(dataplane::tile::Command::Publish(datagram.to_vec()));
            }
            self.overlay_data(&p, data, false);
        }
    }

    /// Says goodbye to the active neighbours.
    pub(super) fn overlay_leave(&mut self) {
        let now = self.now();
        self.with_overlay(|_, o| {
            let _ = o.core.handle_command(t(now), CoreCommand::Leave);
        });
        self.overlay_flush();
    }

    /// Drains the core's transmits and events, republishes the forward and admission sets.
    pub(super) fn overlay_flush(&mut self) {
        self.with_overlay(|this, o| {
            while let Some((to, msg)) = o.core.poll_transmit() {
                this.overlay_send(o, to, &msg);
            }
            while let Some(ev) = o.core.poll_event() {
                this.overlay_event(o, ev);
            }
            // The rooted tree's origin pushes to every active neighbour (the core's flood
            // zone); Plumtree's own tree would prune on those duplicates, so it does not.
            let cc = o.core.config();
            let flood_origin = cc.tree.enabled && cc.gossip.flood_rounds > 0;
            let active_moved = flood_origin && o.forward_active != o.core.active_view();
            if o.core.eager_version() != o.forward_version || active_moved {
                o.forward_version = o.core.eager_version();
                let addrs = |ids: &[CoreId]| ids.iter().filter_map(|p| o.book.addr(p)).collect();
                let peers = addrs(o.core.eager_peers());
                let origin = if flood_origin {
                    o.forward_active = o.core.active_view().to_vec();
                    addrs(o.core.active_view())
                } else {
                    Vec::new()
                };
                this.forward.store(Arc::new(ForwardSet { peers, origin }));
            }
            if let Some(set) = o.admitted.take_snapshot() {
                this.admitted.store(Arc::new(set));
            }
        });
    }

    fn overlay_send(&mut self, o: &mut OverlayState, to: CoreId, msg: &Message) {
        if let Message::Gossip { id, .. } = msg {
            self.send_stored(o, to, id);
            return;
        }
        if matches!(msg, Message::Prune | Message::Graft { .. }) {
            tracing::debug!(
                peer = %hex::encode(&to.0[..4]),
                tree = if matches!(msg, Message::Prune) { "prune" } else { "graft" },
                eager = o.core.eager_peers().len(),
                "plumtree"
            );
        }
        let mut hints = Vec::new();
        for n in msg.mentioned_nodes() {
            if n != to
                && !hints.iter().any(|(h, _)| *h == n)
                && let Some(a) = o.book.addr(&n)
            {
                hints.push((n, a));
            }
        }
        encode_frame(&hints, msg, &mut o.frame);
        let frame = o.frame.clone();
        let Some(tr) = self.transport.clone() else {
            self.count_frames("unsent", 1);
            return;
        };
        let peer = mesh_transport::NodeId(to.0);
        if tr.is_connected(&peer) {
            self.send_frames(to, vec![frame]);
            return;
        }
        let Some(addr) = o.book.addr(&to) else {
            self.count_frames("unsent", 1);
            return;
        };
        let q = o.queued.entry(to).or_default();
        if q.len() >= MAX_QUEUED {
            self.count_frames("unsent", 1);
            return;
        }
        q.push(frame);
        if !o.dialing.insert(to) {
            return;
        }
        let Some(ctrl) = Self::control_addr_of(addr) else {
            return;
        };
        let done = o.dial_tx.clone();
        tokio::spawn(async move {
            let ok = match tr.connect(ctrl, Some(peer)).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(%ctrl, %peer, error = %e, "overlay dial failed");
                    false
                }
            };
            let _ = done.send(DialDone::Peer(to, addr, ok)).await;
        });
    }

    /// A graft or pull answer: the stored signed datagram, over mutual TLS when connected
    /// (this node then vouches for its origin, which the receiver may not know yet), else
    /// over UDP.
    fn send_stored(&mut self, o: &OverlayState, to: CoreId, id: &MsgId) {
        let (Some(addr), Some(bytes)) = (o.book.addr(&to), self.store.get(&data_id(id))) else {
            return;
        };
        let mut b = bytes.to_vec();
        // Let the receiver forward it on: its subtree probably missed it too.
        if let Ok(p) = Packet::parse(&b)
            && p.hop_limit() < 2
        {
            wire::set_hop_limit(&mut b, 2);
        }
        if let Some(tr) = &self.transport
            && tr.is_connected(&mesh_transport::NodeId(to.0))
        {
            let mut frame = Vec::with_capacity(1 + b.len());
            frame.push(crate::overlay::FRAME_DATAGRAM);
            frame.extend_from_slice(&b);
            self.send_frames(to, vec![frame]);
            self.shared.metrics.repair_served.inc();
            return;
        }
        match self.send_socket.send_to(&b, addr) {
            Ok(_) => self.shared.metrics.repair_served.inc(),
            Err(e) => tracing::debug!(%addr, error = %e, "repair send failed"),
        }
    }

    fn overlay_event(&mut self, o: &mut OverlayState, ev: Event) {
        let short = |n: &CoreId| hex::encode(&n.0[..4]);
        match ev {
            Event::Delivered(_) => {} // delivered by accept_data, from the signed message
            Event::MemberChanged { node, state } => {
                o.admitted.admit(&node);
                match state.status {
                    MemberStatus::Alive => {
                        tracing::debug!(member = %short(&node), inc = state.incarnation, "member alive")
                    }
                    MemberStatus::Suspect => {
                        tracing::info!(member = %short(&node), inc = state.incarnation, "member suspected")
                    }
                    MemberStatus::Dead => {
                        tracing::warn!(member = %short(&node), inc = state.incarnation, "member declared dead")
                    }
                    MemberStatus::Left => {
                        tracing::info!(member = %short(&node), "member left")
                    }
                }
            }
            Event::NeighborUp(n) => {
                o.admitted.admit(&n);
                tracing::info!(peer = %short(&n), addr = ?o.book.addr(&n), "neighbour up");
            }
            Event::NeighborDown(n) => tracing::info!(peer = %short(&n), "neighbour down"),
            Event::EagerChanged { .. } => {}
            Event::Partition(st) => {
                self.shared
                    .metrics
                    .partitioned
                    .set(i64::from(st.state != Reachability::Connected));
                match st.state {
                    Reachability::Connected => tracing::info!(
                        reachable = st.reachable,
                        expected = st.expected,
                        "partition healed"
                    ),
                    _ => tracing::warn!(
                        state = ?st.state,
                        reachable = st.reachable,
                        expected = st.expected,
                        "PARTITION: this node reaches fewer than n - f members; still serving local agents"
                    ),
                }
            }
            Event::Refuted { incarnation } => {
                tracing::info!(incarnation, "refuted a suspicion about this node")
            }
        }
    }

    fn overlay_metrics(&self, o: &mut OverlayState) {
        let m = &self.shared.metrics;
        let c = &o.core;
        for (v, n) in [
            ("active", c.active_view().len()),
            ("passive", c.passive_view().len()),
            ("eager", c.eager_peers().len()),
            ("lazy", c.lazy_peers().len()),
        ] {
            m.overlay_view.with_label_values(&[v]).set(n as i64);
        }
        let counts = member_counts(c);
        for (i, st) in MEMBER_STATUSES.iter().enumerate() {
            m.members.with_label_values(&[st]).set(counts[i] as i64);
        }
        m.peers
            .with_label_values(&["live"])
            .set(c.active_view().len() as i64);
        m.peers
            .with_label_values(&["pending"])
            .set(c.passive_view().len() as i64);
        m.peers
            .with_label_values(&["unreachable"])
            .set((counts[1] + counts[2]) as i64);
        let s = c.stats();
        let d = |now: u64, then: u64| now.saturating_sub(then);
        m.probes.inc_by(d(s.swim.probes, o.last.swim.probes));
        m.suspicions
            .inc_by(d(s.swim.suspicions_raised, o.last.swim.suspicions_raised));
        m.declared_dead
            .inc_by(d(s.swim.declared_dead, o.last.swim.declared_dead));
        m.refutations
            .inc_by(d(s.swim.refutations, o.last.swim.refutations));
        m.confirmations
            .inc_by(d(s.swim.confirmations, o.last.swim.confirmations));
        m.missed_nacks
            .inc_by(d(s.swim.missed_nacks, o.last.swim.missed_nacks));
        m.local_health.set(i64::from(c.status().lhm));
        m.prunes.inc_by(d(s.gossip.prunes, o.last.gossip.prunes));
        m.grafts.inc_by(d(s.gossip.grafts, o.last.gossip.grafts));
        m.tree_parent_changes
            .inc_by(d(s.tree.parent_changes, o.last.tree.parent_changes));
        m.tree_roots_lost
            .inc_by(d(s.tree.roots_lost, o.last.tree.roots_lost));
        if let Some(tree) = c.tree() {
            m.tree_depth.set(i64::from(tree.hops()));
        }
        o.last = s;
    }

    /// `(live, pending, unreachable, partitioned)` for the status in overlay mode, and the
    /// overlay block.
    pub(super) fn overlay_status(&mut self) -> Option<(usize, usize, usize, bool, OverlayStatus)> {
        self.with_overlay(|this, o| {
            this.overlay_metrics(o);
            let c = &o.core;
            let counts = member_counts(c);
            let st = c.partition_status();
            let status = OverlayStatus {
                active: c.active_view().len(),
                passive: c.passive_view().len(),
                eager: c.eager_peers().len(),
                lazy: c.lazy_peers().len(),
                members: MEMBER_STATUSES
                    .iter()
                    .zip(counts)
                    .map(|(s, n)| ((*s).to_owned(), n))
                    .collect(),
                incarnation: c.incarnation(),
                local_health: c.status().lhm,
                partition: match st.state {
                    Reachability::Connected => "connected",
                    Reachability::Partitioned => "partitioned",
                    Reachability::Isolated => "isolated",
                }
                .to_owned(),
                reachable: st.reachable,
                expected: st.expected,
                admitted: o.admitted.len(),
                address_book: o.book.len(),
                tree: c.tree().map(|t| TreeStatus {
                    root: hex::encode(t.root().0),
                    is_root: t.is_root(),
                    hops: t.hops(),
                    wave: t.seq(),
                    parent: t.parent().map(|p| hex::encode(p.0)),
                    children: t.children().count(),
                    parent_changes: t.stats().parent_changes,
                }),
            };
            (
                status.active,
                status.passive,
                counts[1] + counts[2],
                // Isolated only counts once there was a mesh to be cut off from.
                st.state == Reachability::Partitioned
                    || (st.state == Reachability::Isolated && st.expected > 0),
                status,
            )
        })
    }

    /// The active view as the peers API shows it.
    pub(super) fn overlay_peers(&self) -> Option<Vec<PeerView>> {
        let o = self.overlay.as_ref()?;
        let c = &o.core;
        Some(
            c.active_view()
                .iter()
                .map(|n| PeerView {
                    node_id: hex::encode(n.0),
                    addr: o
                        .book
                        .addr(n)
                        .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
                    last_heard_ms: None,
                    rtt_us: c.rtt_us(n),
                    eager: Some(c.eager_peers().contains(n)),
                })
                .collect(),
        )
    }
}

/// Most duplicate reports kept while their message is still on its way.
const MAX_EARLY_DUPS: usize = 256;

/// Tells the core `from` sent a copy of `id`, which it already has.
fn dup_to_core(o: &mut OverlayState, now: Nanos, id: MsgId, from: CoreId) {
    o.core.handle_message(
        t(now),
        from,
        Message::Gossip {
            id,
            round: 0,
            payload: Vec::new(),
        },
    );
}

fn member_counts(c: &Core<SmallRng>) -> [usize; 4] {
    let mut counts = [0usize; 4];
    for (_, e) in c.members().iter() {
        counts[e.state.status as usize] += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_transport::{MeshCa, Transport, TransportConfig, node_id_from_seed};
    use std::time::Duration;

    fn member(ca: &MeshCa, n: u8) -> Transport {
        let seed = [n; 32];
        let cert = ca
            .issue(node_id_from_seed(&seed).0, Duration::from_secs(600))
            .expect("issue");
        Transport::bind(
            "127.0.0.1:0".parse().expect("addr"),
            seed,
            cert,
            ca.cert_der().clone(),
            TransportConfig::default(),
        )
        .expect("bind")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peers_frame_writer_delivers_in_queue_order() {
        let ca = MeshCa::generate().expect("ca");
        let (a, b) = (Arc::new(member(&ca, 1)), member(&ca, 2));
        let b_id = b.node_id();
        a.connect(b.local_addr().expect("addr"), Some(b_id))
            .await
            .expect("connect");
        let q = spawn_frame_writer(a.clone(), CoreId(b_id.0));
        for i in 0..500u32 {
            q.try_send(i.to_le_bytes().to_vec())
                .expect("queue has room");
        }
        for i in 0..500u32 {
            let (_, _, f) = tokio::time::timeout(Duration::from_secs(10), b.recv())
                .await
                .expect("in time")
                .expect("frame");
            assert_eq!(f[..], i.to_le_bytes(), "frame {i} out of order");
        }
    }
}
