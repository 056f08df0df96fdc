//! One mesh node at run time: start-up ([`start`]) and the handle to a running node
//! ([`NodeHandle`]).
//!
//! ```text
//!   tile threads ──Inbound (bounded)──▶ driver task ──▶ subscribers (broadcast)
//!        ▲                               │  core (SWIM, HyParView, tree, repair, heal)
//!        ├── ForwardSet, admitted set ◀──┤  store, links (mutual TLS, one writer per peer)
//!        └── Publish / Repair ◀──────────┘◀── Service ◀── agent API, OTLP
//! ```
//!
//! - [`fastpath`]: the tiles (UDP, AF_XDP), the sets they read without locks;
//! - [`driver`]: the select loop between the core, the tiles, the links and the service;
//! - [`links`]: per-peer frame writers and dials over mutual TLS;
//! - [`status`]: the status and peers views and the core's metrics.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use dataplane::identity::{Identity, NodeId};
use dataplane::tile::Inbound;
use dataplane::udp::BatchSocket;
use mesh_protocol::{Instant, Node as Core, NodeConfig as CoreConfig};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::admission::Admitted;
use crate::book::AddressBook;
use crate::config::{Config, TreeMode};
use crate::metrics::Metrics;
use crate::service::{Delivered, PeerView, PublishError, Receipt, Service, Status};
use crate::store::MessageStore;

mod auth;
mod driver;
mod fastpath;
mod ledger;
mod links;
mod status;

/// A running node.
pub struct NodeHandle {
    service: Arc<Service>,
    udp_addr: SocketAddr,
    api_addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    api_task: tokio::task::JoinHandle<()>,
}

