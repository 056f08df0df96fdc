//! The receive tile: one thread that owns a backend socket and runs the
//! pipeline on every batch.
//!
//! ```text
//!   wait (poll socket + waker)
//!   commands from the control plane, each wake:
//!     Publish (sealed here) → mark seen → send to the origin list
//!     Repair (over mutual TLS) ─┐ the same stages as a received batch
//!   recv batch ─────────────────┴→ Pipeline (parse → replay window → admission
//!     → dedup probe → verify, inline or on the verify pool → payload check)
//!     → hand accepted messages to the control plane (bounded queue)
//!     → commit as seen → forward data to `fanout` peers (hop limit − 1)
//!   counters are published to shared atomics once per batch
//! ```
//!
//! The tile never waits on the control plane: peers to forward to come from a
//! lock-free [`ForwardSet`] snapshot the control plane swaps in, and the queue
//! towards the control plane is bounded; when it is full the message is
//! counted as `queue_full`, not marked seen, and can arrive again later.
//!
//! # What the control plane gets, and the copy on the way
//!
//! An accepted message is handed over as an [`Inbound::Message`]: an
//! [`InboundMessage`] with every header field, its id and the offsets of
//! its topic and body already read and validated here, so the control
//! plane never parses it again. It owns the whole signed datagram in one
//! buffer, and that buffer is the one copy left on the way: the datagram is
//! copied out of the receive buffer (a `recvmmsg` slot, or a UMEM frame on
//! AF_XDP) because that memory is recycled right after the batch, when the
//! frame goes back to the fill ring or the slot is received into again, while
//! the control plane keeps the message (its store answers repairs). On the
//! verify-pool path the screened datagrams are also copied once into the
//! pool's batch and beside it, since their verdicts come back after the
//! receive buffer has been reused; the message handed on is then copied
//! from that owned copy. A repeat of an accepted message is reported, when
//! asked for, as an [`Inbound::Duplicate`], not as bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, Sender};
use rand::SeedableRng;
use rand::rngs::SmallRng;

use std::os::fd::RawFd;

use crate::backend::{Backend, RxView, TxSink};
use crate::clock::wall_us;
use crate::forward::{ForwardSet, Forwarding};
use crate::identity::NodeId;
use crate::pipeline::{Accepted, DropReason, Pipeline, PipelineConfig, recycle};
use crate::udp::{BatchSocket, UdpBackend, Waker, wait_readable};
use crate::verify::workers::{PoolConfig, PoolStats, VerifyBatch, VerifyPool};
use crate::wire::{self, Kind, MsgId, Packet};

/// Tile settings.
#[derive(Clone)]
pub struct TileConfig {
    /// Datagrams per receive batch (1..=256).
    pub batch_size: usize,
    /// Peers each new data message is forwarded to.
    pub fanout: usize,
    /// Pipeline settings.
    pub pipeline: PipelineConfig,
    /// Longest wait for traffic before housekeeping runs.
    pub idle_wait: Duration,
    /// Core to pin the tile thread to, if any.
    pub core: Option<usize>,
    /// Verify on a pool of worker threads (pinned cores, bounded queues)
    /// instead of inline on the tile. `None`: verify inline.
    pub verify_pool: Option<PoolConfig>,
    /// Admission of message origins (mutual TLS membership); `None` admits
    /// every correctly signed message.
    pub admission: Option<crate::pipeline::Admission>,
    /// Hand the control plane a notice for each duplicate data message that
    /// came from a forward-set peer (see [`Inbound::Duplicate`]): a Plumtree
    /// control plane prunes those links. Duplicates from other addresses are
    /// never reported, so the notices are bounded by the forward set.
    pub report_duplicates: bool,
}

impl core::fmt::Debug for TileConfig {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TileConfig")
            .field("batch_size", &self.batch_size)
            .field("fanout", &self.fanout)
            .field("core", &self.core)
            .field("verify_pool", &self.verify_pool)
            .field("admission", &self.admission.is_some())
            .field("report_duplicates", &self.report_duplicates)
            .finish_non_exhaustive()
    }
}

/// What the tile hands the control plane.
#[derive(Clone, Debug)]
pub enum Inbound {
    /// A message that passed every stage.
    Message(InboundMessage),
    /// A duplicate notice, not a message: a copy of data message `id`,
    /// which this node had already accepted, came again from `from` (a
    /// forward-set peer). Never verified again, so it proves nothing beyond
    /// "this address sent a copy".
    Duplicate {
        /// The message's id.
        id: MsgId,
        /// UDP source address of the copy.
        from: SocketAddr,
    },
}

/// A message that passed every stage: the signed datagram and what the
/// pipeline read from it. Built by the tile (or, for a message this node
/// sealed, by [`InboundMessage::from_sealed`]), so the fields agree with
/// the bytes and the topic and body are valid.
#[derive(Clone, Debug)]
pub struct InboundMessage {
    /// The whole signed datagram, as received (hop limit included).
    bytes: Vec<u8>,
    /// Its id (derived from the signature).
    pub id: MsgId,
    /// Its kind.
    pub kind: Kind,
    /// The origin's public key (its signature was checked against it).
    pub origin: NodeId,
    /// The origin's sequence number.
    pub sequence: u64,
    /// The origin's clock at signing, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// Hop limit as received (before forwarding decremented it).
    pub hop_limit: u8,
    /// UDP source address, or for a repair the mesh address of the member
    /// that sent it.
    pub from: SocketAddr,
    /// Local wall clock at receipt, µs since the Unix epoch.
    pub received_us: u64,
    /// Repaired over mutual TLS ([`Command::Repair`]), not received on the
    /// socket.
    pub repair: bool,
    /// Offset of the topic in `bytes`, and its length (the body runs from
    /// its end to the signature), validated.
    topic_at: usize,
    topic_len: usize,
}

