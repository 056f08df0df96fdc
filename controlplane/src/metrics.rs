//! Metrics, defined once: in the Weaver registry under `registry/`.
//!
//! `build.rs` turns `registry/*.yaml` into [`registry`]: a [`MetricDef`] per metric (name,
//! instrument, unit, brief, attributes), an [`AttributeDef`] per attribute, and a
//! [`mesh_types::labels!`] enum per enum attribute ([`label`]: variants, `ALL`, `COUNT`,
//! `as_str`). Both exports read that one table. The Prometheus endpoint registers every field of
//! [`Metrics`] from its `MetricDef`: the name through [`prometheus_name`], HELP is the brief, the
//! label names come through [`label_name`], and a series for every enum member exists from the
//! start. The OTLP export ([`crate::otlp`]) builds one instrument per entry of
//! [`registry::metric::METRICS`], under the registry name. A field naming a metric the registry
//! does not define fails the build (the constant does not exist), and so does a field whose
//! Prometheus type does not fit the registry instrument and attribute count. A registry metric
//! that no field exports fails the `every_registry_metric_is_exported` test. The fast path's
//! own label enums (`DropReason`, `xdp::Reason`, `XdpMode`, `BindMode`: they index its counter
//! arrays) are compared with their registry attributes at compile time too.
//!
//! The fast-path tile keeps plain counters and publishes them to atomics; [`Metrics::refresh`]
//! folds them in at scrape time.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use dataplane::pipeline::DropReason;
use dataplane::tile::TileStats;
use prometheus::core::Collector;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// The tables generated from `registry/*.yaml` by `build.rs`: [`registry::attr`] (one
/// [`AttributeDef`] per attribute), [`registry::metric`] (one [`MetricDef`] per metric, and
/// `METRICS`) and [`registry::label`] (one `labels!` enum per enum attribute).
pub mod registry {
    include!(concat!(env!("OUT_DIR"), "/registry.rs"));
}

pub use registry::label;
use registry::metric;

/// Registry instrument kinds we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Instrument {
    /// Monotonic counter.
    Counter,
    /// Up-down value.
    Gauge,
    /// Distribution.
    Histogram,
}

/// One attribute of the registry.
#[derive(Debug, PartialEq, Eq)]
pub struct AttributeDef {
    /// Registry id (the OTLP attribute key), e.g. `mesh.drop.reason`.
    pub id: &'static str,
    /// Registry brief.
    pub brief: &'static str,
    /// Enum member values in registry order; empty for a string attribute.
    pub members: &'static [&'static str],
}

impl AttributeDef {
    /// The Prometheus label name ([`label_name`] of the id).
    pub fn label_name(&self) -> String {
        label_name(self.id)
    }
}

/// One metric of the registry.
#[derive(Debug, PartialEq, Eq)]
pub struct MetricDef {
    /// Registry (and OTLP) name, e.g. `mesh.dataplane.packets.received`.
    pub name: &'static str,
    /// Instrument kind.
    pub instrument: Instrument,
    /// UCUM unit.
    pub unit: &'static str,
    /// Registry brief: the Prometheus HELP text and the OTLP description.
    pub brief: &'static str,
    /// Attributes, in registry order.
    pub attributes: &'static [&'static AttributeDef],
}

impl MetricDef {
    /// The name the Prometheus endpoint uses ([`prometheus_name`]).
    pub fn prometheus_name(&self) -> String {
        prometheus_name(self.name, self.instrument, self.unit)
    }

    /// The Prometheus label names, in registry order.
    pub fn label_names(&self) -> Vec<String> {
        self.attributes.iter().map(|a| a.label_name()).collect()
    }
}

/// Converts a registry metric name to its Prometheus name: dots become
/// underscores, a `s` unit appends `_seconds`, counters end in `_total`.
pub fn prometheus_name(metric_name: &str, instrument: Instrument, unit: &str) -> String {
    let mut n = metric_name.replace('.', "_");
    if unit == "s" {
        n.push_str("_seconds");
    }
    if instrument == Instrument::Counter {
        n.push_str("_total");
    }
    n
}

/// Converts a registry attribute id to a Prometheus label name.
pub fn label_name(attribute: &str) -> String {
    attribute.replace('.', "_")
}

/// The wire kind byte a `mesh.message.kind` member counts (the tile's
/// [`TileStats::accepted`] counts data, the only kind).
pub const fn wire_kind(kind: label::MessageKind) -> usize {
    match kind {
        label::MessageKind::Data => dataplane::wire::Kind::Data as usize,
    }
}

