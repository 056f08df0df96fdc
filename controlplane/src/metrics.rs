//! Metrics, named as in the Weaver registry under `registry/`.
//!
//! Every metric is registered here under its registry name converted with
//! [`prometheus_name`]; a test checks that the set exported equals the set
//! the registry defines, in both directions. The fast-path tile keeps plain
//! counters and publishes them to atomics; [`Metrics::refresh`] folds them in
//! at scrape time.

use std::sync::Mutex;
use std::sync::atomic::Ordering;

use dataplane::pipeline::DropReason;
use dataplane::tile::TileStats;
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

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

/// `mesh.message.kind` values by kind byte.
pub const KIND_NAMES: [&str; 8] = [
    "unknown",
    "data",
    "join",
    "peer_list",
    "ihave",
    "iwant",
    "leave",
    "unknown",
];

/// `mesh.overlay.view` values.
pub const OVERLAY_VIEWS: [&str; 4] = ["active", "passive", "eager", "lazy"];
/// `mesh.member.status` values, in `mesh_protocol::Status` order.
pub const MEMBER_STATUSES: [&str; 4] = ["alive", "suspect", "dead", "left"];
/// `mesh.overlay.frame.outcome` values.
pub const FRAME_OUTCOMES: [&str; 4] = ["sent", "received", "invalid", "unsent"];

/// `mesh.xdp.mode` values.
pub const XDP_MODES: [&str; 2] = ["native", "generic"];
/// `mesh.xsk.bind_mode` values.
pub const XSK_BIND_MODES: [&str; 2] = ["zero_copy", "copy"];

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
    /// Data messages delivered to local agents.
    pub delivered: IntCounter,
    /// Data messages published by local agents.
    pub published: IntCounter,
    /// Origin-to-delivery latency.
    pub latency: Histogram,
    /// Message ids asked for with IWANT.
    pub repair_requested: IntCounter,
    /// Messages sent in answer to IWANT.
    pub repair_served: IntCounter,
    /// Control payloads that failed to decode.
    pub control_invalid: IntCounter,
    /// Messages held for repair.
    pub store_messages: IntGauge,
    /// Peers by state.
    pub peers: IntGaugeVec,
    /// Open subscriptions.
    pub subscribers: IntGauge,
    /// 1 while this node is cut off from the mesh.
    pub partitioned: IntGauge,
    /// Messages a slow subscriber missed.
    pub lagged: IntCounter,
    /// Overlay view sizes by view.
    pub overlay_view: IntGaugeVec,
    /// Member table by status.
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
    /// Overlay frames by outcome.
    pub overlay_frames: IntCounterVec,
    xdp_packets: IntCounterVec,
    verify_batches: IntCounterVec,
    verify_signatures: IntCounterVec,
    verify_failures: IntCounterVec,
    verify_queue_full: IntCounterVec,
    /// 1 for the XDP attach mode in use, by mode.
    pub xdp_attached: IntGaugeVec,
    /// AF_XDP sockets by bind mode.
    pub xsk_sockets: IntGaugeVec,
    last: Mutex<Snapshot>,
    /// The OTLP twin of `latency`, when OTLP export is on.
    otel_latency: std::sync::OnceLock<opentelemetry::metrics::Histogram<f64>>,
}

#[derive(Default)]
struct Snapshot {
    received: u64,
    dropped: [u64; DropReason::COUNT],
    accepted: [u64; 8],
    forwarded: u64,
    tx_failed: u64,
    evicted: u64,
    batches: u64,
    xdp: [u64; dataplane::xdp::Reason::COUNT],
}