impl InboundMessage {
    /// Reads a packet the pipeline accepted. `None` when its payload is not
    /// topic + body (the pipeline has already dropped those).
    fn from_packet(
        packet: &Packet<'_>,
        from: SocketAddr,
        received_us: u64,
        repair: bool,
    ) -> Option<InboundMessage> {
        let (topic, _) = wire::split_data_payload(packet.payload())?;
        let (topic_at, topic_len) = (wire::HEADER_LEN + 1, topic.len());
        Some(InboundMessage {
            bytes: packet.as_bytes().to_vec(),
            id: packet.message_id(),
            kind: packet.kind(),
            origin: NodeId(*packet.origin()),
            sequence: packet.sequence(),
            timestamp_us: packet.timestamp_us(),
            hop_limit: packet.hop_limit(),
            from,
            received_us,
            repair,
            topic_at,
            topic_len,
        })
    }

    /// A message this node sealed itself (a local publish), read the way the
    /// tile reads an accepted one. Its signature is not checked: anything
    /// from the network goes through the tile instead.
    pub fn from_sealed(
        bytes: Vec<u8>,
        from: SocketAddr,
        received_us: u64,
    ) -> Result<InboundMessage, DropReason> {
        let packet = Packet::parse(&bytes)?;
        InboundMessage::from_packet(&packet, from, received_us, false).ok_or(DropReason::BadPayload)
    }

    /// The whole signed datagram.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        self.bytes
            .get(self.topic_at..self.topic_at + self.topic_len)
            .and_then(|t| core::str::from_utf8(t).ok())
            .unwrap_or("")
    }

    /// The body: the payload after the topic.
    pub fn body(&self) -> &[u8] {
        let end = self.bytes.len().saturating_sub(wire::SIGNATURE_LEN);
        self.bytes
            .get(self.topic_at + self.topic_len..end)
            .unwrap_or(&[])
    }

    /// The signed datagram, without a copy.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// Commands from the control plane.
#[derive(Clone, Debug)]
pub enum Command {
    /// A data message this node sealed: mark it seen and forward it.
    Publish(Vec<u8>),
    /// A signed datagram repaired over mutual TLS (a graft or pull answer)
    /// by the member whose mesh address is `from`. The tile runs it through
    /// exactly the stages of a datagram received from the socket, in the
    /// same order and with the same counters (parse, replay window,
    /// admission, dedup probe, verify, payload check, handoff, mark seen,
    /// forward with hop limit − 1), and counts it in
    /// [`TileStats::repairs`]. An accepted repair reaches the control plane
    /// with `repair` set; a duplicate repair sends no duplicate notice.
    Repair {
        /// The whole signed datagram.
        datagram: Vec<u8>,
        /// Mesh (UDP) address of the member that sent it.
        from: SocketAddr,
    },
}

/// Counters the tile publishes once per batch (read by the metrics exporter).
#[derive(Debug, Default)]
pub struct TileStats {
    /// Datagrams received (repairs included).
    pub received: AtomicU64,
    /// Repaired datagrams handed in by the control plane
    /// ([`Command::Repair`]), also counted in `received`.
    pub repairs: AtomicU64,
    /// Accepted messages (all data messages).
    pub accepted: AtomicU64,
    /// Drops by [`DropReason`] value.
    pub dropped: [AtomicU64; DropReason::COUNT],
    /// Datagrams forwarded (one per destination).
    pub forwarded: AtomicU64,
    /// Datagrams the kernel refused to send.
    pub tx_failed: AtomicU64,
    /// Seen-cache entries evicted while still live.
    pub dedup_live_evictions: AtomicU64,
    /// Batches processed.
    pub batches: AtomicU64,
}

/// Handle to a running tile; stops and joins it on drop.
pub struct TileHandle {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    join: Option<JoinHandle<()>>,
    stats: Arc<TileStats>,
    local_addr: SocketAddr,
    verify_stats: Option<PoolStats>,
}

impl TileHandle {
    /// Sends a command and wakes the tile. Returns false when the command
    /// queue is full or the tile has stopped.
    pub fn command(&self, cmd: Command) -> bool {
        let ok = self.commands.try_send(cmd).is_ok();
        self.waker.wake();
        ok
    }

    /// Shared counters.
    pub fn stats(&self) -> &Arc<TileStats> {
        &self.stats
    }

    /// Per-worker counters of the tile's verify pool, when it has one.
    pub fn verify_stats(&self) -> Option<&PoolStats> {
        self.verify_stats.as_ref()
    }

