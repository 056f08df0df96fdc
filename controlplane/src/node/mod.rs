//! The tokio driver of one mesh node: it owns the fast-path tile, the peer
//! table, the message store and the agent API, and moves events between them.
//!
//! ```text
//!   tile thread ──Inbound (bounded)──▶ control task ──▶ subscribers (broadcast)
//!        ▲                               │  peers / store / anti-entropy
//!        └── ForwardSet (arc-swap) ◀─────┤
//!        └── Command::Publish ◀──────────┘◀── agent API (HTTP) ◀── agents
//! ```

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use arc_swap::ArcSwap;
use dataplane::identity::{Identity, NodeId};
use dataplane::pipeline::{DropReason, PipelineConfig};
use dataplane::tile::{self, Command, ForwardSet, Inbound, TileConfig, TileHandle, handoff};

use dataplane::udp::BatchSocket;
use dataplane::wire::{self, Kind, MessageId, Packet};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::config::{Backend, Config, OverlayMode, TreeMode};
use crate::control::{ControlMsg, MAX_IDS_PER_DIGEST};
use crate::metrics::{KIND_NAMES, Metrics};
use crate::peers::{Nanos, PeerConfig, PeerEvent, PeerTable};
use crate::store::MessageStore;

mod overlay;
pub use overlay::{OverlayStatus, TreeStatus};

/// A data message delivered to local agents.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Delivered {
    /// Message id (hex).
    pub id: String,
    /// Origin node id (hex).
    pub origin: String,
    /// Origin's sequence number.
    pub sequence: u64,
    /// Topic.
    pub topic: String,
    /// Body as text when it is UTF-8.
    pub text: Option<String>,
    /// Body, base64.
    pub data_b64: String,
    /// Origin timestamp, µs since the Unix epoch.
    pub timestamp_us: u64,
    /// Local delivery time, µs since the Unix epoch.
    pub received_us: u64,
    /// True when published by an agent of this node.
    pub local: bool,
}

/// What `publish` returns.
#[derive(Clone, Debug, Serialize)]
pub struct Receipt {
    /// Message id (hex).
    pub id: String,
    /// Sequence number used.
    pub sequence: u64,
    /// Timestamp used, µs since the Unix epoch.
    pub timestamp_us: u64,
}

/// A live peer as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    /// Node id (hex).
    pub node_id: String,
    /// Mesh address.
    pub addr: SocketAddr,
    /// Milliseconds since last heard from (peer-table mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_heard_ms: Option<u64>,
    /// Smoothed probe round-trip time in µs, once measured (hyparview mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u32>,
    /// Whether the fast path forwards payloads to it (Plumtree eager link; hyparview mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eager: Option<bool>,
}

/// Node status as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// Fast-path backend in use: `udp` or `xdp`.
    pub backend: String,
    /// XDP attach mode (`native` / `generic`) when on the XDP backend.
    pub xdp_mode: Option<String>,
    /// XDP filter counters by reason, when on the XDP backend.
    pub xdp: Option<HashMap<String, u64>>,
    /// Node id (hex).
    pub node_id: String,
    /// Mesh UDP address.
    pub listen: SocketAddr,
    /// Agent API address.
    pub api: SocketAddr,
    /// `full` (peer table) or `hyparview` (protocol cores).
    pub overlay_mode: String,
    /// Live peers (hyparview: the active view).
    pub peers_live: usize,
    /// Addresses learned but not yet answering (hyparview: the passive view).
    pub peers_pending: usize,
    /// Members that stopped answering and are still probed (hyparview: suspected or dead).
    pub peers_unreachable: usize,
    /// True while this node reaches fewer than n − f of the n members it knows.
    pub partitioned: bool,
    /// Views, members and partition verdict of the protocol cores (hyparview mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overlay: Option<OverlayStatus>,
    /// Messages held for repair.
    pub stored_messages: usize,
    /// Datagrams received by the fast path.
    pub received: u64,
    /// Accepted messages by kind.
    pub accepted: HashMap<String, u64>,
    /// Drops by reason.
    pub dropped: HashMap<String, u64>,
    /// Data messages forwarded.
    pub forwarded: u64,
    /// Data messages delivered to local agents (from the mesh).
    pub delivered: u64,
    /// Data messages published here.
    pub published: u64,
    /// Milliseconds since start.
    pub uptime_ms: u64,
}

