//! What a running node offers to agents and to telemetry: the [`Service`] handle (publish,
//! status, peers, deliveries, metrics) and the types it answers with.
//!
//! The agent API ([`crate::api`]) and the OTLP exporter ([`crate::otlp`]) depend on this
//! module only; the node driver ([`crate::node`]) serves the requests. So the service side
//! never imports the driver, and the driver imports it only to answer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use dataplane::identity::NodeId;
use dataplane::wire;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::metrics::Metrics;

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

/// An active-view neighbour as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    /// Node id (hex).
    pub node_id: String,
    /// Mesh (data) address.
    pub addr: SocketAddr,
    /// Smoothed probe round-trip time in µs, once measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u32>,
    /// Whether the fast path forwards payloads to it (a dissemination-tree link).
    pub eager: bool,
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
    /// Active-view neighbours (the same as `overlay.active`).
    pub peers_live: usize,
    /// True while this node reaches fewer than n − f of the n members it should reach.
    pub partitioned: bool,
    /// Views, members, partition verdict and tree of the protocol cores.
    pub overlay: OverlayStatus,
    /// Messages held for repair.
    pub stored_messages: usize,
    /// Delivered message ids remembered (journaled) against re-delivery.
    pub delivered_remembered: usize,
    /// Origins caught signing two bodies for one sequence number.
    pub equivocating_origins: usize,
    /// Datagrams received by the fast path (repairs included).
    pub received: u64,
    /// Accepted messages by kind.
    pub accepted: HashMap<String, u64>,
    /// Drops by reason.
    pub dropped: HashMap<String, u64>,
    /// Repaired messages handed to the fast path's pipeline (graft and pull answers).
    pub repairs: u64,
    /// Data messages forwarded.
    pub forwarded: u64,
    /// Data messages delivered to local agents (from the mesh).
    pub delivered: u64,
    /// Data messages published here.
    pub published: u64,
    /// Milliseconds since start.
    pub uptime_ms: u64,
}

/// The protocol cores' part of the status.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct OverlayStatus {
    /// HyParView active view size.
    pub active: usize,
    /// Passive view size.
    pub passive: usize,
    /// Eager set size (the fast path's forward set).
    pub eager: usize,
    /// Lazy set size.
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

/// A request the node driver answers (sent by [`Service`]).
pub(crate) enum Request {
    /// Seal and publish a data message.
    Publish {
        /// Topic.
        topic: String,
        /// Body.
        body: Vec<u8>,
        /// Where the receipt goes.
        reply: oneshot::Sender<Result<Receipt, PublishError>>,
    },
    /// The current status.
    Status(oneshot::Sender<Status>),
    /// The active view.
    Peers(oneshot::Sender<Vec<PeerView>>),
}

/// The node as agents and exporters see it; shared by the API tasks and the OTLP exporter.
pub struct Service {
    pub(crate) id: NodeId,
    pub(crate) metrics: Metrics,
    pub(crate) tile_stats: Vec<Arc<dataplane::tile::TileStats>>,
    pub(crate) xdp: Option<dataplane::xdp::XdpControl>,
    pub(crate) verify_stats: Vec<dataplane::verify::workers::PoolStats>,
    pub(crate) deliveries: broadcast::Sender<Arc<Delivered>>,
    pub(crate) requests: mpsc::Sender<Request>,
    pub(crate) transport: Arc<mesh_transport::Transport>,
}

impl Service {
    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Publishes a data message through the node.
    pub async fn publish(&self, topic: String, body: Vec<u8>) -> Result<Receipt, PublishError> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(Request::Publish {
                topic,
                body,
                reply: tx,
            })
            .await
            .map_err(|_| PublishError::Unavailable("stopped"))?;
        rx.await.map_err(|_| PublishError::Unavailable("stopped"))?
    }

    /// The current status; `None` once the node stopped.
    pub async fn status(&self) -> Option<Status> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Status(tx)).await.ok()?;
        rx.await.ok()
    }

    /// The active view; `None` once the node stopped.
    pub async fn peers(&self) -> Option<Vec<PeerView>> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(Request::Peers(tx)).await.ok()?;
        rx.await.ok()
    }

    /// Every data message delivered here from now on (filter by topic).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Delivered>> {
        self.deliveries.subscribe()
    }

    /// Copies the fast path's counters into the metrics.
    pub(crate) fn refresh_metrics(&self) {
        self.metrics.refresh(&self.tile_stats, self.xdp.as_ref());
        self.metrics.refresh_verify(&self.verify_stats);
        self.metrics.refresh_transport(&self.transport.stats());
    }

    /// Prometheus text of every metric, refreshed.
    pub fn render_metrics(&self) -> String {
        self.refresh_metrics();
        self.metrics.render()
    }
}
