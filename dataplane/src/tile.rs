//! The receive tile: one thread that owns a backend socket and runs the
//! pipeline on every batch.
//!
//! ```text
//!   wait (poll socket + waker) → recv batch → Pipeline::process
//!     → hand accepted messages to the control plane (bounded queue)
//!     → commit as seen → forward Data to `fanout` peers (hop limit − 1)
//!   commands from the control plane (local publishes) are drained each wake
//!   counters are published to shared atomics once per batch
//! ```
//!
//! The tile never waits on the control plane: peers to forward to come from a
//! lock-free [`ForwardSet`] snapshot the control plane swaps in, and the queue
//! towards the control plane is bounded; when it is full the message is
//! counted as `queue_full`, not marked seen, and can arrive again later.

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

use crate::backend::{Backend, RxView};
use crate::clock::wall_us;
use crate::forward::{ForwardSet, Forwarding};
use crate::pipeline::{Accepted, DropReason, Pipeline, PipelineConfig};
use crate::udp::{BatchSocket, UdpBackend, Waker, wait_readable};
use crate::verify::workers::{PoolConfig, PoolStats, VerifyBatch, VerifyPool};
use crate::wire::{self, Kind, Packet};

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
    /// came from a forward-set peer (see [`Inbound::duplicate`]): a Plumtree
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

/// A message that passed every stage, handed to the control plane.
#[derive(Clone, Debug)]
pub struct Inbound {
    /// The whole datagram as received.
    pub bytes: Vec<u8>,
    /// Its kind.
    pub kind: Kind,
    /// UDP source address.
    pub from: SocketAddr,
    /// Local wall clock at receipt, µs since the Unix epoch.
    pub received_us: u64,
    /// A duplicate notice, not a message: `bytes` is only the 64-byte
    /// signature of a data message this node had already accepted, received
    /// again from `from` (a forward-set peer). Never verified again, so it
    /// proves nothing beyond "this address sent a copy".
    pub duplicate: bool,
}

/// Commands from the control plane.
#[derive(Clone, Debug)]
pub enum Command {
    /// A data message this node sealed: mark it seen and forward it.
    Publish(Vec<u8>),
}

/// Counters the tile publishes once per batch (read by the metrics exporter).
#[derive(Debug, Default)]
pub struct TileStats {
    /// Datagrams received.
    pub received: AtomicU64,
    /// Accepted messages by kind value.
    pub accepted: [AtomicU64; 8],
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
            cfg,
            forward,
            inbound,
            commands: cmd_rx,
            waker: w,
            stop: st,
            stats: stt,
            seed: u64::from_le_bytes(seed),
            verify: pool.map(VerifyStage::new),
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
    cfg: TileConfig,
    forward: Arc<ArcSwap<ForwardSet>>,
    inbound: handoff::InboundSender,
    commands: Receiver<Command>,
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    stats: Arc<TileStats>,
    seed: u64,
    verify: Option<VerifyStage>,
}

/// What the accept step needs from the tile, borrowed apart from the backend.
struct AcceptCtx<'r> {
    inbound: &'r handoff::InboundSender,
    stop: &'r AtomicBool,
    peers: &'r [SocketAddr],
}

impl<'r> AcceptCtx<'r> {
    fn new(
        inbound: &'r handoff::InboundSender,
        stop: &'r AtomicBool,
        forward: &'r ForwardSet,
    ) -> AcceptCtx<'r> {
        AcceptCtx {
            inbound,
            stop,
            peers: &forward.peers,
        }
    }
}

/// A verified message: hand it to the control plane, mark it seen, and
/// queue its forwarding. Returns false when the control plane is gone.
#[allow(clippy::too_many_arguments)]
fn accept(
    ctx: &mut AcceptCtx<'_>,
    pipeline: &mut Pipeline,
    fwd: &mut Forwarding,
    packet: &Packet<'_>,
    from: SocketAddr,
    key: u64,
    now_ns: u64,
    wall: u64,
) -> bool {
    let kind = packet.kind();
    let msg = Inbound {
        bytes: packet.as_bytes().to_vec(),
        kind,
        from,
        received_us: wall,
        duplicate: false,
    };
    match (ctx.inbound)(msg) {
        handoff::SendOutcome::Sent => {}
        handoff::SendOutcome::Full => {
            pipeline.count_queue_full(kind);
            return true;
        }
        handoff::SendOutcome::Closed => {
            ctx.stop.store(true, Ordering::Release);
            return false;
        }
    }
    pipeline.commit(key, now_ns);
    fwd.queue(ctx.peers, packet, from);
    true
}