/// Errors from `publish`.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Topic or body does not fit.
    #[error("{0}")]
    Encode(#[from] wire::EncodeError),
    /// The node is shutting down or overloaded.
    #[error("node unavailable: {0}")]
    Unavailable(&'static str),
}

enum ApiCmd {
    Publish {
        topic: String,
        body: Vec<u8>,
        reply: oneshot::Sender<Result<Receipt, PublishError>>,
    },
    Status(oneshot::Sender<Status>),
    Peers(oneshot::Sender<Vec<PeerView>>),
}

/// Shared between the control task, the API and handles.
pub(crate) struct Shared {
    pub(crate) id: NodeId,
    pub(crate) metrics: Metrics,
    pub(crate) tile_stats: Vec<Arc<tile::TileStats>>,
    pub(crate) xdp: Option<dataplane::xdp::XdpControl>,
    pub(crate) verify_stats: Vec<dataplane::verify::workers::PoolStats>,
    pub(crate) deliveries: broadcast::Sender<Arc<Delivered>>,
    api: mpsc::Sender<ApiCmd>,
}

impl Shared {
    pub(crate) async fn publish(
        &self,
        topic: String,
        body: Vec<u8>,
    ) -> Result<Receipt, PublishError> {
        let (tx, rx) = oneshot::channel();
        self.api
            .send(ApiCmd::Publish {
                topic,
                body,
                reply: tx,
            })
            .await
            .map_err(|_| PublishError::Unavailable("stopped"))?;
        rx.await.map_err(|_| PublishError::Unavailable("stopped"))?
    }

    pub(crate) async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiCmd::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    pub(crate) async fn peers(&self) -> Option<Vec<PeerView>> {
        let (tx, rx) = oneshot::channel();
        self.api.send(ApiCmd::Peers(tx)).await.ok()?;
        rx.await.ok()
    }

    pub(crate) fn refresh_metrics(&self) {
        self.metrics.refresh(&self.tile_stats, self.xdp.as_ref());
        self.metrics.refresh_verify(&self.verify_stats);
    }

    pub(crate) fn render_metrics(&self) -> String {
        self.refresh_metrics();
        self.metrics.render()
    }
}

/// A running node.
pub struct NodeHandle {
    shared: Arc<Shared>,
    udp_addr: SocketAddr,
    api_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    api_task: tokio::task::JoinHandle<()>,
}

impl NodeHandle {
    /// Node id.
    pub fn id(&self) -> NodeId {
        self.shared.id
    }
    /// Mesh UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }
    /// Agent API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }
    /// Publishes a data message.
    pub async fn publish(&self, topic: &str, body: &[u8]) -> Result<Receipt, PublishError> {
        self.shared.publish(topic.to_owned(), body.to_vec()).await
    }
    /// Subscribes to every data message delivered here (filter by topic).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Delivered>> {
        self.shared.deliveries.subscribe()
    }
    /// Current status.
    pub async fn status(&self) -> Option<Status> {
        self.shared.status().await
    }
    /// Live peers.
    pub async fn peers(&self) -> Option<Vec<PeerView>> {
        self.shared.peers().await
    }
    /// Prometheus text of the node's metrics.
    pub fn metrics_text(&self) -> String {
        self.shared.render_metrics()
    }
    /// Says goodbye to peers, stops the tile and the API.
    pub async fn shutdown(mut self) {
        self.stop_inner().await;
    }
    /// Stops without a goodbye (simulates a crash: peers must detect it).
    pub async fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.api_task.abort();
    }
    async fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.api_task.abort();
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
        self.api_task.abort();
    }
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

