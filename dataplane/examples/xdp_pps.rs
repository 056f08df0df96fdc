//! Packets per second a node sustains on veth, fed by the BPF_PROG_RUN
//! live-frames generator, as ratios to two baselines measured in the same
//! run:
//!
//! - `bare_xdp_drop`: an XDP program that counts and drops;
//! - `bare_afxdp_rx`: the mesh XDP program + an AF_XDP socket whose loop
//!   receives and releases frames without looking at them;
//!
//! and the node's cases:
//!
//! - (a) `junk_xdp_drop`: bad-magic datagrams dropped in XDP;
//! - (b) `dup_userspace`: one valid signed datagram repeated: redirected,
//!   parsed and dropped by the seen-cache in user space;
//! - (c) `new_valid`: distinct signed datagrams through parse → dedup →
//!   Ed25519 verify (verify-bound by design).
//!
//! Two namespaces (generator, node) joined by a veth pair; the generator is
//! pinned to core 0, the node to core 1. Needs root.
//!
//! `cargo run --release -p dataplane --example xdp_pps -- [packets]`
//! (or `scripts/bench-xdp`).

#[allow(dead_code)]
#[path = "../tests/common/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dataplane::backend::{Backend, RxView};
use dataplane::clock::wall_us;
use dataplane::identity::Identity;
use dataplane::pipeline::{DropReason, Pipeline, PipelineConfig};
use dataplane::wire::Kind;
use dataplane::xdp::bench::BenchXdp;
use dataplane::xdp::{self, AttachPolicy, MeshXdp, Reason, XdpSettings};
use dataplane::xsk::{XskConfig, XskSocket, frame};
use netns::NetNs;

const PORT: u16 = 7946;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Receiver {
    BareDrop,
    AfXdpDrop,
    Pipeline,
}

#[derive(Default, Debug)]
struct Outcome {
    /// Packets handled by the stage being measured.
    handled: u64,
    /// Time from first to last handled packet (user-space cases).
    busy: Duration,
    accepted: u64,
    duplicates: u64,
    xdp_drops: u64,
    /// Generator time (all frames).
    gen_time: Duration,
    /// AF_XDP counters of the node socket.
    xsk: Option<dataplane::xsk::XskStats>,
}

fn frame_to_node(src_mac: [u8; 6], dst_mac: [u8; 6], payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 1600];
    let src: SocketAddr = "10.99.0.2:5000".parse().unwrap_or_else(|_| unreachable!());
    let dst: SocketAddr = format!("10.99.0.1:{PORT}")
        .parse()
        .unwrap_or_else(|_| unreachable!());
    let n = frame::write_udp(&mut buf, src_mac, dst_mac, src, dst, payload, 0).unwrap_or(0);
    buf.truncate(n);
    buf
}

struct Bench {
    gen_ns: NetNs,
    node_ns: NetNs,
    frames_mac: ([u8; 6], [u8; 6]),
}

impl Bench {
    fn run(&self, receiver: Receiver, frames: Vec<Vec<u8>>, repeat: u32) -> Outcome {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = mpsc::channel();
        let stop2 = stop.clone();
        let node = self.node_ns.spawn(move || {
            core_affinity::set_for_current(core_affinity::CoreId { id: 1 });
            node_loop(receiver, ready_tx, stop2)
        });
        if ready_rx.recv_timeout(Duration::from_secs(20)).is_err() {
            stop.store(true, Ordering::Relaxed);
            eprintln!(
                "node failed to start: {:?}",
                node.join().map(|r| r.map(|_| ()))
            );
            std::process::exit(1);
        }
        let generator = self.gen_ns.spawn(move || -> Result<Duration, String> {
            core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
            let g = BenchXdp::load().map_err(|e| e.to_string())?;
            g.set_target(xdp::ifindex("g0").map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
            let mut total = Duration::ZERO;
            for f in &frames {
                total += g.generate(f, repeat).map_err(|e| e.to_string())?;
            }
            Ok(total)
        });
        let gen_time = match generator.join() {
            Ok(Ok(Ok(t))) => t,
            other => {
                stop.store(true, Ordering::Relaxed);
                eprintln!("generator failed: {:?}", other.map(|r| r.map(|_| ())));
                std::process::exit(1);
            }
        };
        // Let the receiver drain, bounded.
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        let mut out = match node.join() {
            Ok(Ok(o)) => o,
            _ => {
                eprintln!("node thread failed");
                std::process::exit(1);
            }
        };
        out.gen_time = gen_time;
        if out.busy.is_zero() {
            out.busy = gen_time;
        }
        out
    }
}

fn node_loop(receiver: Receiver, ready: mpsc::Sender<()>, stop: Arc<AtomicBool>) -> Outcome {
    let mut out = Outcome::default();
    let ifindex = match xdp::ifindex("n0") {
        Ok(i) => i,
        Err(e) => {
            eprintln!("{e}");
            return out;
        }
    };
    if receiver == Receiver::BareDrop {
        let mut b = match BenchXdp::load() {
            Ok(b) => b,
            Err(e) => {
                eprintln!("{e}");
                return out;
            }
        };
        if let Err(e) = b.attach_drop(ifindex) {
            eprintln!("{e}");
            return out;
        }
        let _ = ready.send(());
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
        out.handled = b.drop_count().unwrap_or(0);
        out.xdp_drops = out.handled;
        return out;
    }
    let mut x = match MeshXdp::load(&XdpSettings::default()) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("{e}");
            return out;
        }
    };
    if let Err(e) = x.attach("n0", AttachPolicy::Native) {
        eprintln!("{e}");
        return out;
    }
    let local: SocketAddr = format!("10.99.0.1:{PORT}")
        .parse()
        .unwrap_or_else(|_| unreachable!());
    let mut cfg = XskConfig::veth("n0", local);
    cfg.frame_count = 8192;
    cfg.fill_ring = 4096;
    let mut sock = match XskSocket::open(&cfg, x.control()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return out;
        }
    };
    let mut pipeline = Pipeline::new(PipelineConfig {
        replay_window_us: 600_000_000,
        max_clock_skew_us: 600_000_000,
        dedup_capacity: 1 << 16,
        dedup_seed: 7,
    });
    let start = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let _ = ready.send(());
    while !stop.load(Ordering::Relaxed) {
        let n = match sock.recv_batch() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("recv: {e}");
                break;
            }
        };
        if n == 0 {
            continue;
        }
        let now = Instant::now();
        first.get_or_insert(now);
        if receiver == Receiver::Pipeline {
            let (rx, _tx) = sock.halves();
            let mut views = [&[][..]; 256];
            for (i, v) in views.iter_mut().enumerate().take(rx.len()) {
                *v = rx.packet(i);
            }
            let mut acc = Vec::with_capacity(n);
            let t = start.elapsed().as_nanos() as u64;
            pipeline.process(t, wall_us(), &views[..rx.len()], &mut acc);
            for a in &acc {
                pipeline.commit(a.key, t);
            }
        }
        out.handled += n as u64;
        last = Instant::now();
    }
    if let Some(f) = first {
        out.busy = last.duration_since(f);
    }
    out.xsk = Some(sock.stats());
    let c = pipeline.counters();
    out.accepted = c.accepted_total();
    out.duplicates = c.dropped[DropReason::Duplicate as usize];
    if let Ok(xc) = x.control().counters() {
        out.xdp_drops = Reason::ALL
            .iter()
            .filter(|r| r.is_drop())
            .map(|r| xc[*r as usize])
            .sum();
    }
    out
}

