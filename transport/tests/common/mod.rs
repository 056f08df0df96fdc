//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use mesh_transport::{CertificateDer, MeshCa, NodeId, PeerEvent, Transport, TransportConfig};

/// Every test body runs under this bound.
pub const TEST_BOUND: Duration = Duration::from_secs(20);

pub fn seed(n: u8) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[0] = n;
    s[31] = 0xa5;
    s
}

/// The node id computed independently of the crate, with ed25519-dalek.
pub fn dalek_id(seed: &[u8; 32]) -> NodeId {
    NodeId(
        ed25519_dalek::SigningKey::from_bytes(seed)
            .verifying_key()
            .to_bytes(),
    )
}

pub fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

pub fn fast_cfg() -> TransportConfig {
    TransportConfig {
        idle_timeout: Duration::from_secs(3),
        keep_alive_interval: Some(Duration::from_millis(500)),
        handshake_timeout: Duration::from_secs(3),
        ..TransportConfig::default()
    }
}

/// A node whose certificate `ca` issued, trusting `ca`.
pub fn node(ca: &MeshCa, n: u8) -> Transport {
    node_with(ca, n, fast_cfg())
}

pub fn node_with(ca: &MeshCa, n: u8, cfg: TransportConfig) -> Transport {
    let s = seed(n);
    let cert = ca
        .issue(dalek_id(&s).0, Duration::from_secs(3600))
        .expect("issue");
    Transport::bind(loopback(), s, cert, ca.cert_der().clone(), cfg).expect("bind")
}

/// A node with an arbitrary certificate and trust anchor (no self-check).
pub fn node_raw(n: u8, cert: CertificateDer<'static>, trust: CertificateDer<'static>) -> Transport {
    let cfg = TransportConfig {
        verify_own_certificate: false,
        ..fast_cfg()
    };
    Transport::bind(loopback(), seed(n), cert, trust, cfg).expect("bind")
}

pub async fn next_event(t: &Transport) -> PeerEvent {
    tokio::time::timeout(Duration::from_secs(5), t.next_event())
        .await
        .expect("event within 5 s")
        .expect("transport open")
}

/// Poll `f` every 10 ms until it holds, for at most 5 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
