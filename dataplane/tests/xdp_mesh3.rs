//! Three mesh nodes, each in its own network namespace, joined by veth
//! pairs to a bridge in a fourth namespace; XDP (native) + AF_XDP (copy) on
//! every node, running the shared pipeline (parse → replay window → dedup
//! → Ed25519 verify) on each batch:
//!
//! ```text
//!   A (10.88.0.1) ──┐
//!   B (10.88.0.2) ──┼── br0 (switch namespace)
//!   C (10.88.0.3) ──┘
//! ```
//!
//! A publishes signed messages to B only; B delivers and forwards through
//! its AF_XDP TX ring to C (never back to the sender); C delivers. Every
//! message must reach B and C. Meanwhile junk, a denied source and a
//! flooding source aim at B and must be dropped and counted in B's XDP.
//!
//! Needs root; prints why and returns otherwise. Bounded by deadlines.

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::netns::{NetNs, mac};
use common::packets::{PORT, datagram};
use dataplane::backend::{Backend, RxView, TxSink};
use dataplane::clock::wall_us;
use dataplane::identity::Identity;
use dataplane::pipeline::{Pipeline, PipelineConfig};
use dataplane::wire::{self, Kind};
use dataplane::xdp::{AttachPolicy, MeshXdp, Reason, XdpCounters, XdpSettings};
use dataplane::xsk::{XskConfig, XskSocket};

const N: u64 = 300;
const JUNK: u64 = 25;
const DENIED: u64 = 10;
const BURST: u64 = 1000;
const FLOOD: u64 = BURST + 200;

fn mono_ns(start: Instant) -> u64 {
    start.elapsed().as_nanos() as u64
}

struct NodeReport {
    delivered: Vec<u64>,
    counters: XdpCounters,
    forwarded: u64,
}

/// One node: receive, run the pipeline, deliver, forward to `peers` except
/// the sender with the hop limit decremented. A node with `publish` sends
/// those datagrams to its peers first.
/// What one node is told at start.
struct NodeSpec {
    ifname: &'static str,
    me: SocketAddr,
    peers: Vec<(SocketAddr, [u8; 6])>,
    publish: Vec<Vec<u8>>,
    rate: Option<(u64, u64)>,
    deny: Vec<IpAddr>,
}

fn run_node(
    spec: NodeSpec,
    ready: mpsc::Sender<()>,
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
) -> NodeReport {
    let NodeSpec {
        ifname,
        me,
        peers,
        publish,
        rate,
        deny,
    } = spec;
    let (pps, burst) = rate.unwrap_or((0, 64));
    let mut xdp = MeshXdp::load(&XdpSettings {
        ports: vec![PORT],
        rate_pps: pps,
        burst,
        ..XdpSettings::default()
    })
    .expect("load XDP");
    for ip in deny {
        xdp.control().deny(ip).expect("deny");
    }
    xdp.attach(ifname, AttachPolicy::Native).expect("attach");
    let mut cfg = XskConfig::veth(ifname, me);
    cfg.neighbours = peers.iter().map(|(a, m)| (a.ip(), *m)).collect();
    let mut sock = XskSocket::open(&cfg, xdp.control()).expect("xsk");
    let mut pipeline = Pipeline::new(PipelineConfig {
        replay_window_us: 60_000_000,
        max_clock_skew_us: 60_000_000,
        dedup_capacity: 1 << 14,
        dedup_seed: 0x1234_5678,
    });
    let start = Instant::now();
    ready.send(()).expect("ready");

    if !publish.is_empty() {
        for chunk in publish.chunks(32) {
            let mut msgs = Vec::new();
            for d in chunk {
                for (p, _) in &peers {
                    msgs.push((*p, &d[..]));
                }
                if let Ok(pk) = wire::Packet::parse(d) {
                    pipeline.mark_seen(pk.signature(), mono_ns(start));
                }
            }
            let mut off = 0;
            let deadline = Instant::now() + Duration::from_secs(10);
            while off < msgs.len() && Instant::now() < deadline {
                off += sock.tx().send_batch(&msgs[off..]).expect("publish");
                sock.tx().reap();
            }
            assert_eq!(off, msgs.len(), "published everything");
        }
    }

    let mut delivered = Vec::new();
    let mut forwarded = 0u64;
    let mut scratch: Vec<Vec<u8>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let n = sock.recv_batch().expect("recv");
        if n == 0 {
            sock.tx().reap();
            let _ = sock.poll_readable(5);
            continue;
        }
        let (rx, tx) = sock.halves();
        let views: Vec<&[u8]> = (0..rx.len()).map(|i| rx.packet(i)).collect();
        let mut accepted = Vec::with_capacity(views.len());
        pipeline.process(mono_ns(start), wall_us(), &views, &mut accepted);
        scratch.clear();
        let mut dests = Vec::new();
        for a in &accepted {
            delivered.push(a.packet.sequence());
            let hop = a.packet.hop_limit();
            if hop > 1 {
                let from = rx.from(a.index);
                for (p, _) in &peers {
                    if p.ip() != from.ip() {
                        let mut copy = a.packet.as_bytes().to_vec();
                        wire::set_hop_limit(&mut copy, hop - 1);
                        scratch.push(copy);
                        dests.push(*p);
                    }
                }
            }
        }
        let msgs: Vec<(SocketAddr, &[u8])> = dests
            .iter()
            .copied()
            .zip(scratch.iter().map(|v| &v[..]))
            .collect();
        let mut off = 0;
        let deadline = Instant::now() + Duration::from_secs(5);
        while off < msgs.len() && Instant::now() < deadline {
            off += tx.send_batch(&msgs[off..]).expect("forward");
            tx.reap();
        }
        forwarded += off as u64;
        progress.store(delivered.len() as u64, Ordering::Relaxed);
        let keys: Vec<u64> = accepted.iter().map(|a| a.key).collect();
        for k in keys {
            pipeline.commit(k, mono_ns(start));
        }
    }
    NodeReport {
        delivered,
        counters: xdp.control().counters().expect("counters"),
        forwarded,
    }
}