/// Messages waiting for the verify pool: owned copies of their datagrams.
#[derive(Default)]
struct Held {
    tag: u64,
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
    from: Vec<SocketAddr>,
    keys: Vec<u64>,
    wall: u64,
}

impl Held {
    fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
        self.from.clear();
        self.keys.clear();
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
}

impl<B: Backend> Run<B> {
    fn run(mut self) {
        let origin = Instant::now();
        let mut pipeline = Pipeline::new(self.cfg.pipeline);
        pipeline.set_admission(self.cfg.admission.clone());
        let mut accepted_store: Vec<Accepted<'static>> =
            Vec::with_capacity(crate::pipeline::MAX_BATCH);
        let mut fwd = Forwarding::new(self.cfg.fanout, SmallRng::seed_from_u64(self.seed));
        let mut batches = 0u64;
        while !self.stop.load(Ordering::Acquire) {
            // Verdicts come back from other cores: poll briefly while any are out.
            let wait = match &self.verify {
                Some(v) if !v.in_flight.is_empty() => Duration::from_micros(200),
                _ => self.cfg.idle_wait,
            };
            if let Err(e) = wait_readable(self.wait_fd, &self.waker, wait) {
                tracing::warn!(error = %e, "poll failed");
                std::thread::sleep(Duration::from_millis(10));
            }
            let now_ns = origin.elapsed().as_nanos() as u64;
            // Local publishes: mark seen, then forward like a received message.
            while let Ok(Command::Publish(bytes)) = self.commands.try_recv() {
                if let Ok(p) = Packet::parse(&bytes) {
                    pipeline.mark_seen(p.signature(), now_ns);
                    let (_, tx) = self.backend.halves();
                    fwd.publish(&self.forward.load(), &bytes, tx);
                }
            }
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
                batches += 1;
                let now_ns = origin.elapsed().as_nanos() as u64;
                let wall = wall_us();
                let (batch, tx_sink) = self.backend.halves();
                let n = n.min(batch.len());
                let mut views: [&[u8]; crate::pipeline::MAX_BATCH] =
                    [&[]; crate::pipeline::MAX_BATCH];
                for (i, v) in views.iter_mut().enumerate().take(n) {
                    *v = batch.packet(i);
                }
                let mut accepted = recycle(std::mem::take(&mut accepted_store));
                if let Some(vs) = self.verify.as_mut() {
                    // Screen here, verify on the pool's cores.
                    pipeline.screen_batch(now_ns, wall, &views[..n], &mut accepted);
                    if !accepted.is_empty() {
                        submit(vs, &mut pipeline, &accepted, |i| batch.from(i), wall);
                    }
                } else {
                    pipeline.process(now_ns, wall, &views[..n], &mut accepted);
                    let peers = self.forward.load();
                    let mut ctx = AcceptCtx::new(&self.inbound, &self.stop, &peers);
                    for a in &accepted {
                        if !accept(
                            &mut ctx,
                            &mut pipeline,
                            &mut fwd,
                            &a.packet,
                            batch.from(a.index),
                            a.key,
                            now_ns,
                            wall,
                        ) {
                            break;
                        }
                    }
                    fwd.flush(tx_sink);
                }
                // After the batch's own first copies (handed on inline, or submitted to
                // the pool), so the control plane tends to know a message before it hears
                // of its duplicates.
                if self.cfg.report_duplicates {
                    report_duplicates(
                        &pipeline,
                        &views,
                        |i| batch.from(i),
                        &self.forward,
                        &self.inbound,
                        wall,
                    );
                }
                accepted_store = recycle(accepted);
                self.publish(&pipeline, &fwd, batches);
            }
            // Verdicts from the pool.
            if let Some(vs) = self.verify.as_mut() {
                let now_ns = origin.elapsed().as_nanos() as u64;
                let peers = self.forward.load();
                let mut ctx = AcceptCtx::new(&self.inbound, &self.stop, &peers);
                while let Some(mut vb) = vs.pool.try_recv() {
                    let Some(pos) = vs.in_flight.iter().position(|h| h.tag == vb.tag) else {
                        vb.clear();
                        vs.free_batches.push(vb);
                        continue;
                    };
                    let mut held = vs.in_flight.swap_remove(pos);
                    for (i, &(start, end)) in held.spans.iter().enumerate() {
                        let Ok(p) = Packet::parse(&held.bytes[start..end]) else {
                            continue;
                        };
                        let ok = vb.verdicts().get(i).copied().unwrap_or(false);
                        pipeline.settle(p.kind(), ok);
                        if ok
                            && !accept(
                                &mut ctx,
                                &mut pipeline,
                                &mut fwd,
                                &p,
                                held.from[i],
                                held.keys[i],
                                now_ns,
                                held.wall,
                            )
                        {
                            break;
                        }
                    }
                    let (_, tx) = self.backend.halves();
                    fwd.flush(tx);
                    held.clear();
                    vs.free_held.push(held);
                    vb.clear();
                    vs.free_batches.push(vb);
                }
            }
            self.publish(&pipeline, &fwd, batches);
        }
    }

    fn publish(&self, pipeline: &Pipeline, fwd: &Forwarding, batches: u64) {
        let c = pipeline.counters();
        let s = &self.stats;
        s.received.store(c.received, Ordering::Relaxed);
        for (a, v) in s.accepted.iter().zip(c.accepted.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
        for (a, v) in s.dropped.iter().zip(c.dropped.iter()) {
            a.store(*v, Ordering::Relaxed);
        }
        s.forwarded.store(fwd.sent, Ordering::Relaxed);
        s.tx_failed.store(fwd.failed, Ordering::Relaxed);
        s.batches.store(batches, Ordering::Relaxed);
        s.dedup_live_evictions
            .store(pipeline.seen_stats().live_evictions, Ordering::Relaxed);
    }
}

