//! The QUIC endpoint: one UDP socket per node that both dials and accepts.
//!
//! # Wire protocol
//!
//! * TLS 1.3, ALPN [`ALPN`], Ed25519 certificates issued by the mesh CA on
//!   both sides (see [`crate::verify`]). No session resumption, no 0-RTT:
//!   every connection runs the full certificate check.
//! * Each side opens exactly one unidirectional stream per connection. It
//!   starts with the 4-byte [`PREAMBLE`] and then carries frames (`u16` LE
//!   length + payload, see [`crate::frame`]), reliable and ordered.
//! * QUIC datagrams carry unreliable frames of up to the path's datagram
//!   size (about 1200 bytes), delivered into the same receive queue.
//!
//! A dial ([`Transport::connect`]) returns only after the server's preamble
//! arrived, so `Ok` means *both* sides accepted each other's certificate.
//!
//! # Connections per peer
//!
//! A peer can have more than one live connection (two nodes dialing each
//! other at once both succeed). Frames are sent on the newest live one,
//! frames from all of them are received; the oldest is closed once a peer
//! has more than [`TransportConfig::max_links_per_peer`]. Ordering holds
//! per connection only: during such an overlap, frames sent on two
//! connections may be received out of order.
//!
//! # Receive queues
//!
//! Frames and datagrams go into one bounded queue **per peer**
//! ([`TransportConfig::peer_recv_queue`] frames,
//! [`TransportConfig::peer_recv_queue_bytes`] bytes), under a total cap
//! ([`TransportConfig::recv_queue`], [`TransportConfig::recv_queue_bytes`])
//! that spares peers with only a few frames queued. [`Transport::recv`]
//! serves the peers with frames waiting in turn, one frame each, so a
//! flooding peer fills only its own queue and delays another peer's frame
//! by at most one frame per round. A full queue makes a stream frame wait
//! (that stream's reader stops and QUIC flow control stops its sender; the
//! other peers' streams go on) and drops a datagram, counted by reason.
//! Details in [`crate::fair`].
//!
//! # Admission of incoming connections
//!
//! Every new QUIC connection attempt ([`quinn::Incoming`]) is decided in
//! the accept loop before any handshake state or TLS work exists, in this
//! order:
//!
//! 1. **Caps.** Would it exceed [`TransportConfig::max_incoming_handshakes`]
//!    incoming handshakes in progress, or the incoming share of
//!    [`TransportConfig::max_connections`] (established incoming connections
//!    plus incoming handshakes may use `max_connections - outgoing_reserve`),
//!    or the [`TransportConfig::handshake_rate`] token bucket
//!    ([`TransportConfig::handshake_burst`] deep)?
//! 2. **Address validation.** If the client's address is not validated
//!    ([`quinn::Incoming::remote_address_validated`]) and either a cap of
//!    step 1 is hit or at least [`TransportConfig::retry_above_handshakes`]
//!    handshakes are in progress, it gets a QUIC **Retry**
//!    ([`quinn::Incoming::retry`]): a stateless, address-bound token (valid
//!    15 s, quinn's default) it must echo. A replayed or spoofed Initial
//!    never returns, so it costs one small packet and no state; a real
//!    client pays one round trip and comes back validated.
//! 3. A validated client over a cap is **refused** (CONNECTION_REFUSED), so
//!    it learns at once and can dial again; otherwise the handshake starts
//!    and holds a handshake slot for at most
//!    [`TransportConfig::handshake_timeout`].
//!
//! The node's **own dials** are never refused by those caps: they count
//! against `max_connections` as a whole, of which `outgoing_reserve` slots
//! can never be taken by incoming connections or handshakes. quinn's own
//! limits on undecided attempts are set from
//! [`TransportConfig::max_incoming`], [`TransportConfig::incoming_buffer_bytes`]
//! and [`TransportConfig::incoming_buffer_bytes_total`]. Every outcome is
//! counted in [`TransportStats`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::ca::{node_id_from_seed, node_private_key};
use crate::fair::{FairQueue, Limits, Push};
use crate::frame::{self, MAX_FRAME_LEN};
use crate::verify::{MeshClientVerifier, MeshServerVerifier, node_id_from_cert};
use crate::{Error, NodeId, Result};

/// ALPN protocol id of the mesh control channel.
pub const ALPN: &[u8] = b"mesh-ctl/1";

/// First bytes of every unidirectional stream (protocol name and version).
pub const PREAMBLE: [u8; 4] = *b"MSH\x01";

/// Server name given to TLS; unused for verification (SNI is not sent).
const SERVER_NAME: &str = "mesh-node";

/// QUIC application close codes used by this crate.
pub mod close_code {
    /// Orderly shutdown of the endpoint or an explicit disconnect.
    pub const SHUTDOWN: u32 = 0;
    /// The peer sent a frame over the receiver's limit.
    pub const FRAME_TOO_LARGE: u32 = 1;
    /// The peer broke the stream protocol (bad preamble).
    pub const PROTOCOL: u32 = 2;
    /// A newer connection to the same peer replaced this one.
    pub const SUPERSEDED: u32 = 3;
    /// The peer is not the node that was expected (or is ourselves).
    pub const WRONG_PEER: u32 = 4;
    /// A send was cancelled mid-frame; the stream cannot be resynchronised.
    pub const CANCELLED_SEND: u32 = 5;
}

