//! Issue 12, item 3: a flood of QUIC client Initials (no credentials needed)
//! must not keep legitimate members out, nor the node's own dials. Loopback
//! only: every datagram goes to 127.0.0.1.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use mesh_transport::{MeshCa, Transport, TransportConfig};
use tokio::net::UdpSocket;

/// Distinct client Initials captured from real quinn dials.
const INITIALS: usize = 600;
/// The flood replays them at most this many times, for at most `FLOOD_FOR`.
const FLOOD_ROUNDS: usize = 40;
const FLOOD_FOR: Duration = Duration::from_secs(6);
/// Concurrent dials of the anonymous (certificate-less) flooder.
const ANON_BATCH: usize = 10;
/// A legitimate dial may take this many attempts.
const ATTEMPTS: usize = 3;

/// A rustls client with no certificate that trusts nothing: enough to build
/// a ClientHello (and to play a flooder without credentials).
fn anonymous_client() -> quinn::ClientConfig {
    let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    tls.alpn_protocols = vec![mesh_transport::endpoint::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic");
    quinn::ClientConfig::new(Arc::new(quic))
}

/// Start `n` real dials towards a UDP socket that never answers and keep
/// the first datagram of each: `n` distinct client Initials (padded to 1200
/// bytes, each with its own connection id), ready to be replayed.
async fn capture_initials(n: usize) -> Vec<Vec<u8>> {
    let sink = UdpSocket::bind(loopback()).await.expect("sink");
    let sink_addr = sink.local_addr().expect("addr");
    let ep = quinn::Endpoint::client(loopback()).expect("client endpoint");
    let cfg = anonymous_client();
    let mut pending = Vec::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 2048];
    for _ in 0..n {
        pending.push(
            ep.connect_with(cfg.clone(), sink_addr, "x")
                .expect("connect"),
        );
        let len = sink.recv(&mut buf).await.expect("initial");
        out.push(buf[..len].to_vec());
    }
    drop(pending);
    ep.close(0u32.into(), b"");
    out
}

