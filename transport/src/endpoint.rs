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

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, VarInt};
use rustls::pki_types::{CertificateDer, UnixTime};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::ca::{node_id_from_seed, node_private_key};
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
    /// server's preamble. Default 5 s.
    pub handshake_timeout: Duration,
    /// Largest frame accepted or sent, 1..=[`MAX_FRAME_LEN`]. A peer that
    /// sends a larger frame is disconnected. Default [`MAX_FRAME_LEN`].
    pub max_frame_len: usize,
    /// Capacity of the node's receive queue, in frames. When it is full,
    /// new frames are dropped and counted
    /// ([`TransportStats::frames_dropped_queue_full`]); the connection is
    /// never stalled by a slow consumer. Default 4096 (at most 4096 x
    /// `max_frame_len` bytes held).
    pub recv_queue: usize,
    /// Capacity of the peer-event queue; a full queue drops events and
    /// counts them. Default 1024.
    pub event_queue: usize,
    /// Most connections (incoming and outgoing, including handshakes in
    /// progress) at once; more incoming ones are refused. Default 1024.
    pub max_connections: usize,
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
            recv_queue: 4096,
            event_queue: 1024,
            max_connections: 1024,
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
        if self.recv_queue == 0 {
            return bad("recv_queue", "must be at least 1".into());
        }
        if self.event_queue == 0 {
            return bad("event_queue", "must be at least 1".into());
        }
        if self.max_connections == 0 {
            return bad("max_connections", "must be at least 1".into());
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

/// Counters of a [`Transport`], as a snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Stream frames queued for [`Transport::recv`].
    pub frames_received: u64,
    /// Datagrams queued for [`Transport::recv`].
    pub datagrams_received: u64,
    /// Frames and datagrams dropped because the receive queue was full.
    pub frames_dropped_queue_full: u64,
    /// Connections closed because the peer sent an oversized frame.
    pub frames_too_large: u64,
    /// Connections closed because the peer broke the stream protocol.
    pub protocol_errors: u64,
    /// Incoming connections whose handshake failed (bad or missing
    /// certificate, wrong CA, expired, timeout).
    pub incoming_handshakes_failed: u64,
    /// Incoming connections refused at the connection limit.
    pub incoming_refused: u64,
    /// Peer events dropped because the event queue was full.
    pub events_dropped: u64,
    /// Connections closed because a newer one to the same peer replaced them.
    pub links_superseded: u64,
}

#[derive(Default)]
struct Counters {
    frames_received: AtomicU64,
    datagrams_received: AtomicU64,
    frames_dropped_queue_full: AtomicU64,
    frames_too_large: AtomicU64,
    protocol_errors: AtomicU64,
    incoming_handshakes_failed: AtomicU64,
    incoming_refused: AtomicU64,
    events_dropped: AtomicU64,
    links_superseded: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
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

type Frame = (NodeId, SocketAddr, Bytes);

struct Inner {
    endpoint: quinn::Endpoint,
    local_id: NodeId,
    cfg: TransportConfig,
    ca_cert: CertificateDer<'static>,
    client_tls: Arc<rustls::ClientConfig>,
    quic_transport: Arc<quinn::TransportConfig>,
    default_client: quinn::ClientConfig,
    peers: Mutex<HashMap<NodeId, Vec<Link>>>,
    data_tx: mpsc::Sender<Frame>,
    event_tx: mpsc::Sender<PeerEvent>,
    counters: Counters,
    next_link: AtomicU64,
}

/// A mesh node's QUIC endpoint: dials and accepts mutually authenticated
/// connections, sends and receives frames.
///
/// Share it with `Arc<Transport>`; every method takes `&self`. Dropping it
/// closes the endpoint and every connection.
pub struct Transport {
    inner: Arc<Inner>,
    data_rx: tokio::sync::Mutex<mpsc::Receiver<Frame>>,
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
        server.transport_config(quic_transport.clone());
        let default_client = quic_client(client_tls.clone(), quic_transport.clone())?;

        let endpoint = quinn::Endpoint::server(server, listen).map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let (data_tx, data_rx) = mpsc::channel(cfg.recv_queue);
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
            data_tx,
            event_tx,
            counters: Counters::default(),
            next_link: AtomicU64::new(1),
        });
        let accept_task = tokio::spawn(accept_loop(inner.clone()));
        info!(node = %local_id, addr = ?inner.endpoint.local_addr().ok(), "mesh transport bound");
        Ok(Transport {
            inner,
            data_rx: tokio::sync::Mutex::new(data_rx),
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
        if inner.endpoint.open_connections() >= inner.cfg.max_connections {
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
        match tokio::time::timeout(after, dial).await {
            Ok(r) => r,
            Err(_) => Err(Error::Timeout { addr, after }),
        }
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
    /// Cancel-safe. Concurrent callers take turns.
    pub async fn recv(&self) -> Option<(NodeId, SocketAddr, Bytes)> {
        let mut closed = self.closed.subscribe();
        let mut rx = self.data_rx.lock().await;
        tokio::select! {
            biased;
            v = rx.recv() => v,
            _ = closed.wait_for(|c| *c) => None,
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
        TransportStats {
            frames_received: g(&c.frames_received),
            datagrams_received: g(&c.datagrams_received),
            frames_dropped_queue_full: g(&c.frames_dropped_queue_full),
            frames_too_large: g(&c.frames_too_large),
            protocol_errors: g(&c.protocol_errors),
            incoming_handshakes_failed: g(&c.incoming_handshakes_failed),
            incoming_refused: g(&c.incoming_refused),
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
        match self.data_tx.try_send((peer, addr, payload)) {
            Ok(()) => bump(if datagram {
                &self.counters.datagrams_received
            } else {
                &self.counters.frames_received
            }),
            Err(mpsc::error::TrySendError::Full(_)) => {
                bump(&self.counters.frames_dropped_queue_full);
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
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
    tokio::spawn(run_link(inner, link_id, id, conn, first));
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
    while let Some(incoming) = inner.endpoint.accept().await {
        // Counts established connections and accepted handshakes in progress.
        if inner.endpoint.open_connections() >= inner.cfg.max_connections {
            bump(&inner.counters.incoming_refused);
            incoming.refuse();
            continue;
        }
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
            if let Err(e) = res {
                bump(&inner.counters.incoming_handshakes_failed);
                debug!(%addr, error = %e, "incoming connection refused");
            }
        });
    }
}

/// Serve one connection until it closes: accept the peer's stream(s) and
/// datagrams, then unregister it.
async fn run_link(
    inner: Arc<Inner>,
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
        inner.deliver(peer, addr, Bytes::from(buf), false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