#[test]
fn three_namespaces_gossip_through_xdp_and_af_xdp_with_forwarding() {
    if !common::root_or_skip("three_namespaces_gossip_through_xdp_and_af_xdp_with_forwarding") {
        return;
    }
    let made = (|| -> std::io::Result<_> {
        let sw = NetNs::new("sw")?;
        let nodes = [NetNs::new("na")?, NetNs::new("nb")?, NetNs::new("nc")?];
        sw.ip(&["link", "add", "br0", "type", "bridge"])?;
        sw.ip(&["link", "set", "br0", "up"])?;
        for (i, ns) in nodes.iter().enumerate() {
            let port = format!("p{i}");
            std::process::Command::new("ip")
                .args([
                    "link",
                    "add",
                    "name",
                    "n0",
                    "netns",
                    ns.name(),
                    "type",
                    "veth",
                ])
                .args(["peer", "name", &port, "netns", sw.name()])
                .status()?
                .success()
                .then_some(())
                .ok_or_else(|| std::io::Error::other("ip link add veth"))?;
            ns.ip(&["addr", "add", &format!("10.88.0.{}/24", i + 1), "dev", "n0"])?;
            ns.ip(&["link", "set", "n0", "up"])?;
            sw.ip(&["link", "set", &port, "master", "br0"])?;
            sw.ip(&["link", "set", &port, "up"])?;
        }
        // Extra source addresses on A for the denied and flooding senders.
        nodes[0].ip(&["addr", "add", "10.88.0.11/24", "dev", "n0"])?;
        nodes[0].ip(&["addr", "add", "10.88.0.12/24", "dev", "n0"])?;
        Ok((sw, nodes))
    })();
    let (_sw, nodes) = match made {
        Ok(v) => v,
        Err(e) => {
            eprintln!("skipped: cannot build the namespaces: {e}");
            return;
        }
    };
    let addr =
        |i: usize| -> SocketAddr { format!("10.88.0.{}:{PORT}", i + 1).parse().expect("addr") };
    let macs: Vec<[u8; 6]> = nodes.iter().map(|n| mac(n, "n0").expect("mac")).collect();

    // A's messages, signed by a real identity: they go through verify.
    let id = Identity::from_seed([42; 32]);
    let now = wall_us();
    let publish: Vec<Vec<u8>> = (0..N)
        .map(|seq| {
            let mut out = Vec::new();
            id.seal(
                Kind::Data,
                8,
                seq,
                now,
                format!("\x05topicmsg {seq}").as_bytes(),
                &mut out,
            )
            .expect("seal");
            out
        })
        .collect();

    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel();
    // Start B and C first so nothing A sends is lost to a missing socket.
    let topo: [(usize, Vec<usize>); 3] = [(1, vec![0, 2]), (2, vec![1]), (0, vec![1])];
    let mut handles = Vec::new();
    let progress: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    for (i, peers) in topo {
        let peers: Vec<(SocketAddr, [u8; 6])> = peers.iter().map(|&p| (addr(p), macs[p])).collect();
        let (rate, deny, publish) = match i {
            1 => (
                Some((1, BURST)),
                vec!["10.88.0.12".parse().expect("ip")],
                Vec::new(),
            ),
            0 => (None, Vec::new(), publish.clone()),
            _ => (None, Vec::new(), Vec::new()),
        };
        let (ready, stop, prog) = (ready_tx.clone(), stop.clone(), progress[i].clone());
        let me = addr(i);
        handles.push((
            i,
            nodes[i].spawn(move || {
                run_node(
                    NodeSpec {
                        ifname: "n0",
                        me,
                        peers,
                        publish,
                        rate,
                        deny,
                    },
                    ready,
                    stop,
                    prog,
                )
            }),
        ));
        ready_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("node ready");
    }

    // Hostile traffic at B from A's namespace through the kernel stack.
    let b = addr(1);
    let attack = nodes[0].spawn(move || {
        let junk_sock = UdpSocket::bind("10.88.0.1:6001").expect("bind");
        for i in 0..JUNK {
            let mut d = datagram(Kind::Data, 4, i);
            d[8] = 9; // bad version
            junk_sock.send_to(&d, b).expect("junk");
        }
        let denied = UdpSocket::bind("10.88.0.12:6002").expect("bind");
        for i in 0..DENIED {
            denied
                .send_to(&datagram(Kind::Data, 4, i), b)
                .expect("denied");
        }
        let flood = UdpSocket::bind("10.88.0.11:6003").expect("bind");
        for i in 0..FLOOD {
            // Well-formed but forged: what passes the bucket dies in verify.
            flood
                .send_to(&datagram(Kind::Data, 4, i), b)
                .expect("flood");
            if i % 64 == 0 {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    });
    attack.join().expect("attack thread").expect("netns");

    // Wait (bounded) for B and C to deliver everything, then stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline
        && (progress[1].load(Ordering::Relaxed) < N || progress[2].load(Ordering::Relaxed) < N)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    // A moment for any stray duplicate to show up (it must not).
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::Relaxed);
    let mut reports = std::collections::HashMap::new();
    for (i, h) in handles {
        reports.insert(i, h.join().expect("node thread").expect("netns"));
    }
    let (ra, rb, rc) = (&reports[&0], &reports[&1], &reports[&2]);
    let sorted = |v: &Vec<u64>| {
        let mut s = v.clone();
        s.sort_unstable();
        s
    };
    let all: Vec<u64> = (0..N).collect();
    eprintln!(
        "A fwd {} | B delivered {} fwd {} xdp {:?} | C delivered {} xdp {:?}",
        ra.forwarded,
        rb.delivered.len(),
        rb.forwarded,
        rb.counters,
        rc.delivered.len(),
        rc.counters
    );
    assert_eq!(sorted(&rb.delivered), all, "B delivered every message once");
    assert_eq!(
        sorted(&rc.delivered),
        all,
        "C delivered every message once (via B's TX)"
    );
    assert!(
        ra.delivered.is_empty(),
        "A never hears its own messages back"
    );
    assert_eq!(rb.forwarded, N, "B forwarded each message to C only");
    assert_eq!(
        rc.counters[Reason::Redirect as usize],
        N,
        "C received B's forwards via XDP"
    );
    assert_eq!(rb.counters[Reason::DropBadVersion as usize], JUNK);
    assert_eq!(rb.counters[Reason::DropDenied as usize], DENIED);
    let limited = rb.counters[Reason::DropRateLimited as usize];
    assert!(
        limited >= FLOOD - BURST - 10,
        "flood over the bucket dropped in XDP: {limited}"
    );
}
