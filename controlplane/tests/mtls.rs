//! Zero trust between nodes: control traffic runs over QUIC with mutual TLS, always.
//! Nodes holding a certificate from the mesh CA for their own key form the mesh and
//! deliver; a node with another CA's certificate never becomes a member anywhere, and data
//! signed by it is dropped before its signature is checked. A node whose certificate does
//! not fit (none at all, another CA's under this mesh's trust, or another node's) does not
//! start.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{status_json, wait_async};
use controlplane::config::Config;
use controlplane::node::{self, NodeHandle};
use dataplane::clock::wall_us;
use dataplane::wire::{self, Kind};
use tokio::time::{Instant, sleep};

fn addr(i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 5, i], 7400))
}

/// Members this node believes alive and origins it admits.
async fn membership(n: &NodeHandle) -> (u64, u64) {
    let o = &status_json(n).await["overlay"];
    (
        o["members"]["alive"].as_u64().unwrap_or(0),
        o["admitted"].as_u64().unwrap_or(0),
    )
}

/// Why `cfg` does not start.
async fn refused(cfg: Config) -> String {
    match node::start(cfg).await {
        Ok(n) => {
            n.shutdown().await;
            panic!("a node with an unfit certificate started");
        }
        Err(e) => format!("{e:#}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_nodes_with_a_mesh_certificate_join_and_publish() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::mesh_ca(dir.path(), "ca");
    let rogue_ca = common::mesh_ca(dir.path(), "rogue-ca");
    let member = |i: u8, seeds: Vec<SocketAddr>| {
        common::member_config(&ca, dir.path(), &format!("n{i}"), addr(i), seeds, 3)
    };

    let a = node::start(member(1, vec![])).await.unwrap();
    let b = node::start(member(2, vec![addr(1)])).await.unwrap();
    let c = node::start(member(3, vec![addr(1)])).await.unwrap();
    wait_async(
        "members to form a mesh over mutual TLS",
        Duration::from_secs(10),
        async || {
            for n in [&a, &b, &c] {
                if membership(n).await != (2, 3) {
                    return false;
                }
            }
            true
        },
    )
    .await;
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
    let rogue_cfg = common::member_config(&rogue_ca, dir.path(), "n4", addr(4), vec![addr(1)], 3);
    let outsider = common::identity(&rogue_cfg);
    let rogue = node::start(rogue_cfg).await.unwrap();

    // Nodes whose certificate does not fit do not start at all: no certificate, another
    // CA's certificate under this mesh's CA, a member's certificate with another key.
    let mut none = member(5, vec![addr(1)]);
    none.tls.cert = dir.path().join("missing.crt");
    let err = refused(none).await;
    assert!(err.contains("missing.crt"), "{err}");
    let mut foreign = member(6, vec![addr(1)]);
    foreign.tls.cert = dir.path().join("n4.crt");
    let err = refused(foreign).await;
    assert!(err.contains("certificate"), "{err}");
    let mut stolen = member(7, vec![addr(1)]);
    stolen.tls.cert = dir.path().join("n2.crt");
    let err = refused(stolen).await;
    assert!(err.contains("certificate"), "{err}");

    sleep(Duration::from_millis(1500)).await;
    let ro = &status_json(&rogue).await["overlay"];
    assert_eq!(ro["active"], 0, "the outsider found neighbours: {ro}");
    assert_eq!(
        ro["members"]["alive"], 0,
        "the outsider found members: {ro}"
    );
    for (name, n) in [("a", &a), ("b", &b), ("c", &c)] {
        assert_eq!(
            membership(n).await,
            (2, 3),
            "member {name} admitted an outsider"
        );
    }

    // Data signed by the outsider, sent straight at a member, is dropped
    // before verification.
    let before = a.status().await.unwrap().dropped["unknown_origin"];
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
    for n in [a, b, c, rogue] {
        n.shutdown().await;
    }
}
