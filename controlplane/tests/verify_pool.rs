//! Nodes that verify signatures on a pool of worker threads (fed by bounded
//! queues from the receive tile) deliver every valid message, reject forged
//! ones, and export per-worker counters.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use controlplane::config::Config;
use controlplane::node::{self, NodeHandle};
use dataplane::identity::Identity;
use dataplane::tile::wall_us;
use dataplane::wire::{self, Kind};
use tokio::time::{Instant, sleep};

fn config(dir: &std::path::Path, i: usize, bootstrap: Vec<SocketAddr>) -> Config {
    let mut c = Config::default();
    c.node.key_file = dir.join(format!("v{i}.key"));
    c.node.listen = "127.0.0.1:0".parse().unwrap();
    c.node.api_listen = "127.0.0.1:0".parse().unwrap();
    c.node.bootstrap = bootstrap;
    c.gossip.heartbeat_interval_ms = 100;
    c.gossip.peer_exchange_interval_ms = 100;
    c.gossip.anti_entropy_interval_ms = 100;
    c.dataplane.verify_workers = 2;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_verifying_on_worker_threads_delivers_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<NodeHandle> =
        vec![node::start(config(dir.path(), 0, vec![])).await.unwrap()];
    let seed = nodes[0].udp_addr();
    for i in 1..4 {
        nodes.push(
            node::start(config(dir.path(), i, vec![seed]))
                .await
                .unwrap(),
        );
    }
    let t0 = Instant::now();
    loop {
        let mut ready = true;
        for n in &nodes {
            ready &= n.status().await.is_some_and(|s| s.peers_live == 3);
        }
        if ready {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "mesh did not form");
        sleep(Duration::from_millis(25)).await;
    }
    let mut subs: Vec<_> = nodes.iter().map(|n| n.subscribe()).collect();
    let mut ids = HashSet::new();
    for k in 0..10 {
        for p in [0, 2] {
            ids.insert(
                nodes[p]
                    .publish("t", format!("{k}/{p}").as_bytes())
                    .await
                    .unwrap()
                    .id,
            );
        }
    }
    // Forgeries straight at every node.
    let attacker = Identity::generate().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut payload = Vec::new();
    let mut buf = Vec::new();
    wire::data_payload("t", b"FORGED", &mut payload).unwrap();
    for (k, n) in nodes.iter().enumerate() {
        attacker
            .seal(Kind::Data, 1, k as u64, wall_us(), &payload, &mut buf)
            .unwrap();
        buf[16..48].copy_from_slice(&nodes[0].id().0);
        sock.send_to(&buf, n.udp_addr()).unwrap();
    }
    let t0 = Instant::now();
    let mut got: Vec<HashSet<String>> = vec![HashSet::new(); nodes.len()];
    loop {
        for (i, s) in subs.iter_mut().enumerate() {
            while let Ok(d) = s.try_recv() {
                assert_ne!(
                    d.text.as_deref(),
                    Some("FORGED"),
                    "node {i} delivered a forgery"
                );
                got[i].insert(d.id.clone());
            }
        }
        if got.iter().all(|g| ids.is_subset(g)) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "not all delivered: {:?}",
            got.iter().map(HashSet::len).collect::<Vec<_>>()
        );
        sleep(Duration::from_millis(25)).await;
    }
    sleep(Duration::from_millis(200)).await;
    for (i, n) in nodes.iter().enumerate() {
        let st = n.status().await.unwrap();
        assert!(
            st.dropped["bad_signature"] >= 1,
            "node {i}: forgery counted"
        );
        // Every received datagram is accounted for.
        common::wait_balanced(n, &format!("node {i}")).await;
        let m = n.metrics_text();
        let sigs: u64 = m
            .lines()
            .filter(|l| l.starts_with("mesh_verify_signatures_total{mesh_verify_worker=\"0/"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        assert!(sigs > 0, "node {i}: workers verified nothing\n{m}");
    }
    for n in nodes {
        n.shutdown().await;
    }
}