/// Tunables of a [`Transport`]. Every field has a working default
/// ([`TransportConfig::default`]); [`TransportConfig::validate`] names the
/// field that is out of range.
///
/// The receive-queue fields are explained in the module docs under
/// *Receive queues*, the connection and handshake fields under *Admission of
/// incoming connections*.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// A connection with no traffic for this long is closed. Keep-alives
    /// count as traffic. Default 10 s; must be at least 100 ms.
    pub idle_timeout: Duration,
    /// Send a keep-alive after this long without sending; `None` disables
    /// them (connections then die after `idle_timeout` of silence). Default
    /// 2 s; must be shorter than `idle_timeout`.
    pub keep_alive_interval: Option<Duration>,
    /// Longest wait for a dial to complete: QUIC + TLS handshake and the
    /// server's preamble; also the longest an incoming handshake may hold a
    /// handshake slot. Default 5 s.
    pub handshake_timeout: Duration,
    /// Largest frame accepted or sent, 1..=[`MAX_FRAME_LEN`]. A peer that
    /// sends a larger frame is disconnected. Default [`MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// Most frames queued for [`Transport::recv`] from **one peer** (all its
    /// connections together). Beyond, that peer's new frames are dropped
    /// (datagrams; stream frames wait) and counted ([`TransportStats::frames_dropped_peer_queue_full`]);
    /// other peers are unaffected and the connection is never stalled.
    /// Default 256; must be at least 1.
    pub peer_recv_queue: usize,
    /// Most payload bytes queued from one peer (the byte side of
    /// `peer_recv_queue`). Default 1 MiB; must be at least `max_frame_len`.
    pub peer_recv_queue_bytes: usize,
    /// Most frames queued from all peers together. Beyond, new frames are
    /// dropped ([`TransportStats::frames_dropped_total_queue_full`]) except
    /// from a peer with fewer than [`crate::fair::FLOOR_FRAMES`] frames
    /// (and [`crate::fair::FLOOR_BYTES`] bytes) queued. Default 8192; must
    /// be at least 1.
    pub recv_queue: usize,
    /// Most payload bytes queued from all peers together (the byte side of
    /// `recv_queue`). Default 16 MiB; must be at least `max_frame_len`.
    pub recv_queue_bytes: usize,
    /// Capacity of the peer-event queue; a full queue drops events and
    /// counts them. Default 1024.
    pub event_queue: usize,
    /// Most connections at once, both directions, established or in
    /// handshake. Incoming ones may use at most `max_connections -
    /// outgoing_reserve` of them; the node's own dials
    /// ([`Transport::connect`]) may use any free slot. Default 1024.
    pub max_connections: usize,
    /// Slots of `max_connections` that incoming connections and handshakes
    /// can never take, so the node's own dials always find room however
    /// many peers dial in. Default 64; must be below `max_connections`.
    pub outgoing_reserve: usize,
    /// Most incoming handshakes in progress at once (a cap separate from
    /// `max_connections`). A validated source beyond it is refused
    /// (CONNECTION_REFUSED, counted), an unvalidated one gets a Retry.
    /// Default 64; must be at least 1.
    pub max_incoming_handshakes: usize,
    /// Address validation under load: while at least this many incoming
    /// handshakes are in progress, a client whose address is not validated
    /// yet gets a QUIC Retry (a stateless token it must echo from the same
    /// address, one extra round trip) instead of a handshake. `0` sends a
    /// Retry to every unvalidated client. Default 16.
    pub retry_above_handshakes: usize,
    /// Incoming handshakes started per second (token bucket refill rate).
    /// A validated client beyond the rate is refused, an unvalidated one
    /// gets a Retry. Default 256; must be at least 1.
    pub handshake_rate: u32,
    /// Token bucket depth of `handshake_rate`: how many handshakes may start
    /// at once after a quiet period. Default 128; must be at least 1.
    pub handshake_burst: u32,
    /// Most connection attempts quinn holds before this crate decides on
    /// them (quinn's `ServerConfig::max_incoming`; quinn refuses the rest).
    /// Default 1024 (quinn's own default is 65 536); must be at least 1.
    pub max_incoming: usize,
    /// Bytes quinn buffers per undecided connection attempt, beyond its
    /// first packet (quinn's `ServerConfig::incoming_buffer_size`).
    /// Default 64 KiB (quinn: 10 MiB); must be at least 1500.
    pub incoming_buffer_bytes: u64,
    /// The same, all undecided attempts together (quinn's
    /// `ServerConfig::incoming_buffer_size_total`). Default 8 MiB (quinn:
    /// 100 MiB); must be at least `incoming_buffer_bytes`.
    pub incoming_buffer_bytes_total: u64,
    /// Most live connections kept to one peer; the oldest is closed beyond.
    /// Default 2 (enough for a simultaneous dial from both sides).
    pub max_links_per_peer: usize,
    /// Per-stream receive window in bytes: how far a peer may run ahead of
    /// our reader, and so the memory one connection can pin. Default 256 KiB;
    /// must be at least `max_frame_len + 2`.
    pub stream_receive_window: u32,
    /// Bytes of unread incoming datagrams buffered per connection. Default
    /// 64 KiB; must be at least 1500.
    pub datagram_receive_buffer: usize,
    /// Check at bind time that our own certificate chains to the CA and is
    /// valid now (the key is always checked). Default `true`; tests turn it
    /// off to play a misconfigured node.
    pub verify_own_certificate: bool,
}

impl Default for TransportConfig {
    fn default() -> Self {
        TransportConfig {
            idle_timeout: Duration::from_secs(10),
            keep_alive_interval: Some(Duration::from_secs(2)),
            handshake_timeout: Duration::from_secs(5),
            max_frame_len: MAX_FRAME_LEN,
            peer_recv_queue: 256,
            peer_recv_queue_bytes: 1 << 20,
            recv_queue: 8192,
            recv_queue_bytes: 16 << 20,
            event_queue: 1024,
            max_connections: 1024,
            outgoing_reserve: 64,
            max_incoming_handshakes: 64,
            retry_above_handshakes: 16,
            handshake_rate: 256,
            handshake_burst: 128,
            max_incoming: 1024,
            incoming_buffer_bytes: 64 * 1024,
            incoming_buffer_bytes_total: 8 << 20,
            max_links_per_peer: 2,
            stream_receive_window: 256 * 1024,
            datagram_receive_buffer: 64 * 1024,
            verify_own_certificate: true,
        }
    }
}

impl TransportConfig {
    /// Check every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, why: String| Err(Error::Config { field, why });
        if self.idle_timeout < Duration::from_millis(100) {
            return bad("idle_timeout", "must be at least 100 ms".into());
        }
        if IdleTimeout::try_from(self.idle_timeout).is_err() {
            return bad("idle_timeout", "too large for QUIC".into());
        }
        if let Some(k) = self.keep_alive_interval
            && (k.is_zero() || k >= self.idle_timeout)
        {
            return bad(
                "keep_alive_interval",
                format!(
                    "must be above zero and below idle_timeout ({:?})",
                    self.idle_timeout
                ),
            );
        }
        if self.handshake_timeout.is_zero() {
            return bad("handshake_timeout", "must be above zero".into());
        }
        if self.max_frame_len == 0 || self.max_frame_len > MAX_FRAME_LEN {
            return bad("max_frame_len", format!("must be in 1..={MAX_FRAME_LEN}"));
        }
        if self.peer_recv_queue == 0 {
            return bad("peer_recv_queue", "must be at least 1".into());
        }
        if self.peer_recv_queue_bytes < self.max_frame_len {
            return bad(
                "peer_recv_queue_bytes",
                "must hold at least one frame of max_frame_len".into(),
            );
        }
        if self.recv_queue == 0 {
            return bad("recv_queue", "must be at least 1".into());
        }
        if self.recv_queue_bytes < self.max_frame_len {
            return bad(
                "recv_queue_bytes",
                "must hold at least one frame of max_frame_len".into(),
            );
        }
        if self.event_queue == 0 {
            return bad("event_queue", "must be at least 1".into());
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
        }
        if self.outgoing_reserve >= self.max_connections {
            return bad(
                "outgoing_reserve",
                format!("must be below max_connections ({})", self.max_connections),
            );
        }
        if self.max_incoming_handshakes == 0 {
            return bad("max_incoming_handshakes", "must be at least 1".into());
        }
        if self.handshake_rate == 0 {
            return bad("handshake_rate", "must be at least 1".into());
        }
        if self.handshake_burst == 0 {
            return bad("handshake_burst", "must be at least 1".into());
        }
        if self.max_incoming == 0 {
            return bad("max_incoming", "must be at least 1".into());
        }
        if self.incoming_buffer_bytes < 1500 {
            return bad("incoming_buffer_bytes", "must be at least 1500".into());
        }
        if self.incoming_buffer_bytes_total < self.incoming_buffer_bytes {
            return bad(
                "incoming_buffer_bytes_total",
                "must be at least incoming_buffer_bytes".into(),
            );
        }
        if self.max_links_per_peer == 0 {
            return bad("max_links_per_peer", "must be at least 1".into());
        }
        if (self.stream_receive_window as usize) < self.max_frame_len + frame::HEADER_LEN {
            return bad(
                "stream_receive_window",
                "must hold at least one frame of max_frame_len plus its header".into(),
            );
        }
        if self.datagram_receive_buffer < 1500 {
            return bad("datagram_receive_buffer", "must be at least 1500".into());
        }
        Ok(())
    }

    fn quic(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        // Validated above; the fallback is never taken.
        t.max_idle_timeout(IdleTimeout::try_from(self.idle_timeout).ok());
        t.keep_alive_interval(self.keep_alive_interval);
        t.max_concurrent_bidi_streams(VarInt::from_u32(0));
        t.max_concurrent_uni_streams(VarInt::from_u32(1));
        t.stream_receive_window(VarInt::from_u32(self.stream_receive_window));
        t.receive_window(VarInt::from_u32(
            self.stream_receive_window.saturating_mul(2),
        ));
        t.datagram_receive_buffer_size(Some(self.datagram_receive_buffer));
        t
    }
}