/// Every `as_str` of a `labels!` enum, in value order, as a constant array.
macro_rules! label_names {
    ($e:ty) => {{
        let mut out = [""; <$e>::COUNT];
        let mut i = 0;
        while i < <$e>::COUNT {
            out[i] = <$e>::ALL[i].as_str();
            i += 1;
        }
        out
    }};
}

/// Whether two lists of names are equal, element by element (usable in constants).
const fn same_names(a: &[&str], b: &[&str]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        let (x, y) = (a[i].as_bytes(), b[i].as_bytes());
        if x.len() != y.len() {
            return false;
        }
        let mut j = 0;
        while j < x.len() {
            if x[j] != y[j] {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

// The fast path's label enums index its counter arrays, so they are its own `labels!`
// definitions; that their names are the registry's members, in registry order, is checked
// here when the control plane builds.
const _: () = {
    use registry::attr;
    assert!(
        same_names(&label_names!(DropReason), attr::MESH_DROP_REASON.members),
        "dataplane::pipeline::DropReason differs from mesh.drop.reason in registry/"
    );
    assert!(
        same_names(
            &label_names!(dataplane::xdp::Reason),
            attr::MESH_XDP_REASON.members
        ),
        "dataplane::xdp::Reason differs from mesh.xdp.reason in registry/"
    );
    assert!(
        same_names(
            &label_names!(dataplane::xdp::XdpMode),
            attr::MESH_XDP_MODE.members
        ),
        "dataplane::xdp::XdpMode differs from mesh.xdp.mode in registry/"
    );
    assert!(
        same_names(
            &label_names!(dataplane::xsk::BindMode),
            attr::MESH_XSK_BIND_MODE.members
        ),
        "dataplane::xsk::BindMode differs from mesh.xsk.bind_mode in registry/"
    );
};

/// Buckets (seconds) of a histogram with unit `s`.
const SECONDS_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// A Prometheus type a registry metric can be exported as.
trait Family: Collector + Clone + Sized + 'static {
    /// The registry instrument it fits.
    const INSTRUMENT: Instrument;
    /// How many attributes (labels) it carries.
    const LABELS: usize;
    /// Creates it from its definition, with a series for every enum member (or `none` for a
    /// string attribute) so the exported set is the same on every node from the start.
    fn build(def: &MetricDef) -> prometheus::Result<Self>;
}

fn opts(def: &MetricDef) -> Opts {
    Opts::new(def.prometheus_name(), def.brief)
}

/// The label values a labelled family starts with.
fn initial_series(def: &MetricDef) -> &'static [&'static str] {
    match def.attributes.first() {
        Some(a) if !a.members.is_empty() => a.members,
        _ => &["none"],
    }
}

impl Family for IntCounter {
    const INSTRUMENT: Instrument = Instrument::Counter;
    const LABELS: usize = 0;
    fn build(def: &MetricDef) -> prometheus::Result<Self> {
        IntCounter::with_opts(opts(def))
    }
}

impl Family for IntGauge {
    const INSTRUMENT: Instrument = Instrument::Gauge;
    const LABELS: usize = 0;
    fn build(def: &MetricDef) -> prometheus::Result<Self> {
        IntGauge::with_opts(opts(def))
    }
}

impl Family for IntCounterVec {
    const INSTRUMENT: Instrument = Instrument::Counter;
    const LABELS: usize = 1;
    fn build(def: &MetricDef) -> prometheus::Result<Self> {
        let labels = def.label_names();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let c = IntCounterVec::new(opts(def), &labels)?;
        for v in initial_series(def) {
            c.with_label_values(&[v]);
        }
        Ok(c)
    }
}

impl Family for IntGaugeVec {
    const INSTRUMENT: Instrument = Instrument::Gauge;
    const LABELS: usize = 1;
    fn build(def: &MetricDef) -> prometheus::Result<Self> {
        let labels = def.label_names();
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let g = IntGaugeVec::new(opts(def), &labels)?;
        for v in initial_series(def) {
            g.with_label_values(&[v]);
        }
        Ok(g)
    }
}

impl Family for Histogram {
    const INSTRUMENT: Instrument = Instrument::Histogram;
    const LABELS: usize = 0;
    fn build(def: &MetricDef) -> prometheus::Result<Self> {
        let mut o = HistogramOpts::new(def.prometheus_name(), def.brief);
        if def.unit == "s" {
            o = o.buckets(SECONDS_BUCKETS.to_vec());
        }
        Histogram::with_opts(o)
    }
}

/// `def`, if a `F` can export it (evaluated at compile time by [`bind!`]).
const fn fits<F: Family>(def: &'static MetricDef) -> &'static MetricDef {
    if def.instrument as u8 != F::INSTRUMENT as u8 {
        panic!("the registry instrument of this metric differs from its field's type");
    }
    if def.attributes.len() != F::LABELS {
        panic!("the registry attributes of this metric do not fit its field's type");
    }
    def
}

fn register<F: Family>(reg: &Registry, def: &MetricDef) -> prometheus::Result<F> {
    let m = F::build(def)?;
    reg.register(Box::new(m.clone()))?;
    Ok(m)
}

/// Registers registry metric `metric::$def` in `$reg` as a `$ty`; that the registry defines it,
/// with an instrument and attributes a `$ty` can carry, is checked at compile time.
macro_rules! bind {
    ($reg:expr, $ty:ty, $def:ident) => {
        register::<$ty>($reg, const { fits::<$ty>(&metric::$def) })
    };
}

/// Every metric of a node.
pub struct Metrics {
    /// The Prometheus registry they live in.
    pub registry: Registry,
    packets_received: IntCounter,
    packets_dropped: IntCounterVec,
    messages_accepted: IntCounterVec,
    messages_forwarded: IntCounter,
    transmit_failed: IntCounter,
    dedup_evicted: IntCounter,
    batches: IntCounter,
    repairs: IntCounter,
    /// Data messages delivered to local agents.
    pub delivered: IntCounter,
    /// Data messages published by local agents.
    pub published: IntCounter,
    /// Origin-to-delivery latency.
    pub latency: Histogram,
    /// Message ids asked for in repair.
    pub repair_requested: IntCounter,
    /// Messages sent in answer to repair requests.
    pub repair_served: IntCounter,
    /// Messages held for repair.
    pub store_messages: IntGauge,
    /// Open subscriptions.
    pub subscribers: IntGauge,
    /// 1 while this node is cut off from the mesh.
    pub partitioned: IntGauge,
    /// Messages a slow subscriber missed.
    pub lagged: IntCounter,
    /// Agent connections refused at the cap.
    pub api_refused: IntCounter,
    /// Messages not delivered again (delivered before, maybe before a restart).
    pub redelivery_suppressed: IntCounter,
    /// Origins caught equivocating.
    pub equivocations: IntCounter,
    /// Overlay view sizes by view ([`label::OverlayView`]).
    pub overlay_view: IntGaugeVec,
    /// Member table by status ([`label::MemberStatus`]).
    pub members: IntGaugeVec,
    /// SWIM probes started.
    pub probes: IntCounter,
    /// Suspicions raised here.
    pub suspicions: IntCounter,
    /// Members declared dead here.
    pub declared_dead: IntCounter,
    /// Self-refutations.
    pub refutations: IntCounter,
    /// Lifeguard confirmations.
    pub confirmations: IntCounter,
    /// Lifeguard missed nacks.
    pub missed_nacks: IntCounter,
    /// Lifeguard local health multiplier.
    pub local_health: IntGauge,
    /// Plumtree prunes sent.
    pub prunes: IntCounter,
    /// Plumtree grafts sent.
    pub grafts: IntCounter,
    /// Rooted tree: parent changes.
    pub tree_parent_changes: IntCounter,
    /// Rooted tree: roots presumed lost.
    pub tree_roots_lost: IntCounter,
    /// Rooted tree: hops from the root.
    pub tree_depth: IntGauge,
    /// Overlay frames by outcome ([`label::OverlayFrameOutcome`]).
    pub overlay_frames: IntCounterVec,
    xdp_packets: IntCounterVec,
    verify_batches: IntCounterVec,
    verify_signatures: IntCounterVec,
    verify_failures: IntCounterVec,
    verify_queue_full: IntCounterVec,
    /// 1 for the XDP attach mode in use, by mode ([`label::XdpMode`]).
    pub xdp_attached: IntGaugeVec,
    /// AF_XDP sockets by bind mode ([`label::XskBindMode`]).
    pub xsk_sockets: IntGaugeVec,
    last: Mutex<Snapshot>,
    transport_frames_received: IntCounter,
    transport_frames_dropped: IntCounterVec,
    transport_frames_backpressured: IntCounter,
    transport_handshakes_retried: IntCounter,
    transport_handshakes_refused: IntCounterVec,
    transport_connections: IntGaugeVec,
    last_transport: Mutex<mesh_transport::TransportStats>,
    /// The OTLP twin of `latency`, when OTLP export is on.
    otel_latency: std::sync::OnceLock<opentelemetry::metrics::Histogram<f64>>,
}

#[derive(Default)]
struct Snapshot {
    received: u64,
    dropped: [u64; DropReason::COUNT],
    accepted: [u64; label::MessageKind::COUNT],
    forwarded: u64,
    tx_failed: u64,
    evicted: u64,
    batches: u64,
    repairs: u64,
    xdp: [u64; dataplane::xdp::Reason::COUNT],
}

impl Metrics {
    /// The registry entry of the histogram [`Metrics::observe_latency`] feeds.
    pub const LATENCY: &'static MetricDef = &metric::MESH_GOSSIP_DISSEMINATION_LATENCY;

    /// Registers every metric in a fresh registry.
    pub fn new() -> prometheus::Result<Metrics> {
        let reg = Registry::new();
        let r = &reg;
        Ok(Metrics {
            packets_received: bind!(r, IntCounter, MESH_DATAPLANE_PACKETS_RECEIVED)?,
            packets_dropped: bind!(r, IntCounterVec, MESH_DATAPLANE_PACKETS_DROPPED)?,
            messages_accepted: bind!(r, IntCounterVec, MESH_DATAPLANE_MESSAGES_ACCEPTED)?,
            messages_forwarded: bind!(r, IntCounter, MESH_DATAPLANE_MESSAGES_FORWARDED)?,
            transmit_failed: bind!(r, IntCounter, MESH_DATAPLANE_TRANSMIT_FAILED)?,
            dedup_evicted: bind!(r, IntCounter, MESH_DATAPLANE_DEDUP_EVICTED)?,
            batches: bind!(r, IntCounter, MESH_DATAPLANE_BATCHES)?,
            repairs: bind!(r, IntCounter, MESH_DATAPLANE_REPAIRS_RECEIVED)?,
            delivered: bind!(r, IntCounter, MESH_GOSSIP_MESSAGES_DELIVERED)?,
            published: bind!(r, IntCounter, MESH_GOSSIP_MESSAGES_PUBLISHED)?,
            latency: bind!(r, Histogram, MESH_GOSSIP_DISSEMINATION_LATENCY)?,
            repair_requested: bind!(r, IntCounter, MESH_GOSSIP_REPAIR_REQUESTED)?,
            repair_served: bind!(r, IntCounter, MESH_GOSSIP_REPAIR_SERVED)?,
            store_messages: bind!(r, IntGauge, MESH_GOSSIP_STORE_MESSAGES)?,
            subscribers: bind!(r, IntGauge, MESH_AGENT_SUBSCRIBERS)?,
            partitioned: bind!(r, IntGauge, MESH_PARTITION_DETECTED)?,
            lagged: bind!(r, IntCounter, MESH_AGENT_MESSAGES_LAGGED)?,
            api_refused: bind!(r, IntCounter, MESH_AGENT_CONNECTIONS_REFUSED)?,
            redelivery_suppressed: bind!(
                r,
                IntCounter,
                MESH_GOSSIP_MESSAGES_REDELIVERY_SUPPRESSED
            )?,
            equivocations: bind!(r, IntCounter, MESH_GOSSIP_EQUIVOCATIONS)?,
            overlay_view: bind!(r, IntGaugeVec, MESH_OVERLAY_VIEW_SIZE)?,
            members: bind!(r, IntGaugeVec, MESH_MEMBERSHIP_MEMBERS)?,
            probes: bind!(r, IntCounter, MESH_MEMBERSHIP_PROBES)?,
            suspicions: bind!(r, IntCounter, MESH_MEMBERSHIP_SUSPICIONS)?,
            declared_dead: bind!(r, IntCounter, MESH_MEMBERSHIP_DECLARED_DEAD)?,
            refutations: bind!(r, IntCounter, MESH_MEMBERSHIP_REFUTATIONS)?,
            confirmations: bind!(r, IntCounter, MESH_MEMBERSHIP_CONFIRMATIONS)?,
            missed_nacks: bind!(r, IntCounter, MESH_MEMBERSHIP_MISSED_NACKS)?,
            local_health: bind!(r, IntGauge, MESH_MEMBERSHIP_LOCAL_HEALTH)?,
            prunes: bind!(r, IntCounter, MESH_GOSSIP_TREE_PRUNES)?,
            grafts: bind!(r, IntCounter, MESH_GOSSIP_TREE_GRAFTS)?,
            tree_parent_changes: bind!(r, IntCounter, MESH_GOSSIP_TREE_PARENT_CHANGES)?,
            tree_roots_lost: bind!(r, IntCounter, MESH_GOSSIP_TREE_ROOTS_LOST)?,
            tree_depth: bind!(r, IntGauge, MESH_GOSSIP_TREE_DEPTH)?,
            overlay_frames: bind!(r, IntCounterVec, MESH_OVERLAY_FRAMES)?,
            xdp_packets: bind!(r, IntCounterVec, MESH_XDP_PACKETS)?,
            verify_batches: bind!(r, IntCounterVec, MESH_VERIFY_BATCHES)?,
            verify_signatures: bind!(r, IntCounterVec, MESH_VERIFY_SIGNATURES)?,
            verify_failures: bind!(r, IntCounterVec, MESH_VERIFY_FAILURES)?,
            verify_queue_full: bind!(r, IntCounterVec, MESH_VERIFY_QUEUE_FULL)?,
            xdp_attached: bind!(r, IntGaugeVec, MESH_XDP_ATTACHED)?,
            xsk_sockets: bind!(r, IntGaugeVec, MESH_XSK_SOCKETS)?,
            last: Mutex::new(Snapshot::default()),
            transport_frames_received: bind!(r, IntCounter, MESH_TRANSPORT_FRAMES_RECEIVED)?,
            transport_frames_dropped: bind!(r, IntCounterVec, MESH_TRANSPORT_FRAMES_DROPPED)?,
            transport_frames_backpressured: bind!(
                r,
                IntCounter,
                MESH_TRANSPORT_FRAMES_BACKPRESSURED
            )?,
            transport_handshakes_retried: bind!(r, IntCounter, MESH_TRANSPORT_HANDSHAKES_RETRIED)?,
            transport_handshakes_refused: bind!(
                r,
                IntCounterVec,
                MESH_TRANSPORT_HANDSHAKES_REFUSED
            )?,
            transport_connections: bind!(r, IntGaugeVec, MESH_TRANSPORT_CONNECTIONS)?,
            last_transport: Mutex::new(Default::default()),
            otel_latency: std::sync::OnceLock::new(),
            registry: reg.clone(),
        })
    }

    /// The `mesh.overlay.view.size` series of `view` (typed: no label string to misspell).
    pub fn view_size(&self, view: label::OverlayView) -> IntGauge {
        self.overlay_view.with_label_values(&[view.as_str()])
    }

    /// The `mesh.membership.members` series of `status`.
    pub fn member_count(&self, status: label::MemberStatus) -> IntGauge {
        self.members.with_label_values(&[status.as_str()])
    }

    /// The `mesh.overlay.frames` series of `outcome`.
    pub fn frames(&self, outcome: label::OverlayFrameOutcome) -> IntCounter {
        self.overlay_frames.with_label_values(&[outcome.as_str()])
    }

    /// The `mesh.xdp.attached` series of `mode`.
    pub fn xdp_attached_in(&self, mode: dataplane::xdp::XdpMode) -> IntGauge {
        self.xdp_attached.with_label_values(&[mode.as_str()])
    }

    /// The `mesh.xsk.sockets` series of `mode`.
    pub fn xsk_sockets_in(&self, mode: dataplane::xsk::BindMode) -> IntGauge {
        self.xsk_sockets.with_label_values(&[mode.as_str()])
    }

    /// Folds the tiles' published counters (summed) and the XDP program's
    /// counters into the exported ones.
    pub fn refresh(
        &self,
        tiles: &[std::sync::Arc<TileStats>],
        xdp: Option<&dataplane::xdp::XdpControl>,
    ) {
        let Ok(mut last) = self.last.lock() else {
            return;
        };
        let sum = |f: &dyn Fn(&TileStats) -> u64| tiles.iter().map(|t| f(t)).sum::<u64>();
        let delta = |now: u64, before: &mut u64| {
            let d = now.saturating_sub(*before);
            *before = now;
            d
        };
        self.packets_received.inc_by(delta(
            sum(&|t| t.received.load(Ordering::Relaxed)),
            &mut last.received,
        ));
        for reason in DropReason::ALL {
            let i = reason as usize;
            let d = delta(
                sum(&|t| t.dropped[i].load(Ordering::Relaxed)),
                &mut last.dropped[i],
            );
            self.packets_dropped
                .with_label_values(&[reason.as_str()])
                .inc_by(d);
        }
        for kind in label::MessageKind::ALL {
            // The tile counts accepted messages in one counter: all are data.
            let data = wire_kind(kind) == dataplane::wire::Kind::Data as usize;
            let d = delta(
                sum(&|t| {
                    if data {
                        t.accepted.load(Ordering::Relaxed)
                    } else {
                        0
                    }
                }),
                &mut last.accepted[kind as usize],
            );
            self.messages_accepted
                .with_label_values(&[kind.as_str()])
                .inc_by(d);
        }
        self.messages_forwarded.inc_by(delta(
            sum(&|t| t.forwarded.load(Ordering::Relaxed)),
            &mut last.forwarded,
        ));
        self.transmit_failed.inc_by(delta(
            sum(&|t| t.tx_failed.load(Ordering::Relaxed)),
            &mut last.tx_failed,
        ));
        self.dedup_evicted.inc_by(delta(
            sum(&|t| t.dedup_live_evictions.load(Ordering::Relaxed)),
            &mut last.evicted,
        ));
        self.batches.inc_by(delta(
            sum(&|t| t.batches.load(Ordering::Relaxed)),
            &mut last.batches,
        ));
        self.repairs.inc_by(delta(
            sum(&|t| t.repairs.load(Ordering::Relaxed)),
            &mut last.repairs,
        ));
        if let Some(Ok(counts)) = xdp.map(|x| x.counters()) {
            for reason in dataplane::xdp::Reason::ALL {
                let i = reason as usize;
                let d = delta(counts[i], &mut last.xdp[i]);
                self.xdp_packets
                    .with_label_values(&[reason.as_str()])
                    .inc_by(d);
            }
        }
    }

    /// Folds the mutual-TLS transport's counters in (receive queues, handshake admission,
    /// connections).
    pub fn refresh_transport(&self, s: &mesh_transport::TransportStats) {
        use label::{
            TransportDirection as Dir, TransportDropReason as Drop,
            TransportRefusalReason as Refusal,
        };
        let Ok(mut last) = self.last_transport.lock() else {
            return;
        };
        let d = |now: u64, then: u64| now.saturating_sub(then);
        self.transport_frames_received.inc_by(d(
            s.frames_received + s.datagrams_received,
            last.frames_received + last.datagrams_received,
        ));
        for (reason, now, then) in [
            (
                Drop::PeerQueueFull,
                s.frames_dropped_peer_queue_full,
                last.frames_dropped_peer_queue_full,
            ),
            (
                Drop::TotalQueueFull,
                s.frames_dropped_total_queue_full,
                last.frames_dropped_total_queue_full,
            ),
            (Drop::Oversized, s.frames_too_large, last.frames_too_large),
        ] {
            self.transport_frames_dropped
                .with_label_values(&[reason.as_str()])
                .inc_by(d(now, then));
        }
        self.transport_frames_backpressured
            .inc_by(d(s.frames_backpressured, last.frames_backpressured));
        self.transport_handshakes_retried
            .inc_by(d(s.incoming_retried, last.incoming_retried));
        for (reason, now, then) in [
            (
                Refusal::HandshakeCap,
                s.incoming_refused_handshake_cap,
                last.incoming_refused_handshake_cap,
            ),
            (
                Refusal::ConnectionCap,
                s.incoming_refused_connection_cap,
                last.incoming_refused_connection_cap,
            ),
            (
                Refusal::Rate,
                s.incoming_refused_rate,
                last.incoming_refused_rate,
            ),
        ] {
            self.transport_handshakes_refused
                .with_label_values(&[reason.as_str()])
                .inc_by(d(now, then));
        }
        for (dir, n) in [
            (Dir::Incoming, s.connections_incoming),
            (Dir::Outgoing, s.connections_outgoing),
        ] {
            self.transport_connections
                .with_label_values(&[dir.as_str()])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        *last = *s;
    }

    /// Folds the verify workers' counters in (labelled `tile/worker`).
    pub fn refresh_verify(&self, pools: &[dataplane::verify::workers::PoolStats]) {
        for (t, pool) in pools.iter().enumerate() {
            for (w, st) in pool.snapshot().iter().enumerate() {
                let label = format!("{t}/{w}");
                let set = |c: &IntCounterVec, v: u64| {
                    let c = c.with_label_values(&[&label]);
                    c.inc_by(v.saturating_sub(c.get()));
                };
                set(&self.verify_batches, st.batches);
                set(&self.verify_signatures, st.signatures);
                set(&self.verify_failures, st.failures);
                set(&self.verify_queue_full, st.queue_full);
            }
        }
    }

    /// Records one origin-to-delivery latency (seconds) in every export.
    pub fn observe_latency(&self, seconds: f64) {
        self.latency.observe(seconds);
        if let Some(h) = self.otel_latency.get() {
            h.record(seconds, &[]);
        }
    }

    /// Mirrors `observe_latency` into an OTel histogram from now on.
    pub fn set_otel_latency(&self, h: opentelemetry::metrics::Histogram<f64>) {
        let _ = self.otel_latency.set(h);
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = String::new();
        let families = self.registry.gather();
        if let Err(e) = prometheus::TextEncoder::new().encode_utf8(&families, &mut buf) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use prometheus::proto::MetricType;

    use super::*;

    /// Prometheus name -> (type, HELP, label names) of what `m` exports.
    fn exported(m: &Metrics) -> BTreeMap<String, (MetricType, String, Vec<String>)> {
        m.registry
            .gather()
            .iter()
            .map(|f| {
                let labels = f
                    .get_metric()
                    .first()
                    .map(|x| x.get_label().iter().map(|l| l.name().to_owned()).collect())
                    .unwrap_or_default();
                (
                    f.name().to_owned(),
                    (f.get_field_type(), f.help().to_owned(), labels),
                )
            })
            .collect()
    }

    #[test]
    fn every_registry_metric_is_exported_with_its_help_and_labels_and_nothing_else() {
        let m = Metrics::new().expect("metrics register");
        let got = exported(&m);
        let want: BTreeMap<_, _> = metric::METRICS
            .iter()
            .map(|d| {
                let ty = match d.instrument {
                    Instrument::Counter => MetricType::COUNTER,
                    Instrument::Gauge => MetricType::GAUGE,
                    Instrument::Histogram => MetricType::HISTOGRAM,
                };
                (
                    d.prometheus_name(),
                    (ty, d.brief.to_owned(), d.label_names()),
                )
            })
            .collect();
        let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty(),
            "registry metrics no field exports: {missing:?}"
        );
        assert!(
            extra.is_empty(),
            "exported but not in the registry: {extra:?}"
        );
        assert_eq!(got, want);
    }

    #[test]
    fn every_enum_member_has_a_series_from_the_start() {
        let m = Metrics::new().expect("metrics register");
        for f in m.registry.gather() {
            let Some(def) = metric::METRICS
                .iter()
                .find(|d| d.prometheus_name() == f.name())
            else {
                panic!("{} is not in the registry", f.name());
            };
            let Some(attr) = def.attributes.first() else {
                continue;
            };
            let values: Vec<&str> = f
                .get_metric()
                .iter()
                .flat_map(|x| x.get_label().iter().map(|l| l.value()))
                .collect();
            if attr.members.is_empty() {
                assert_eq!(values, ["none"], "{}", def.name);
            } else {
                let mut want = attr.members.to_vec();
                want.sort_unstable();
                assert_eq!(values, want, "{}", def.name);
            }
        }
    }

    #[test]
    fn dataplane_label_enums_are_the_registry_enums() {
        let names = |v: &[&'static str]| v.to_vec();
        let drops: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(drops, names(registry::attr::MESH_DROP_REASON.members));
        let xdp: Vec<_> = dataplane::xdp::Reason::ALL
            .iter()
            .map(|r| r.as_str())
            .collect();
        assert_eq!(xdp, names(registry::attr::MESH_XDP_REASON.members));
        let modes: Vec<_> = dataplane::xdp::XdpMode::ALL
            .iter()
            .map(|m| m.as_str())
            .collect();
        assert_eq!(modes, names(registry::attr::MESH_XDP_MODE.members));
        let binds: Vec<_> = dataplane::xsk::BindMode::ALL
            .iter()
            .map(|m| m.as_str())
            .collect();
        assert_eq!(binds, names(registry::attr::MESH_XSK_BIND_MODE.members));
        assert!(!same_names(&["a", "b"], &["a", "c"]));
        assert!(!same_names(&["a"], &["a", "b"]));
        assert!(!same_names(&["ab"], &["a"]));
        assert!(same_names(&["a", "bc"], &["a", "bc"]));
        for kind in label::MessageKind::ALL {
            let byte = u8::try_from(wire_kind(kind)).expect("a kind byte");
            assert!(
                dataplane::wire::Kind::from_u8(byte).is_some(),
                "{} is not a wire kind",
                kind.as_str()
            );
        }
        assert_eq!(wire_kind(label::MessageKind::Data), 1);
    }

    #[test]
    fn generated_label_enums_follow_the_registry_members() {
        assert_eq!(
            label::MemberStatus::ALL.map(label::MemberStatus::as_str),
            ["alive", "suspect", "dead", "left"]
        );
        assert_eq!(
            label::MemberStatus::ALL
                .map(label::MemberStatus::as_str)
                .to_vec(),
            registry::attr::MESH_MEMBER_STATUS.members.to_vec()
        );
        assert_eq!(
            label::OverlayFrameOutcome::from_name("invalid"),
            Some(label::OverlayFrameOutcome::Invalid)
        );
        assert_eq!(
            label::XskBindMode::from_name("zero_copy"),
            Some(label::XskBindMode::ZeroCopy)
        );
        assert_eq!(label::OverlayView::COUNT, 4);
    }

    /// The value of `name{label="value"}` (or of `name` without labels) in `text`.
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("{series} not in\n{text}"))
    }

    #[test]
    fn refresh_folds_the_tiles_counters_in_as_deltas() {
        let m = Metrics::new().expect("metrics register");
        let tiles = [
            Arc::new(TileStats::default()),
            Arc::new(TileStats::default()),
        ];
        tiles[0].received.store(5, Ordering::Relaxed);
        tiles[1].repairs.store(4, Ordering::Relaxed);
        tiles[1].received.store(7, Ordering::Relaxed);
        tiles[0].accepted.store(3, Ordering::Relaxed);
        tiles[1].dropped[DropReason::BadPayload as usize].store(2, Ordering::Relaxed);
        m.refresh(&tiles, None);
        m.refresh(&tiles, None);
        let t = m.render();
        assert_eq!(value(&t, "mesh_dataplane_packets_received_total"), 12.0);
        assert_eq!(
            value(
                &t,
                "mesh_dataplane_messages_accepted_total{mesh_message_kind=\"data\"}"
            ),
            3.0
        );
        assert_eq!(
            value(
                &t,
                "mesh_dataplane_packets_dropped_total{mesh_drop_reason=\"bad_payload\"}"
            ),
            2.0
        );
        assert_eq!(value(&t, "mesh_dataplane_repairs_received_total"), 4.0);
        // Only registry members are exported: kind 2 is not one.
        assert!(!t.contains("mesh_message_kind=\"join\""), "{t}");
        tiles[0].received.store(6, Ordering::Relaxed);
        m.refresh(&tiles, None);
        assert_eq!(
            value(&m.render(), "mesh_dataplane_packets_received_total"),
            13.0
        );
    }

    #[test]
    fn typed_series_are_the_registry_series() {
        let m = Metrics::new().expect("metrics register");
        m.view_size(label::OverlayView::Eager).set(3);
        m.member_count(label::MemberStatus::Suspect).set(2);
        m.frames(label::OverlayFrameOutcome::Invalid).inc_by(4);
        m.xdp_attached_in(dataplane::xdp::XdpMode::Generic).set(1);
        m.xsk_sockets_in(dataplane::xsk::BindMode::ZeroCopy).inc();
        let t = m.render();
        for (series, v) in [
            ("mesh_overlay_view_size{mesh_overlay_view=\"eager\"}", 3.0),
            ("mesh_overlay_view_size{mesh_overlay_view=\"lazy\"}", 0.0),
            (
                "mesh_membership_members{mesh_member_status=\"suspect\"}",
                2.0,
            ),
            (
                "mesh_overlay_frames_total{mesh_overlay_frame_outcome=\"invalid\"}",
                4.0,
            ),
            ("mesh_xdp_attached{mesh_xdp_mode=\"generic\"}", 1.0),
            ("mesh_xdp_attached{mesh_xdp_mode=\"native\"}", 0.0),
            ("mesh_xsk_sockets{mesh_xsk_bind_mode=\"zero_copy\"}", 1.0),
        ] {
            assert_eq!(value(&t, series), v, "{series}");
        }
        // No series outside the registry members appeared.
        m.registry.gather().iter().for_each(|f| {
            let def = metric::METRICS
                .iter()
                .find(|d| d.prometheus_name() == f.name())
                .expect("registry metric");
            for x in f.get_metric() {
                for l in x.get_label() {
                    let a = def.attributes[0];
                    assert!(
                        a.members.is_empty() || a.members.contains(&l.value()),
                        "{}: {} is not a member of {}",
                        def.name,
                        l.value(),
                        a.id
                    );
                }
            }
        });
    }

    #[test]
    fn help_is_the_registry_brief() {
        let t = Metrics::new().expect("metrics register").render();
        let d = &metric::MESH_GOSSIP_MESSAGES_DELIVERED;
        assert!(
            t.contains(&format!("# HELP {} {}\n", d.prometheus_name(), d.brief)),
            "{t}"
        );
        for retired in [
            "mesh_peers",
            "mesh_gossip_control_invalid",
            "mesh_peer_state",
        ] {
            assert!(!t.contains(retired), "{retired} is exported:\n{t}");
        }
    }
}
