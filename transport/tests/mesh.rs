//! Frames, limits and a small mesh bootstrapping from one seed, on loopback.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use mesh_transport::{Error, MeshCa, NodeId, PeerEvent, Transport, TransportConfig};

#[tokio::test]
async fn oversized_frames_are_refused_without_panic() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let small = TransportConfig {
            max_frame_len: 1024,
            ..fast_cfg()
        };
        let a = node_with(&ca, 1, small);
        let b = node(&ca, 2);
        let a_id = a.node_id();
        b.connect(a.local_addr().expect("addr"), Some(a_id))
            .await
            .expect("connect");
        assert!(matches!(next_event(&b).await, PeerEvent::Connected(..)));

        // The sender refuses what the encoding cannot carry; nothing is sent.
        let huge = vec![0u8; mesh_transport::MAX_FRAME_LEN + 1];
        match b.send(&a_id, &huge).await {
            Err(Error::FrameTooLarge { len, max }) => {
                assert_eq!((len, max), (huge.len(), mesh_transport::MAX_FRAME_LEN));
            }
            other => panic!("expected FrameTooLarge, got {other:?}"),
        }
        // a's own limit applies to what a sends.
        assert!(matches!(
            a.send(&b.node_id(), &[0u8; 1025]).await,
            Err(Error::FrameTooLarge { max: 1024, .. })
        ));
        b.send(&a_id, &[1u8; 1024]).await.expect("at the limit");
        assert_eq!(a.recv().await.expect("recv").2.len(), 1024);

        // b allows larger frames than a: a drops the connection, counts it.
        b.send(&a_id, &[2u8; 2000]).await.expect("b may send it");
        assert_eq!(next_event(&b).await, PeerEvent::Disconnected(a_id));
        eventually("a counts the oversized frame", || {
            a.stats().frames_too_large == 1
        })
        .await;
        assert_eq!(a.stats().frames_received, 1);
    })
    .await
    .expect("test bound");
}

/// A full receive queue holds a stream back instead of dropping from it: the sender's
/// frames wait (QUIC flow control), nothing is lost, order is kept, and the link still works.
#[tokio::test]
async fn a_full_receive_queue_holds_the_stream_back_and_loses_nothing() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let a = node_with(
            &ca,
            1,
            TransportConfig {
                peer_recv_queue: 4,
                ..fast_cfg()
            },
        );
        let b = node(&ca, 2);
        let a_id = a.node_id();
        b.connect(a.local_addr().expect("addr"), Some(a_id))
            .await
            .expect("connect");
        for i in 0u8..20 {
            b.send(&a_id, &[i]).await.expect("send");
        }
        eventually("the queue full and the stream held back", || {
            let s = a.stats();
            s.frames_queued == 4 && s.frames_backpressured >= 1
        })
        .await;
        let s = a.stats();
        assert_eq!(
            (s.frames_received, s.frames_dropped_queue_full),
            (4, 0),
            "{s:?}"
        );
        for i in 0u8..20 {
            assert_eq!(
                &a.recv().await.expect("recv").2[..],
                &[i],
                "in order, none lost"
            );
        }
        // Still connected and working.
        b.send(&a_id, b"after").await.expect("send");
        assert_eq!(&a.recv().await.expect("recv").2[..], b"after");
        assert_eq!(a.stats().frames_dropped_queue_full, 0);
    })
    .await
    .expect("test bound");
}

/// Test-only peer-exchange message: 32-byte id + address text, repeated.
fn encode_peers(peers: &[(NodeId, SocketAddr)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, addr) in peers {
        let a = addr.to_string();
        out.extend_from_slice(&id.0);
        out.push(a.len() as u8);
        out.extend_from_slice(a.as_bytes());
    }
    out
}