/// A change in the set of connected peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerEvent {
    /// The first live connection to this peer was established (either
    /// direction); the address is the peer's UDP address.
    Connected(NodeId, SocketAddr),
    /// The last live connection to this peer closed (idle timeout, peer
    /// closed, or refused).
    Disconnected(NodeId),
}

/// An authenticated connection to a peer, as returned by
/// [`Transport::connect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConn {
    /// The peer's id, taken from its verified certificate.
    pub node_id: NodeId,
    /// The peer's UDP address.
    pub remote_addr: SocketAddr,
    /// `true` if an existing live connection was reused.
    pub reused: bool,
}

/// Counters and gauges of a [`Transport`], as a snapshot
/// ([`Transport::stats`]), for the metrics exporter.
///
/// *Counter* fields only grow (since bind); *gauge* fields are the value
/// now. Every frame the transport does not hand to [`Transport::recv`] is
/// counted under exactly one drop reason:
/// `frames_dropped_peer_queue_full`, `frames_dropped_total_queue_full` or
/// `frames_too_large` (their sum with `frames_received +
/// datagrams_received` is every frame and datagram read off the wire).
/// Queue-full drops happen to datagrams only: a stream frame waits for room
/// (`frames_backpressured`) instead.
/// Every incoming connection attempt that reaches this crate ends in
/// exactly one of `incoming_retried`, `incoming_refused` (split by reason
/// in the three `incoming_refused_*` fields), `incoming_handshakes_failed`
/// or `incoming_accepted` (or is still in `handshakes_in_progress`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Counter: stream frames queued for [`Transport::recv`].
    pub frames_received: u64,
    /// Counter: datagrams queued for [`Transport::recv`].
    pub datagrams_received: u64,
    /// Counter: frames and datagrams handed out by [`Transport::recv`].
    pub frames_delivered: u64,
    /// Gauge: frames and datagrams queued now, all peers.
    pub frames_queued: u64,
    /// Gauge: payload bytes queued now, all peers.
    pub bytes_queued: u64,
    /// Counter: frames and datagrams dropped because a receive queue was
    /// full, for either reason below (their sum).
    pub frames_dropped_queue_full: u64,
    /// Counter: dropped because the sender's own queue was at
    /// [`TransportConfig::peer_recv_queue`] frames or
    /// [`TransportConfig::peer_recv_queue_bytes`] bytes (drop reason
    /// `peer_queue_full`).
    pub frames_dropped_peer_queue_full: u64,
    /// Counter: dropped because all queues together were at
    /// [`TransportConfig::recv_queue`] frames or
    /// [`TransportConfig::recv_queue_bytes`] bytes (drop reason
    /// `total_queue_full`).
    pub frames_dropped_total_queue_full: u64,
    /// Counter: stream frames that waited for room in their peer's queue (the reader of
    /// that stream stopped meanwhile; nothing was dropped).
    pub frames_backpressured: u64,
    /// Counter: frames over [`TransportConfig::max_frame_len`]; each closes
    /// its connection (drop reason `oversized`).
    pub frames_too_large: u64,
    /// Counter: connections closed because the peer broke the stream
    /// protocol.
    pub protocol_errors: u64,
    /// Gauge: established connections, both directions.
    pub connections_open: u64,
    /// Gauge: established connections the peer dialed.
    pub connections_incoming: u64,
    /// Gauge: established connections this node dialed.
    pub connections_outgoing: u64,
    /// Gauge: incoming handshakes in progress (accepted, not yet
    /// established nor failed).
    pub handshakes_in_progress: u64,
    /// Gauge: this node's own dials in progress.
    pub dials_in_progress: u64,
    /// Counter: incoming connection attempts (QUIC client Initials that
    /// started a new attempt), including those sent a Retry.
    pub incoming_attempts: u64,
    /// Counter: attempts answered with a QUIC Retry (address validation)
    /// because the source was not validated and the node was under load.
    pub incoming_retried: u64,
    /// Counter: attempts from validated sources refused (CONNECTION_REFUSED),
    /// all reasons; the sum of the three fields below.
    pub incoming_refused: u64,
    /// Counter: refused at [`TransportConfig::max_incoming_handshakes`].
    pub incoming_refused_handshake_cap: u64,
    /// Counter: refused at the incoming share of
    /// [`TransportConfig::max_connections`].
    pub incoming_refused_connection_cap: u64,
    /// Counter: refused by the [`TransportConfig::handshake_rate`] limit.
    pub incoming_refused_rate: u64,
    /// Counter: incoming handshakes that failed after being accepted (bad or
    /// missing certificate, wrong CA, expired, timeout, peer went away).
    pub incoming_handshakes_failed: u64,
    /// Counter: incoming connections established.
    pub incoming_accepted: u64,
    /// Counter: own dials refused at [`TransportConfig::max_connections`].
    pub dials_refused: u64,
    /// Counter: own dials that failed (handshake, timeout, wrong peer).
    pub dials_failed: u64,
    /// Counter: own dials established (reused connections not counted).
    pub dials_established: u64,
    /// Counter: peer events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Counter: connections closed because a newer one to the same peer
    /// replaced them.
    pub links_superseded: u64,
}