    /// Address the tile's socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the tile and waits for its thread.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for TileHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts a tile on a UDP socket. Accepted messages go to `inbound`; peers
/// to forward to are read from `forward`.
pub fn spawn_udp_tile(
    socket: BatchSocket,
    cfg: TileConfig,
    forward: Arc<ArcSwap<ForwardSet>>,
    inbound: handoff::InboundSender,
) -> std::io::Result<TileHandle> {
    let local_addr = socket.local_addr()?;
    let batch = cfg.batch_size.clamp(1, crate::pipeline::MAX_BATCH);
    spawn_tile(
        format!("mesh-rx-{}", local_addr.port()),
        local_addr,
        cfg,
        forward,
        inbound,
        move || {
            let fd = socket.raw_fd();
            Ok((UdpBackend::new(socket, batch), fd))
        },
    )
}

/// Starts a tile on any [`Backend`]. `make` runs on the new thread (so the
/// backend need not be `Send`, and is built on its pinned core) and returns
/// the backend and a descriptor that polls readable when packets wait.
pub fn spawn_tile<B, F>(
    name: String,
    local_addr: SocketAddr,
    cfg: TileConfig,
    forward: Arc<ArcSwap<ForwardSet>>,
    inbound: handoff::InboundSender,
    make: F,
) -> std::io::Result<TileHandle>
where
    B: Backend,
    F: FnOnce() -> std::io::Result<(B, RawFd)> + Send + 'static,
{
    let pool = match &cfg.verify_pool {
        Some(pc) => Some(
            VerifyPool::start(pc)
                .map_err(|e| std::io::Error::other(format!("verify pool: {e}")))?,
        ),
        None => None,
    };
    let verify_stats = pool.as_ref().map(VerifyPool::stats_handle);
    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(4096);
    let waker = Arc::new(Waker::new()?);
    let stop = Arc::new(AtomicBool::new(false));
    let stats = Arc::new(TileStats::default());
    let mut seed = [0u8; 8];
    getrandom::fill(&mut seed).map_err(|e| std::io::Error::other(e.to_string()))?;
    let (ready_tx, ready_rx) = std::sync::mpsc::sync_channel::<std::io::Result<()>>(1);
    let (w, st, stt) = (waker.clone(), stop.clone(), stats.clone());
    let join = std::thread::Builder::new().name(name).spawn(move || {
        if let Some(core) = cfg.core {
            let pinned = core_affinity_pin(core);
            tracing::info!(core, pinned, "fast-path tile pinned");
        }
        let (backend, fd) = match make() {
            Ok(b) => {
                let _ = ready_tx.send(Ok(()));
                b
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let run = Run {
            backend,
            wait_fd: fd,
            tile: Tile {
                pipeline: {
                    let mut p = Pipeline::new(cfg.pipeline);
                    p.set_admission(cfg.admission.clone());
                    p
                },
                fwd: Forwarding::new(
                    cfg.fanout,
                    SmallRng::seed_from_u64(u64::from_le_bytes(seed)),
                ),
                cfg,
                forward,
                inbound,
                commands: cmd_rx,
                waker: w,
                stop: st,
                stats: stt,
                verify: pool.map(VerifyStage::new),
                origin: Instant::now(),
                batches: 0,
                repairs: 0,
                repair_queue: Vec::new(),
                first: Vec::with_capacity(crate::pipeline::MAX_BATCH),
                deferred: Vec::with_capacity(crate::pipeline::MAX_BATCH),
            },
        };
        run.run();
    })?;
    match ready_rx.recv() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let _ = join.join();
            return Err(e);
        }
        Err(_) => return Err(std::io::Error::other("fast-path tile died during start-up")),
    }
    Ok(TileHandle {
        commands: cmd_tx,
        waker,
        stop,
        join: Some(join),
        stats,
        local_addr,
        verify_stats,
    })
}

/// The bounded queue from the tile to the control plane. A thin wrapper so
/// the tile does not depend on the control plane's runtime.
pub mod handoff {
    use super::Inbound;

    /// Result of a non-blocking send.
    #[derive(Debug, PartialEq, Eq)]
    pub enum SendOutcome {
        /// Queued.
        Sent,
        /// Queue full: the message was not queued.
        Full,
        /// Receiver gone: the tile should stop.
        Closed,
    }

    /// Anything that can take an [`Inbound`] without blocking.
    pub type InboundSender = Box<dyn Fn(Inbound) -> SendOutcome + Send>;
}

struct Run<B: Backend> {
    backend: B,
    wait_fd: RawFd,
    tile: Tile,
}

/// Everything of a running tile but its backend, so a batch borrowed from
/// the backend can be processed while the tile's state is mutated.
struct Tile {
    cfg: TileConfig,
    pipeline: Pipeline,
    fwd: Forwarding,
    forward: Arc<ArcSwap<ForwardSet>>,
    inbound: handoff::InboundSender,
    commands: Receiver<Command>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    stats: Arc<TileStats>,
    verify: Option<VerifyStage>,
    /// Origin of the monotonic clock the seen-cache uses.
    origin: Instant,
    batches: u64,
    repairs: u64,
    /// Repairs drained from the command queue, waiting to be ingested.
    repair_queue: Vec<(Vec<u8>, SocketAddr)>,
    // Scratch for a batch's screened messages (emptied between uses).
    first: Vec<Accepted<'static>>,
    deferred: Vec<Accepted<'static>>,
}

/// Where a batch came from, for the messages it hands on.
#[derive(Clone, Copy)]
struct Source {
    /// Local wall clock at receipt, µs since the Unix epoch.
    wall: u64,
    /// Repaired over mutual TLS ([`Command::Repair`]), not received on the socket.
    repair: bool,
}

/// A screened message kept for the verify pool: where its owned copy is and
/// what the tile needs once the verdict is back.
#[derive(Clone, Copy)]
struct HeldItem {
    span: (usize, usize),
    index: usize,
    key: u64,
    from: SocketAddr,
}

/// Messages waiting for the verify pool: owned copies of their datagrams
/// (the receive buffers are recycled before the verdicts come back). `items`
/// are in the pool batch, in its order; `deferred` are their later copies
/// from the same batch, waiting for those verdicts (see
/// [`Pipeline::resolve_deferred`]).
#[derive(Default)]
struct Held {
    tag: u64,
    bytes: Vec<u8>,
    items: Vec<HeldItem>,
    deferred: Vec<HeldItem>,
    src: Option<Source>,
}

impl Held {
    fn clear(&mut self) {
        self.bytes.clear();
        self.items.clear();
        self.deferred.clear();
    }