/// Starts a node: loads or creates its key, binds its sockets, starts the
/// fast-path tile, the control task and the agent API.
pub async fn start(cfg: Config) -> anyhow::Result<NodeHandle> {
    cfg.validate()?;
    let (identity, created) = Identity::load_or_create(&cfg.node.key_file)?;
    let id = identity.node_id();
    tracing::info!(node = %id, created, key = %cfg.node.key_file.display(), "identity ready");

    let socket = BatchSocket::bind(
        cfg.node.listen,
        cfg.dataplane.socket_rcvbuf,
        cfg.dataplane.socket_sndbuf,
    )
    .with_context(|| format!("cannot bind mesh UDP address {}", cfg.node.listen))?;
    let udp_addr = socket.local_addr()?;
    let send_socket = socket.try_clone_std()?;

    let metrics = Metrics::new().context("registering metrics")?;
    // Members admitted by mutual TLS (self first); the fast path reads it.
    let admitted = Arc::new(ArcSwap::from_pointee(std::collections::HashSet::from([
        id.0
    ])));
    let transport = if cfg.tls.enabled {
        Some(Arc::new(start_transport(&cfg, &identity, udp_addr)?))
    } else {
        None
    };
    let admission: Option<dataplane::pipeline::Admission> = transport.as_ref().map(|_| {
        let set = admitted.clone();
        let f: dataplane::pipeline::Admission =
            Arc::new(move |k: &[u8; 32]| set.load().contains(k));
        f
    });
    let forward = Arc::new(ArcSwap::from_pointee(ForwardSet::default()));
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(cfg.dataplane.inbound_queue);
    let make_sender = move || -> handoff::InboundSender {
        let in_tx = in_tx.clone();
        Box::new(move |m| match in_tx.try_send(m) {
            Ok(()) => handoff::SendOutcome::Sent,
            Err(mpsc::error::TrySendError::Full(_)) => handoff::SendOutcome::Full,
            Err(mpsc::error::TrySendError::Closed(_)) => handoff::SendOutcome::Closed,
        })
    };
    let mut seed = [0u8; 8];
    getrandom_seed(&mut seed);
    let g = &cfg.gossip;
    let hyparview = cfg.overlay.mode == OverlayMode::Hyparview;
    let tile_cfg = TileConfig {
        batch_size: cfg.dataplane.batch_size,
        // hyparview: the forward set is the eager set, and every member of it gets the payload
        fanout: if hyparview {
            tile::MAX_FANOUT
        } else {
            g.fanout
        },
        pipeline: PipelineConfig {
            replay_window_us: g.replay_window_ms * 1_000,
            max_clock_skew_us: g.max_clock_skew_ms * 1_000,
            dedup_capacity: g.dedup_capacity,
            dedup_seed: u64::from_le_bytes(seed),
        },
        idle_wait: ms(100),
        core: cfg.dataplane.rx_core,
        verify_pool: cfg.dataplane.verify_pool(),
        admission,
        // Plumtree's own tree prunes on copies from eager peers; the rooted tree ignores
        // them, so they are not handed over at all.
        report_duplicates: hyparview && cfg.overlay.tree == TreeMode::Plumtree,
    };
    let mut tiles = Vec::new();
    let mut xdp = None;
    if cfg.dataplane.backend == Backend::Xdp {
        match crate::xdp_backend::start(&cfg, udp_addr, tile_cfg.clone(), &forward, &make_sender, &metrics) {
            Ok((x, t)) => {
                xdp = Some(x);
                tiles = t;
            }
            Err(e) if cfg.dataplane.xdp.fallback_to_udp => {
                tracing::warn!(error = %format!("{e:#}"), "XDP backend unavailable: FALLING BACK to the UDP backend");
            }
            Err(e) => return Err(e.context("starting the XDP backend (set dataplane.xdp.fallback_to_udp to run on UDP instead)")),
        }
    }
    // The kernel socket's tile always runs: it is the whole fast path on the
    // UDP backend, and with XDP it handles mesh packets the program passes
    // (queues without an AF_XDP socket).
    let pipeline_cfg = tile_cfg.pipeline;
    tiles.push(tile::spawn_udp_tile(
        socket,
        tile_cfg,
        forward.clone(),
        make_sender(),
    )?);
    tracing::info!(
        addr = %udp_addr,
        backend = if xdp.is_some() { "xdp" } else { "udp" },
        tiles = tiles.len(),
        "fast path up"
    );

    let api_listener = tokio::net::TcpListener::bind(cfg.node.api_listen)
        .await
        .with_context(|| format!("cannot bind agent API address {}", cfg.node.api_listen))?;
    let api_addr = api_listener.local_addr()?;

    let (api_tx, api_rx) = mpsc::channel(1024);
    let (deliveries, _) = broadcast::channel(4096);
    let shared = Arc::new(Shared {
        id,
        metrics,
        tile_stats: tiles.iter().map(|t| t.stats().clone()).collect(),
        verify_stats: tiles
            .iter()
            .filter_map(|t| t.verify_stats().cloned())
            .collect(),
        xdp: xdp
            .as_ref()
            .and_then(|x: &crate::xdp_backend::Running| x.control().try_clone().ok()),
        deliveries,
        api: api_tx,
    });
    let otlp = match cfg.telemetry.otlp_endpoint.as_str() {
        "" => None,
        endpoint => Some(crate::otlp::start(
            endpoint,
            ms(cfg.telemetry.otlp_interval_ms),
            shared.clone(),
        )?),
    };
    let api_task = tokio::spawn(crate::api::serve(api_listener, shared.clone()));
    tracing::info!(addr = %api_addr, "agent API and /metrics up");

    getrandom_seed(&mut seed);
    let peers = PeerTable::new(
        id,
        PeerConfig {
            bootstrap: cfg.node.bootstrap.clone(),
            heartbeat_interval: ms(g.heartbeat_interval_ms),
            peer_timeout: ms(g.peer_timeout_ms),
            exchange_interval: ms(g.peer_exchange_interval_ms),
            max_peers: g.max_peers,
            forget_after: ms(g.forget_after_ms),
        },
        SmallRng::seed_from_u64(u64::from_le_bytes(seed)),
    );
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let (connected_tx, connected_rx) = mpsc::channel(256);
    let (dial_tx, dial_rx) = mpsc::channel(1024);
    getrandom_seed(&mut seed);
    let overlay = hyparview.then(|| {
        overlay::OverlayState::new(
            &cfg,
            id.0,
            0,
            SmallRng::seed_from_u64(u64::from_le_bytes(seed)),
            dial_tx,
        )
    });
    let control = Control {
        overlay,
        pipeline_cfg,
        _otlp: otlp,
        transport,
        frame_senders: std::sync::Mutex::new(HashMap::new()),
        connecting: std::collections::HashSet::new(),
        connected_tx,
        admitted,
        cfg: cfg.clone(),
        identity,
        shared: shared.clone(),
        tiles,
        _xdp: xdp,
        send_socket,
        forward,
        peers,
        store: MessageStore::new(g.retention_ms * 1_000_000, g.max_stored_messages),
        sequence: tile::wall_us(),
        origin: Instant::now(),
        started: Instant::now(),
        udp_addr,
        api_addr,
        next_anti_entropy: 0,
        served: HashMap::new(),
        buf: Vec::with_capacity(wire::MAX_DATAGRAM),
        payload: Vec::with_capacity(wire::MAX_PAYLOAD),
        forward_version: u64::MAX,
    };
    let task = tokio::spawn(control.run(in_rx, api_rx, shutdown_rx, connected_rx, dial_rx));
    Ok(NodeHandle {
        shared,
        udp_addr,
        api_addr,
        shutdown: Some(shutdown_tx),
        task: Some(task),
        api_task,
    })
}