#[derive(Default)]
struct Counters {
    frames_received: AtomicU64,
    datagrams_received: AtomicU64,
    frames_delivered: AtomicU64,
    frames_dropped_peer_queue_full: AtomicU64,
    frames_dropped_total_queue_full: AtomicU64,
    frames_backpressured: AtomicU64,
    frames_too_large: AtomicU64,
    protocol_errors: AtomicU64,
    incoming_attempts: AtomicU64,
    incoming_retried: AtomicU64,
    incoming_refused_handshake_cap: AtomicU64,
    incoming_refused_connection_cap: AtomicU64,
    incoming_refused_rate: AtomicU64,
    incoming_handshakes_failed: AtomicU64,
    incoming_accepted: AtomicU64,
    dials_refused: AtomicU64,
    dials_failed: AtomicU64,
    dials_established: AtomicU64,
    events_dropped: AtomicU64,
    links_superseded: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What occupies connection slots now; see [`Slot`].
#[derive(Default)]
struct Gauges {
    handshakes: AtomicUsize,
    dials: AtomicUsize,
    incoming: AtomicUsize,
    outgoing: AtomicUsize,
}

impl Gauges {
    fn get(&self, kind: SlotKind) -> usize {
        self.of(kind).load(Ordering::Relaxed)
    }

    fn of(&self, kind: SlotKind) -> &AtomicUsize {
        match kind {
            SlotKind::Handshake => &self.handshakes,
            SlotKind::Dial => &self.dials,
            SlotKind::Incoming => &self.incoming,
            SlotKind::Outgoing => &self.outgoing,
        }
    }

    /// Incoming handshakes and established incoming connections.
    fn incoming_share(&self) -> usize {
        self.get(SlotKind::Handshake) + self.get(SlotKind::Incoming)
    }

    fn total(&self) -> usize {
        self.incoming_share() + self.get(SlotKind::Dial) + self.get(SlotKind::Outgoing)
    }
}

#[derive(Debug, Clone, Copy)]
enum SlotKind {
    /// An incoming handshake in progress.
    Handshake,
    /// An own dial in progress.
    Dial,
    /// An established connection the peer dialed.
    Incoming,
    /// An established connection this node dialed.
    Outgoing,
}

/// One occupied connection slot, released on drop.
struct Slot {
    gauges: Arc<Gauges>,
    kind: SlotKind,
}

impl Slot {
    fn take(gauges: &Arc<Gauges>, kind: SlotKind) -> Slot {
        gauges.of(kind).fetch_add(1, Ordering::Relaxed);
        Slot {
            gauges: gauges.clone(),
            kind,
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.gauges.of(self.kind).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Token bucket of incoming handshakes; owned by the accept loop.
struct Bucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    last: Instant,
}

impl Bucket {
    fn new(rate: u32, burst: u32) -> Bucket {
        Bucket {
            tokens: f64::from(burst),
            rate: f64::from(rate),
            burst: f64::from(burst),
            last: Instant::now(),
        }
    }

    fn ready(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.tokens >= 1.0
    }

    fn take(&mut self) {
        self.tokens -= 1.0;
    }
}

/// The accept loop's decision on one incoming attempt; see the module
/// docs, *Admission of incoming connections*.
fn admit(
    cfg: &TransportConfig,
    gauges: &Gauges,
    bucket: &mut Bucket,
    validated: bool,
    may_retry: bool,
) -> Admit {
    let handshakes = gauges.get(SlotKind::Handshake);
    let refusal = if handshakes >= cfg.max_incoming_handshakes {
        Some(Refusal::HandshakeCap)
    } else if gauges.incoming_share() >= cfg.max_connections - cfg.outgoing_reserve {
        Some(Refusal::ConnectionCap)
    } else if !bucket.ready() {
        Some(Refusal::Rate)
    } else {
        None
    };
    let loaded = handshakes >= cfg.retry_above_handshakes;
    if !validated && may_retry && (loaded || refusal.is_some()) {
        return Admit::Retry;
    }
    match refusal {
        Some(r) => Admit::Refuse(r),
        None => Admit::Accept,
    }
}

/// Why an incoming attempt is not accepted right away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    HandshakeCap,
    ConnectionCap,
    Rate,
}

/// What the accept loop does with one incoming attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Accept,
    Retry,
    Refuse(Refusal),
}

#[derive(Clone)]
struct Link {
    id: u64,
    conn: quinn::Connection,
    tx: Arc<tokio::sync::Mutex<quinn::SendStream>>,
}

impl Link {
    fn live(&self) -> bool {
        self.conn.close_reason().is_none()
    }
}

struct Inner {
    endpoint: quinn::Endpoint,
    local_id: NodeId,
    cfg: TransportConfig,
    ca_cert: CertificateDer<'static>,
    client_tls: Arc<rustls::ClientConfig>,
    quic_transport: Arc<quinn::TransportConfig>,
    default_client: quinn::ClientConfig,
    peers: Mutex<HashMap<NodeId, Vec<Link>>>,
    queue: FairQueue,
    event_tx: mpsc::Sender<PeerEvent>,
    counters: Counters,
    gauges: Arc<Gauges>,
    next_link: AtomicU64,
}

/// A mesh node's QUIC endpoint: dials and accepts mutually authenticated
/// connections, sends and receives frames.
///
/// Share it with `Arc<Transport>`; every method takes `&self`. Dropping it
/// closes the endpoint and every connection.
pub struct Transport {
    inner: Arc<Inner>,
    event_rx: tokio::sync::Mutex<mpsc::Receiver<PeerEvent>>,
    accept_task: JoinHandle<()>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("node_id", &self.inner.local_id)
            .field("local_addr", &self.inner.endpoint.local_addr().ok())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Transport {
    /// Bind a UDP socket on `listen` and start accepting connections.
    ///
    /// `seed` is the node's Ed25519 secret seed; `node_cert` must be a
    /// certificate for its public key issued by the CA whose certificate is
    /// `ca_cert` (checked unless `cfg.verify_own_certificate` is off; the
    /// key match is always checked). Must be called inside a tokio runtime.
    pub fn bind(
        listen: SocketAddr,
        seed: [u8; 32],
        node_cert: CertificateDer<'static>,
        ca_cert: CertificateDer<'static>,
        cfg: TransportConfig,
    ) -> Result<Transport> {
        cfg.validate()?;
        let local_id = node_id_from_seed(&seed);
        let cert_id =
            node_id_from_cert(&node_cert).map_err(|e| Error::OwnCertificate(e.to_string()))?;
        if cert_id != local_id {
            return Err(Error::OwnCertificate(format!(
                "certificate is for node {cert_id}, but the seed is node {local_id}"
            )));
        }
        let client_verifier = Arc::new(MeshClientVerifier::new(&ca_cert)?);
        if cfg.verify_own_certificate {
            client_verifier
                .check(&node_cert, &[], UnixTime::now())
                .map_err(|e| Error::OwnCertificate(format!("rejected by the mesh CA: {e}")))?;
        }

        let mut server_tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(client_verifier)
            .with_single_cert(vec![node_cert.clone()], node_private_key(&seed))?;
        server_tls.alpn_protocols = vec![ALPN.to_vec()];
        server_tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        server_tls.send_tls13_tickets = 0;
        server_tls.max_early_data_size = 0;

        let mut client_tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(MeshServerVerifier::new(&ca_cert, None)?))
            .with_client_auth_cert(vec![node_cert], node_private_key(&seed))?;
        client_tls.alpn_protocols = vec![ALPN.to_vec()];
        client_tls.enable_sni = false;
        client_tls.enable_early_data = false;
        client_tls.resumption = rustls::client::Resumption::disabled();
        let client_tls = Arc::new(client_tls);

        let quic_transport = Arc::new(cfg.quic());
        let server_quic = QuicServerConfig::try_from(Arc::new(server_tls))
            .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_quic));
        server
            .transport_config(quic_transport.clone())
            .max_incoming(cfg.max_incoming)
            .incoming_buffer_size(cfg.incoming_buffer_bytes)
            .incoming_buffer_size_total(cfg.incoming_buffer_bytes_total);
        let default_client = quic_client(client_tls.clone(), quic_transport.clone())?;

