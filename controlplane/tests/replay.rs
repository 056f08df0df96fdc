//! No agent ever gets two bodies for one `(origin, sequence)`, and no message twice, also
//! across a restart (in-process nodes on loopback, protocol cores over mutual TLS):
//!
//! - a member that signs two bodies with one sequence number: the first is delivered, the
//!   second never is, on any node; the node that saw both flags the origin and gossips the
//!   pair as evidence, so its neighbour flags it too;
//! - a node restarted with the same key and state directory does not hand its agents again
//!   what it delivered before: neither a replayed datagram nor what anti-entropy brings back
//!   (the old code delivered both again).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::{status_json, wait_async as wait_for};
use controlplane::node::{self, NodeHandle};
use controlplane::service::Delivered;
use dataplane::clock::wall_us;
use dataplane::identity::Identity;
use dataplane::wire::{self, Kind};
use tokio::sync::broadcast;

fn addr(net: u8, i: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, net, 1 + i], 7400))
}

/// A data datagram signed by `who` with a chosen sequence.
fn sealed(who: &Identity, sequence: u64, topic: &str, body: &[u8]) -> Vec<u8> {
    let mut payload = Vec::new();
    wire::data_payload(topic, body, &mut payload).expect("payload");
    let mut out = Vec::new();
    who.seal(Kind::Data, 4, sequence, wall_us(), &payload, &mut out)
        .expect("seal");
    out
}

fn drain(rx: &mut broadcast::Receiver<Arc<Delivered>>, topic: &str) -> Vec<Arc<Delivered>> {
    let mut v = Vec::new();
    while let Ok(d) = rx.try_recv() {
        if d.topic == topic {
            v.push(d);
        }
    }
    v
}

async fn formed(nodes: &[&NodeHandle]) {
    let n = nodes.len() as u64;
    wait_for("mesh formed", Duration::from_secs(20), async || {
        for x in nodes {
            let s = status_json(x).await;
            if s["overlay"]["members"]["alive"].as_u64().unwrap_or(0) < n - 1
                || s["overlay"]["admitted"].as_u64().unwrap_or(0) < n
            {
                return false;
            }
        }
        true
    })
    .await;
}

/// Sum of every series of `name` (all label values).
fn metric_sum(n: &NodeHandle, name: &str) -> f64 {
    n.metrics_text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metric(n: &NodeHandle, name: &str) -> f64 {
    n.metrics_text()
        .lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_equivocating_origin_gets_one_body_delivered_and_is_flagged_by_evidence() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = common::mesh_ca(dir.path(), "ca");
    let cfg = |i: u8| {
        let seeds = if i == 0 { vec![] } else { vec![addr(31, 0)] };
        common::member_config(&ca, dir.path(), &format!("eq{i}"), addr(31, i), seeds, 3)
    };
    let cfgs: Vec<_> = (0..3).map(cfg).collect();
    let liar = common::identity(&cfgs[0]);
    let mut nodes = Vec::new();
    for c in cfgs {
        nodes.push(node::start(c).await.expect("start"));
    }
    let refs: Vec<&NodeHandle> = nodes.iter().collect();
    formed(&refs).await;
    let mut subs: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();

    // Node 0's key signs two bodies for one sequence; node 1 gets the first, then the second.
    let seq = 9_000_000_000_000_000;
    let first = sealed(&liar, seq, "eq", b"pay alice");
    let second = sealed(&liar, seq, "eq", b"pay mallory");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.send_to(&first, nodes[1].udp_addr()).expect("send");
    wait_for(
        "first body delivered at node 1",
        Duration::from_secs(10),
        async || nodes[1].status().await.is_some_and(|s| s.delivered >= 1),
    )
    .await;
    udp.send_to(&second, nodes[1].udp_addr()).expect("send");
    wait_for(
        "every node flags the origin",
        Duration::from_secs(10),
        async || {
            for n in &nodes[1..] {
                if n.status().await.map_or(0, |s| s.equivocating_origins) != 1 {
                    return false;
                }
            }
            true
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut bodies: HashMap<usize, Vec<String>> = HashMap::new();
    for (i, rx) in subs.iter_mut().enumerate() {
        let got = drain(rx, "eq");
        assert!(
            got.iter().all(|d| d.sequence == seq),
            "only the test's sequence"
        );
        bodies.insert(i, got.iter().filter_map(|d| d.text.clone()).collect());
    }
    assert_eq!(
        bodies[&1],
        vec!["pay alice".to_owned()],
        "node 1: the first body only"
    );
    for (i, b) in &bodies {
        assert!(
            b.len() <= 1,
            "node {i} got two bodies for one sequence: {b:?}"
        );
    }
    assert!(metric(&nodes[1], "mesh_gossip_equivocations") >= 1.0);
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_does_not_deliver_again_what_it_delivered_before() {
    let dir = tempfile::tempdir().expect("dir");
    let ca = common::mesh_ca(dir.path(), "ca");
    let a_cfg = common::member_config(&ca, dir.path(), "ra", addr(32, 0), vec![], 2);
    let mut b_cfg = common::member_config(&ca, dir.path(), "rb", addr(32, 1), vec![addr(32, 0)], 2);
    b_cfg.gossip.anti_entropy_interval_ms = 100;
    let origin = common::identity(&a_cfg);
    let a = node::start(a_cfg).await.expect("start a");
    let b = node::start(b_cfg.clone()).await.expect("start b");
    formed(&[&a, &b]).await;
    // The mutual-TLS transport's own counters are exported.
    assert!(metric_sum(&b, "mesh_transport_connections") >= 1.0);
    assert!(metric(&b, "mesh_transport_frames_received") >= 1.0);

    // Delivered at b before the restart: one message published through a, one sealed with
    // a's key and sent to b directly.
    let mut rx = b.subscribe();
    a.publish("once", b"published").await.expect("publish");
    let replayed = sealed(&origin, 7_000_000_000_000_000, "once", b"sent");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp");
    udp.send_to(&replayed, b.udp_addr()).expect("send");
    wait_for("both delivered at b", Duration::from_secs(10), async || {
        b.status().await.is_some_and(|s| s.delivered >= 2)
    })
    .await;
    assert_eq!(drain(&mut rx, "once").len(), 2);
    b.shutdown().await;

    // Same key, same state directory.
    // The old endpoint's tasks let go of its sockets shortly after the shutdown.
    let mut restarted = None;
    for _ in 0..50 {
        match node::start(b_cfg.clone()).await {
            Ok(n) => {
                restarted = Some(n);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let b = restarted.expect("restart b");
    let mut rx = b.subscribe();
    formed(&[&a, &b]).await;
    udp.send_to(&replayed, b.udp_addr()).expect("replay");
    // Anti-entropy brings a's stored messages back to b; the journal keeps them from the
    // agents.
    wait_for(
        "both messages back at b (replay and anti-entropy)",
        Duration::from_secs(15),
        async || metric(&b, "mesh_gossip_messages_redelivery_suppressed") >= 2.0,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = drain(&mut rx, "once");
    assert!(again.is_empty(), "re-delivered after a restart: {again:?}");
    assert_eq!(b.status().await.map_or(99, |s| s.delivered), 0);
    a.shutdown().await;
    b.shutdown().await;
}
