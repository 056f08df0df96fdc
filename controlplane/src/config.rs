//! `meshd` configuration: a TOML file whose every key is optional.
//!
//! `controlplane/default.toml` lists every key with a paragraph on what it
//! does, its unit, default and range; a test keeps it equal to
//! [`Config::default`]. Unknown keys are rejected, and every semantic error
//! names the TOML path of the offending key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Errors loading a configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// TOML syntax error, unknown key or wrong type (the message names it).
    #[error("invalid config {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Parser message, naming the key.
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config: `{field}` {problem}")]
    Invalid {
        /// TOML path of the key.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
}

/// The whole configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity and addresses.
    pub node: NodeConfig,
    /// Message screening, hop limit, anti-entropy and repair store.
    pub gossip: GossipConfig,
    /// The protocol cores: membership, views, dissemination tree, repair.
    pub overlay: OverlayConfig,
    /// Fast-path settings.
    pub dataplane: DataplaneConfig,
    /// Mutual TLS between nodes.
    pub tls: TlsConfig,
    /// Metrics export.
    pub telemetry: TelemetryConfig,
    /// Agent API limits.
    pub api: ApiConfig,
}

/// `[api]`: limits of the agent API server (its address is `node.api_listen`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Most agent connections open at once; a connection over the cap is closed at once.
    pub max_connections: usize,
    /// A request's headers must arrive within this time of the connection opening or of the
    /// previous response ending, or the connection is closed (slow or idle clients). A
    /// subscriber stream in progress is not affected.
    pub header_timeout_ms: u64,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_connections: 1024,
            header_timeout_ms: 10_000,
        }
    }
}

/// How the protocol cores build the dissemination tree (the eager set the fast
/// path forwards to).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeMode {
    /// One breadth-first tree rooted at the lowest live node id, kept by beacons; data never
    /// reshapes it, so every origin's paths stay within twice the root's depth and bursts from
    /// many origins cost one payload per node.
    Rooted,
    /// Plumtree's own tree: shaped by the first broadcast, pruned on duplicates, grafted on
    /// misses (`prune_after_duplicates`, `directional_prune`).
    Plumtree,
}

/// `[overlay]`: the protocol cores (SWIM with Lifeguard, HyParView, the dissemination tree,
/// Plumtree repair, partition healing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverlayConfig {
    /// Retired (`"full"` | `"hyparview"`): the protocol cores are the only control plane.
    /// `"hyparview"` is accepted with a warning; `"full"` is an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Expected mesh size: sets the partial-view sizes (active `log2 n + 1`, passive 6x).
    pub expected_size: u64,
    /// SWIM protocol period (one probe per period).
    pub probe_interval_ms: u64,
    /// Wait for a direct ack before asking others to probe.
    pub probe_timeout_ms: u64,
    /// Suspicion timeout multiplier: minimum `alpha * log10(n) * period`.
    pub suspicion_alpha: u32,
    /// Suspicion maximum as a multiple of the minimum (no confirmations).
    pub suspicion_beta: u32,
    /// How long a member declared dead still counts as "should be reachable" for the
    /// partition verdict, and is probed so a heal re-merges by itself.
    pub partition_window_ms: u64,
    /// Plumtree: wait after the first announcement (`IHave`) of a message that has not
    /// arrived before pulling it from the announcer (graft); the next announcer is tried
    /// half as long later.
    pub ihave_timeout_ms: u64,
    /// `rooted` or `plumtree` (see [`TreeMode`]).
    pub tree: TreeMode,
    /// Rooted tree: how often the root starts a new beacon wave (one small frame per active
    /// link per wave).
    pub beacon_interval_ms: u64,
    /// Rooted tree: no new wave for this long and the root is presumed lost.
    pub root_timeout_ms: u64,
    /// Plumtree: duplicates in a row an eager link must deliver (with no first copy in
    /// between) before it is pruned to lazy. 1 is the paper's rule.
    pub prune_after_duplicates: u8,
    /// Plumtree: a prune stops only the pruned peer's pushes to the pruner (each node keeps
    /// the upstreams that bring it first copies), instead of the paper's symmetric prune.
    pub directional_prune: bool,
    /// Most node addresses remembered.
    pub address_book_capacity: usize,
    /// Most origins the fast path admits data from.
    pub admitted_capacity: usize,
}

