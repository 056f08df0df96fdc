//! Mutual TLS over QUIC on loopback: who may join, what each side learns.

mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::*;
use mesh_transport::{Error, MeshCa, PeerEvent, node_id_from_cert, node_private_key};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

#[tokio::test]
async fn two_nodes_exchange_frames_both_ways_and_see_each_others_ed25519_key() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let a = node(&ca, 1);
        let b = node(&ca, 2);
        let (a_id, b_id) = (dalek_id(&seed(1)), dalek_id(&seed(2)));
        assert_eq!(a.node_id(), a_id);

        let pc = b
            .connect(a.local_addr().expect("addr"), Some(a_id))
            .await
            .expect("b dials a");
        assert_eq!(pc.node_id, a_id, "dialer authenticated the server's key");
        assert!(!pc.reused);
        match next_event(&a).await {
            PeerEvent::Connected(id, addr) => {
                assert_eq!(id, b_id, "server authenticated the client's key");
                assert_eq!(addr, b.local_addr().expect("addr"));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            next_event(&b).await,
            PeerEvent::Connected(a_id, pc.remote_addr)
        );

        b.send(&a_id, b"hello a").await.expect("send b->a");
        a.send(&b_id, b"hello b").await.expect("send a->b");
        a.send(&b_id, b"").await.expect("empty frame");
        let (from, _, payload) = a.recv().await.expect("a recv");
        assert_eq!((from, &payload[..]), (b_id, &b"hello a"[..]));
        let (from, _, payload) = b.recv().await.expect("b recv");
        assert_eq!((from, &payload[..]), (a_id, &b"hello b"[..]));
        let (_, _, payload) = b.recv().await.expect("b recv");
        assert!(payload.is_empty());

        // Ordered delivery of many frames, the largest allowed among them.
        let big = vec![7u8; mesh_transport::MAX_FRAME_LEN];
        for i in 0u8..50 {
            b.send(&a_id, &[i]).await.expect("send");
        }
        b.send(&a_id, &big).await.expect("send max frame");
        for i in 0u8..50 {
            let (_, _, p) = a.recv().await.expect("recv");
            assert_eq!(&p[..], &[i]);
        }
        assert_eq!(a.recv().await.expect("recv").2.len(), big.len());

        // Datagrams land in the same queue.
        a.send_datagram(&b_id, Bytes::from_static(b"dgram"))
            .expect("datagram");
        let (from, _, p) = b.recv().await.expect("b recv datagram");
        assert_eq!((from, &p[..]), (a_id, &b"dgram"[..]));

        // Dialing again reuses the live connection, both by id and by address.
        let again = b
            .connect(a.local_addr().expect("addr"), Some(a_id))
            .await
            .expect("redial");
        assert!(again.reused);
        let by_addr = b
            .connect(a.local_addr().expect("addr"), None)
            .await
            .expect("redial by address");
        assert!(by_addr.reused && by_addr.node_id == a_id);
        assert_eq!(b.peers(), vec![(a_id, a.local_addr().expect("addr"))]);
        assert!(b.rtt(&a_id).is_some());

        // Losing the peer surfaces as an event.
        b.shutdown().await;
        assert!(b.recv().await.is_none(), "recv ends after shutdown");
        // Events drain (b may have queued its own Disconnected), then end.
        while let Some(ev) = b.next_event().await {
            assert_eq!(ev, PeerEvent::Disconnected(a_id));
        }
        drop(b);
        assert_eq!(next_event(&a).await, PeerEvent::Disconnected(b_id));
        assert!(!a.is_connected(&b_id));
        assert!(matches!(
            a.send(&b_id, b"x").await,
            Err(Error::NotConnected(_))
        ));
    })
    .await
    .expect("test bound");
}

#[tokio::test]
async fn node_key_from_seed_is_accepted_by_rustls_and_matches_dalek() {
    let ca = MeshCa::generate().expect("ca");
    let s = seed(3);
    let dalek = ed25519_dalek::SigningKey::from_bytes(&s);
    let cert = ca
        .issue(dalek.verifying_key().to_bytes(), Duration::from_secs(60))
        .expect("issue");
    assert_eq!(
        node_id_from_cert(&cert).expect("id").0,
        dalek.verifying_key().to_bytes(),
        "certificate key is the identity key"
    );
    assert_eq!(mesh_transport::node_id_from_seed(&s), dalek_id(&s));
    let PrivateKeyDer::Pkcs8(pkcs8) = node_private_key(&s) else {
        panic!("not PKCS#8")
    };
    let key = rustls::crypto::ring::sign::any_eddsa_type(&pkcs8).expect("rustls accepts key");
    let signer = key
        .choose_scheme(&[rustls::SignatureScheme::ED25519])
        .expect("ed25519 scheme");
    let sig = signer.sign(b"msg").expect("sign");
    let sig = ed25519_dalek::Signature::from_slice(&sig).expect("sig");
    dalek
        .verifying_key()
        .verify_strict(b"msg", &sig)
        .expect("same key as dalek");
    // rustls also checks that certificate and key match.
    rustls::sign::CertifiedKey::from_der(
        vec![cert],
        node_private_key(&s),
        &rustls::crypto::ring::default_provider(),
    )
    .expect("key matches certificate");
}