        let endpoint = quinn::Endpoint::server(server, listen).map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let queue = FairQueue::new(Limits {
            peer_frames: cfg.peer_recv_queue,
            peer_bytes: cfg.peer_recv_queue_bytes,
            total_frames: cfg.recv_queue,
            total_bytes: cfg.recv_queue_bytes,
        });
        let (event_tx, event_rx) = mpsc::channel(cfg.event_queue);
        let inner = Arc::new(Inner {
            endpoint,
            local_id,
            cfg,
            ca_cert,
            client_tls,
            quic_transport,
            default_client,
            peers: Mutex::new(HashMap::new()),
            queue,
            event_tx,
            counters: Counters::default(),
            gauges: Arc::default(),
            next_link: AtomicU64::new(1),
        });
        let accept_task = tokio::spawn(accept_loop(inner.clone()));
        info!(node = %local_id, addr = ?inner.endpoint.local_addr().ok(), "mesh transport bound");
        Ok(Transport {
            inner,
            event_rx: tokio::sync::Mutex::new(event_rx),
            accept_task,
            closed: tokio::sync::watch::Sender::new(false),
        })
    }

    /// This node's id (its Ed25519 public key).
    pub fn node_id(&self) -> NodeId {
        self.inner.local_id
    }

    /// The bound UDP address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        let addr = self
            .inner
            .endpoint
            .local_addr()
            .map_err(|source| Error::Bind {
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                source,
            })?;
        Ok(addr)
    }

    /// Dial `addr` and authenticate it; with `expected`, accept only that
    /// node.
    ///
    /// Reuses a live connection to `expected` (or, without it, to `addr`)
    /// instead of dialing again. Returns once both sides have accepted each
    /// other's certificate, or fails after
    /// [`TransportConfig::handshake_timeout`].
    pub async fn connect(&self, addr: SocketAddr, expected: Option<NodeId>) -> Result<PeerConn> {
        let inner = &self.inner;
        if let Some(found) = inner.find_live(addr, expected) {
            return Ok(found);
        }
        // Own dials may take any free slot, including the outgoing reserve
        // incoming connections cannot touch.
        let dial_slot = Slot::take(&inner.gauges, SlotKind::Dial);
        if inner.gauges.total() > inner.cfg.max_connections {
            drop(dial_slot);
            bump(&inner.counters.dials_refused);
            return Err(Error::TooManyConnections(inner.cfg.max_connections));
        }
        let client = match expected {
            None => inner.default_client.clone(),
            Some(id) => {
                let mut tls = (*inner.client_tls).clone();
                tls.dangerous()
                    .set_certificate_verifier(Arc::new(MeshServerVerifier::new(
                        &inner.ca_cert,
                        Some(id),
                    )?));
                quic_client(Arc::new(tls), inner.quic_transport.clone())?
            }
        };
        let after = inner.cfg.handshake_timeout;
        let dial = async {
            let connecting = inner
                .endpoint
                .connect_with(client, addr, SERVER_NAME)
                .map_err(|source| Error::Connect { addr, source })?;
            let conn = connecting
                .await
                .map_err(|source| Error::Handshake { addr, source })?;
            let timer = tokio::time::sleep(after);
            let res = tokio::select! {
                r = establish(inner.clone(), conn.clone(), expected, true) => r,
                _ = timer => Err(Error::Timeout { addr, after }),
            };
            if res.is_err() {
                conn.close(VarInt::from_u32(close_code::SHUTDOWN), b"dial failed");
            }
            res
        };
        let res = match tokio::time::timeout(after, dial).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { addr, after }),
        };
        drop(dial_slot);
        bump(match res {
            Ok(_) => &inner.counters.dials_established,
            Err(_) => &inner.counters.dials_failed,
        });
        res
    }

    /// Send one frame to `peer` on its reliable ordered stream.
    ///
    /// Waits for flow control if the peer is slow. Cancelling the returned
    /// future mid-frame closes that connection (the stream could not be
    /// resynchronised). Frames over [`TransportConfig::max_frame_len`] are
    /// refused with [`Error::FrameTooLarge`] and nothing is sent.
    pub async fn send(&self, peer: &NodeId, frame: &[u8]) -> Result<()> {
        let max = self.inner.cfg.max_frame_len;
        let header = frame::header(frame.len(), max).ok_or(Error::FrameTooLarge {
            len: frame.len(),
            max,
        })?;
        let link = self
            .inner
            .current_link(peer)
            .ok_or(Error::NotConnected(*peer))?;
        let mut tx = link.tx.lock().await;
        let mut guard = CancelGuard {
            conn: &link.conn,
            armed: true,
        };
        let send_err = |source| Error::Send {
            peer: *peer,
            source,
        };
        tx.write_all(&header).await.map_err(send_err)?;
        tx.write_all(frame).await.map_err(send_err)?;
        guard.armed = false;
        Ok(())
    }

    /// Send one unreliable, unordered datagram to `peer`. It must fit the
    /// path's datagram size (about 1200 bytes on a typical path); it is
    /// delivered to the peer's [`Transport::recv`] like a frame.
    pub fn send_datagram(&self, peer: &NodeId, data: Bytes) -> Result<()> {
        let link = self
            .inner
            .current_link(peer)
            .ok_or(Error::NotConnected(*peer))?;
        link.conn
            .send_datagram(data)
            .map_err(|source| Error::Datagram {
                peer: *peer,
                source,
            })
    }

    /// The next received frame or datagram: the sender's id, its address
    /// and the payload. After [`Transport::shutdown`], drains what was
    /// already queued, then `None`.
    ///
    /// Peers with frames waiting are served in turn, one frame each (see
    /// [`crate::fair`]); frames from one peer keep their order (per
    /// connection). Cancel-safe. Concurrent callers each get different
    /// frames.
    pub async fn recv(&self) -> Option<(NodeId, SocketAddr, Bytes)> {
        let mut closed = self.closed.subscribe();
        let queue = &self.inner.queue;
        loop {
            // Registered before the check, so a frame queued in between
            // still wakes this caller.
            let notified = queue.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(f) = queue.pop() {
                bump(&self.inner.counters.frames_delivered);
                return Some(f);
            }
            if *closed.borrow_and_update() {
                return None;
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = closed.changed() => {}
            }
        }
    }

    /// The next peer event. After [`Transport::shutdown`], drains what was
    /// already queued, then `None`.
    ///
    /// Cancel-safe. Concurrent callers take turns.
    pub async fn next_event(&self) -> Option<PeerEvent> {
        let mut closed = self.closed.subscribe();
        let mut rx = self.event_rx.lock().await;
        tokio::select! {
            biased;
            v = rx.recv() => v,
            _ = closed.wait_for(|c| *c) => None,
        }
    }

    /// Every peer with a live connection, with the address of the newest.
    pub fn peers(&self) -> Vec<(NodeId, SocketAddr)> {
        let peers = self.inner.lock_peers();
        let mut out: Vec<_> = peers
            .iter()
            .filter_map(|(id, links)| {
                links
                    .iter()
                    .rev()
                    .find(|l| l.live())
                    .map(|l| (*id, l.conn.remote_address()))
            })
            .collect();
        out.sort();
        out
    }

    /// Whether a live connection to `peer` exists.
    pub fn is_connected(&self, peer: &NodeId) -> bool {
        self.inner.current_link(peer).is_some()
    }

    /// Round-trip time estimate of the connection to `peer`.
    pub fn rtt(&self, peer: &NodeId) -> Option<Duration> {
        self.inner.current_link(peer).map(|l| l.conn.rtt())
    }

    /// Close every connection to `peer`; a [`PeerEvent::Disconnected`]
    /// follows.
    pub fn disconnect(&self, peer: &NodeId) {
        let links = self
            .inner
            .lock_peers()
            .get(peer)
            .cloned()
            .unwrap_or_default();
        for l in links {
            l.conn
                .close(VarInt::from_u32(close_code::SHUTDOWN), b"disconnect");
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> TransportStats {
        let c = &self.inner.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let gauge = |k: SlotKind| self.inner.gauges.get(k) as u64;
        let (frames_queued, bytes_queued) = self.inner.queue.len();
        let (peer_full, total_full) = (
            g(&c.frames_dropped_peer_queue_full),
            g(&c.frames_dropped_total_queue_full),
        );
        let refused = (
            g(&c.incoming_refused_handshake_cap),
            g(&c.incoming_refused_connection_cap),
            g(&c.incoming_refused_rate),
        );
        TransportStats {
            frames_received: g(&c.frames_received),
            datagrams_received: g(&c.datagrams_received),
            frames_delivered: g(&c.frames_delivered),
            frames_queued: frames_queued as u64,
            bytes_queued: bytes_queued as u64,
            frames_dropped_queue_full: peer_full + total_full,
            frames_dropped_peer_queue_full: peer_full,
            frames_dropped_total_queue_full: total_full,
            frames_backpressured: g(&c.frames_backpressured),
            frames_too_large: g(&c.frames_too_large),
            protocol_errors: g(&c.protocol_errors),
            connections_open: gauge(SlotKind::Incoming) + gauge(SlotKind::Outgoing),
            connections_incoming: gauge(SlotKind::Incoming),
            connections_outgoing: gauge(SlotKind::Outgoing),
            handshakes_in_progress: gauge(SlotKind::Handshake),
            dials_in_progress: gauge(SlotKind::Dial),
            incoming_attempts: g(&c.incoming_attempts),
            incoming_retried: g(&c.incoming_retried),
            incoming_refused: refused.0 + refused.1 + refused.2,
            incoming_refused_handshake_cap: refused.0,
            incoming_refused_connection_cap: refused.1,
            incoming_refused_rate: refused.2,
            incoming_handshakes_failed: g(&c.incoming_handshakes_failed),
            incoming_accepted: g(&c.incoming_accepted),
            dials_refused: g(&c.dials_refused),
            dials_failed: g(&c.dials_failed),
            dials_established: g(&c.dials_established),
            events_dropped: g(&c.events_dropped),
            links_superseded: g(&c.links_superseded),
        }
    }

    /// Close the endpoint and every connection, then wait (bounded by the
    /// idle timeout) until the peers were told.
    pub async fn shutdown(&self) {
        self.closed.send_replace(true);
        self.accept_task.abort();
        self.inner
            .endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
        let _ = tokio::time::timeout(self.inner.cfg.idle_timeout, self.inner.endpoint.wait_idle())
            .await;
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        self.accept_task.abort();
        self.inner
            .endpoint
            .close(VarInt::from_u32(close_code::SHUTDOWN), b"shutdown");
    }
}

/// Closes the connection if a send is dropped between its first and last
/// byte.
struct CancelGuard<'a> {
    conn: &'a quinn::Connection,
    armed: bool,
}

