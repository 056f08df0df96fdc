//! The select loop: it pumps events between the protocol core ([`mesh_protocol::Node`]), the
//! fast path's tiles, the per-peer links and the agent service, and carries no protocol
//! logic of its own.
//!
//! ```text
//!   tiles ──Inbound──▶ ┐                        ┌──▶ links (frames over mutual TLS)
//!   links ──frames───▶ ├─ Driver ─▶ core ─poll─▶┤──▶ fast path: forward set, admitted set,
//!   dials ──DialDone─▶ │   │                    │    repairs (Command::Repair)
//!   agents ─Request──▶ ┘   └──▶ store, deliveries (broadcast to subscribers)
//! ```
//!
//! - A data message the fast path accepted (received, or a repair it screened) is stored,
//!   delivered to subscribers and told to the core (from its sender), which announces it
//!   lazily, answers grafts and pulls, runs push-pull anti-entropy and, on Plumtree's own
//!   tree, prunes.
//! - Core payloads never travel in core frames: a core `Gossip` to send (a graft or pull
//!   answer) becomes the stored signed datagram in a `FRAME_DATAGRAM` frame, so the sending
//!   member vouches for its origin; the receiver hands it to its fast path as a repair. A
//!   `Gossip` arriving inside a core frame is refused: it would let a peer mark ids as seen
//!   without a signed message behind them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dataplane::identity::Identity;
use dataplane::tile::{Inbound, InboundMessage};
use dataplane::wire::{self, Kind, Packet};
use mesh_protocol::{
    Command as CoreCommand, Event, Instant, Message, MsgId, Node as Core, NodeId, Reachability,
    Status as MemberStatus,
};
use rand::rngs::SmallRng;
use tokio::sync::{mpsc, oneshot};

use super::fastpath::FastPath;
use super::ledger::{Ledger, Verdict};
use super::links::{DialDone, Dialed, Links, data_addr_of};
use crate::admission::Admitted;
use crate::book::AddressBook;
use crate::frames::{self, FRAME_DATAGRAM, FRAME_EVIDENCE, FRAME_OVERLAY};
use crate::metrics::label::OverlayFrameOutcome as Outcome;
use crate::service::{Delivered, PublishError, Receipt, Request, Service};
use crate::store::MessageStore;

/// Most duplicate reports kept while their message is still on its way.
const MAX_EARLY_DUPS: usize = 256;

/// Seals this node's own data messages.
pub(super) struct Origin {
    pub(super) identity: Identity,
    /// Last sequence number used (starts at the wall clock in µs, so a restart never reuses
    /// one).
    pub(super) sequence: u64,
    pub(super) hop_limit: u8,
    pub(super) payload: Vec<u8>,
}

/// The driver's monotonic clock (the core's [`Instant`] from the node's start).
#[derive(Clone, Copy)]
pub(super) struct Clock {
    pub(super) origin: std::time::Instant,
}

impl Clock {
    /// Now, as the core counts time.
    pub(super) fn now(&self) -> Instant {
        Instant::from_nanos(u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX))
    }
}

/// Where the driver's inputs come from.
pub(super) struct Inputs {
    pub(super) inbound: mpsc::Receiver<Inbound>,
    pub(super) requests: mpsc::Receiver<Request>,
    pub(super) shutdown: oneshot::Receiver<()>,
    pub(super) dials: mpsc::Receiver<DialDone>,
}

/// One node's control plane at run time.
pub(super) struct Driver {
    pub(super) me: NodeId,
    pub(super) core: Core<SmallRng>,
    pub(super) book: AddressBook,
    pub(super) admitted: Admitted,
    pub(super) links: Links,
    pub(super) fast: FastPath,
    pub(super) store: MessageStore,
    /// What was delivered to the agents (journaled): no message twice, one body per
    /// `(origin, sequence)`.
    pub(super) ledger: Ledger,
    pub(super) store_expiry: Duration,
    pub(super) next_store_expiry: Instant,
    pub(super) service: Arc<Service>,
    pub(super) origin: Origin,
    pub(super) clock: Clock,
    pub(super) addrs: (SocketAddr, SocketAddr),
    /// Core counters at the last metrics refresh (the exported ones take the deltas).
    pub(super) last: mesh_protocol::NodeStats,
    /// Duplicate reports that arrived before their message (the verify pool hands the first
    /// copy on after its duplicates were screened): applied when it arrives.
    pub(super) early_dups: VecDeque<(MsgId, NodeId)>,
    pub(super) frame: Vec<u8>,
    /// OTLP export; flushes when the node stops.
    pub(super) _otlp: Option<crate::otlp::OtlpExport>,
}

