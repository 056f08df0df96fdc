//! Eight nodes on real UDP sockets (loopback), in one process, on the protocol
//! cores over mutual TLS: every message reaches every node; forged, tampered and
//! replayed messages are never delivered and are counted, and so is data from an
//! origin outside the mesh; nodes that leave or crash do not stop delivery to the
//! others, a crash is declared dead and a clean leave seen as `left`.

mod common;

use std::collections::HashSet;
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
use tokio::time::sleep;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([127, 0, 7, 1 + i as u8], 7400))
}

/// Collects deliveries of one node.
struct Sink {
    rx: broadcast::Receiver<Arc<Delivered>>,
    got: Vec<Arc<Delivered>>,
}

impl Sink {
    fn drain(&mut self) -> &[Arc<Delivered>] {
        while let Ok(d) = self.rx.try_recv() {
            self.got.push(d);
        }
        &self.got
    }
    fn ids(&mut self) -> HashSet<String> {
        self.drain().iter().map(|d| d.id.clone()).collect()
    }
}

async fn dropped(n: &NodeHandle, reason: &str) -> u64 {
    n.status().await.map_or(0, |s| s.dropped[reason])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_nodes_deliver_everything_reject_forgeries_and_survive_departures() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::mesh_ca(dir.path(), "ca");
    let cfgs: Vec<_> = (0..8)
        .map(|i| {
            let seeds = if i == 0 { vec![] } else { vec![addr(0)] };
            let mut c =
                common::member_config(&ca, dir.path(), &format!("node{i}"), addr(i), seeds, 8);
            c.dataplane.socket_rcvbuf = 4 << 20;
            c
        })
        .collect();
    // Node 7's key signs the hostile traffic below: a member's origin passes admission,
    // so the signature check and the replay window are what stop it.
    let insider = common::identity(&cfgs[7]);
    let mut nodes: Vec<NodeHandle> = Vec::new();
    for c in cfgs {
        nodes.push(node::start(c).await.unwrap());
    }
    wait_for("a mesh of 8", Duration::from_secs(20), async || {
        for n in &nodes {
            let st = status_json(n).await;
            let o = &st["overlay"];
            if o["members"]["alive"] != 7
                || o["admitted"].as_u64().unwrap_or(0) < 8
                || o["active"].as_u64().unwrap_or(0) == 0
            {
                return false;
            }
        }
        true
    })
    .await;

    let mut sinks: Vec<Sink> = nodes
        .iter()
        .map(|n| Sink {
            rx: n.subscribe(),
            got: Vec::new(),
        })
        .collect();

    // 3 publishers x 10 messages: everyone gets all 30.
    let mut expected = HashSet::new();
    for k in 0..10 {
        for p in [0, 3, 5] {
            let r = nodes[p]
                .publish("t", format!("m{k} from {p}").as_bytes())
                .await
                .unwrap();
            expected.insert(r.id);
        }
    }
    wait_for(
        "all 30 messages at all 8 nodes",
        Duration::from_secs(15),
        async || sinks.iter_mut().all(|s| expected.is_subset(&s.ids())),
    )
    .await;

    // Hostile traffic, signed with a member's key.
    let attacker = insider;
    let outsider = Identity::generate().unwrap();
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let victim = nodes[0].id().0;
    let mut payload = Vec::new();
    let mut buf = Vec::new();
    let mut valid_twice = Vec::new();
    let (mut before_sig, mut before_outsider) = (Vec::new(), Vec::new());
    for n in &nodes {
        before_sig.push(dropped(n, "bad_signature").await);
        before_outsider.push(dropped(n, "unknown_origin").await);
    }
    for n in &nodes {
        let to = n.udp_addr();
        // Forged origin.
        wire::data_payload("t", b"FORGED", &mut payload).unwrap();
        attacker
            .seal(Kind::Data, 1, 1, wall_us(), &payload, &mut buf)
            .unwrap();
        buf[16..48].copy_from_slice(&victim);
        sock.send_to(&buf, to).unwrap();
        // Tampered body.
        wire::data_payload("t", b"TAMPERED", &mut payload).unwrap();
        attacker
            .seal(Kind::Data, 1, 2, wall_us(), &payload, &mut buf)
            .unwrap();
        let i = buf.len() - wire::SIGNATURE_LEN - 1;
        buf[i] ^= 0x20;
        sock.send_to(&buf, to).unwrap();
        // Tampered hop-limit-free header field (sequence) with a valid signature.
        wire::data_payload("t", b"TAMPERED-SEQ", &mut payload).unwrap();
        attacker
            .seal(Kind::Data, 1, 3, wall_us(), &payload, &mut buf)
            .unwrap();
        buf[48] ^= 1;
        sock.send_to(&buf, to).unwrap();
        // Replayed: valid signature, ten minutes old.
        wire::data_payload("t", b"REPLAYED", &mut payload).unwrap();
        attacker
            .seal(
                Kind::Data,
                1,
                4,
                wall_us() - 600_000_000,
                &payload,
                &mut buf,
            )
            .unwrap();
        sock.send_to(&buf, to).unwrap();
        // Validly signed by a key outside the mesh: dropped before its signature is checked.
        wire::data_payload("t", b"OUTSIDER", &mut payload).unwrap();
        outsider
            .seal(Kind::Data, 1, 1, wall_us(), &payload, &mut buf)
            .unwrap();
        sock.send_to(&buf, to).unwrap();
    }
    // A valid message sent five times to every node: delivered once each.
    wire::data_payload("t", b"VALID-DUP", &mut payload).unwrap();
    attacker
        .seal(Kind::Data, 1, 5, wall_us(), &payload, &mut valid_twice)
        .unwrap();
    for _ in 0..5 {
        for n in &nodes {
            sock.send_to(&valid_twice, n.udp_addr()).unwrap();
        }
    }
    let dup_id = wire::Packet::parse(&valid_twice)
        .unwrap()
        .message_id()
        .to_hex();
    wait_for(
        "the valid message at every node",
        Duration::from_secs(10),
        async || sinks.iter_mut().all(|s| s.ids().contains(&dup_id)),
    )
    .await;
    sleep(Duration::from_millis(300)).await;
    for (i, (s, n)) in sinks.iter_mut().zip(&nodes).enumerate() {
        let got = s.drain();
        for d in got {
            let text = d.text.as_deref().unwrap_or("");
            assert!(
                !["FORGED", "TAMPERED", "TAMPERED-SEQ", "REPLAYED", "OUTSIDER"].contains(&text),
                "node {i} delivered a bad message: {text}"
            );
        }
        assert_eq!(
            got.iter().filter(|d| d.id == dup_id).count(),
            1,
            "node {i}: delivered once"
        );
        assert!(
            dropped(n, "bad_signature").await >= before_sig[i] + 3,
            "node {i}: 3 bad signatures counted"
        );
        assert!(
            dropped(n, "unknown_origin").await > before_outsider[i],
            "node {i}: the outsider's message counted"
        );
        assert!(
            dropped(n, "stale").await >= 1,
            "node {i}: replay counted as stale"
        );
        assert!(
            dropped(n, "duplicate").await >= 4,
            "node {i}: duplicates counted"
        );
        // Every received datagram is accounted for.
        common::wait_balanced(n, &format!("node {i}")).await;
    }

    // Node 7 crashes (no goodbye), node 6 leaves cleanly.
    let crashed = nodes.pop().unwrap();
    let crashed_addr = crashed.udp_addr();
    crashed.kill().await;
    let left = nodes.pop().unwrap();
    left.shutdown().await;
    sinks.truncate(6);

    let mut expected2 = HashSet::new();
    for k in 0..10 {
        for p in [0, 3] {
            let r = nodes[p]
                .publish("t", format!("after {k} from {p}").as_bytes())
                .await
                .unwrap();
            expected2.insert(r.id);
        }
    }
    wait_for(
        "messages after departures at the 6 remaining nodes",
        Duration::from_secs(15),
        async || sinks.iter_mut().all(|s| expected2.is_subset(&s.ids())),
    )
    .await;
    // The crash is detected (declared dead, not merely suspected), the clean leave is
    // seen as one, and no active view keeps the crashed node.
    wait_for(
        "the crash and the leave to be seen",
        Duration::from_secs(20),
        async || {
            for n in &nodes {
                let m = &status_json(n).await["overlay"]["members"];
                if m["alive"] != 5 || m["dead"] != 1 || m["left"] != 1 {
                    return false;
                }
                match n.peers().await {
                    Some(p) if p.iter().all(|p| p.addr != crashed_addr) => {}
                    _ => return false,
                }
            }
            true
        },
    )
    .await;

    // The metrics endpoint is served over HTTP by every node.
    let body = reqwest_like_get(nodes[0].api_addr(), "/metrics");
    assert!(
        body.contains("mesh_dataplane_packets_dropped_total{mesh_drop_reason=\"bad_signature\"}"),
        "{body}"
    );
    assert!(body.contains("mesh_gossip_dissemination_latency_seconds_bucket"));

    for n in nodes {
        n.shutdown().await;
    }
}

/// Minimal blocking HTTP GET (the agent API is plain HTTP/1.1).
fn reqwest_like_get(addr: SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