/// Replay the captured Initials at `to` from one UDP socket, bounded in
/// rounds and time, until `stop`.
async fn flood(to: SocketAddr, initials: Arc<Vec<Vec<u8>>>, stop: Arc<AtomicBool>) -> u64 {
    let sock = UdpSocket::bind(loopback()).await.expect("flood socket");
    let deadline = tokio::time::Instant::now() + FLOOD_FOR;
    let mut sent = 0u64;
    for _ in 0..FLOOD_ROUNDS {
        for (i, d) in initials.iter().enumerate() {
            if sock.send_to(d, to).await.is_ok() {
                sent += 1;
            }
            if i % 50 == 49 {
                tokio::task::yield_now().await;
            }
        }
        if stop.load(Ordering::Relaxed) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sent
}

/// Real QUIC clients without a certificate dialing `to` in a loop, a few at
/// a time, bounded in count; (attempts, attempts that failed).
async fn anonymous_flood(to: SocketAddr, stop: Arc<AtomicBool>) -> (u64, u64) {
    let ep = quinn::Endpoint::client(loopback()).expect("client endpoint");
    let cfg = anonymous_client();
    let (mut tried, mut failed) = (0u64, 0u64);
    for round in 0..20 {
        let batch: Vec<_> = (0..ANON_BATCH)
            .filter_map(|_| ep.connect_with(cfg.clone(), to, "x").ok())
            .collect();
        tried += batch.len() as u64;
        for c in batch {
            match tokio::time::timeout(Duration::from_secs(5), c).await {
                Ok(Ok(conn)) => conn.close(0u32.into(), b""),
                _ => failed += 1,
            }
        }
        if round >= 4 && stop.load(Ordering::Relaxed) {
            break;
        }
    }
    ep.close(0u32.into(), b"");
    (tried, failed)
}

/// Dial `to` up to `ATTEMPTS` times; the number of attempts used.
async fn dial(member: &Transport, to: &Transport) -> Result<usize, String> {
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match member
            .connect(to.local_addr().expect("addr"), Some(to.node_id()))
            .await
        {
            Ok(_) => return Ok(attempt),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(last)
}

/// The victim: a small connection cap so the test stays light; everything
/// else as configured by default.
fn victim_cfg() -> TransportConfig {
    TransportConfig {
        max_connections: 256,
        ..fast_cfg()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_initials_do_not_keep_members_out() {
    tokio::time::timeout(Duration::from_secs(60), async {
        let ca = MeshCa::generate().expect("ca");
        let v = node_with(&ca, 1, victim_cfg());
        let v_addr = v.local_addr().expect("addr");
        let initials = Arc::new(capture_initials(INITIALS).await);
        assert_eq!(initials.len(), INITIALS);

        let stop = Arc::new(AtomicBool::new(false));
        let flooder = tokio::spawn(flood(v_addr, initials.clone(), stop.clone()));
        let anonymous = tokio::spawn(anonymous_flood(v_addr, stop.clone()));
        // Let the flood fill whatever it can fill first.
        eventually("the flood reaches the victim", || {
            let s = v.stats();
            // Replays sent Retries, anonymous clients failed or refused.
            s.incoming_retried > 0 && s.incoming_handshakes_failed + s.incoming_refused > 0
        })
        .await;

        let mut failures = Vec::new();
        let mut attempts = Vec::new();
        // Five members join...
        let mut members: Vec<Transport> = (10..15).map(|n| node(&ca, n)).collect();
        for m in &members {
            match dial(m, &v).await {
                Ok(n) => attempts.push(n),
                Err(e) => failures.push(format!("join of {}: {e}", m.node_id())),
            }
        }
        // ...two restart (same identity, new socket) and re-join...
        for (m, n) in members.iter_mut().zip(10u8..12) {
            m.shutdown().await;
            *m = node(&ca, n);
            match dial(m, &v).await {
                Ok(tries) => attempts.push(tries),
                Err(e) => failures.push(format!("re-join of {n}: {e}")),
            }
        }
        // ...and the victim's own dial to a new member goes out.
        let fresh = node(&ca, 20);
        match dial(&v, &fresh).await {
            Ok(n) => attempts.push(n),
            Err(e) => failures.push(format!("victim's own dial: {e}")),
        }
        stop.store(true, Ordering::Relaxed);
        let sent = flooder.await.expect("flooder");
        let (tried, refused_anon) = anonymous.await.expect("anonymous flooder");
        let s = v.stats();
        assert!(
            failures.is_empty(),
            "legitimate dials failed under the flood ({sent} Initials sent): {failures:?}; {s:?}"
        );
        assert!(sent >= INITIALS as u64, "the flood ran: {sent}");
        assert_eq!(refused_anon, tried, "no client without a certificate got in");
        assert_eq!(v.peers().len(), 6, "five members and the fresh one");
        // The replayed Initials held at most `retry_above_handshakes`
        // handshakes (the anonymous clients at most one batch more);
        // everything beyond was sent a Retry.
        let cfg = victim_cfg();
        assert!(
            s.handshakes_in_progress <= (cfg.retry_above_handshakes + ANON_BATCH) as u64,
            "{s:?}"
        );
        assert!(
            s.incoming_retried >= INITIALS as u64 / 2,
            "the flood was sent Retries: {s:?}"
        );
        assert_eq!((s.dials_refused, s.dials_established), (0, 1), "{s:?}");
        // Once the flood's handshakes have timed out, every attempt is
        // accounted for exactly once.
        eventually("the flood's handshakes time out", || {
            v.stats().handshakes_in_progress == 0
        })
        .await;
        let s = v.stats();
        eprintln!(
            "flood: {sent} Initials sent, {tried} anonymous dials; attempts per legitimate dial {attempts:?}; victim: {s:#?}"
        );
        assert_eq!(
            s.incoming_attempts,
            s.incoming_retried + s.incoming_refused + s.incoming_handshakes_failed + s.incoming_accepted,
            "{s:?}"
        );
        assert!(
            s.incoming_handshakes_failed + s.incoming_refused >= tried,
            "the anonymous handshakes failed or were refused, and were counted: {s:?}"
        );
        assert_eq!(s.incoming_accepted, 7, "five joins and two re-joins: {s:?}");
    })
    .await
    .expect("test bound");
}

/// The node's own dials find room when incoming connections have taken all
/// they may: `outgoing_reserve` is theirs.
#[tokio::test]
async fn own_dials_use_the_reserve_when_incoming_is_full() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let v = node_with(
            &ca,
            1,
            TransportConfig {
                max_connections: 4,
                outgoing_reserve: 1,
                ..fast_cfg()
            },
        );
        let members: Vec<Transport> = (2..6).map(|n| node(&ca, n)).collect();
        let v_addr = v.local_addr().expect("addr");
        for m in &members[..3] {
            m.connect(v_addr, Some(v.node_id())).await.expect("fits");
        }
        assert!(
            members[3].connect(v_addr, Some(v.node_id())).await.is_err(),
            "the incoming share (3) is full"
        );
        let s = v.stats();
        assert_eq!(s.incoming_refused_connection_cap, 1, "{s:?}");
        // The victim itself still dials out.
        let out = node(&ca, 9);
        v.connect(out.local_addr().expect("addr"), Some(out.node_id()))
            .await
            .expect("own dial uses the reserve");
        let s = v.stats();
        assert_eq!((s.connections_incoming, s.connections_outgoing), (3, 1));
        // And now everything is full, own dials included.
        let more = node(&ca, 10);
        assert!(matches!(
            v.connect(more.local_addr().expect("addr"), Some(more.node_id()))
                .await,
            Err(mesh_transport::Error::TooManyConnections(4))
        ));
        assert_eq!(v.stats().dials_refused, 1);
    })
    .await
    .expect("test bound");
}

/// Beyond `handshake_burst` handshakes at once, a validated client is
/// refused by the rate limit (after its Retry) and counted.
#[tokio::test]
async fn handshakes_beyond_the_rate_are_refused_and_counted() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let v = node_with(
            &ca,
            1,
            TransportConfig {
                handshake_rate: 1,
                handshake_burst: 2,
                ..fast_cfg()
            },
        );
        let v_addr = v.local_addr().expect("addr");
        let members: Vec<Transport> = (2..5).map(|n| node(&ca, n)).collect();
        members[0].connect(v_addr, None).await.expect("first");
        members[1].connect(v_addr, None).await.expect("second");
        assert!(
            members[2].connect(v_addr, None).await.is_err(),
            "third: no token left"
        );
        let s = v.stats();
        assert_eq!(s.incoming_refused_rate, 1, "{s:?}");
        assert_eq!(s.incoming_retried, 1, "it was validated first: {s:?}");
        assert_eq!(s.incoming_accepted, 2, "{s:?}");
    })
    .await
    .expect("test bound");
}