impl Driver {
    /// Runs until shutdown (a goodbye to the neighbours) or until an input closes.
    pub(super) async fn run(mut self, mut inputs: Inputs) {
        let transport = self.links.transport().clone();
        loop {
            let now = self.clock.now();
            let next = self.next_deadline();
            let wait = next.saturating_since(now);
            tokio::select! {
                m = inputs.inbound.recv() => match m {
                    Some(m) => self.on_inbound(m),
                    None => break,
                },
                r = inputs.requests.recv() => match r {
                    Some(r) => self.on_request(r),
                    None => break,
                },
                _ = tokio::time::sleep(wait) => self.on_timeout(),
                f = transport.recv() => match f {
                    Some((id, remote, frame)) => self.on_frame(id, remote, &frame),
                    None => break,
                },
                Some(d) = inputs.dials.recv() => self.on_dial_done(d),
                _ = &mut inputs.shutdown => {
                    let _ = self.core.handle_command(self.clock.now(), CoreCommand::Leave);
                    self.flush();
                    break;
                }
            }
            self.flush();
        }
        // Let the goodbyes go out before closing the connections.
        tokio::time::sleep(Duration::from_millis(50)).await;
        transport.shutdown().await;
        self.fast.stop();
        tracing::info!(node = %self.me, "node stopped");
    }

    fn next_deadline(&self) -> Instant {
        let core = self.core.poll_timeout().unwrap_or(Instant::MAX);
        core.min(self.links.next_seed_dial())
            .min(self.next_store_expiry)
    }

    /// Timer work: the core's timers, due seed dials, store expiry, metrics.
    fn on_timeout(&mut self) {
        let now = self.clock.now();
        self.core.handle_timeout(now);
        let isolated = self.core.active_view().is_empty();
        self.links.dial_seeds_if_due(now, isolated);
        if now >= self.next_store_expiry {
            self.next_store_expiry = now + self.store_expiry;
            self.store.expire(now);
            self.service
                .metrics
                .store_messages
                .set(self.store.len() as i64);
        }
        self.refresh_core_metrics();
    }

    /// A message (or a duplicate notice) from the fast path.
    fn on_inbound(&mut self, m: Inbound) {
        match m {
            Inbound::Duplicate { id, from } => self.on_duplicate(id, from),
            Inbound::Message(m) => {
                if m.kind == Kind::Data && self.accept_data(&m, false) {
                    self.data_to_core(&m, Some(m.from));
                }
            }
        }
    }

    /// A copy of an accepted message came from an eager peer: the core prunes that link (the
    /// tree already reaches this node another way).
    fn on_duplicate(&mut self, id: MsgId, addr: SocketAddr) {
        let now = self.clock.now();
        let Some(from) = self.book.id_at(&addr) else {
            return;
        };
        if self.core.has_message(&id) {
            self.duplicate_to_core(now, id, from);
        } else {
            if self.early_dups.len() >= MAX_EARLY_DUPS {
                self.early_dups.pop_front();
            }
            self.early_dups.push_back((id, from));
        }
    }

    /// Tells the core `from` sent a copy of `id`, which it already has.
    fn duplicate_to_core(&mut self, now: Instant, id: MsgId, from: NodeId) {
        self.core.handle_message(
            now,
            from,
            Message::Gossip {
                id,
                round: 0,
                payload: Vec::new(),
            },
        );
    }

    /// A data message accepted here for the first time (`from`: the mesh address it came
    /// from; `None` when published here): the core announces it lazily and can answer grafts
    /// and pulls for it.
    fn data_to_core(&mut self, p: &InboundMessage, from: Option<SocketAddr>) {
        let now = self.clock.now();
        let id = p.id;
        match from.and_then(|a| self.book.id_at(&a)) {
            Some(sender) => {
                let round = u16::from(self.origin.hop_limit.saturating_sub(p.hop_limit));
                self.core.handle_message(
                    now,
                    sender,
                    Message::Gossip {
                        id,
                        round,
                        payload: Vec::new(),
                    },
                );
            }
            None => {
                // Local, or from an address not in the book: record it as ours to announce
                // (a duplicate id is fine).
                let _ = self.core.handle_command(
                    now,
                    CoreCommand::Broadcast {
                        id,
                        payload: Vec::new(),
                    },
                );
            }
        }
        // duplicates reported before this first copy was handed on
        if self.early_dups.iter().any(|(d, _)| *d == id) {
            let early: Vec<NodeId> = self
                .early_dups
                .iter()
                .filter(|(d, _)| *d == id)
                .map(|(_, f)| *f)
                .collect();
            self.early_dups.retain(|(d, _)| *d != id);
            for from in early {
                self.duplicate_to_core(now, id, from);
            }
        }
    }