impl NodeHandle {
    /// Node id.
    pub fn id(&self) -> NodeId {
        self.service.id()
    }
    /// Mesh UDP address.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp_addr
    }
    /// Agent API address.
    pub fn api_addr(&self) -> SocketAddr {
        self.api_addr
    }
    /// The service (publish, status, peers, deliveries, metrics).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }
    /// Publishes a data message.
    pub async fn publish(&self, topic: &str, body: &[u8]) -> Result<Receipt, PublishError> {
        self.service.publish(topic.to_owned(), body.to_vec()).await
    }
    /// Subscribes to every data message delivered here (filter by topic).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Delivered>> {
        self.service.subscribe()
    }
    /// Current status.
    pub async fn status(&self) -> Option<Status> {
        self.service.status().await
    }
    /// Active-view neighbours.
    pub async fn peers(&self) -> Option<Vec<PeerView>> {
        self.service.peers().await
    }
    /// Prometheus text of the node's metrics.
    pub fn metrics_text(&self) -> String {
        self.service.render_metrics()
    }
    /// Says goodbye to the neighbours, stops the tiles and the API.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        self.api_task.abort();
    }
    /// Stops without a goodbye (simulates a crash: peers must detect it).
    pub async fn kill(mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
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

/// The core's settings from `[overlay]` and `[gossip]`.
fn core_config(cfg: &Config) -> CoreConfig {
    let o = &cfg.overlay;
    let ms = Duration::from_millis;
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
    c.tree.enabled = o.tree == TreeMode::Rooted;
    c.tree.beacon_interval = ms(o.beacon_interval_ms);
    c.tree.root_timeout = ms(o.root_timeout_ms);
    c.tree.settle = ms(o.beacon_interval_ms.div_ceil(4));
    c.gossip.retention = ms(cfg.gossip.retention_ms);
    c.gossip.max_store = cfg.gossip.max_stored_messages;
    c
}

/// Starts a node: loads or creates its key, binds its sockets (mesh UDP, mutual-TLS QUIC on
/// port + 1, agent API), starts the fast-path tiles, the driver task and the agent API.
pub async fn start(cfg: Config) -> anyhow::Result<NodeHandle> {
    cfg.validate()?;
    let (identity, created) = Identity::load_or_create(&cfg.node.key_file)?;
    let me = identity.node_id();
    tracing::info!(node = %me, created, key = %cfg.node.key_file.display(), "identity ready");

    let socket = BatchSocket::bind(
        cfg.node.listen,
        cfg.dataplane.socket_rcvbuf,
        cfg.dataplane.socket_sndbuf,
    )
    .with_context(|| format!("cannot bind mesh UDP address {}", cfg.node.listen))?;
    let udp_addr = socket.local_addr()?;
    let transport = Arc::new(start_transport(&cfg, &identity, udp_addr)?);

    let metrics = Metrics::new().context("registering metrics")?;
    let (in_tx, in_rx) = mpsc::channel::<Inbound>(cfg.dataplane.inbound_queue);
    let fast = fastpath::FastPath::start(&cfg, me, socket, in_tx, &metrics)?;

    let api_listener = tokio::net::TcpListener::bind(cfg.node.api_listen)
        .await
        .with_context(|| format!("cannot bind agent API address {}", cfg.node.api_listen))?;
    let api_addr = api_listener.local_addr()?;
    let (req_tx, req_rx) = mpsc::channel(1024);
    let (deliveries, _) = broadcast::channel(4096);
    let service = Arc::new(Service {
        id: me,
        metrics,
        tile_stats: fast.tile_stats(),
        verify_stats: fast.verify_stats(),
        xdp: fast.xdp_control(),
        deliveries,
        requests: req_tx,
        transport: transport.clone(),
    });
    let otlp = match cfg.telemetry.otlp_endpoint.as_str() {
        "" => None,
        endpoint => Some(crate::otlp::start(
            endpoint,
            Duration::from_millis(cfg.telemetry.otlp_interval_ms),
            service.clone(),
        )?),
    };
    let api_task = tokio::spawn(crate::api::serve(
        api_listener,
        service.clone(),
        crate::api::Limits {
            max_connections: cfg.api.max_connections,
            header_timeout: Duration::from_millis(cfg.api.header_timeout_ms),
        },
    ));
    tracing::info!(addr = %api_addr, "agent API and /metrics up");

    let g = &cfg.gossip;
    let state_dir = cfg.node.state_dir();
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating node.state_dir {}", state_dir.display()))?;
    let journal = state_dir.join(format!("delivered-{}.log", me.short()));
    let (ledger, remembered) = ledger::Ledger::open(
        &journal,
        g.replay_window_ms * 1_000,
        g.delivered_capacity,
        dataplane::clock::wall_us(),
    )
    .with_context(|| format!("opening the delivered journal {}", journal.display()))?;
    tracing::info!(journal = %journal.display(), remembered, "delivered journal open");
    let clock = driver::Clock {
        origin: std::time::Instant::now(),
    };
    let (dial_tx, dial_rx) = mpsc::channel(1024);
    let (shutdown_tx, shutdown_rx) = oneshot::channel();
    let drv = driver::Driver {
        me,
        core: Core::new(
            core_config(&cfg),
            me,
            0,
            clock.now(),
            SmallRng::seed_from_u64(fastpath::random_u64()),
            Box::new(auth::Ed25519Auth::new(&identity)),
        ),
        book: AddressBook::new(cfg.overlay.address_book_capacity),
        admitted: Admitted::new(me.0, cfg.overlay.admitted_capacity),
        links: links::Links::new(
            transport,
            service.clone(),
            cfg.node.bootstrap.clone(),
            dial_tx,
        ),
        fast,
        store: MessageStore::new(Duration::from_millis(g.retention_ms), g.max_stored_messages),
        ledger,
        store_expiry: Duration::from_millis(g.anti_entropy_interval_ms),
        next_store_expiry: Instant::ZERO,
        service: service.clone(),
        origin: driver::Origin {
            identity,
            sequence: dataplane::clock::wall_us(),
            hop_limit: g.hop_limit,
            payload: Vec::with_capacity(dataplane::wire::MAX_PAYLOAD),
        },
        clock,
        addrs: (udp_addr, api_addr),
        last: Default::default(),
        early_dups: Default::default(),
        frame: Vec::with_capacity(2048),
        _otlp: otlp,
    };
    let task = tokio::spawn(drv.run(driver::Inputs {
        inbound: in_rx,
        requests: req_rx,
        shutdown: shutdown_rx,
        dials: dial_rx,
    }));
    Ok(NodeHandle {
        service,
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
        .context("node.listen port must be below 65535 (mutual TLS uses port + 1)")?;
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