#[tokio::test]
async fn certificate_from_another_ca_is_rejected_when_it_dials() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let other = MeshCa::generate().expect("other ca");
        let a = node(&ca, 1);
        // The rogue trusts the real CA (so it would accept a) but holds a
        // certificate from another CA: only a's check can stop it.
        let rogue_cert = other
            .issue(dalek_id(&seed(9)).0, Duration::from_secs(3600))
            .expect("issue");
        let rogue = node_raw(9, rogue_cert, ca.cert_der().clone());
        let err = rogue
            .connect(a.local_addr().expect("addr"), Some(a.node_id()))
            .await
            .expect_err("a must refuse the rogue");
        println!("rogue as client: {err}");
        eventually("a counts the failed handshake", || {
            a.stats().incoming_handshakes_failed >= 1
        })
        .await;
        assert!(a.peers().is_empty());
    })
    .await
    .expect("test bound");
}

#[tokio::test]
async fn certificate_from_another_ca_is_rejected_when_it_accepts() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let other = MeshCa::generate().expect("other ca");
        let a = node(&ca, 1);
        let rogue_cert = other
            .issue(dalek_id(&seed(9)).0, Duration::from_secs(3600))
            .expect("issue");
        let rogue = node_raw(9, rogue_cert, ca.cert_der().clone());
        let err = a
            .connect(rogue.local_addr().expect("addr"), None)
            .await
            .expect_err("a must refuse the rogue server");
        println!("rogue as server: {err}");
        // Same CA name, different key: the chain's signature does not verify.
        let msg = err.to_string();
        assert!(
            msg.contains("BadSignature") || msg.contains("unknown issuer"),
            "{msg}"
        );
        assert!(a.peers().is_empty() && rogue.peers().is_empty());
    })
    .await
    .expect("test bound");
}

#[tokio::test]
async fn expired_certificate_is_rejected_in_both_directions() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let a = node(&ca, 1);
        let now = SystemTime::now();
        let expired = ca
            .issue_with_window(
                dalek_id(&seed(5)).0,
                now - Duration::from_secs(7200),
                now - Duration::from_secs(3600),
            )
            .expect("issue");
        // Bind refuses an expired certificate unless told not to check.
        let refused = mesh_transport::Transport::bind(
            loopback(),
            seed(5),
            expired.clone(),
            ca.cert_der().clone(),
            fast_cfg(),
        );
        assert!(matches!(refused, Err(Error::OwnCertificate(_))));
        let e = node_raw(5, expired, ca.cert_der().clone());

        let err = a
            .connect(e.local_addr().expect("addr"), None)
            .await
            .expect_err("expired server");
        assert!(err.to_string().contains("expired"), "{err}");
        let err = e
            .connect(a.local_addr().expect("addr"), None)
            .await
            .expect_err("expired client");
        println!("expired client: {err}");
        eventually("a counts the failed handshake", || {
            a.stats().incoming_handshakes_failed >= 1
        })
        .await;
        assert!(a.peers().is_empty() && e.peers().is_empty());
    })
    .await
    .expect("test bound");
}

#[tokio::test]
async fn dialing_with_a_wrong_expected_node_id_fails() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let a = node(&ca, 1);
        let b = node(&ca, 2);
        let err = b
            .connect(a.local_addr().expect("addr"), Some(dalek_id(&seed(3))))
            .await
            .expect_err("wrong id");
        println!("wrong id: {err}");
        assert!(err.to_string().contains("expected"), "{err}");
        assert!(b.peers().is_empty());
        // Dialing oneself is refused too.
        let err = a
            .connect(a.local_addr().expect("addr"), None)
            .await
            .expect_err("self");
        assert!(matches!(err, Error::SelfDial { .. }), "{err}");
    })
    .await
    .expect("test bound");
}

#[tokio::test]
async fn own_certificate_for_another_key_is_refused_at_bind() {
    let ca = MeshCa::generate().expect("ca");
    let cert = ca
        .issue(dalek_id(&seed(2)).0, Duration::from_secs(60))
        .expect("issue");
    let err = mesh_transport::Transport::bind(
        loopback(),
        seed(1),
        cert,
        ca.cert_der().clone(),
        fast_cfg(),
    )
    .expect_err("mismatch");
    assert!(matches!(err, Error::OwnCertificate(_)), "{err}");
}

/// Accepts any server certificate but checks handshake signatures: plays a
/// client that does not care who the server is.
#[derive(Debug)]
struct AcceptAnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[tokio::test]
async fn client_without_a_certificate_is_rejected() {
    tokio::time::timeout(TEST_BOUND, async {
        let ca = MeshCa::generate().expect("ca");
        let a = node(&ca, 1);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("tls13")
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
            .with_no_client_auth();
        tls.alpn_protocols = vec![mesh_transport::endpoint::ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(Arc::new(tls)).expect("quic");
        let mut ep = quinn::Endpoint::client(loopback()).expect("client endpoint");
        ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));

        // TLS 1.3 lets the client finish before the server has judged its
        // (missing) certificate, so the refusal may arrive as a close.
        match ep
            .connect(a.local_addr().expect("addr"), "x")
            .expect("dial")
            .await
        {
            Err(e) => println!("no-cert client refused in handshake: {e}"),
            Ok(conn) => {
                let why = tokio::time::timeout(Duration::from_secs(5), conn.closed())
                    .await
                    .expect("server closes the connection");
                println!("no-cert client closed: {why}");
                assert!(why.to_string().contains("certificate"), "{why}");
            }
        }
        eventually("a counts the failed handshake", || {
            a.stats().incoming_handshakes_failed >= 1
        })
        .await;
        assert!(a.peers().is_empty());
    })
    .await
    .expect("test bound");
}