fn counter(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntCounter> {
    let c = IntCounter::with_opts(Opts::new(
        prometheus_name(name, Instrument::Counter, "1"),
        help,
    ))?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn counter_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(
        Opts::new(prometheus_name(name, Instrument::Counter, "1"), help),
        &[&label_name(label)],
    )?;
    reg.register(Box::new(c.clone()))?;
    Ok(c)
}

fn gauge_vec(
    reg: &Registry,
    name: &str,
    help: &str,
    label: &str,
) -> prometheus::Result<IntGaugeVec> {
    let g = IntGaugeVec::new(
        Opts::new(prometheus_name(name, Instrument::Gauge, "1"), help),
        &[&label_name(label)],
    )?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn gauge(reg: &Registry, name: &str, help: &str) -> prometheus::Result<IntGauge> {
    let g = IntGauge::with_opts(Opts::new(
        prometheus_name(name, Instrument::Gauge, "1"),
        help,
    ))?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

impl Metrics {
    /// Registers every metric in a fresh registry.
    pub fn new() -> prometheus::Result<Metrics> {
        let r = Registry::new();
        let peers = IntGaugeVec::new(
            Opts::new(
                prometheus_name("mesh.peers", Instrument::Gauge, "{peer}"),
                "Peers by state.",
            ),
            &[&label_name("mesh.peer.state")],
        )?;
        r.register(Box::new(peers.clone()))?;
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                prometheus_name(
                    "mesh.gossip.dissemination.latency",
                    Instrument::Histogram,
                    "s",
                ),
                "Time from the origin's timestamp to local delivery.",
            )
            .buckets(vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0,
            ]),
        )?;
        r.register(Box::new(latency.clone()))?;
        let m = Metrics {
            packets_received: counter(
                &r,
                "mesh.dataplane.packets.received",
                "Datagrams received by the fast path.",
            )?,
            packets_dropped: counter_vec(
                &r,
                "mesh.dataplane.packets.dropped",
                "Datagrams dropped by the fast path, by reason.",
                "mesh.drop.reason",
            )?,
            messages_accepted: counter_vec(
                &r,
                "mesh.dataplane.messages.accepted",
                "Messages that passed every fast-path stage, by kind.",
                "mesh.message.kind",
            )?,
            messages_forwarded: counter(
                &r,
                "mesh.dataplane.messages.forwarded",
                "Data messages forwarded to peers (one per destination).",
            )?,
            transmit_failed: counter(
                &r,
                "mesh.dataplane.transmit.failed",
                "Datagrams the kernel refused to send.",
            )?,
            dedup_evicted: counter(
                &r,
                "mesh.dataplane.dedup.evicted",
                "Seen-cache entries evicted before expiry.",
            )?,
            batches: counter(&r, "mesh.dataplane.batches", "Receive batches processed.")?,
            delivered: counter(
                &r,
                "mesh.gossip.messages.delivered",
                "Data messages from the mesh delivered to local agents.",
            )?,
            published: counter(
                &r,
                "mesh.gossip.messages.published",
                "Data messages published by local agents.",
            )?,
            latency,
            repair_requested: counter(
                &r,
                "mesh.gossip.repair.requested",
                "Message ids asked for in anti-entropy.",
            )?,
            repair_served: counter(
                &r,
                "mesh.gossip.repair.served",
                "Messages sent in answer to anti-entropy requests.",
            )?,
            control_invalid: counter(
                &r,
                "mesh.gossip.control.invalid",
                "Signed control messages whose payload failed to decode.",
            )?,
            store_messages: gauge(
                &r,
                "mesh.gossip.store.messages",
                "Messages held for anti-entropy repair.",
            )?,
            peers,
            subscribers: gauge(&r, "mesh.agent.subscribers", "Open agent subscriptions.")?,
            partitioned: gauge(
                &r,
                "mesh.partition.detected",
                "1 while this node reaches fewer than n - f of the n members it knows.",
            )?,
            lagged: counter(
                &r,
                "mesh.agent.messages.lagged",
                "Messages a slow subscriber missed.",
            )?,
            overlay_view: gauge_vec(
                &r,
                "mesh.overlay.view.size",
                "Partial-view sizes by view.",
                "mesh.overlay.view",
            )?,
            members: gauge_vec(
                &r,
                "mesh.membership.members",
                "Members in the member table by status.",
                "mesh.member.status",
            )?,
            probes: counter(&r, "mesh.membership.probes", "SWIM probes started.")?,
            suspicions: counter(
                &r,
                "mesh.membership.suspicions",
                "Suspicions raised after a failed probe.",
            )?,
            declared_dead: counter(
                &r,
                "mesh.membership.declared_dead",
                "Members declared dead after their suspicion timed out.",
            )?,
            refutations: counter(
                &r,
                "mesh.membership.refutations",
                "Suspicions about this node that it refuted.",
            )?,
            confirmations: counter(
                &r,
                "mesh.membership.confirmations",
                "Suspicions shortened by an independent confirmation.",
            )?,
            missed_nacks: counter(
                &r,
                "mesh.membership.missed_nacks",
                "Indirect probes that brought neither an ack nor a nack.",
            )?,
            local_health: gauge(
                &r,
                "mesh.membership.local_health",
                "Lifeguard local health multiplier (0 healthy).",
            )?,
            prunes: counter(&r, "mesh.gossip.tree.prunes", "Plumtree prunes sent.")?,
            grafts: counter(&r, "mesh.gossip.tree.grafts", "Plumtree grafts sent.")?,
            tree_parent_changes: counter(
                &r,
                "mesh.gossip.tree.parent_changes",
                "Rooted tree: times this node's parent changed.",
            )?,
            tree_roots_lost: counter(
                &r,
                "mesh.gossip.tree.roots_lost",
                "Rooted tree: times this node presumed its root lost.",
            )?,
            tree_depth: gauge(
                &r,
                "mesh.gossip.tree.depth",
                "Rooted tree: this node's hops from the root.",
            )?,
            overlay_frames: counter_vec(
                &r,
                "mesh.overlay.frames",
                "Protocol-core control frames by outcome.",
                "mesh.overlay.frame.outcome",
            )?,
            xdp_packets: counter_vec(
                &r,
                "mesh.xdp.packets",
                "Packets seen by the XDP filter, by verdict and reason.",
                "mesh.xdp.reason",
            )?,
            verify_batches: counter_vec(
                &r,
                "mesh.verify.batches",
                "Batches verified by a verify worker.",
                "mesh.verify.worker",
            )?,
            verify_signatures: counter_vec(
                &r,
                "mesh.verify.signatures",
                "Signatures verified by a verify worker.",
                "mesh.verify.worker",
            )?,
            verify_failures: counter_vec(
                &r,
                "mesh.verify.failures",
                "Signatures a verify worker found invalid.",
                "mesh.verify.worker",
            )?,
            verify_queue_full: counter_vec(
                &r,
                "mesh.verify.queue_full",
                "Batches dropped because every verify queue was full.",
                "mesh.verify.worker",
            )?,
            xdp_attached: gauge_vec(
                &r,
                "mesh.xdp.attached",
                "1 for the XDP attach mode in use (0 on the UDP backend).",
                "mesh.xdp.mode",
            )?,
            xsk_sockets: gauge_vec(
                &r,
                "mesh.xsk.sockets",
                "AF_XDP sockets by bind mode.",
                "mesh.xsk.bind_mode",
            )?,
            last: Mutex::new(Snapshot::default()),
            otel_latency: std::sync::OnceLock::new(),
            registry: r,
        };
        // Make every labelled series visible from the start.
        for reason in DropReason::ALL {
            m.packets_dropped.with_label_values(&[reason.as_str()]);
        }
        for kind in &KIND_NAMES[1..7] {
            m.messages_accepted.with_label_values(&[kind]);
        }
        for reason in dataplane::xdp::Reason::ALL {
            m.xdp_packets.with_label_values(&[reason.as_str()]);
        }
        for mode in XDP_MODES {
            m.xdp_attached.with_label_values(&[mode]);
        }
        for mode in XSK_BIND_MODES {
            m.xsk_sockets.with_label_values(&[mode]);
        }
        // Verify workers appear once a pool runs; give the families one
        // series each so the exported set is the same on every node.
        for c in [
            &m.verify_batches,
            &m.verify_signatures,
            &m.verify_failures,
            &m.verify_queue_full,
        ] {
            c.with_label_values(&["none"]);
        }
        for v in OVERLAY_VIEWS {
            m.overlay_view.with_label_values(&[v]);
        }
        for st in MEMBER_STATUSES {
            m.members.with_label_values(&[st]);
        }
        for o in FRAME_OUTCOMES {
            m.overlay_frames.with_label_values(&[o]);
        }
        m.peers.with_label_values(&["live"]);
        m.peers.with_label_values(&["pending"]);
        m.peers.with_label_values(&["unreachable"]);
        Ok(m)
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
        for (i, name) in KIND_NAMES.iter().enumerate().take(7).skip(1) {
            let d = delta(
                sum(&|t| t.accepted[i].load(Ordering::Relaxed)),
                &mut last.accepted[i],
            );
            self.messages_accepted.with_label_values(&[name]).inc_by(d);
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