impl Drop for CancelGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.conn.close(
                VarInt::from_u32(close_code::CANCELLED_SEND),
                b"send cancelled mid-frame",
            );
        }
    }
}

fn quic_client(
    tls: Arc<rustls::ClientConfig>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig> {
    let quic = QuicClientConfig::try_from(tls)
        .map_err(|e| Error::Tls(rustls::Error::General(e.to_string())))?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport);
    Ok(c)
}

impl Inner {
    fn lock_peers(&self) -> MutexGuard<'_, HashMap<NodeId, Vec<Link>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every update is a single push/retain), so poisoning is ignored.
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current_link(&self, peer: &NodeId) -> Option<Link> {
        self.lock_peers()
            .get(peer)?
            .iter()
            .rev()
            .find(|l| l.live())
            .cloned()
    }

    fn find_live(&self, addr: SocketAddr, expected: Option<NodeId>) -> Option<PeerConn> {
        let peers = self.lock_peers();
        let hit = |id: &NodeId, links: &Vec<Link>| {
            links
                .iter()
                .rev()
                .find(|l| l.live() && (expected.is_some() || l.conn.remote_address() == addr))
                .map(|l| PeerConn {
                    node_id: *id,
                    remote_addr: l.conn.remote_address(),
                    reused: true,
                })
        };
        match expected {
            Some(id) => peers.get(&id).and_then(|links| hit(&id, links)),
            None => peers.iter().find_map(|(id, links)| hit(id, links)),
        }
    }

    fn emit(&self, ev: PeerEvent) {
        if self.event_tx.try_send(ev).is_err() {
            bump(&self.counters.events_dropped);
            warn!(?ev, "peer event queue full; event dropped");
        }
    }

    fn deliver(&self, peer: NodeId, addr: SocketAddr, payload: Bytes, datagram: bool) {
        let c = &self.counters;
        bump(match self.queue.push(peer, addr, payload) {
            Push::Queued if datagram => &c.datagrams_received,
            Push::Queued => &c.frames_received,
            Push::PeerFull => &c.frames_dropped_peer_queue_full,
            Push::TotalFull => &c.frames_dropped_total_queue_full,
        });
    }