impl Default for OverlayConfig {
    fn default() -> Self {
        OverlayConfig {
            mode: None,
            expected_size: 1000,
            probe_interval_ms: 1000,
            probe_timeout_ms: 400,
            suspicion_alpha: 5,
            suspicion_beta: 6,
            partition_window_ms: 600_000,
            ihave_timeout_ms: 100,
            tree: TreeMode::Rooted,
            beacon_interval_ms: 1000,
            root_timeout_ms: 5000,
            prune_after_duplicates: 3,
            directional_prune: true,
            address_book_capacity: 65_536,
            admitted_capacity: 1 << 20,
        }
    }
}

/// `[telemetry]`: OTLP export (the Prometheus endpoint is always on, at
/// `node.api_listen` `/metrics`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP metrics URL (e.g. `http://127.0.0.1:4318/v1/metrics`, a
    /// local collector: plain HTTP only); empty turns OTLP export off.
    pub otlp_endpoint: String,
    /// Push interval.
    pub otlp_interval_ms: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            otlp_interval_ms: 10_000,
        }
    }
}

/// `[tls]`: node-to-node control traffic over QUIC with mutual TLS, always on. It runs on
/// UDP port `node.listen` + 1; only nodes with a certificate from `ca_cert` join, and data
/// from origins that are not such members is dropped before its signature is checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// Retired: mutual TLS is always on. `true` is accepted with a warning; `false` is an
    /// error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The mesh CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// This node's certificate (PEM), issued by the mesh CA for the node's
    /// Ed25519 key (`meshctl enroll`, or `meshd --print-node-id` then `meshctl ca issue`).
    pub cert: PathBuf,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            enabled: None,
            ca_cert: PathBuf::from("/etc/meshd/ca.crt"),
            cert: PathBuf::from("/etc/meshd/node.crt"),
        }
    }
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Ed25519 key file; created with mode 0600 on first start.
    pub key_file: PathBuf,
    /// UDP address the mesh listens on.
    pub listen: SocketAddr,
    /// Agent API and `/metrics` (HTTP). Keep it on loopback or a Unix-only
    /// network: it is unauthenticated.
    pub api_listen: SocketAddr,
    /// Seed nodes to join through (UDP addresses). Empty for the first node.
    pub bootstrap: Vec<SocketAddr>,
    /// Directory of the node's state (the delivered-message journal); empty: the key
    /// file's directory.
    pub state_dir: PathBuf,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            key_file: PathBuf::from("/var/lib/meshd/node.key"),
            listen: SocketAddr::from(([0, 0, 0, 0], 7400)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 7480)),
            bootstrap: Vec::new(),
            state_dir: PathBuf::new(),
        }
    }
}

/// `[gossip]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GossipConfig {
    /// Hop limit of messages this node publishes.
    pub hop_limit: u8,
    /// Messages older than this (by origin timestamp) are dropped as replays.
    pub replay_window_ms: u64,
    /// Messages stamped further than this in the future are dropped.
    pub max_clock_skew_ms: u64,
    /// Seen-cache slots (16 bytes each).
    pub dedup_capacity: usize,
    /// Interval of anti-entropy digests (IHAVE) to one random peer.
    pub anti_entropy_interval_ms: u64,
    /// How long published messages are kept for anti-entropy repair.
    pub retention_ms: u64,
    /// Most messages kept for repair.
    pub max_stored_messages: usize,
    /// Most delivered message ids remembered (journaled) so that no message is delivered
    /// twice, across restarts.
    pub delivered_capacity: usize,
    /// Retired with the peer table: accepted with a warning, no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fanout: Option<u64>,
    /// Retired with the peer table: accepted with a warning, no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_ms: Option<u64>,
    /// Retired with the peer table: accepted with a warning, no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_timeout_ms: Option<u64>,
    /// Retired with the peer table: accepted with a warning, no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_exchange_interval_ms: Option<u64>,
    /// Retired with the peer table: accepted with a warning, no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anti_entropy_max_ids: Option<u64>,
    /// Retired with the peer table: accepted with a warning, no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_peers: Option<u64>,
    /// Retired with the peer table: accepted with a warning, no effect.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forget_after_ms: Option<u64>,
}