    /// Keeps an owned copy of `a` (received from `from`).
    fn hold(&mut self, a: &Accepted<'_>, from: SocketAddr) -> HeldItem {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(a.packet.as_bytes());
        HeldItem {
            span: (start, self.bytes.len()),
            index: a.index,
            key: a.key,
            from,
        }
    }

    /// The screened view of a held item (its bytes parsed in place again).
    fn view(&self, item: &HeldItem) -> Option<Accepted<'_>> {
        let bytes = self.bytes.get(item.span.0..item.span.1)?;
        let packet = Packet::parse(bytes).ok()?;
        Some(Accepted {
            index: item.index,
            packet,
            key: item.key,
        })
    }

    fn source_of(&self, index: usize) -> SocketAddr {
        self.items
            .iter()
            .chain(&self.deferred)
            .find(|h| h.index == index)
            .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |h| h.from)
    }
}

/// The verify pool as a stage of the tile: batches out, verdicts back.
pub(crate) struct VerifyStage {
    pool: VerifyPool,
    in_flight: Vec<Held>,
    free_held: Vec<Held>,
    free_batches: Vec<VerifyBatch>,
    next_tag: u64,
}

impl VerifyStage {
    fn new(pool: VerifyPool) -> VerifyStage {
        VerifyStage {
            pool,
            in_flight: Vec::new(),
            free_held: Vec::new(),
            free_batches: Vec::new(),
            next_tag: 0,
        }
    }