    /// Stores and delivers a data message (from the mesh or local), unless this node
    /// delivered it before (maybe before a restart) or delivered another body for its
    /// origin and sequence. Returns whether it was stored (the core then learns of it).
    fn accept_data(&mut self, p: &InboundMessage, local: bool) -> bool {
        let id = p.id;
        let now = self.clock.now();
        let wall = dataplane::clock::wall_us();
        match self
            .ledger
            .check(id, p.origin, p.sequence, p.timestamp_us, wall)
        {
            Verdict::New => {}
            Verdict::Again => {
                // A replay, or a repair of what was delivered before a restart: kept to
                // answer grafts and pulls, never handed to the agents again.
                let stored = self.store.insert(now, id, Arc::from(p.bytes()));
                if stored {
                    self.service.metrics.redelivery_suppressed.inc();
                }
                return stored;
            }
            Verdict::Equivocation { first } => {
                self.on_equivocation(first, p);
                return false;
            }
        }
        let (topic, body, received_us) = (p.topic(), p.body(), p.received_us);
        if !self.store.insert(now, id, Arc::from(p.bytes())) {
            return false;
        }
        let m = &self.service.metrics;
        m.store_messages.set(self.store.len() as i64);
        let d = Delivered {
            id: id.to_hex(),
            origin: p.origin.to_hex(),
            sequence: p.sequence,
            topic: topic.to_owned(),
            text: std::str::from_utf8(body).ok().map(str::to_owned),
            data_b64: b64(body),
            timestamp_us: p.timestamp_us,
            received_us,
            local,
        };
        if !local {
            m.delivered.inc();
            let lat = received_us.saturating_sub(p.timestamp_us) as f64 / 1e6;
            m.observe_latency(lat);
        }
        let _ = self.service.deliveries.send(Arc::new(d));
        true
    }

    /// `p` has the origin and sequence of the delivered message `first` but another body:
    /// the origin signed two messages for one sequence. `p` is never delivered; the origin is
    /// flagged and the pair, both signed by it, goes to every neighbour as evidence.
    fn on_equivocation(&mut self, first: MsgId, p: &InboundMessage) {
        if self.ledger.flag(p.origin) {
            self.service.metrics.equivocations.inc();
            tracing::warn!(origin = %p.origin.short(), sequence = p.sequence, "EQUIVOCATION: origin signed two bodies for one sequence; the second is not delivered");
        }
        let Some(first_bytes) = self.store.get(&first).cloned() else {
            return; // the first copy left the store: flagged here, no evidence to show
        };
        if let Some(frame) = frames::encode_evidence(&first_bytes, p.bytes()) {
            self.send_to_neighbours(None, &frame);
        }
    }

    /// Evidence of equivocation from `from`: both messages must carry the same origin and
    /// sequence, differ, and verify. New evidence flags the origin and is passed on once.
    fn on_evidence(&mut self, from: NodeId, frame: &[u8]) {
        let Some((a, b)) = frames::decode_evidence(frame) else {
            self.links.count(Outcome::Invalid, 1);
            return;
        };
        let (Ok(pa), Ok(pb)) = (Packet::parse(a), Packet::parse(b)) else {
            self.links.count(Outcome::Invalid, 1);
            return;
        };
        let origin = NodeId(*pa.origin());
        if self.ledger.is_flagged(&origin) {
            self.links.count(Outcome::Received, 1);
            return; // known: not checked again (no verify work for repeats)
        }
        let verifies =
            |p: &Packet<'_>| dataplane::verify::verify_one(&dataplane::verify::VerifyItem::of(p));
        let proves = pa.origin() == pb.origin()
            && pa.sequence() == pb.sequence()
            && pa.message_id() != pb.message_id()
            && verifies(&pa)
            && verifies(&pb);
        if !proves {
            self.links.count(Outcome::Invalid, 1);
            tracing::debug!(peer = %from.short(), "evidence frame proves nothing");
            return;
        }
        self.links.count(Outcome::Received, 1);
        if self.ledger.flag(origin) {
            self.service.metrics.equivocations.inc();
            tracing::warn!(origin = %origin.short(), sequence = pa.sequence(), peer = %from.short(), "EQUIVOCATION proven by a member's evidence");
            self.send_to_neighbours(Some(from), frame);
        }
    }