impl Default for GossipConfig {
    fn default() -> Self {
        GossipConfig {
            hop_limit: 16,
            replay_window_ms: 120_000,
            max_clock_skew_ms: 5_000,
            dedup_capacity: 1 << 20,
            anti_entropy_interval_ms: 250,
            retention_ms: 60_000,
            max_stored_messages: 65_536,
            delivered_capacity: 262_144,
            fanout: None,
            heartbeat_interval_ms: None,
            peer_timeout_ms: None,
            peer_exchange_interval_ms: None,
            anti_entropy_max_ids: None,
            max_peers: None,
            forget_after_ms: None,
        }
    }
}

/// Which fast-path backend carries the mesh's UDP traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// Kernel UDP sockets with `recvmmsg`/`sendmmsg` (works everywhere).
    Udp,
    /// XDP filter at the driver plus AF_XDP sockets (see `[dataplane.xdp]`).
    Xdp,
}

/// `[dataplane.xdp]`: used when `dataplane.backend = "xdp"`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpBackendConfig {
    /// Interface carrying mesh traffic.
    pub interface: String,
    /// Hardware profile name (a file `<name>.toml` in `profiles_dir`).
    pub profile: String,
    /// Directory of hardware profiles.
    pub profiles_dir: PathBuf,
    /// Packets per second allowed per source address in XDP (0 = no limit).
    pub rate_pps: u64,
    /// Token-bucket depth per source, packets.
    pub burst: u64,
    /// Source addresses dropped in XDP from start-up (more via the API).
    pub deny: Vec<std::net::IpAddr>,
    /// When XDP or AF_XDP cannot start: run on the UDP backend instead
    /// (logged loudly and visible in `mesh.xdp.attached`) rather than exit.
    pub fallback_to_udp: bool,
}

impl Default for XdpBackendConfig {
    fn default() -> Self {
        XdpBackendConfig {
            interface: "eth0".to_owned(),
            profile: "veth-test".to_owned(),
            profiles_dir: PathBuf::from("/etc/meshd/hw-profiles"),
            rate_pps: 0,
            burst: 1024,
            deny: Vec::new(),
            fallback_to_udp: false,
        }
    }
}

/// `[dataplane]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataplaneConfig {
    /// Backend.
    pub backend: Backend,
    /// Datagrams per receive batch.
    pub batch_size: usize,
    /// Core to pin the receive tile to (none: let the scheduler decide).
    pub rx_core: Option<usize>,
    /// Kernel receive buffer (bytes).
    pub socket_rcvbuf: usize,
    /// Kernel send buffer (bytes).
    pub socket_sndbuf: usize,
    /// Capacity of the queue from the fast path to the control plane.
    pub inbound_queue: usize,
    /// Signature-verify worker threads per fast-path tile; 0 verifies
    /// inline on the tile.
    pub verify_workers: usize,
    /// Cores the verify workers are pinned to, in order (empty: unpinned).
    pub verify_cores: Vec<usize>,
    /// Batches each verify worker may have queued.
    pub verify_queue: usize,
    /// XDP / AF_XDP settings.
    pub xdp: XdpBackendConfig,
}

impl Default for DataplaneConfig {
    fn default() -> Self {
        DataplaneConfig {
            backend: Backend::Udp,
            batch_size: 64,
            rx_core: None,
            socket_rcvbuf: 8 << 20,
            socket_sndbuf: 4 << 20,
            inbound_queue: 65_536,
            verify_workers: 0,
            verify_cores: Vec::new(),
            verify_queue: 64,
            xdp: XdpBackendConfig::default(),
        }
    }
}

