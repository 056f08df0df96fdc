//! The node's side of the fast path: starts the tiles (AF_XDP per profile queue, and the
//! kernel UDP socket's), hands them local publishes and repairs, and publishes what they read
//! without locks: the forward set (the cores' eager set, as addresses) and the admitted
//! origins.
//!
//! The tiles own the mesh socket and the AF_XDP rings: they are the only writers on them.
//! This module never sends a datagram itself.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use dataplane::forward::{ForwardSet, MAX_FANOUT};
use dataplane::pipeline::PipelineConfig;
use dataplane::tile::{self, Command, Inbound, TileConfig, TileHandle, TileStats, handoff};
use dataplane::udp::BatchSocket;
use mesh_protocol::NodeId;
use tokio::sync::mpsc;

use crate::book::AddressBook;
use crate::config::{Backend, Config, TreeMode};
use crate::metrics::Metrics;

/// The running fast path. Field order matters: the tiles stop before the XDP program is
/// detached.
pub(super) struct FastPath {
    /// Local publishes and repairs go to the first tile (AF_XDP when on).
    tiles: Vec<TileHandle>,
    xdp: Option<crate::xdp_backend::Running>,
    forward: Arc<ArcSwap<ForwardSet>>,
    admitted: Arc<ArcSwap<HashSet<[u8; 32]>>>,
    /// The core's eager-set version the forward set was built from.
    forward_version: u64,
    /// The active view the forward set's origin list was built from.
    forward_active: Vec<NodeId>,
}

impl FastPath {
    /// Starts the tiles on `socket` (and on AF_XDP with `dataplane.backend = "xdp"`); every
    /// accepted message goes to `inbound`. `me` is admitted from the start.
    pub(super) fn start(
        cfg: &Config,
        me: NodeId,
        socket: BatchSocket,
        inbound: mpsc::Sender<Inbound>,
        metrics: &Metrics,
    ) -> anyhow::Result<FastPath> {
        let udp_addr = socket.local_addr()?;
        let admitted = Arc::new(ArcSwap::from_pointee(HashSet::from([me.0])));
        let set = admitted.clone();
        let admission: dataplane::pipeline::Admission =
            Arc::new(move |k: &[u8; 32]| set.load().contains(k));
        let forward = Arc::new(ArcSwap::from_pointee(ForwardSet::default()));
        let make_sender = move || -> handoff::InboundSender {
            let tx = inbound.clone();
            Box::new(move |m| match tx.try_send(m) {
                Ok(()) => handoff::SendOutcome::Sent,
                Err(mpsc::error::TrySendError::Full(_)) => handoff::SendOutcome::Full,
                Err(mpsc::error::TrySendError::Closed(_)) => handoff::SendOutcome::Closed,
            })
        };
        let g = &cfg.gossip;
        let tile_cfg = TileConfig {
            batch_size: cfg.dataplane.batch_size,
            // the forward set is the eager set, and every member of it gets the payload
            fanout: MAX_FANOUT,
            pipeline: PipelineConfig {
                replay_window_us: g.replay_window_ms * 1_000,
                max_clock_skew_us: g.max_clock_skew_ms * 1_000,
                dedup_capacity: g.dedup_capacity,
                dedup_seed: random_u64(),
            },
            idle_wait: Duration::from_millis(100),
            core: cfg.dataplane.rx_core,
            verify_pool: cfg.dataplane.verify_pool(),
            admission: Some(admission),
            // Plumtree's own tree prunes on copies from eager peers; the rooted tree ignores
            // them, so they are not handed over at all.
            report_duplicates: cfg.overlay.tree == TreeMode::Plumtree,
        };
        let mut tiles = Vec::new();
        let mut xdp = None;
        if cfg.dataplane.backend == Backend::Xdp {
            match crate::xdp_backend::start(
                cfg,
                udp_addr,
                tile_cfg.clone(),
                &forward,
                &make_sender,
                metrics,
            ) {
                Ok((x, t)) => {
                    xdp = Some(x);
                    tiles = t;
                }
                Err(e) if cfg.dataplane.xdp.fallback_to_udp => {
                    tracing::warn!(error = %format!("{e:#}"), "XDP backend unavailable: FALLING BACK to the UDP backend");
                }
                Err(e) => {
                    return Err(e.context(
                        "starting the XDP backend (set dataplane.xdp.fallback_to_udp to run on UDP instead)",
                    ));
                }
            }
        }
        // The kernel socket's tile always runs: it is the whole fast path on the UDP backend,
        // and with XDP it handles mesh packets the program passes (queues without an AF_XDP
        // socket).
        tiles.push(
            tile::spawn_udp_tile(socket, tile_cfg, forward.clone(), make_sender())
                .context("starting the UDP fast-path tile")?,
        );
        tracing::info!(
            addr = %udp_addr,
            backend = if xdp.is_some() { "xdp" } else { "udp" },
            tiles = tiles.len(),
            "fast path up"
        );
        Ok(FastPath {
            tiles,
            xdp,
            forward,
            admitted,
            forward_version: u64::MAX,
            forward_active: Vec::new(),
        })
    }