/// Binds the mutual-TLS QUIC endpoint on the mesh port + 1.
fn start_transport(
    cfg: &Config,
    identity: &Identity,
    udp_addr: SocketAddr,
) -> anyhow::Result<mesh_transport::Transport> {
    let read = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .with_context(|| format!("reading {}", p.display()))
            .and_then(|pem| {
                mesh_transport::ca::cert_from_pem(&pem)
                    .with_context(|| format!("{} is not a PEM certificate", p.display()))
            })
    };
    let ca = read(&cfg.tls.ca_cert).context("tls.ca_cert")?;
    let cert = read(&cfg.tls.cert).context("tls.cert")?;
    let port = udp_addr
        .port()
        .checked_add(1)
        .context("node.listen port must be below 65535 with mutual TLS")?;
    let listen = SocketAddr::new(udp_addr.ip(), port);
    let t = mesh_transport::Transport::bind(
        listen,
        identity.secret_seed(),
        cert,
        ca,
        mesh_transport::TransportConfig::default(),
    )
    .with_context(|| format!("starting mutual-TLS control endpoint on {listen} (tls.cert must be issued by tls.ca_cert for this node's key)"))?;
    tracing::info!(%listen, "mutual-TLS control endpoint up (QUIC)");
    Ok(t)
}

fn getrandom_seed(seed: &mut [u8; 8]) {
    if getrandom::fill(seed).is_err() {
        // Never expected on Linux; fall back to time so the node still runs.
        *seed = (tile::wall_us() ^ 0x9E37_79B9_7F4A_7C15).to_le_bytes();
    }
}

struct Control {
    /// The protocol cores and their I/O state (`overlay.mode = "hyparview"`); the peer
    /// table runs otherwise.
    overlay: Option<overlay::OverlayState>,
    /// The fast path's screening rules, for messages taken outside it (repairs).
    pipeline_cfg: PipelineConfig,
    /// OTLP export; flushes when the node stops.
    _otlp: Option<crate::otlp::OtlpExport>,
    cfg: Config,
    identity: Identity,
    shared: Arc<Shared>,
    /// Fast-path tiles; local publishes go to the first (AF_XDP when on).
    tiles: Vec<TileHandle>,
    /// Keeps the XDP program attached until the tiles stopped (field order).
    _xdp: Option<crate::xdp_backend::Running>,
    /// Mutual-TLS QUIC endpoint for control traffic (when `[tls]` is on).
    transport: Option<Arc<mesh_transport::Transport>>,
    /// Protocol-core frames per peer, in order: one writer task per peer drains its queue
    /// onto the peer's ordered stream (a task per send could reorder frames, and the cores'
    /// state messages, such as tree beacons, must not arrive older-after-newer).
    frame_senders: std::sync::Mutex<HashMap<mesh_protocol::NodeId, mpsc::Sender<Vec<u8>>>>,
    /// QUIC addresses being dialled.
    connecting: std::collections::HashSet<SocketAddr>,
    connected_tx: mpsc::Sender<SocketAddr>,
    /// Members admitted by mutual TLS, read by the fast path.
    admitted: Arc<ArcSwap<std::collections::HashSet<[u8; 32]>>>,
    send_socket: UdpSocket,
    forward: Arc<ArcSwap<ForwardSet>>,
    peers: PeerTable,
    store: MessageStore,
    sequence: u64,
    origin: Instant,
    started: Instant,
    udp_addr: SocketAddr,
    api_addr: SocketAddr,
    next_anti_entropy: Nanos,
    /// Per peer: (window start, messages served in it) for IWANT rate limiting.
    served: HashMap<SocketAddr, (Nanos, usize)>,
    buf: Vec<u8>,
    payload: Vec<u8>,
    forward_version: u64,
}