fn check(ok: bool, field: &'static str, problem: impl Into<String>) -> Result<(), ConfigError> {
    if ok {
        Ok(())
    } else {
        Err(ConfigError::Invalid {
            field,
            problem: problem.into(),
        })
    }
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates TOML text; `path` is only used in messages.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Keys of the retired peer-table control plane that are set (accepted, no effect):
    /// `meshd` logs a warning for each.
    pub fn retired_keys(&self) -> Vec<&'static str> {
        let g = &self.gossip;
        [
            ("overlay.mode", self.overlay.mode.is_some()),
            ("tls.enabled", self.tls.enabled.is_some()),
            ("gossip.fanout", g.fanout.is_some()),
            (
                "gossip.heartbeat_interval_ms",
                g.heartbeat_interval_ms.is_some(),
            ),
            ("gossip.peer_timeout_ms", g.peer_timeout_ms.is_some()),
            (
                "gossip.peer_exchange_interval_ms",
                g.peer_exchange_interval_ms.is_some(),
            ),
            (
                "gossip.anti_entropy_max_ids",
                g.anti_entropy_max_ids.is_some(),
            ),
            ("gossip.max_peers", g.max_peers.is_some()),
            ("gossip.forget_after_ms", g.forget_after_ms.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, set)| set.then_some(k))
        .collect()
    }

    /// Checks ranges and relations between keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(mode) = &self.overlay.mode {
            check(
                mode == "hyparview",
                "overlay.mode",
                format!(
                    "is retired: the protocol cores (formerly \"hyparview\") are the only control plane; remove the key (got \"{mode}\")"
                ),
            )?;
        }
        check(
            self.tls.enabled != Some(false),
            "tls.enabled",
            "is retired: mutual TLS between nodes is always on; remove the key",
        )?;
        let g = &self.gossip;
        check(g.hop_limit >= 1, "gossip.hop_limit", "must be at least 1")?;
        check(
            g.replay_window_ms >= 1_000,
            "gossip.replay_window_ms",
            "must be at least 1000",
        )?;
        check(
            g.retention_ms <= g.replay_window_ms,
            "gossip.retention_ms",
            format!(
                "must not exceed gossip.replay_window_ms ({}): repaired messages older than the window would be dropped as replays",
                g.replay_window_ms
            ),
        )?;
        check(
            (1_024..=1 << 28).contains(&g.dedup_capacity),
            "gossip.dedup_capacity",
            format!("must be 1024..=268435456, got {}", g.dedup_capacity),
        )?;
        check(
            g.anti_entropy_interval_ms >= 10,
            "gossip.anti_entropy_interval_ms",
            "must be at least 10",
        )?;
        check(
            (1_024..=1 << 24).contains(&g.delivered_capacity),
            "gossip.delivered_capacity",
            "must be 1024..=16777216",
        )?;
        check(
            (1..=1 << 24).contains(&g.max_stored_messages),
            "gossip.max_stored_messages",
            "must be 1..=16777216",
        )?;
        let d = &self.dataplane;
        check(
            (1..=dataplane::pipeline::MAX_BATCH).contains(&d.batch_size),
            "dataplane.batch_size",
            format!("must be 1..={}", dataplane::pipeline::MAX_BATCH),
        )?;
        check(
            d.socket_rcvbuf >= 65_536,
            "dataplane.socket_rcvbuf",
            "must be at least 65536",
        )?;
        check(
            d.socket_sndbuf >= 65_536,
            "dataplane.socket_sndbuf",
            "must be at least 65536",
        )?;
        check(
            (64..=1 << 22).contains(&d.inbound_queue),
            "dataplane.inbound_queue",
            "must be 64..=4194304",
        )?;
        check(
            d.verify_workers <= 64,
            "dataplane.verify_workers",
            "must be 0..=64",
        )?;
        check(
            d.verify_cores.is_empty() || d.verify_cores.len() == d.verify_workers,
            "dataplane.verify_cores",
            "must be empty or list one core per verify worker",
        )?;
        let ncores = std::thread::available_parallelism().map_or(1, |n| n.get());
        if let Some(c) = d.verify_cores.iter().find(|c| **c >= ncores) {
            return Err(ConfigError::Invalid {
                field: "dataplane.verify_cores",
                problem: format!("core {c} does not exist (this machine has {ncores})"),
            });
        }
        check(
            (1..=65_536).contains(&d.verify_queue),
            "dataplane.verify_queue",
            "must be 1..=65536",
        )?;
        check(
            (1..=1 << 20).contains(&self.api.max_connections),
            "api.max_connections",
            "must be 1..=1048576",
        )?;
        check(
            (10..=3_600_000).contains(&self.api.header_timeout_ms),
            "api.header_timeout_ms",
            "must be 10..=3600000",
        )?;
        check(
            self.telemetry.otlp_interval_ms >= 100,
            "telemetry.otlp_interval_ms",
            "must be at least 100",
        )?;
        let o = &self.overlay;
        check(
            (2..=1 << 24).contains(&o.expected_size),
            "overlay.expected_size",
            "must be 2..=16777216",
        )?;
        check(
            (20..=60_000).contains(&o.probe_interval_ms),
            "overlay.probe_interval_ms",
            "must be 20..=60000",
        )?;
        check(
            o.probe_timeout_ms >= 5 && o.probe_timeout_ms < o.probe_interval_ms,
            "overlay.probe_timeout_ms",
            "must be at least 5 and below overlay.probe_interval_ms",
        )?;
        check(
            (1..=100).contains(&o.suspicion_alpha),
            "overlay.suspicion_alpha",
            "must be 1..=100",
        )?;
        check(
            (1..=100).contains(&o.suspicion_beta),
            "overlay.suspicion_beta",
            "must be 1..=100",
        )?;
        check(
            o.partition_window_ms >= 1_000,
            "overlay.partition_window_ms",
            "must be at least 1000",
        )?;
        check(
            (2..=60_000).contains(&o.ihave_timeout_ms),
            "overlay.ihave_timeout_ms",
            "must be 2..=60000",
        )?;
        check(
            (50..=60_000).contains(&o.beacon_interval_ms),
            "overlay.beacon_interval_ms",
            "must be 50..=60000",
        )?;
        check(
            o.root_timeout_ms >= 3 * o.beacon_interval_ms && o.root_timeout_ms <= 600_000,
            "overlay.root_timeout_ms",
            "must be at least 3 x beacon_interval_ms and at most 600000",
        )?;
        check(
            o.prune_after_duplicates >= 1,
            "overlay.prune_after_duplicates",
            "must be 1..=255",
        )?;
        check(
            (16..=1 << 24).contains(&o.address_book_capacity),
            "overlay.address_book_capacity",
            "must be 16..=16777216",
        )?;
        check(
            (16..=1 << 24).contains(&o.admitted_capacity),
            "overlay.admitted_capacity",
            "must be 16..=16777216",
        )?;
        let otlp = &self.telemetry.otlp_endpoint;
        check(
            otlp.is_empty() || otlp.starts_with("http://"),
            "telemetry.otlp_endpoint",
            format!(
                "must be empty or an http:// URL (this build has no TLS for OTLP; use a local collector), got `{otlp}`"
            ),
        )?;
        check(
            self.node.listen.port() != 0 && self.node.listen.port() != u16::MAX,
            "node.listen",
            "must have a fixed port below 65535 (mutual TLS uses port + 1)",
        )?;
        if d.backend == Backend::Xdp {
            check(
                !d.xdp.interface.is_empty(),
                "dataplane.xdp.interface",
                "must name an interface",
            )?;
            check(
                !self.node.listen.ip().is_unspecified(),
                "node.listen",
                "must be a concrete IP address with the xdp backend (it is the source address of AF_XDP frames)",
            )?;
            check(
                (1..=1_000_000_000).contains(&d.xdp.burst),
                "dataplane.xdp.burst",
                "must be 1..=1000000000",
            )?;
        }
        if let Some(core) = d.rx_core {
            let n = std::thread::available_parallelism().map_or(1, |n| n.get());
            check(
                core < n,
                "dataplane.rx_core",
                format!("core {core} does not exist (this machine has {n})"),
            )?;
        }
        Ok(())
    }
}