fn decode_peers(mut b: &[u8]) -> Vec<(NodeId, SocketAddr)> {
    let mut out = Vec::new();
    while b.len() > 33 {
        let id = NodeId(b[..32].try_into().expect("32"));
        let n = usize::from(b[32]);
        let addr = std::str::from_utf8(&b[33..33 + n])
            .expect("utf8")
            .parse()
            .expect("addr");
        out.push((id, addr));
        b = &b[33 + n..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_bootstrap_from_one_seed_and_all_connect() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let nodes: Vec<Arc<Transport>> = (1..=5).map(|n| Arc::new(node(&ca, n))).collect();
        let seed_node = nodes[0].clone();
        let seed_addr = seed_node.local_addr().expect("addr");
        let start = Instant::now();

        // 1. Everyone dials the seed, knowing only its address.
        for n in &nodes[1..] {
            let pc = n.connect(seed_addr, None).await.expect("dial seed");
            assert_eq!(pc.node_id, seed_node.node_id());
        }
        eventually("seed sees 4 peers", || seed_node.peers().len() == 4).await;

        // 2. Peer exchange: the seed tells each node about the others (the
        //    addresses it saw are their listening addresses).
        let known = seed_node.peers();
        for (id, _) in &known {
            seed_node
                .send(id, &encode_peers(&known))
                .await
                .expect("send peer list");
        }

        // 3. Each node dials every peer it learnt of, pinning the id.
        let mut tasks = Vec::new();
        for n in &nodes[1..] {
            let n = Arc::clone(n);
            tasks.push(tokio::spawn(async move {
                let (from, _, list) = n.recv().await.expect("peer list");
                assert_eq!(from, dalek_id(&seed(1)));
                for (id, addr) in decode_peers(&list) {
                    if id != n.node_id() {
                        let pc = n.connect(addr, Some(id)).await.expect("dial peer");
                        assert_eq!(pc.node_id, id);
                    }
                }
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let everyone: BTreeSet<NodeId> = nodes.iter().map(|n| n.node_id()).collect();
        for n in &nodes {
            eventually("full mesh", || n.peers().len() == 4).await;
            let mut want = everyone.clone();
            want.remove(&n.node_id());
            let got: BTreeSet<NodeId> = n.peers().into_iter().map(|(id, _)| id).collect();
            assert_eq!(got, want);
        }
        println!("5-node mesh from one seed formed in {:?}", start.elapsed());

        // Every pair can talk over whatever link it ended up with.
        for a in &nodes {
            for (peer, _) in a.peers() {
                a.send(&peer, &a.node_id().0).await.expect("send");
            }
        }
        for n in &nodes {
            let mut from = BTreeSet::new();
            for _ in 0..4 {
                let (id, _, p) = n.recv().await.expect("recv");
                assert_eq!(&p[..], &id.0);
                from.insert(id);
            }
            assert_eq!(from.len(), 4);
        }
    })
    .await
    .expect("test bound");
}

#[tokio::test]
async fn simultaneous_dials_leave_both_sides_connected() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let a = node(&ca, 1);
        let b = node(&ca, 2);
        let (a_addr, b_addr) = (a.local_addr().expect("a"), b.local_addr().expect("b"));
        let (ra, rb) = tokio::join!(
            a.connect(b_addr, Some(b.node_id())),
            b.connect(a_addr, Some(a.node_id()))
        );
        ra.expect("a dials b");
        rb.expect("b dials a");
        // Exactly one Connected event each, however many links formed.
        assert!(matches!(next_event(&a).await, PeerEvent::Connected(..)));
        assert!(matches!(next_event(&b).await, PeerEvent::Connected(..)));
        a.send(&b.node_id(), b"1").await.expect("send");
        b.send(&a.node_id(), b"2").await.expect("send");
        assert_eq!(&b.recv().await.expect("recv").2[..], b"1");
        assert_eq!(&a.recv().await.expect("recv").2[..], b"2");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(a.stats().events_dropped, 0);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), a.next_event())
                .await
                .is_err(),
            "no spurious events"
        );
    })
    .await
    .expect("test bound");
}

#[tokio::test]
async fn incoming_connections_over_the_limit_are_refused() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let a = node_with(
            &ca,
            1,
            TransportConfig {
                max_connections: 1,
                outgoing_reserve: 0,
                ..fast_cfg()
            },
        );
        let (b, c) = (node(&ca, 2), node(&ca, 3));
        let a_addr = a.local_addr().expect("addr");
        b.connect(a_addr, None).await.expect("first fits");
        assert!(c.connect(a_addr, None).await.is_err(), "second refused");
        let s = a.stats();
        assert_eq!(
            (s.incoming_refused, s.incoming_refused_connection_cap),
            (1, 1)
        );
        assert_eq!(a.peers().len(), 1);
    })
    .await
    .expect("test bound");
}

/// A client with a valid certificate that speaks garbage on its stream.
#[tokio::test]
async fn a_peer_breaking_the_stream_protocol_is_disconnected_and_counted() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let a = node(&ca, 1);
        let s = seed(7);
        let cert = ca
            .issue(dalek_id(&s).0, Duration::from_secs(600))
            .expect("issue");
        let verifier =
            mesh_transport::verify::MeshServerVerifier::new(ca.cert_der(), Some(a.node_id()))
                .expect("verifier");
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![cert], mesh_transport::node_private_key(&s))
        .expect("client cert");
        tls.alpn_protocols = vec![mesh_transport::endpoint::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic");
        let mut ep = quinn::Endpoint::client(loopback()).expect("endpoint");
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
        let conn = ep
            .connect(a.local_addr().expect("addr"), "x")
            .expect("dial")
            .await
            .expect("handshake");
        assert_eq!(
            next_event(&a).await,
            PeerEvent::Connected(dalek_id(&s), ep.local_addr().expect("addr"))
        );
        let mut tx = conn.open_uni().await.expect("stream");
        tx.write_all(b"GET / HTTP/1.1\r\n").await.expect("write");
        let why = tokio::time::timeout(Duration::from_secs(5), conn.closed())
            .await
            .expect("a closes the connection");
        println!("garbage speaker closed: {why}");
        assert_eq!(next_event(&a).await, PeerEvent::Disconnected(dalek_id(&s)));
        assert_eq!(a.stats().protocol_errors, 1);
    })
    .await
    .expect("test bound");
}