    fn unregister(&self, peer: NodeId, link_id: u64) {
        let mut peers = self.lock_peers();
        let Some(links) = peers.get_mut(&peer) else {
            return;
        };
        let before = links.len();
        links.retain(|l| l.id != link_id);
        if links.len() < before && links.is_empty() {
            peers.remove(&peer);
            // Emitted under the lock so Connected/Disconnected stay ordered.
            self.emit(PeerEvent::Disconnected(peer));
        }
    }
}

fn peer_id(conn: &quinn::Connection) -> Result<NodeId> {
    let addr = conn.remote_address();
    let none = |why: &str| Error::NoPeerIdentity {
        addr,
        why: why.to_string(),
    };
    let any = conn.peer_identity().ok_or_else(|| none("no certificate"))?;
    let certs = any
        .downcast::<Vec<CertificateDer<'static>>>()
        .map_err(|_| none("identity is not a certificate chain"))?;
    let ee = certs
        .first()
        .ok_or_else(|| none("empty certificate chain"))?;
    node_id_from_cert(ee).map_err(|e| none(&e.to_string()))
}

/// Register a handshaken connection. A dialer (`client`) first waits for
/// the server's preamble: proof the server accepted our certificate.
async fn establish(
    inner: Arc<Inner>,
    conn: quinn::Connection,
    expected: Option<NodeId>,
    client: bool,
) -> Result<PeerConn> {
    let addr = conn.remote_address();
    let id = peer_id(&conn)?;
    if let Some(want) = expected.filter(|want| *want != id) {
        conn.close(VarInt::from_u32(close_code::WRONG_PEER), b"wrong peer");
        return Err(Error::WrongPeer {
            addr,
            expected: want,
            got: id,
        });
    }
    if id == inner.local_id {
        conn.close(VarInt::from_u32(close_code::WRONG_PEER), b"self");
        return Err(Error::SelfDial { addr });
    }
    let mut tx = conn
        .open_uni()
        .await
        .map_err(|source| Error::OpenStream { addr, source })?;
    tx.write_all(&PREAMBLE)
        .await
        .map_err(|source| Error::Send { peer: id, source })?;
    let first = if client {
        let mut rx = conn
            .accept_uni()
            .await
            .map_err(|source| Error::Handshake { addr, source })?;
        read_preamble(&mut rx).await.map_err(|why| {
            bump(&inner.counters.protocol_errors);
            conn.close(VarInt::from_u32(close_code::PROTOCOL), b"bad preamble");
            Error::Protocol { addr, why }
        })?;
        Some(rx)
    } else {
        None
    };
    let link = Link {
        id: inner.next_link.fetch_add(1, Ordering::Relaxed),
        conn: conn.clone(),
        tx: Arc::new(tokio::sync::Mutex::new(tx)),
    };
    let link_id = link.id;
    // Held by the link's task: the connection's slot until it closes.
    let slot = Slot::take(
        &inner.gauges,
        if client {
            SlotKind::Outgoing
        } else {
            SlotKind::Incoming
        },
    );
    let evicted = {
        let mut peers = inner.lock_peers();
        let links = peers.entry(id).or_default();
        links.retain(Link::live);
        let first_link = links.is_empty();
        links.push(link);
        let excess = links.len().saturating_sub(inner.cfg.max_links_per_peer);
        let evicted: Vec<Link> = links.drain(..excess).collect();
        if first_link {
            inner.emit(PeerEvent::Connected(id, addr));
        }
        evicted
    };
    for old in evicted {
        bump(&inner.counters.links_superseded);
        old.conn
            .close(VarInt::from_u32(close_code::SUPERSEDED), b"superseded");
    }
    debug!(peer = %id, %addr, client, "connection established");
    if !client {
        bump(&inner.counters.incoming_accepted);
    }
    tokio::spawn(run_link(inner, slot, link_id, id, conn, first));
    Ok(PeerConn {
        node_id: id,
        remote_addr: addr,
        reused: false,
    })
}

async fn read_preamble(rx: &mut quinn::RecvStream) -> Result<(), String> {
    let mut p = [0u8; PREAMBLE.len()];
    rx.read_exact(&mut p).await.map_err(|e| e.to_string())?;
    if p != PREAMBLE {
        return Err(format!("bad stream preamble {p:02x?}"));
    }
    Ok(())
}

async fn accept_loop(inner: Arc<Inner>) {
    let c = &inner.counters;
    let mut bucket = Bucket::new(inner.cfg.handshake_rate, inner.cfg.handshake_burst);
    while let Some(incoming) = inner.endpoint.accept().await {
        bump(&c.incoming_attempts);
        let validated = incoming.remote_address_validated();
        let may_retry = incoming.may_retry();
        match admit(&inner.cfg, &inner.gauges, &mut bucket, validated, may_retry) {
            Admit::Accept => {}
            Admit::Retry => {
                // Stateless: the token says who asked and when; a spoofed or
                // replayed Initial never comes back with it.
                match incoming.retry() {
                    Ok(()) => bump(&c.incoming_retried),
                    Err(e) => {
                        // Not reached: a Retry is chosen only if may_retry.
                        bump(&c.incoming_refused_handshake_cap);
                        e.into_incoming().refuse();
                    }
                }
                continue;
            }
            Admit::Refuse(why) => {
                bump(match why {
                    Refusal::HandshakeCap => &c.incoming_refused_handshake_cap,
                    Refusal::ConnectionCap => &c.incoming_refused_connection_cap,
                    Refusal::Rate => &c.incoming_refused_rate,
                });
                debug!(addr = %incoming.remote_address(), ?why, "incoming connection refused");
                incoming.refuse();
                continue;
            }
        }
        bucket.take();
        let slot = Slot::take(&inner.gauges, SlotKind::Handshake);
        let inner = inner.clone();
        tokio::spawn(async move {
            let addr = incoming.remote_address();
            let after = inner.cfg.handshake_timeout;
            // Bounded: a peer that stalls the handshake or withholds stream
            // credit is dropped (dropping the last handle closes it).
            let work = async {
                match incoming.await {
                    Ok(conn) => establish(inner.clone(), conn, None, false).await,
                    Err(source) => Err(Error::Handshake { addr, source }),
                }
            };
            let res = match tokio::time::timeout(after, work).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout { addr, after }),
            };
            drop(slot);
            if let Err(e) = res {
                bump(&inner.counters.incoming_handshakes_failed);
                debug!(%addr, error = %e, "incoming handshake failed");
            }
        });
    }
}