impl Control {
    fn now(&self) -> Nanos {
        self.origin.elapsed().as_nanos() as Nanos
    }

    async fn run(
        mut self,
        mut inbound: mpsc::Receiver<Inbound>,
        mut api: mpsc::Receiver<ApiCmd>,
        mut shutdown: oneshot::Receiver<()>,
        mut connected_rx: mpsc::Receiver<SocketAddr>,
        mut dial_rx: mpsc::Receiver<overlay::DialDone>,
    ) {
        loop {
            let now = self.now();
            let next = match &self.overlay {
                Some(o) => o.next_deadline(),
                None => self.peers.poll_timeout(),
            }
            .min(self.next_anti_entropy);
            let wait = Duration::from_nanos(next.saturating_sub(now));
            tokio::select! {
                m = inbound.recv() => match m {
                    Some(m) => self.handle_inbound(m),
                    None => break,
                },
                c = api.recv() => match c {
                    Some(c) => self.handle_api(c),
                    None => break,
                },
                _ = tokio::time::sleep(wait) => self.handle_timeout(),
                f = recv_frame(self.transport.clone()) => match f {
                    Some((id, remote, frame)) => self.handle_frame(id, remote, &frame),
                    None => self.transport = None,
                },
                Some(ctrl) = connected_rx.recv() => {
                    self.connecting.remove(&ctrl);
                }
                Some(d) = dial_rx.recv() => self.overlay_dial_done(d),
                _ = &mut shutdown => {
                    if self.overlay.is_some() {
                        self.overlay_leave();
                    } else {
                        self.peers.leave();
                        self.flush_peer_transmits();
                    }
                    break;
                }
            }
            if self.overlay.is_some() {
                self.overlay_flush();
            } else {
                self.flush_peer_transmits();
                self.sync_forward_set();
            }
        }
        if let Some(t) = &self.transport {
            // Let the goodbyes go out before closing the connections.
            tokio::time::sleep(Duration::from_millis(50)).await;
            t.shutdown().await;
        }
        for t in &mut self.tiles {
            t.stop();
        }
        tracing::info!(node = %self.shared.id, "node stopped");
    }

    fn handle_timeout(&mut self) {
        let now = self.now();
        if self.overlay.is_some() {
            self.overlay_timeout(now);
            // The cores run their own anti-entropy; the store only expires here.
            self.store_tick(now);
            return;
        }
        self.peers.handle_timeout(now);
        if self.store_tick(now) {
            if let Some(peer) = self.peers.random_live() {
                let ids = self.store.newest_ids(self.cfg.gossip.anti_entropy_max_ids);
                for chunk in ids.chunks(MAX_IDS_PER_DIGEST) {
                    self.send_control(peer, &ControlMsg::IHave(chunk.to_vec()));
                }
            }
            self.served
                .retain(|_, (start, _)| now.saturating_sub(*start) < 10_000_000_000);
        }
    }

    /// Every anti-entropy interval: expires the store. Returns whether it was due.
    fn store_tick(&mut self, now: Nanos) -> bool {
        if now < self.next_anti_entropy {
            return false;
        }
        self.next_anti_entropy = now + self.cfg.gossip.anti_entropy_interval_ms * 1_000_000;
        self.store.expire(now);
        self.shared
            .metrics
            .store_messages
            .set(self.store.len() as i64);
        true
    }

    fn handle_inbound(&mut self, m: Inbound) {
        let now = self.now();
        if m.duplicate {
            if self.overlay.is_some() {
                self.overlay_duplicate(&m);
            }
            return;
        }
        let Ok(p) = Packet::parse(&m.bytes) else {
            return;
        };
        let origin = NodeId(*p.origin());
        if m.kind == Kind::Data {
            if self.accept_data(now, &p, m.received_us, false) && self.overlay.is_some() {
                self.overlay_data(&p, m.from, false);
            }
            return;
        }
        if self.transport.is_some() {
            // With mutual TLS, control traffic only counts over QUIC.
            self.shared.metrics.control_invalid.inc();
            tracing::debug!(from = %m.from, "control datagram outside mutual TLS ignored");
            return;
        }
        let msg = match ControlMsg::decode(m.kind, p.payload()) {
            Ok(msg) => msg,
            Err(e) => {
                self.shared.metrics.control_invalid.inc();
                tracing::debug!(from = %m.from, error = %e, "bad control payload");
                return;
            }
        };
        self.handle_control(now, m.from, origin, msg);
    }