impl NodeConfig {
    /// Where the node keeps its state: `state_dir`, or the key file's directory.
    pub fn state_dir(&self) -> PathBuf {
        if !self.state_dir.as_os_str().is_empty() {
            return self.state_dir.clone();
        }
        match self.key_file.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        }
    }
}

impl DataplaneConfig {
    /// The verify pool settings, `None` when verifying inline.
    pub fn verify_pool(&self) -> Option<dataplane::verify::workers::PoolConfig> {
        let workers = std::num::NonZeroUsize::new(self.verify_workers)?;
        Some(dataplane::verify::workers::PoolConfig {
            workers,
            cores: self.verify_cores.clone(),
            queue_depth: std::num::NonZeroUsize::new(self.verify_queue)
                .unwrap_or(std::num::NonZeroUsize::MIN),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_toml_documents_exactly_the_defaults() {
        let text = include_str!("../default.toml");
        let cfg = Config::from_toml(text, Path::new("default.toml")).unwrap();
        assert_eq!(cfg, Config::default());
    }

    #[test]
    fn empty_file_gives_defaults() {
        assert_eq!(
            Config::from_toml("", Path::new("x")).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let err = Config::from_toml("[gossip]\nhop_limitt = 3\n", Path::new("m.toml")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("hop_limitt"), "{msg}");
        assert!(msg.contains("m.toml"), "{msg}");
    }

    #[test]
    fn wrong_type_is_named_in_the_error() {
        let err = Config::from_toml("[node]\nlisten = 5\n", Path::new("m.toml")).unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
    }

    #[test]
    fn out_of_range_values_name_their_key() {
        for (text, field) in [
            ("[node]\nlisten = \"127.0.0.1:0\"\n", "node.listen"),
            (
                "[gossip]\nretention_ms = 999999999\n",
                "gossip.retention_ms",
            ),
            ("[dataplane]\nbatch_size = 0\n", "dataplane.batch_size"),
            (
                "[overlay]\nprobe_timeout_ms = 1000\n",
                "overlay.probe_timeout_ms",
            ),
            ("[dataplane]\nrx_core = 4096\n", "dataplane.rx_core"),
            ("[dataplane]\nbackend = \"xdp\"\n", "node.listen"),
            (
                "[dataplane]\nverify_workers = 2\nverify_cores = [0]\n",
                "dataplane.verify_cores",
            ),
            (
                "[dataplane]\nverify_workers = 1\nverify_cores = [999]\n",
                "dataplane.verify_cores",
            ),
            (
                "[node]\nlisten = \"10.0.0.1:7400\"\n[dataplane]\nbackend = \"xdp\"\n[dataplane.xdp]\nburst = 0\n",
                "dataplane.xdp.burst",
            ),
        ] {
            let err = Config::from_toml(text, Path::new("x")).unwrap_err();
            match err {
                ConfigError::Invalid { field: f, .. } => assert_eq!(f, field, "{text}"),
                other => panic!("{text}: {other}"),
            }
        }
    }
}

#[cfg(test)]
mod retired_keys {
    use super::*;

    #[test]
    fn keys_of_the_retired_peer_table_are_accepted_with_a_warning_when_harmless() {
        let text = "[overlay]\nmode = \"hyparview\"\n[tls]\nenabled = true\n[gossip]\nfanout = 3\nheartbeat_interval_ms = 500\n";
        let cfg = Config::from_toml(text, Path::new("old.toml")).expect("harmless retired keys");
        assert_eq!(
            cfg.retired_keys(),
            vec![
                "overlay.mode",
                "tls.enabled",
                "gossip.fanout",
                "gossip.heartbeat_interval_ms"
            ]
        );
        assert!(Config::default().retired_keys().is_empty());
    }

    #[test]
    fn asking_for_the_retired_behaviour_is_an_error_naming_the_key() {
        for (text, key) in [
            ("[overlay]\nmode = \"full\"\n", "overlay.mode"),
            ("[tls]\nenabled = false\n", "tls.enabled"),
        ] {
            match Config::from_toml(text, Path::new("old.toml")) {
                Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
