//! Nodes on the protocol cores that verify signatures on a pool of worker threads
//! (fed by bounded queues from the receive tile) deliver every valid message, reject
//! forged ones (a member's origin, another key's signature), and export per-worker
//! counters.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::{status_json, wait_async};
use controlplane::node::{self, NodeHandle};
use dataplane::clock::wall_us;
use dataplane::identity::Identity;
use dataplane::wire::{self, Kind};
use tokio::time::{Instant, sleep};

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 8, 1 + i as u8], 7400))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_verifying_on_worker_threads_delivers_and_rejects() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::mesh_ca(dir.path(), "ca");
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for i in 0..4 {
        let seeds = if i == 0 { vec![] } else { vec![addr(0)] };
        let mut c = common::member_config(&ca, dir.path(), &format!("v{i}"), addr(i), seeds, 4);
        c.dataplane.verify_workers = 2;
        nodes.push(node::start(c).await.unwrap());
    }
    wait_async("the mesh to form", Duration::from_secs(10), async || {
        for n in &nodes {
            let o = &status_json(n).await["overlay"];
            if o["members"]["alive"] != 3 || o["admitted"] != 4 {
                return false;
            }
        }
        true
    })
    .await;
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