    /// Sends `frame` to every active neighbour but `except`.
    fn send_to_neighbours(&mut self, except: Option<NodeId>, frame: &[u8]) {
        let active = self.core.active_view().to_vec();
        for n in active {
            if Some(n) != except {
                let addr = self.book.addr(&n);
                self.links.send(n, addr, frame.to_vec());
            }
        }
    }

    /// A frame from an authenticated member; `remote` is its QUIC address.
    fn on_frame(&mut self, from: NodeId, remote: SocketAddr, frame: &[u8]) {
        if let Some(data) = data_addr_of(remote) {
            self.book.learn_verified(from, data);
        }
        self.admitted.admit(&from);
        match frame.first() {
            Some(&FRAME_OVERLAY) => self.on_core_frame(from, frame),
            Some(&FRAME_DATAGRAM) => self.on_repair(remote, &frame[1..]),
            Some(&FRAME_EVIDENCE) => self.on_evidence(from, frame),
            _ => self.links.count(Outcome::Invalid, 1),
        }
    }

    fn on_core_frame(&mut self, from: NodeId, frame: &[u8]) {
        let (hints, msg) = match frames::decode_frame(frame) {
            Ok(x) => x,
            Err(e) => {
                self.links.count(Outcome::Invalid, 1);
                tracing::debug!(peer = %from.short(), error = %e, "bad core frame");
                return;
            }
        };
        if matches!(msg, Message::Gossip { .. }) {
            // Payloads only travel as signed datagrams.
            self.links.count(Outcome::Invalid, 1);
            return;
        }
        for (n, a) in hints {
            if n != self.me && n != from {
                self.book.learn_hint(n, a);
            }
        }
        // A member vouches for the members it names.
        for n in msg.mentioned_nodes() {
            self.admitted.admit(&n);
        }
        self.links.count(Outcome::Received, 1);
        self.core.handle_message(self.clock.now(), from, msg);
    }

    /// A graft or pull answer over mutual TLS: the sending member vouches for the message's
    /// origin, so it is admitted; the fast path then screens the datagram like any other
    /// (replay window, dedup, signature) and hands it back if it is new.
    fn on_repair(&mut self, remote: SocketAddr, datagram: &[u8]) {
        let Some(data) = data_addr_of(remote) else {
            return;
        };
        let Ok(p) = Packet::parse(datagram) else {
            self.links.count(Outcome::Invalid, 1);
            return;
        };
        self.links.count(Outcome::Received, 1);
        self.admitted.admit(&NodeId(*p.origin()));
        self.publish_admitted();
        if !self.fast.repair(datagram.to_vec(), data) {
            tracing::debug!("fast-path queue full: repair dropped");
        }
    }

    fn on_dial_done(&mut self, d: DialDone) {
        let now = self.clock.now();
        match self.links.dial_done(self.me, d) {
            Dialed::Nothing => {}
            Dialed::Seed(id, addr) => {
                self.book.learn_verified(id, addr);
                self.admitted.admit(&id);
                let _ = self
                    .core
                    .handle_command(now, CoreCommand::AddSeeds(vec![id]));
                if self.core.active_view().is_empty() {
                    let _ = self.core.handle_command(now, CoreCommand::Join(id));
                }
            }
            Dialed::Verified(id, addr) => {
                self.book.learn_verified(id, addr);
                self.admitted.admit(&id);
            }
            Dialed::Failed(id) => self.book.forget_hint(&id),
        }
    }

    fn on_request(&mut self, r: Request) {
        match r {
            Request::Publish { topic, body, reply } => {
                let _ = reply.send(self.publish(&topic, &body));
            }
            Request::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Request::Peers(reply) => {
                let _ = reply.send(self.peers());
            }
        }
    }