    /// A control frame from a peer authenticated by mutual TLS. `remote` is
    /// its QUIC address; its mesh (data) address is one port below.
    fn handle_frame(&mut self, id: mesh_transport::NodeId, remote: SocketAddr, frame: &[u8]) {
        if self.overlay.is_some() {
            match frame.split_first() {
                Some((&crate::overlay::FRAME_OVERLAY, _)) => self.overlay_frame(id, remote, frame),
                Some((&crate::overlay::FRAME_DATAGRAM, datagram)) => {
                    self.overlay_repair(id, remote, datagram)
                }
                _ => self.shared.metrics.control_invalid.inc(),
            }
            return;
        }
        let now = self.now();
        let Some(data_addr) = data_addr_of(remote) else {
            return;
        };
        let msg = match frame
            .split_first()
            .and_then(|(k, payload)| Kind::from_u8(*k).map(|k| (k, payload)))
            .map(|(k, payload)| ControlMsg::decode(k, payload))
        {
            Some(Ok(msg)) => msg,
            _ => {
                self.shared.metrics.control_invalid.inc();
                tracing::debug!(%remote, "bad control frame");
                return;
            }
        };
        self.handle_control(now, data_addr, NodeId(id.0), msg);
    }

    fn handle_control(&mut self, now: Nanos, from: SocketAddr, origin: NodeId, msg: ControlMsg) {
        self.peers.handle_message(now, from, origin, &msg);
        match msg {
            ControlMsg::IHave(ids) => {
                let missing: Vec<MessageId> = ids
                    .into_iter()
                    .filter(|id| !self.store.contains(id))
                    .collect();
                if !missing.is_empty() {
                    self.shared
                        .metrics
                        .repair_requested
                        .inc_by(missing.len() as u64);
                    self.send_control(from, &ControlMsg::IWant(missing));
                }
            }
            ControlMsg::IWant(ids) => self.serve_iwant(now, from, &ids),
            _ => {}
        }
    }

    /// The QUIC address of a peer's mesh address (port + 1).
    fn control_addr_of(data: SocketAddr) -> Option<SocketAddr> {
        data.port()
            .checked_add(1)
            .map(|p| SocketAddr::new(data.ip(), p))
    }

    /// Answers an IWANT from a live peer, at most `MAX_IDS_PER_DIGEST` × 4
    /// messages per peer per anti-entropy interval (bounds amplification).
    fn serve_iwant(&mut self, now: Nanos, from: SocketAddr, ids: &[MessageId]) {
        if self.peers.peer_at(from).is_none() {
            return;
        }
        let window = self.cfg.gossip.anti_entropy_interval_ms * 1_000_000;
        let budget = MAX_IDS_PER_DIGEST * 4;
        let entry = self.served.entry(from).or_insert((now, 0));
        if now.saturating_sub(entry.0) >= window {
            *entry = (now, 0);
        }
        let mut sent = 0u64;
        let mut out: Vec<Vec<u8>> = Vec::new();
        for id in ids {
            if entry.1 >= budget {
                break;
            }
            if let Some(bytes) = self.store.get(id) {
                let mut b = bytes.to_vec();
                wire::set_hop_limit(&mut b, 1);
                out.push(b);
                entry.1 += 1;
            }
        }
        let msgs: Vec<(SocketAddr, &[u8])> = out.iter().map(|b| (from, &b[..])).collect();
        if !msgs.is_empty() {
            use std::os::fd::AsRawFd;
            let n = dataplane::udp::send_batch_fd(self.send_socket.as_raw_fd(), &msgs).unwrap_or(0);
            sent += n as u64;
        }
        self.shared.metrics.repair_served.inc_by(sent);
    }

    /// Stores and delivers a data message (from the mesh or local).
    fn accept_data(&mut self, now: Nanos, p: &Packet<'_>, received_us: u64, local: bool) -> bool {
        let id = p.message_id();
        // A validly signed message whose payload is not topic + body is
        // neither stored (so never advertised) nor delivered.
        let Some((topic, body)) = wire::split_data_payload(p.payload()) else {
            self.shared.metrics.control_invalid.inc();
            return false;
        };
        if !self.store.insert(now, id, Arc::from(p.as_bytes())) {
            return false;
        }
        self.shared
            .metrics
            .store_messages
            .set(self.store.len() as i64);
        let d = Delivered {
            id: id.to_hex(),
            origin: hex::encode(p.origin()),
            sequence: p.sequence(),
            topic: topic.to_owned(),
            text: std::str::from_utf8(body).ok().map(str::to_owned),
            data_b64: b64(body),
            timestamp_us: p.timestamp_us(),
            received_us,
            local,
        };
        if !local {
            self.shared.metrics.delivered.inc();
            let lat = received_us.saturating_sub(p.timestamp_us()) as f64 / 1e6;
            self.shared.metrics.observe_latency(lat);
        }
        let _ = self.shared.deliveries.send(Arc::new(d));
        true
    }