    /// Each tile's counters.
    pub(super) fn tile_stats(&self) -> Vec<Arc<TileStats>> {
        self.tiles.iter().map(|t| t.stats().clone()).collect()
    }

    /// Each verify pool's counters.
    pub(super) fn verify_stats(&self) -> Vec<dataplane::verify::workers::PoolStats> {
        self.tiles
            .iter()
            .filter_map(|t| t.verify_stats().cloned())
            .collect()
    }

    /// A handle on the XDP maps, when on the XDP backend.
    pub(super) fn xdp_control(&self) -> Option<dataplane::xdp::XdpControl> {
        self.xdp.as_ref().and_then(|x| x.control().try_clone().ok())
    }

    /// `xdp` or `udp`.
    pub(super) fn backend(&self) -> &'static str {
        if self.xdp.is_some() { "xdp" } else { "udp" }
    }

    /// The XDP attach mode, when on the XDP backend.
    pub(super) fn xdp_mode(&self) -> Option<String> {
        self.xdp.as_ref().map(|x| x.mode.to_string())
    }

    /// Sum of one counter over the tiles.
    pub(super) fn sum(&self, f: impl Fn(&TileStats) -> u64) -> u64 {
        self.tiles.iter().map(|t| f(t.stats())).sum()
    }

    /// A message this node sealed: the fast path marks it seen and sends it to the origin
    /// set. False when its queue is full or it stopped.
    pub(super) fn publish(&self, datagram: Vec<u8>) -> bool {
        self.tiles
            .first()
            .is_some_and(|t| t.command(Command::Publish(datagram)))
    }

    /// A repaired datagram (graft or pull answer) from the member at `from`: the fast path
    /// screens it like a received datagram (every stage, counted) and hands it back if new.
    pub(super) fn repair(&self, datagram: Vec<u8>, from: SocketAddr) -> bool {
        self.tiles
            .first()
            .is_some_and(|t| t.command(Command::Repair { datagram, from }))
    }

    /// Republishes the forward set when the core's eager set (or, when the origin floods, its
    /// active view) moved since the last call.
    pub(super) fn sync_forward(
        &mut self,
        core: &mesh_protocol::Node<rand::rngs::SmallRng>,
        book: &AddressBook,
    ) {
        // The rooted tree's origin pushes to every active neighbour (the core's flood zone);
        // Plumtree's own tree would prune on those duplicates, so it does not.
        let cc = core.config();
        let flood_origin = cc.tree.enabled && cc.gossip.flood_rounds > 0;
        let active_moved = flood_origin && self.forward_active != core.active_view();
        if core.eager_version() == self.forward_version && !active_moved {
            return;
        }
        self.forward_version = core.eager_version();
        let addrs = |ids: &[NodeId]| ids.iter().filter_map(|p| book.addr(p)).collect();
        let peers = addrs(core.eager_peers());
        let origin = if flood_origin {
            self.forward_active = core.active_view().to_vec();
            addrs(core.active_view())
        } else {
            Vec::new()
        };
        self.forward.store(Arc::new(ForwardSet { peers, origin }));
    }

    /// Replaces the admitted origins the fast path checks.
    pub(super) fn set_admitted(&self, set: HashSet<[u8; 32]>) {
        self.admitted.store(Arc::new(set));
    }

    /// Stops every tile and waits for their threads.
    pub(super) fn stop(&mut self) {
        for t in &mut self.tiles {
            t.stop();
        }
    }
}

/// 64 random bits (seeds); falls back to the clock if the OS source fails.
pub(super) fn random_u64() -> u64 {
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_err() {
        // Never expected on Linux; fall back to time so the node still runs.
        return dataplane::clock::wall_us() ^ 0x9E37_79B9_7F4A_7C15;
    }
    u64::from_le_bytes(seed)
}
