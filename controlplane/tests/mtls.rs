//! Zero trust between nodes: with `[tls]` on, control traffic runs over QUIC
//! with mutual TLS. Nodes holding a certificate from the mesh CA for their own
//! key form the mesh and deliver; a node with another CA's certificate, and a
//! node without TLS, never become peers, and data signed by them is dropped
//! before its signature is checked.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use controlplane::config::Config;
use controlplane::node::{self, NodeHandle};
use dataplane::identity::Identity;
use dataplane::tile::wall_us;
use dataplane::wire::{self, Kind};
use mesh_transport::MeshCa;
use tokio::time::{Instant, sleep};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 5, i], 7400))
}

/// Writes a node key and a certificate for it from `ca`; returns the config.
fn member(
    dir: &Path,
    i: u8,
    ca: &MeshCa,
    ca_pem: &Path,
    bootstrap: Vec<SocketAddr>,
    tls: bool,
) -> Config {
    let seed = [i.wrapping_mul(37).wrapping_add(11); 32];
    let mut c = common::member_config(dir, &format!("n{i}"), seed, ca, ca_pem, addr(i), bootstrap);
    c.gossip.heartbeat_interval_ms = 100;
    c.gossip.peer_exchange_interval_ms = 100;
    c.gossip.anti_entropy_interval_ms = 100;
    c.tls.enabled = tls;
    c
}

async fn live(n: &NodeHandle) -> usize {
    n.status().await.map_or(0, |s| s.peers_live)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_a_mesh_certificate_join_and_publish() {
    let dir = tempfile::tempdir().unwrap();
    let ca = MeshCa::generate().unwrap();
    let ca_pem = dir.path().join("ca.crt");
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
    let rogue_ca = MeshCa::generate().unwrap();
    let rogue_pem = dir.path().join("rogue-ca.crt");
    std::fs::write(&rogue_pem, rogue_ca.cert_pem()).unwrap();

    let a = node::start(member(dir.path(), 1, &ca, &ca_pem, vec![], true))
        .await
        .unwrap();
    let b = node::start(member(dir.path(), 2, &ca, &ca_pem, vec![addr(1)], true))
        .await
        .unwrap();
    let c = node::start(member(dir.path(), 3, &ca, &ca_pem, vec![addr(1)], true))
        .await
        .unwrap();
    let t0 = Instant::now();
    while !(live(&a).await == 2 && live(&b).await == 2 && live(&c).await == 2) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "members did not form a mesh over mutual TLS"
        );
        sleep(Duration::from_millis(25)).await;
    }
    let mut subs = [a.subscribe(), b.subscribe(), c.subscribe()];
    let r = b.publish("t", b"from a member").await.unwrap();
    let t0 = Instant::now();
    let mut got = [false; 3];
    while !got.iter().all(|g| *g) {
        for (i, s) in subs.iter_mut().enumerate() {
            while let Ok(d) = s.try_recv() {
                got[i] |= d.id == r.id;
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "member message not delivered everywhere: {got:?}"
        );
        sleep(Duration::from_millis(25)).await;
    }

    // An outsider: its certificate comes from another CA, but its own
    // configuration trusts that CA, so it starts and keeps knocking.
    let mut rogue_cfg = member(dir.path(), 4, &rogue_ca, &rogue_pem, vec![addr(1)], true);
    rogue_cfg.tls.ca_cert = rogue_pem.clone();
    let rogue = node::start(rogue_cfg).await.unwrap();
    // A node without TLS at all.
    let plain = node::start(member(dir.path(), 5, &ca, &ca_pem, vec![addr(1)], false))
        .await
        .unwrap();
    sleep(Duration::from_millis(1500)).await;
    assert_eq!(live(&rogue).await, 0, "the outsider found peers");
    assert_eq!(live(&plain).await, 0, "the node without TLS found peers");
    for (name, n) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_eq!(live(n).await, 2, "member {name} admitted an outsider");
    }

    // Data signed by the outsider, sent straight at a member, is dropped
    // before verification.
    let before = a.status().await.unwrap().dropped["unknown_origin"];
    let outsider = Identity::from_seed([4u8.wrapping_mul(37).wrapping_add(11); 32]);
    let mut payload = Vec::new();
    let mut dgram = Vec::new();
    wire::data_payload("t", b"from the outsider", &mut payload).unwrap();
    outsider
        .seal(Kind::Data, 3, 1, wall_us(), &payload, &mut dgram)
        .unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.send_to(&dgram, addr(1)).unwrap();
    let r2 = rogue.publish("t", b"rogue publish").await.unwrap();
    sleep(Duration::from_millis(500)).await;
    assert!(a.status().await.unwrap().dropped["unknown_origin"] > before);
    for s in subs.iter_mut() {
        while let Ok(d) = s.try_recv() {
            assert_ne!(d.text.as_deref(), Some("from the outsider"));
            assert_ne!(d.id, r2.id);
        }
    }
    for n in [a, b, c, rogue, plain] {
        n.shutdown().await;
    }
}