/// Serve one connection until it closes: accept the peer's stream(s) and
/// datagrams, then unregister it.
async fn run_link(
    inner: Arc<Inner>,
    slot: Slot,
    link_id: u64,
    peer: NodeId,
    conn: quinn::Connection,
    first: Option<quinn::RecvStream>,
) {
    let addr = conn.remote_address();
    if let Some(rx) = first {
        tokio::spawn(read_frames(inner.clone(), peer, conn.clone(), rx, true));
    }
    let reason = loop {
        tokio::select! {
            s = conn.accept_uni() => match s {
                Ok(rx) => {
                    tokio::spawn(read_frames(inner.clone(), peer, conn.clone(), rx, false));
                }
                Err(e) => break e,
            },
            d = conn.read_datagram() => match d {
                Ok(b) => inner.deliver(peer, addr, b, true),
                Err(e) => break e,
            },
        }
    };
    debug!(%peer, %addr, %reason, "connection closed");
    inner.unregister(peer, link_id);
    drop(slot);
}

async fn read_frames(
    inner: Arc<Inner>,
    peer: NodeId,
    conn: quinn::Connection,
    mut rx: quinn::RecvStream,
    preamble_read: bool,
) {
    let addr = conn.remote_address();
    if !preamble_read && let Err(why) = read_preamble(&mut rx).await {
        if conn.close_reason().is_none() {
            bump(&inner.counters.protocol_errors);
            warn!(%peer, %addr, %why, "closing connection");
            conn.close(VarInt::from_u32(close_code::PROTOCOL), b"bad preamble");
        }
        return;
    }
    let max = inner.cfg.max_frame_len;
    loop {
        let mut header = [0u8; frame::HEADER_LEN];
        if rx.read_exact(&mut header).await.is_err() {
            return; // stream finished or connection gone
        }
        let Some(len) = frame::payload_len(header, max) else {
            bump(&inner.counters.frames_too_large);
            warn!(%peer, %addr, len = u16::from_le_bytes(header), max, "oversized frame; closing connection");
            conn.close(
                VarInt::from_u32(close_code::FRAME_TOO_LARGE),
                b"frame too large",
            );
            return;
        };
        let mut buf = vec![0u8; len];
        if rx.read_exact(&mut buf).await.is_err() {
            return;
        }
        // Backpressure, not loss: wait for room in this peer's queue (or the end of the
        // connection, so a stalled reader never outlives it).
        tokio::select! {
            _ = inner.queue.push_wait(peer, addr, Bytes::from(buf), || {
                bump(&inner.counters.frames_backpressured)
            }) => bump(&inner.counters.frames_received),
            _ = conn.closed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_retries_unvalidated_clients_under_load_and_refuses_validated_ones_at_a_cap() {
        let cfg = TransportConfig {
            max_connections: 10,
            outgoing_reserve: 2,
            max_incoming_handshakes: 4,
            retry_above_handshakes: 2,
            handshake_rate: 1,
            handshake_burst: 100,
            ..TransportConfig::default()
        };
        let g = Arc::new(Gauges::default());
        let mut bucket = Bucket::new(cfg.handshake_rate, cfg.handshake_burst);
        let mut decide = |validated| admit(&cfg, &g, &mut bucket, validated, !validated);
        // Quiet: everyone is accepted, no Retry.
        assert_eq!(decide(false), Admit::Accept);
        assert_eq!(decide(true), Admit::Accept);
        let held: Vec<Slot> = (0..2)
            .map(|_| Slot::take(&g, SlotKind::Handshake))
            .collect();
        // Under load (2 handshakes): unvalidated clients must validate.
        let mut decide = |validated| admit(&cfg, &g, &mut bucket, validated, !validated);
        assert_eq!(decide(false), Admit::Retry);
        assert_eq!(decide(true), Admit::Accept);
        let more: Vec<Slot> = (0..2)
            .map(|_| Slot::take(&g, SlotKind::Handshake))
            .collect();
        // At the handshake cap (4).
        let mut decide = |validated| admit(&cfg, &g, &mut bucket, validated, !validated);
        assert_eq!(decide(true), Admit::Refuse(Refusal::HandshakeCap));
        assert_eq!(decide(false), Admit::Retry);
        drop((held, more));
        // At the incoming share of the connection cap (10 - 2).
        let conns: Vec<Slot> = (0..8).map(|_| Slot::take(&g, SlotKind::Incoming)).collect();
        let mut decide = |validated| admit(&cfg, &g, &mut bucket, validated, !validated);
        assert_eq!(decide(true), Admit::Refuse(Refusal::ConnectionCap));
        assert_eq!(decide(false), Admit::Retry);
        drop(conns);
        // Own dials and their connections do not count against that share.
        let out: Vec<Slot> = (0..8).map(|_| Slot::take(&g, SlotKind::Outgoing)).collect();
        assert_eq!(admit(&cfg, &g, &mut bucket, true, false), Admit::Accept);
        drop(out);
        assert_eq!(g.total(), 0, "slots are released on drop");
        // Rate: an empty bucket refuses validated clients.
        let mut empty = Bucket::new(1, 1);
        empty.take();
        assert_eq!(
            admit(&cfg, &g, &mut empty, true, false),
            Admit::Refuse(Refusal::Rate)
        );
        assert_eq!(admit(&cfg, &g, &mut empty, false, true), Admit::Retry);
        // retry_above_handshakes = 0: every unvalidated client validates.
        let always = TransportConfig {
            retry_above_handshakes: 0,
            ..cfg.clone()
        };
        assert_eq!(admit(&always, &g, &mut bucket, false, true), Admit::Retry);
        assert_eq!(admit(&always, &g, &mut bucket, true, false), Admit::Accept);
    }

    #[test]
    fn default_config_is_valid() {
        TransportConfig::default().validate().expect("valid");
    }

    #[test]
    fn config_errors_name_the_field() {
        let cases: Vec<(&str, TransportConfig)> = vec![
            (
                "idle_timeout",
                TransportConfig {
                    idle_timeout: Duration::from_millis(1),
                    ..Default::default()
                },
            ),
            (
                "keep_alive_interval",
                TransportConfig {
                    keep_alive_interval: Some(Duration::from_secs(60)),
                    ..Default::default()
                },
            ),
            (
                "max_frame_len",
                TransportConfig {
                    max_frame_len: MAX_FRAME_LEN + 1,
                    ..Default::default()
                },
            ),
            (
                "recv_queue",
                TransportConfig {
                    recv_queue: 0,
                    ..Default::default()
                },
            ),
            (
                "outgoing_reserve",
                TransportConfig {
                    max_connections: 8,
                    outgoing_reserve: 8,
                    ..Default::default()
                },
            ),
            (
                "peer_recv_queue_bytes",
                TransportConfig {
                    peer_recv_queue_bytes: 100,
                    ..Default::default()
                },
            ),
            (
                "incoming_buffer_bytes_total",
                TransportConfig {
                    incoming_buffer_bytes_total: 1500,
                    ..Default::default()
                },
            ),
            (
                "stream_receive_window",
                TransportConfig {
                    stream_receive_window: 100,
                    ..Default::default()
                },
            ),
        ];
        for (field, cfg) in cases {
            match cfg.validate() {
                Err(Error::Config { field: f, .. }) => assert_eq!(f, field),
                other => panic!("{field}: expected a config error, got {other:?}"),
            }
        }
    }
}