    fn handle_api(&mut self, c: ApiCmd) {
        match c {
            ApiCmd::Publish { topic, body, reply } => {
                let _ = reply.send(self.publish(&topic, &body));
            }
            ApiCmd::Status(reply) => {
                let _ = reply.send(self.status());
            }
            ApiCmd::Peers(reply) => {
                if let Some(v) = self.overlay_peers() {
                    let _ = reply.send(v);
                    return;
                }
                let now = self.now();
                let v = self
                    .peers
                    .live()
                    .map(|p| PeerView {
                        node_id: p.id.to_hex(),
                        addr: p.addr,
                        last_heard_ms: Some(now.saturating_sub(p.last_heard) / 1_000_000),
                        rtt_us: None,
                        eager: None,
                    })
                    .collect();
                let _ = reply.send(v);
            }
        }
    }

    fn publish(&mut self, topic: &str, body: &[u8]) -> Result<Receipt, PublishError> {
        wire::data_payload(topic, body, &mut self.payload)?;
        self.sequence += 1;
        let ts = tile::wall_us();
        let mut bytes = Vec::with_capacity(wire::MAX_DATAGRAM);
        self.identity.seal(
            Kind::Data,
            self.cfg.gossip.hop_limit,
            self.sequence,
            ts,
            &self.payload,
            &mut bytes,
        )?;
        let p = Packet::parse(&bytes).map_err(|_| PublishError::Unavailable("encoding bug"))?;
        let id = p.message_id();
        let now = self.now();
        let Some(tile) = self.tiles.first() else {
            return Err(PublishError::Unavailable("no fast path"));
        };
        // Store and deliver locally only once the fast path took it, so a
        // refused publish leaves no trace and can simply be retried.
        if !tile.command(Command::Publish(bytes.clone())) {
            return Err(PublishError::Unavailable("fast path queue full"));
        }
        self.accept_data(now, &p, ts, true);
        if self.overlay.is_some() {
            self.overlay_data(&p, self.udp_addr, true);
        }
        self.shared.metrics.published.inc();
        Ok(Receipt {
            id: id.to_hex(),
            sequence: self.sequence,
            timestamp_us: ts,
        })
    }

    fn status(&mut self) -> Status {
        use std::sync::atomic::Ordering::Relaxed;
        let (peers_live, peers_pending, peers_unreachable, partitioned, overlay) =
            match self.overlay_status() {
                Some((l, p, u, part, o)) => (l, p, u, part, Some(o)),
                None => (
                    self.peers.live_count(),
                    self.peers.pending_count(),
                    self.peers.unreachable_count(),
                    self.peers.partitioned(),
                    None,
                ),
            };
        let sum = |f: &dyn Fn(&tile::TileStats) -> u64| {
            self.tiles.iter().map(|t| f(t.stats())).sum::<u64>()
        };
        Status {
            backend: if self._xdp.is_some() { "xdp" } else { "udp" }.to_owned(),
            xdp_mode: self._xdp.as_ref().map(|x| x.mode.to_string()),
            xdp: self
                .shared
                .xdp
                .as_ref()
                .and_then(|x| x.counters().ok())
                .map(|c| {
                    dataplane::xdp::Reason::ALL
                        .iter()
                        .map(|r| (r.as_str().to_owned(), c[*r as usize]))
                        .collect()
                }),
            node_id: self.shared.id.to_hex(),
            listen: self.udp_addr,
            api: self.api_addr,
            overlay_mode: if overlay.is_some() {
                "hyparview"
            } else {
                "full"
            }
            .to_owned(),
            peers_live,
            peers_pending,
            peers_unreachable,
            partitioned,
            overlay,
            stored_messages: self.store.len(),
            received: sum(&|s| s.received.load(Relaxed)),
            accepted: (1..7)
                .map(|k| {
                    (
                        KIND_NAMES[k].to_owned(),
                        sum(&|s| s.accepted[k].load(Relaxed)),
                    )
                })
                .collect(),
            dropped: DropReason::ALL
                .iter()
                .map(|r| {
                    (
                        r.as_str().to_owned(),
                        sum(&|s| s.dropped[*r as usize].load(Relaxed)),
                    )
                })
                .collect(),
            forwarded: sum(&|s| s.forwarded.load(Relaxed)),
            delivered: self.shared.metrics.delivered.get(),
            published: self.shared.metrics.published.get(),
            uptime_ms: self.started.elapsed().as_millis() as u64,
        }
    }