    fn publish(&mut self, topic: &str, body: &[u8]) -> Result<Receipt, PublishError> {
        let o = &mut self.origin;
        wire::data_payload(topic, body, &mut o.payload)?;
        let sequence = o.sequence + 1;
        let ts = dataplane::clock::wall_us();
        let mut bytes = Vec::with_capacity(wire::MAX_DATAGRAM);
        o.identity.seal(
            Kind::Data,
            o.hop_limit,
            sequence,
            ts,
            &o.payload,
            &mut bytes,
        )?;
        // Store and deliver locally only once the fast path took it, so a refused publish
        // leaves no trace and can simply be retried.
        if !self.fast.publish(bytes.clone()) {
            return Err(PublishError::Unavailable("fast path queue full"));
        }
        self.origin.sequence = sequence;
        let p = InboundMessage::from_sealed(bytes, SocketAddr::from(([0, 0, 0, 0], 0)), ts)
            .map_err(|_| PublishError::Unavailable("encoding bug"))?;
        self.accept_data(&p, true);
        self.data_to_core(&p, None);
        self.service.metrics.published.inc();
        Ok(Receipt {
            id: p.id.to_hex(),
            sequence,
            timestamp_us: ts,
        })
    }

    /// Drains the core's transmits and events; republishes the forward and admitted sets.
    fn flush(&mut self) {
        while let Some((to, msg)) = self.core.poll_transmit() {
            self.send(to, &msg);
        }
        while let Some(ev) = self.core.poll_event() {
            self.on_event(ev);
        }
        self.fast.sync_forward(&self.core, &self.book);
        self.publish_admitted();
        self.ledger.flush();
    }

    fn publish_admitted(&mut self) {
        if let Some(set) = self.admitted.take_snapshot() {
            self.fast.set_admitted(set);
        }
    }

    fn send(&mut self, to: NodeId, msg: &Message) {
        if let Message::Gossip { id, .. } = msg {
            self.send_stored(to, id);
            return;
        }
        if let Message::Graft { ids } | Message::Pull { ids } = msg {
            self.service
                .metrics
                .repair_requested
                .inc_by(ids.len() as u64);
        }
        if matches!(msg, Message::Prune | Message::Graft { .. }) {
            tracing::debug!(
                peer = %to.short(),
                tree = if matches!(msg, Message::Prune) { "prune" } else { "graft" },
                eager = self.core.eager_peers().len(),
                "plumtree"
            );
        }
        let mut hints = Vec::new();
        for n in msg.mentioned_nodes() {
            if n != to
                && !hints.iter().any(|(h, _)| *h == n)
                && let Some(a) = self.book.addr(&n)
            {
                hints.push((n, a));
            }
        }
        frames::encode_frame(&hints, msg, &mut self.frame);
        let addr = self.book.addr(&to);
        self.links.send(to, addr, self.frame.clone());
    }

    /// A graft or pull answer: the stored signed datagram, over mutual TLS (this node then
    /// vouches for its origin, which the receiver may not know yet). Not connected: not sent
    /// (the requester asks another announcer, and anti-entropy covers the rest).
    fn send_stored(&mut self, to: NodeId, id: &MsgId) {
        let Some(bytes) = self.store.get(id) else {
            return;
        };
        let mut frame = Vec::with_capacity(1 + bytes.len());
        frame.push(FRAME_DATAGRAM);
        frame.extend_from_slice(bytes);
        // Let the receiver forward it on: its subtree probably missed it too.
        if let Some(datagram) = frame.get_mut(1..)
            && Packet::parse(datagram).is_ok_and(|p| p.hop_limit() < 2)
        {
            wire::set_hop_limit(datagram, 2);
        }
        if self.links.send_if_connected(to, frame) {
            self.service.metrics.repair_served.inc();
        } else {
            self.links.count(Outcome::Unsent, 1);
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Delivered(_) => {} // delivered by accept_data, from the signed message
            Event::MemberChanged { node, state } => {
                self.admitted.admit(&node);
                let (m, inc) = (node.short(), state.incarnation);
                match state.status {
                    MemberStatus::Alive => tracing::debug!(member = %m, inc, "member alive"),
                    MemberStatus::Suspect => tracing::info!(member = %m, inc, "member suspected"),
                    MemberStatus::Dead => tracing::warn!(member = %m, inc, "member declared dead"),
                    MemberStatus::Left => tracing::info!(member = %m, "member left"),
                }
            }
            Event::NeighborUp(n) => {
                self.admitted.admit(&n);
                tracing::info!(peer = %n.short(), addr = ?self.book.addr(&n), "neighbour up");
            }
            Event::NeighborDown(n) => tracing::info!(peer = %n.short(), "neighbour down"),
            Event::EagerChanged { .. } => {}
            Event::Partition(st) => {
                self.service
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
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