    /// Submits `first` to the pool (owned copies kept beside, with the
    /// `deferred` copies); when every verify queue is full they are all
    /// counted as `queue_full` (not marked seen).
    fn submit(
        &mut self,
        pipeline: &mut Pipeline,
        first: &[Accepted<'_>],
        deferred: &[Accepted<'_>],
        from: &dyn Fn(usize) -> SocketAddr,
        src: Source,
    ) {
        if first.is_empty() {
            return;
        }
        let mut vb = self.free_batches.pop().unwrap_or_else(|| {
            VerifyBatch::with_capacity(
                crate::pipeline::MAX_BATCH,
                crate::pipeline::MAX_BATCH * wire::MAX_DATAGRAM,
            )
        });
        let mut held = self.free_held.pop().unwrap_or_default();
        self.next_tag = self.next_tag.wrapping_add(1);
        vb.tag = self.next_tag;
        held.tag = self.next_tag;
        held.src = Some(src);
        for a in first {
            let p = &a.packet;
            vb.push(p.origin(), p.signed_bytes(), p.signature());
            let item = held.hold(a, from(a.index));
            held.items.push(item);
        }
        for a in deferred {
            let item = held.hold(a, from(a.index));
            held.deferred.push(item);
        }
        match self.pool.submit(vb) {
            Ok(()) => self.in_flight.push(held),
            Err(mut vb) => {
                for _ in first.iter().chain(deferred) {
                    pipeline.count_unverified_drop(DropReason::QueueFull);
                }
                vb.clear();
                self.free_batches.push(vb);
                held.clear();
                self.free_held.push(held);
            }
        }
    }
}

impl<B: Backend> Run<B> {
    fn run(mut self) {
        while !self.tile.stop.load(Ordering::Acquire) {
            // Verdicts come back from other cores: poll briefly while any are out.
            let wait = match &self.tile.verify {
                Some(v) if !v.in_flight.is_empty() => Duration::from_micros(200),
                _ => self.tile.cfg.idle_wait,
            };
            if let Err(e) = wait_readable(self.wait_fd, &self.tile.waker, wait) {
                tracing::warn!(error = %e, "poll failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            self.commands();
            // Drain the socket in batches.
            loop {
                let n = match self.backend.recv_batch() {
                    Ok(n) => n,
                    Err(e) => {
                        tracing::warn!(error = %e, "recv failed");
                        0
                    }
                };
                if n == 0 {
                    break;
                }
                let (batch, tx) = self.backend.halves();
                let n = n.min(batch.len()).min(crate::pipeline::MAX_BATCH);
                let mut views: [&[u8]; crate::pipeline::MAX_BATCH] =
                    [&[]; crate::pipeline::MAX_BATCH];
                for (i, v) in views.iter_mut().enumerate().take(n) {
                    *v = batch.packet(i);
                }
                let src = Source {
                    wall: wall_us(),
                    repair: false,
                };
                self.tile.ingest(&views[..n], &|i| batch.from(i), src, tx);
            }
            if self.tile.verify.is_some() {
                let (_, tx) = self.backend.halves();
                self.tile.verdicts(tx);
            }
            self.tile.publish();
        }
    }

    /// Drains the commands from the control plane: publishes are sent at
    /// once, repairs are ingested in batches like received datagrams.
    fn commands(&mut self) {
        let t = &mut self.tile;
        while let Ok(cmd) = t.commands.try_recv() {
            match cmd {
                // Local publishes: mark seen, then forward like a received message.
                Command::Publish(bytes) => {
                    if let Ok(p) = Packet::parse(&bytes) {
                        t.pipeline.mark_seen(p.signature(), t.now_ns());
                        let (_, tx) = self.backend.halves();
                        t.fwd.publish(&t.forward.load(), &bytes, tx);
                    }
                }
                Command::Repair { datagram, from } => {
                    t.repair_queue.push((datagram, from));
                    if t.repair_queue.len() == crate::pipeline::MAX_BATCH {
                        let (_, tx) = self.backend.halves();
                        t.ingest_repairs(tx);
                    }
                }
            }
        }
        if !t.repair_queue.is_empty() {
            let (_, tx) = self.backend.halves();
            t.ingest_repairs(tx);
        }
    }
}

impl Tile {
    fn now_ns(&self) -> u64 {
        self.origin.elapsed().as_nanos() as u64
    }

    /// Runs one batch through the pipeline: screened, verified inline or
    /// submitted to the verify pool, and what is accepted handed on and
    /// forwarded.
    fn ingest<T: TxSink>(
        &mut self,
        views: &[&[u8]],
        from: &dyn Fn(usize) -> SocketAddr,
        src: Source,
        tx: &mut T,
    ) {
        self.batches += 1;
        let now_ns = self.now_ns();
        let mut first = recycle(std::mem::take(&mut self.first));
        if let Some(vs) = self.verify.as_mut() {
            // Screen here, verify on the pool's cores.
            let mut deferred = recycle(std::mem::take(&mut self.deferred));
            self.pipeline
                .screen_batch(now_ns, src.wall, views, &mut first, &mut deferred);
            vs.submit(&mut self.pipeline, &first, &deferred, from, src);
            self.deferred = recycle(deferred);
        } else {
            self.pipeline.process(now_ns, src.wall, views, &mut first);
            let set = self.forward.load();
            for a in &first {
                if !self.accept(&set.peers, a, from(a.index), src, now_ns) {
                    break;
                }
            }
            self.fwd.flush(tx);
        }
        self.first = recycle(first);
        // After the batch's own first copies (handed on inline, or submitted to
        // the pool), so the control plane tends to know a message before it hears
        // of its duplicates.
        if self.cfg.report_duplicates && !src.repair {
            let dups = self.pipeline.last_duplicates();
            let copies = dups.iter().filter_map(|&i| {
                let i = usize::from(i);
                let p = Packet::parse(views.get(i)?).ok()?;
                Some((*p.signature(), from(i)))
            });
            report_duplicates(copies, &self.forward, &self.inbound);
        }
        self.publish();
    }

    /// Ingests the queued repairs as one batch (at most
    /// [`crate::pipeline::MAX_BATCH`]).
    fn ingest_repairs<T: TxSink>(&mut self, tx: &mut T) {
        let queue = std::mem::take(&mut self.repair_queue);
        let n = queue.len().min(crate::pipeline::MAX_BATCH);
        let mut views: [&[u8]; crate::pipeline::MAX_BATCH] = [&[]; crate::pipeline::MAX_BATCH];
        for (v, (bytes, _)) in views.iter_mut().zip(&queue) {
            *v = bytes;
        }
        self.repairs += n as u64;
        let src = Source {
            wall: wall_us(),
            repair: true,
        };
        let from = |i: usize| {
            queue
                .get(i)
                .map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |q| q.1)
        };
        self.ingest(&views[..n], &from, src, tx);
        let mut queue = queue;
        queue.clear();
        self.repair_queue = queue;
    }

    /// Takes the verify pool's verdicts: settles, hands on and forwards the
    /// accepted messages, then resolves their deferred copies (submitting
    /// the copies of rejected messages in turn).
    fn verdicts<T: TxSink>(&mut self, tx: &mut T) {
        let Some(mut vs) = self.verify.take() else {
            return;
        };
        let set = self.forward.load();
        let mut accepted_keys: Vec<u64> = Vec::new();
        while let Some(mut vb) = vs.pool.try_recv() {
            let Some(pos) = vs.in_flight.iter().position(|h| h.tag == vb.tag) else {
                vb.clear();
                vs.free_batches.push(vb);
                continue;
            };
            let now_ns = self.now_ns();
            let mut held = vs.in_flight.swap_remove(pos);
            let src = held.src.unwrap_or(Source {
                wall: wall_us(),
                repair: false,
            });
            accepted_keys.clear();
            for (i, item) in held.items.iter().enumerate() {
                let Some(a) = held.view(item) else {
                    continue;
                };
                let ok = vb.verdicts().get(i).copied().unwrap_or(false);
                if self.pipeline.settle_late(now_ns, &a, ok) {
                    accepted_keys.push(a.key);
                    if !self.accept(&set.peers, &a, item.from, src, now_ns) {
                        break;
                    }
                }
            }
            self.fwd.flush(tx);
            if !held.deferred.is_empty() {
                let mut deferred: Vec<Accepted<'_>> =
                    held.deferred.iter().filter_map(|d| held.view(d)).collect();
                let (mut next, mut dups) = (Vec::new(), Vec::new());
                self.pipeline
                    .resolve_deferred(&accepted_keys, &mut deferred, &mut next, &mut dups);
                vs.submit(
                    &mut self.pipeline,
                    &next,
                    &deferred,
                    &|i| held.source_of(i),
                    src,
                );
                if self.cfg.report_duplicates && !src.repair {
                    let copies = dups
                        .iter()
                        .map(|d| (*d.packet.signature(), held.source_of(d.index)));
                    report_duplicates(copies, &self.forward, &self.inbound);
                }
            }
            held.clear();
            vs.free_held.push(held);
            vb.clear();
            vs.free_batches.push(vb);
        }
        self.verify = Some(vs);
    }

    /// A verified message: hand it to the control plane, mark it seen, and
    /// queue its forwarding to `peers`. Returns false when the control plane
    /// is gone.
    fn accept(
        &mut self,
        peers: &[SocketAddr],
        a: &Accepted<'_>,
        from: SocketAddr,
        src: Source,
        now_ns: u64,
    ) -> bool {
        let packet = &a.packet;
        let Some(msg) = InboundMessage::from_packet(packet, from, src.wall, src.repair) else {
            return true;
        };
        match (self.inbound)(Inbound::Message(msg)) {
            handoff::SendOutcome::Sent => {}
            handoff::SendOutcome::Full => {
                self.pipeline.count_queue_full();
                return true;
            }
            handoff::SendOutcome::Closed => {
                self.stop.store(true, Ordering::Release);
                return false;
            }
        }
        self.pipeline.commit(a.key, now_ns);
        self.fwd.queue(peers, packet, from);
        true
    }

    fn publish(&self) {
        let c = self.pipeline.counters();
        let s = &self.stats;
        s.received.store(c.received, Ordering::Relaxed);
        s.accepted.store(c.accepted, Ordering::Relaxed);
        for (a, v) in s.dropped.iter().zip(c.dropped.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
        s.forwarded.store(self.fwd.sent, Ordering::Relaxed);
        s.tx_failed.store(self.fwd.failed, Ordering::Relaxed);
        s.batches.store(self.batches, Ordering::Relaxed);
        s.repairs.store(self.repairs, Ordering::Relaxed);
        s.dedup_live_evictions
            .store(self.pipeline.seen_stats().live_evictions, Ordering::Relaxed);
    }
}

/// Hands the control plane a notice for each duplicate data message (its
/// signature and source) that came from a forward-set peer. Advisory:
/// a full queue just loses the notice (the duplicate itself is already
/// counted).
fn report_duplicates(
    copies: impl Iterator<Item = ([u8; wire::SIGNATURE_LEN], SocketAddr)>,
    forward: &ArcSwap<ForwardSet>,
    inbound: &handoff::InboundSender,
) {
    let peers = forward.load();
    for (signature, src) in copies {
        if !peers.peers.contains(&src) {
            continue;
        }
        let _ = inbound(Inbound::Duplicate {
            id: wire::message_id(&signature),
            from: src,
        });
    }
}

fn core_affinity_pin(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::MAX_FANOUT;

    fn recv_from(s: &std::net::UdpSocket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    }

    fn test_config(verify_pool: Option<PoolConfig>) -> TileConfig {
        TileConfig {
            batch_size: 8,
            fanout: MAX_FANOUT,
            pipeline: PipelineConfig {
                replay_window_us: 60_000_000,
                max_clock_skew_us: 5_000_000,
                dedup_capacity: 1024,
                dedup_seed: 1,
            },
            idle_wait: Duration::from_millis(5),
            core: None,
            verify_pool,
            admission: None,
            report_duplicates: false,
        }
    }

    /// Waits until `done(stats)` or two seconds.
    fn wait_stats(tile: &TileHandle, done: impl Fn(&TileStats) -> bool) {
        let until = Instant::now() + Duration::from_secs(2);
        while !done(tile.stats()) && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn drop_count(tile: &TileHandle, r: DropReason) -> u64 {
        tile.stats().dropped[r as usize].load(Ordering::Relaxed)
    }

    fn accepted_count(tile: &TileHandle) -> u64 {
        tile.stats().accepted.load(Ordering::Relaxed)
    }

    /// The two verify paths, given one batch whose first datagram is a forgery reusing the
    /// real message's signature (same signature bytes, tampered body) and whose second is
    /// the real message: the real one is accepted and the forgery counted `bad_signature`.
    #[test]
    fn a_forged_copy_first_in_a_batch_does_not_suppress_the_real_one_on_either_path() {
        for pool in [None, Some(PoolConfig::default())] {
            let on_pool = pool.is_some();
            let id = crate::identity::Identity::from_seed([9; 32]);
            let mut payload = Vec::new();
            wire::data_payload("t", b"the real body", &mut payload).unwrap();
            let mut real = Vec::new();
            id.seal(Kind::Data, 1, 1, wall_us(), &payload, &mut real)
                .unwrap();
            let mut forged = real.clone();
            forged[wire::HEADER_LEN + 3] ^= 0x20;
            let sock = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap();
            let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            // Both are queued before the tile starts, so its first receive takes them as
            // one batch.
            sender.send_to(&forged, sock.local_addr().unwrap()).unwrap();
            sender.send_to(&real, sock.local_addr().unwrap()).unwrap();
            let (tx, rx) = crossbeam_channel::unbounded();
            let forward = Arc::new(ArcSwap::from_pointee(ForwardSet::default()));
            let mut tile = spawn_udp_tile(
                sock,
                test_config(pool),
                forward,
                Box::new(move |m| {
                    let _ = tx.send(m);
                    handoff::SendOutcome::Sent
                }),
            )
            .unwrap();
            wait_stats(&tile, |s| {
                s.accepted.load(Ordering::Relaxed)
                    + s.dropped
                        .iter()
                        .map(|a| a.load(Ordering::Relaxed))
                        .sum::<u64>()
                    >= 2
            });
            assert_eq!(tile.stats().batches.load(Ordering::Relaxed), 1, "one batch");
            assert_eq!(accepted_count(&tile), 1, "pool {on_pool}: the real message");
            assert_eq!(
                drop_count(&tile, DropReason::BadSignature),
                1,
                "pool {on_pool}"
            );
            assert_eq!(
                drop_count(&tile, DropReason::Duplicate),
                0,
                "pool {on_pool}"
            );
            let got: Vec<_> = rx.try_iter().collect();
            assert_eq!(got.len(), 1, "pool {on_pool}");
            let Inbound::Message(m) = &got[0] else {
                panic!("pool {on_pool}: a message, not a notice");
            };
            assert_eq!(m.bytes(), &real[..], "pool {on_pool}");
            assert_eq!((m.topic(), m.body()), ("t", &b"the real body"[..]));
            assert_eq!(
                (m.id, m.origin, m.sequence),
                (
                    wire::message_id(Packet::parse(&real).unwrap().signature()),
                    id.node_id(),
                    1
                )
            );
            assert!(!m.repair);
            tile.stop();
        }
    }

    /// A repair goes through the stages of a received datagram, counted the same way plus
    /// `repairs`, and an accepted one is forwarded (hop limit − 1) to the forward set, never
    /// back to the member that sent it.
    #[test]
    fn repairs_take_the_same_stages_and_counters_as_received_datagrams_on_both_paths() {
        for pool in [None, Some(PoolConfig::default())] {
            let on_pool = pool.is_some();
            let id = crate::identity::Identity::from_seed([10; 32]);
            let seal = |seq: u64, ts: u64, payload: &[u8]| {
                let mut out = Vec::new();
                id.seal(Kind::Data, 4, seq, ts, payload, &mut out).unwrap();
                out
            };
            let mut payload = Vec::new();
            wire::data_payload("repairs", b"body", &mut payload).unwrap();
            let good = seal(1, wall_us(), &payload);
            let bad_payload = seal(2, wall_us(), b"\x09short");
            let stale = seal(3, wall_us() - 120_000_000, &payload);
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            peer.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let member = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            member
                .set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            let member_addr = member.local_addr().unwrap();
            let forward = Arc::new(ArcSwap::from_pointee(ForwardSet {
                peers: vec![peer.local_addr().unwrap(), member_addr],
                origin: Vec::new(),
            }));
            let (tx, rx) = crossbeam_channel::unbounded();
            let sock = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap();
            let mut tile = spawn_udp_tile(
                sock,
                test_config(pool),
                forward,
                Box::new(move |m| {
                    let _ = tx.send(m);
                    handoff::SendOutcome::Sent
                }),
            )
            .unwrap();
            for datagram in [good.clone(), good.clone(), bad_payload, stale] {
                assert!(tile.command(Command::Repair {
                    datagram,
                    from: member_addr,
                }));
            }
            wait_stats(&tile, |s| {
                s.accepted.load(Ordering::Relaxed)
                    + s.dropped
                        .iter()
                        .map(|a| a.load(Ordering::Relaxed))
                        .sum::<u64>()
                    >= 4
            });
            let stats = tile.stats();
            assert_eq!(stats.repairs.load(Ordering::Relaxed), 4, "pool {on_pool}");
            assert_eq!(stats.received.load(Ordering::Relaxed), 4, "pool {on_pool}");
            assert_eq!(accepted_count(&tile), 1, "pool {on_pool}");
            assert_eq!(
                drop_count(&tile, DropReason::Duplicate),
                1,
                "pool {on_pool}"
            );
            assert_eq!(
                drop_count(&tile, DropReason::BadPayload),
                1,
                "pool {on_pool}"
            );
            assert_eq!(drop_count(&tile, DropReason::Stale), 1, "pool {on_pool}");
            let got: Vec<_> = rx.try_iter().collect();
            assert_eq!(
                got.len(),
                1,
                "pool {on_pool}: only the good one is handed on"
            );
            let fwd = recv_from(&peer).expect("forwarded to the forward set");
            let p = Packet::parse(&fwd).unwrap();
            assert_eq!((p.sequence(), p.hop_limit()), (1, 3), "hop limit − 1");
            assert!(recv_from(&member).is_none(), "never back to the sender");
            tile.stop();
        }
    }

    /// With duplicate reports on, a repeat from a forward-set peer comes back as a typed
    /// notice (the message's id and the peer), on both verify paths: a same-batch copy
    /// once the first copy's verdict is in, a later one at once.
    #[test]
    fn repeats_from_forward_set_peers_are_reported_as_typed_duplicate_notices() {
        for pool in [None, Some(PoolConfig::default())] {
            let on_pool = pool.is_some();
            let id = crate::identity::Identity::from_seed([13; 32]);
            let mut payload = Vec::new();
            wire::data_payload("t", b"x", &mut payload).unwrap();
            let mut msg = Vec::new();
            id.seal(Kind::Data, 1, 1, wall_us(), &payload, &mut msg)
                .unwrap();
            let msg_id = wire::message_id(Packet::parse(&msg).unwrap().signature());
            let peer = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let peer_addr = peer.local_addr().unwrap();
            let sock = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap();
            let to = sock.local_addr().unwrap();
            peer.send_to(&msg, to).unwrap();
            peer.send_to(&msg, to).unwrap();
            let forward = Arc::new(ArcSwap::from_pointee(ForwardSet {
                peers: vec![peer_addr],
                origin: Vec::new(),
            }));
            let (tx, rx) = crossbeam_channel::unbounded();
            let mut cfg = test_config(pool);
            cfg.report_duplicates = true;
            let mut tile = spawn_udp_tile(
                sock,
                cfg,
                forward,
                Box::new(move |m| {
                    let _ = tx.send(m);
                    handoff::SendOutcome::Sent
                }),
            )
            .unwrap();
            wait_stats(&tile, |s| {
                s.dropped[DropReason::Duplicate as usize].load(Ordering::Relaxed) >= 1
            });
            peer.send_to(&msg, to).unwrap();
            wait_stats(&tile, |s| {
                s.dropped[DropReason::Duplicate as usize].load(Ordering::Relaxed) >= 2
            });
            std::thread::sleep(Duration::from_millis(20));
            let got: Vec<_> = rx.try_iter().collect();
            assert_eq!(got.len(), 3, "pool {on_pool}: {got:?}");
            assert!(matches!(&got[0], Inbound::Message(m) if m.id == msg_id));
            for notice in &got[1..] {
                assert!(
                    matches!(notice, Inbound::Duplicate { id, from } if *id == msg_id && *from == peer_addr),
                    "pool {on_pool}: {notice:?}"
                );
            }
            tile.stop();
        }
    }

    #[test]
    fn a_local_publish_goes_to_the_origin_list_and_a_forward_to_the_peers() {
        let listen = |_| {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            s
        };
        let socks: Vec<std::net::UdpSocket> = (0..3).map(listen).collect();
        let addrs: Vec<SocketAddr> = socks.iter().map(|s| s.local_addr().unwrap()).collect();
        let forward = Arc::new(ArcSwap::from_pointee(ForwardSet {
            peers: vec![addrs[0]],
            origin: addrs.clone(),
        }));
        let cfg = TileConfig {
            batch_size: 8,
            fanout: MAX_FANOUT,
            pipeline: PipelineConfig {
                replay_window_us: 60_000_000,
                max_clock_skew_us: 5_000_000,
                dedup_capacity: 1024,
                dedup_seed: 1,
            },
            idle_wait: Duration::from_millis(5),
            core: None,
            verify_pool: None,
            admission: None,
            report_duplicates: false,
        };
        let sock = BatchSocket::bind("127.0.0.1:0".parse().unwrap(), 1 << 20, 1 << 20).unwrap();
        let mut tile = spawn_udp_tile(
            sock,
            cfg,
            forward.clone(),
            Box::new(|_| handoff::SendOutcome::Sent),
        )
        .unwrap();
        let publish = |seq: u64| {
            let mut bytes = Vec::new();
            wire::Unsigned {
                kind: Kind::Data,
                hop_limit: 8,
                origin: [7; 32],
                sequence: seq,
                timestamp_us: wall_us(),
                payload: b"x",
            }
            .write_unsigned(&mut bytes)
            .unwrap();
            wire::finish(&mut bytes, &[seq as u8; wire::SIGNATURE_LEN]);
            bytes
        };
        // with an origin list: every address on it gets the message once
        assert!(tile.command(Command::Publish(publish(1))));
        for s in &socks {
            let got = recv_from(s).expect("a copy for every origin-list peer");
            assert_eq!(Packet::parse(&got).unwrap().sequence(), 1);
        }
        // without one: only the forward peers
        forward.store(Arc::new(ForwardSet {
            peers: vec![addrs[1]],
            origin: Vec::new(),
        }));
        assert!(tile.command(Command::Publish(publish(2))));
        let got = recv_from(&socks[1]).expect("the forward peer");
        assert_eq!(Packet::parse(&got).unwrap().sequence(), 2);
        assert!(recv_from(&socks[0]).is_none());
        assert!(recv_from(&socks[2]).is_none());
        tile.stop();
    }
}