    fn send_control(&mut self, to: SocketAddr, msg: &ControlMsg) {
        if let Some(t) = &self.transport {
            msg.encode(&mut self.payload);
            let mut frame = Vec::with_capacity(1 + self.payload.len());
            frame.push(msg.kind() as u8);
            frame.extend_from_slice(&self.payload);
            let known = self
                .peers
                .peer_at(to)
                .map(|p| mesh_transport::NodeId(p.id.0))
                .filter(|id| t.is_connected(id));
            let t = t.clone();
            match known {
                Some(id) => {
                    tokio::spawn(async move {
                        if let Err(e) = t.send(&id, &frame).await {
                            tracing::debug!(peer = %id, error = %e, "control frame not sent");
                        }
                    });
                }
                None => {
                    let Some(ctrl) = Self::control_addr_of(to) else {
                        return;
                    };
                    if !self.connecting.insert(ctrl) {
                        return; // a dial is under way; the next heartbeat retries
                    }
                    let done = self.connected_tx.clone();
                    tokio::spawn(async move {
                        match t.connect(ctrl, None).await {
                            Ok(conn) => {
                                if let Err(e) = t.send(&conn.node_id, &frame).await {
                                    tracing::debug!(peer = %conn.node_id, error = %e, "control frame not sent");
                                }
                            }
                            Err(e) => tracing::debug!(%ctrl, error = %e, "mutual-TLS dial failed"),
                        }
                        let _ = done.send(ctrl).await;
                    });
                }
            }
            return;
        }
        msg.encode(&mut self.payload);
        self.sequence += 1;
        if self
            .identity
            .seal(
                msg.kind(),
                1,
                self.sequence,
                tile::wall_us(),
                &self.payload,
                &mut self.buf,
            )
            .is_err()
        {
            return;
        }
        if let Err(e) = self.send_socket.send_to(&self.buf, to) {
            tracing::debug!(%to, error = %e, "control send failed");
        }
    }

    fn flush_peer_transmits(&mut self) {
        while let Some(ev) = self.peers.poll_event() {
            match ev {
                PeerEvent::Up(id, addr) => tracing::info!(peer = %id.short(), %addr, "peer up"),
                PeerEvent::Down(id, addr) => tracing::info!(peer = %id.short(), %addr, "peer down"),
                PeerEvent::PartitionDetected { reachable, known } => {
                    tracing::warn!(
                        reachable,
                        known,
                        "PARTITION: this node reaches fewer than n - f members; still serving local agents"
                    )
                }
                PeerEvent::PartitionHealed { reachable, known } => {
                    tracing::info!(reachable, known, "partition healed")
                }
            }
        }
        while let Some((to, msg)) = self.peers.poll_transmit() {
            self.send_control(to, &msg);
        }
        let live = self.peers.live_count() as i64;
        self.shared
            .metrics
            .peers
            .with_label_values(&["live"])
            .set(live);
        self.shared
            .metrics
            .peers
            .with_label_values(&["pending"])
            .set(self.peers.pending_count() as i64);
        self.shared
            .metrics
            .peers
            .with_label_values(&["unreachable"])
            .set(self.peers.unreachable_count() as i64);
        self.shared
            .metrics
            .partitioned
            .set(i64::from(self.peers.partitioned()));
    }

    fn sync_forward_set(&mut self) {
        if self.peers.version() == self.forward_version {
            return;
        }
        self.forward_version = self.peers.version();
        let peers = self.peers.live().map(|p| p.addr).collect();
        self.forward.store(Arc::new(ForwardSet {
            peers,
            origin: Vec::new(),
        }));
        if self.transport.is_some() {
            // Only ids that proved a CA-issued certificate are ever live.
            let mut set: std::collections::HashSet<[u8; 32]> =
                self.peers.live().map(|p| p.id.0).collect();
            set.extend(self.peers.unreachable_ids().map(|id| id.0));
            set.insert(self.shared.id.0);
            self.admitted.store(Arc::new(set));
        }
    }
}

/// The mesh (data) address of a peer's QUIC address (port − 1).
fn data_addr_of(control: SocketAddr) -> Option<SocketAddr> {
    control
        .port()
        .checked_sub(1)
        .filter(|p| *p != 0)
        .map(|p| SocketAddr::new(control.ip(), p))
}

/// Next control frame, or never when mutual TLS is off.
async fn recv_frame(
    t: Option<Arc<mesh_transport::Transport>>,
) -> Option<(mesh_transport::NodeId, SocketAddr, bytes::Bytes)> {
    match t {
        Some(t) => t.recv().await,
        None => std::future::pending().await,
    }
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