fn mpps(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        return 0.0;
    }
    n as f64 / d.as_secs_f64() / 1e6
}

fn main() {
    let packets: u32 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2_000_000);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("xdp_pps needs root (BPF, namespaces)");
        std::process::exit(2);
    }
    let (gen_ns, node_ns) = match (NetNs::new("bg"), NetNs::new("bn")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("namespaces: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = netns::veth(
        &gen_ns,
        "g0",
        "10.99.0.2/24",
        &node_ns,
        "n0",
        "10.99.0.1/24",
    ) {
        eprintln!("veth: {e}");
        std::process::exit(1);
    }
    let macs = match (netns::mac(&gen_ns, "g0"), netns::mac(&node_ns, "n0")) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            eprintln!("cannot read MACs");
            std::process::exit(1);
        }
    };
    let bench = Bench {
        gen_ns,
        node_ns,
        frames_mac: macs,
    };
    let id = Identity::from_seed([9; 32]);
    let seal = |seq: u64| {
        let mut d = Vec::new();
        let _ = id.seal(
            Kind::Data,
            4,
            seq,
            wall_us(),
            b"\x05topicbench payload",
            &mut d,
        );
        frame_to_node(bench.frames_mac.0, bench.frames_mac.1, &d)
    };
    let good = seal(0);
    let mut junk = good.clone();
    junk[14 + 20 + 8] = b'X';

    println!("xdp_pps: {packets} packets per case, veth, generator core 0, node core 1");
    let base_drop = bench.run(Receiver::BareDrop, vec![good.clone()], packets);
    let base_drop_pps = mpps(base_drop.handled, base_drop.busy);
    let base_rx = bench.run(Receiver::AfXdpDrop, vec![good.clone()], packets);
    let base_rx_pps = mpps(base_rx.handled, base_rx.busy);
    let a = bench.run(Receiver::Pipeline, vec![junk], packets);
    let a_pps = mpps(a.xdp_drops, a.busy);
    let b = bench.run(Receiver::Pipeline, vec![good], packets);
    let b_pps = mpps(b.handled, b.busy);
    let distinct: Vec<Vec<u8>> = (1..=5000u64).map(seal).collect();
    let c = bench.run(Receiver::Pipeline, distinct, 1);
    let c_pps = mpps(c.accepted, c.busy);

    let ratio = |x: f64, base: f64| if base > 0.0 { x / base } else { 0.0 };
    println!(
        "{:<18} {:>10} {:>10} {:>14} {:>14}",
        "case", "handled", "Mpps", "/bare_xdp_drop", "/bare_afxdp_rx"
    );
    for (name, n, p) in [
        ("bare_xdp_drop", base_drop.handled, base_drop_pps),
        ("bare_afxdp_rx", base_rx.handled, base_rx_pps),
        ("a_junk_xdp_drop", a.xdp_drops, a_pps),
        ("b_dup_userspace", b.handled, b_pps),
        ("c_new_valid", c.accepted, c_pps),
    ] {
        println!(
            "{name:<18} {n:>10} {p:>10.3} {:>14.3} {:>14.3}",
            ratio(p, base_drop_pps),
            ratio(p, base_rx_pps)
        );
    }
    for (name, o) in [("bare_afxdp_rx", &base_rx), ("b_dup_userspace", &b)] {
        println!(
            "{name}: generator {:.3} Mpps offered, user space busy {:?}, {:?}",
            mpps(u64::from(packets), o.gen_time),
            o.busy,
            o.xsk
        );
    }
    println!(
        "b: {} duplicates dropped in user space, {} accepted; c: {} of 5000 accepted",
        b.duplicates, b.accepted, c.accepted
    );
}