/// Copies screened messages into a pool batch and submits it; when every
/// verify queue is full they are counted as `queue_full` (not marked seen).
fn submit(
    vs: &mut VerifyStage,
    pipeline: &mut Pipeline,
    screened: &[Accepted<'_>],
    from: impl Fn(usize) -> SocketAddr,
    wall: u64,
) {
    let mut vb = vs.free_batches.pop().unwrap_or_else(|| {
        VerifyBatch::with_capacity(
            crate::pipeline::MAX_BATCH,
            crate::pipeline::MAX_BATCH * wire::MAX_DATAGRAM,
        )
    });
    let mut held = vs.free_held.pop().unwrap_or_default();
    vs.next_tag = vs.next_tag.wrapping_add(1);
    vb.tag = vs.next_tag;
    held.tag = vs.next_tag;
    held.wall = wall;
    for a in screened {
        let p = &a.packet;
        vb.push(p.origin(), p.signed_bytes(), p.signature());
        let start = held.bytes.len();
        held.bytes.extend_from_slice(p.as_bytes());
        held.spans.push((start, held.bytes.len()));
        held.from.push(from(a.index));
        held.keys.push(a.key);
    }
    match vs.pool.submit(vb) {
        Ok(()) => vs.in_flight.push(held),
        Err(mut vb) => {
            for _ in screened {
                pipeline.count_unverified_drop(DropReason::QueueFull);
            }
            vb.clear();
            vs.free_batches.push(vb);
            held.clear();
            vs.free_held.push(held);
        }
    }
}

/// Reuses a vector's allocation for borrows of another lifetime: the vector
/// is emptied first, and in-place collection keeps its buffer.
fn recycle<'a, 'b>(mut v: Vec<Accepted<'a>>) -> Vec<Accepted<'b>> {
    v.clear();
    v.into_iter()
        .map(|_| unreachable!("vector was cleared"))
        .collect()
}

fn core_affinity_pin(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// Hands the control plane a notice for each duplicate data message of the
/// last batch that came from a forward-set peer. Advisory: a full queue just
/// loses the notice (the duplicate itself is already counted).
fn report_duplicates(
    pipeline: &Pipeline,
    views: &[&[u8]],
    from: impl Fn(usize) -> SocketAddr,
    forward: &ArcSwap<ForwardSet>,
    inbound: &handoff::InboundSender,
    wall: u64,
) {
    let dups = pipeline.last_duplicates();
    if dups.is_empty() {
        return;
    }
    let peers = forward.load();
    for &i in dups {
        let i = usize::from(i);
        let src = from(i);
        if !peers.peers.contains(&src) {
            continue;
        }
        let Some(Ok(p)) = views.get(i).map(|v| Packet::parse(v)) else {
            continue;
        };
        if p.kind() != Kind::Data {
            continue;
        }
        let _ = inbound(Inbound {
            bytes: p.signature().to_vec(),
            kind: Kind::Data,
            from: src,
            received_us: wall,
            duplicate: true,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::MAX_FANOUT;

    fn recv_from(s: &std::net::UdpSocket) -> Option<Vec<u8>> {
        let mut buf = [0u8; 2048];
        s.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
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
