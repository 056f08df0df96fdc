//! `meshd` processes on the XDP + AF_XDP backend and the protocol cores (mutual
//! TLS on port + 1, which XDP passes to the kernel), each in its own network
//! namespace, joined by veth pairs to a bridge.
//!
//! Three nodes in a line (the two ends have no route to each other) and a fourth
//! namespace holding a misbehaving host: gossip crosses for real, every message
//! reaches every node, the middle node forwards through its AF_XDP TX, and junk,
//! over-rate and denied packets are counted as dropped in XDP.
//!
//! Four nodes with `tree = "plumtree"`: every message everywhere, Plumtree
//! prunes fed by the fast path's duplicate reports. (Four nodes make a full
//! mesh, where the rooted tree's origin reaches everyone directly; the rooted
//! tree runs end to end in `partition.rs` and `tests/overlay.rs`.)
//!
//! Needs root (CI runs as root); otherwise it says why and passes.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::{Daemon, Ns, collect, ctl, finish, plug, read_logs, try_status, wait};
use controlplane::config::{Backend, Config, TreeMode};
use controlplane::enroll::CaDir;

use dataplane::clock::wall_us;
use dataplane::identity::Identity;
use dataplane::wire::{self, Kind};

/// Node `name`'s config file: enrolled by `ca`, on XDP at `ip` (interface `n0`, 300
/// packets/s per source), `tune` adjusting the rest.
fn write_config(
    dir: &Path,
    ca: &CaDir,
    name: &str,
    ip: &str,
    bootstrap: &[&str],
    expected: u64,
    tune: impl FnOnce(&mut Config),
) -> PathBuf {
    let at = |ip: &str| SocketAddr::new(ip.parse().expect("ip"), 7400);
    let seeds = bootstrap.iter().map(|s| at(s)).collect();
    let mut c = common::member_config(ca, dir, name, at(ip), seeds, expected);
    c.node.api_listen = "127.0.0.1:7480".parse().unwrap();
    c.dataplane.backend = Backend::Xdp;
    c.dataplane.socket_rcvbuf = 4 << 20;
    let x = &mut c.dataplane.xdp;
    x.interface = "n0".to_owned();
    x.profile = "veth-test".to_owned();
    x.profiles_dir = PathBuf::from(format!("{}/../hw-profiles", env!("CARGO_MANIFEST_DIR")));
    x.rate_pps = 300;
    x.burst = 300;
    tune(&mut c);
    common::write_config(dir, name, &c)
}

fn counter(v: &serde_json::Value, section: &str, key: &str) -> u64 {
    v[section][key].as_u64().unwrap_or(0)
}

#[test]
fn three_meshd_nodes_on_xdp_in_namespaces() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!(
            "skipping three_meshd_nodes_on_xdp_in_namespaces: needs root for namespaces and XDP"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let sw = Ns::new("sw");
    sw.ip(&["link", "add", "br0", "type", "bridge"]);
    sw.ip(&["link", "set", "br0", "up"]);
    let names = ["a", "b", "c", "x"];
    let nss: Vec<Ns> = names.iter().map(|n| Ns::new(n)).collect();
    for (i, ns) in nss.iter().enumerate() {
        plug(
            &sw,
            "br0",
            ns,
            &format!("p{i}"),
            &format!("10.89.0.{}", i + 1),
        );
    }
    let (a, b, c, x) = (&nss[0], &nss[1], &nss[2], &nss[3]);
    // A and C cannot reach each other: B is the only path, so it must forward.
    a.ip(&["route", "add", "blackhole", "10.89.0.3/32"]);
    c.ip(&["route", "add", "blackhole", "10.89.0.1/32"]);
    let ca = common::mesh_ca(dir.path(), "ca");
    let cfgs = [
        write_config(dir.path(), &ca, "a", "10.89.0.1", &["10.89.0.2"], 3, |_| {}),
        write_config(dir.path(), &ca, "b", "10.89.0.2", &[], 3, |_| {}),
        write_config(dir.path(), &ca, "c", "10.89.0.3", &["10.89.0.2"], 3, |_| {}),
    ];
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let daemons: Vec<Daemon> = [a, b, c]
        .iter()
        .enumerate()
        .map(|(i, ns)| Daemon::meshd(ns, &cfgs[i], &log(names[i])))
        .collect();
    let logs = || read_logs(names[..3].iter().map(|n| (n.to_string(), log(n))));

    // Mesh forms on the XDP backend: everyone a member everywhere, the ends through B.
    wait(
        "the mesh to form",
        Duration::from_secs(20),
        || {
            [a, b, c].iter().all(|n| {
                try_status(n).is_some_and(|s| {
                    s["overlay"]["members"]["alive"] == 2 && s["overlay"]["admitted"] == 3
                })
            })
        },
        &logs,
    );
    for n in [a, b, c] {
        let s = try_status(n).unwrap_or_default();
        assert_eq!(s["backend"], "xdp", "{s}");
        assert_eq!(s["xdp_mode"], "native", "{s}");
    }

    // Subscribers on every node, then 20 messages from A and 20 from C.
    let subs: Vec<Child> = [a, b, c].iter().map(|ns| collect(ns, "t", 40)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut ids = Vec::new();
    for k in 0..20 {
        for (ns, who) in [(a, "a"), (c, "c")] {
            let r = ctl(ns, &["publish", "t", &format!("msg {k} from {who}")]);
            ids.push(r["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    for (i, sub) in subs.into_iter().enumerate() {
        let got = finish(sub, Duration::from_secs(20));
        for id in &ids {
            assert!(
                got.contains(id),
                "node {} missed {id}\n{}",
                names[i],
                logs()
            );
        }
    }

    // The middle node received through AF_XDP and forwarded through AF_XDP TX.
    let sb = ctl(b, &["status"]);
    assert!(counter(&sb, "xdp", "redirect") > 0, "{sb}");
    assert!(
        sb["forwarded"].as_u64().unwrap_or(0) > 0,
        "B forwarded nothing: {sb}"
    );

    // Junk, over-rate and denied packets from the misbehaving host die in XDP.
    let attacker = Identity::generate().unwrap();
    let mut payload = Vec::new();
    let mut good_shape = Vec::new();
    wire::data_payload("t", b"flood", &mut payload).unwrap();
    attacker
        .seal(Kind::Data, 1, 1, wall_us(), &payload, &mut good_shape)
        .unwrap();
    let n = good_shape.len();
    good_shape[n - 1] ^= 1; // bad signature, but well-formed for XDP
    let flood = good_shape.clone();
    x.run(move || {
        let s = UdpSocket::bind("10.89.0.4:0").unwrap();
        for _ in 0..50 {
            s.send_to(&[0xAAu8; 200], "10.89.0.2:7400").unwrap();
        }
        for _ in 0..2000 {
            let _ = s.send_to(&flood, "10.89.0.2:7400");
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let sb = ctl(b, &["status"]);
    assert!(counter(&sb, "xdp", "drop_bad_magic") >= 50, "{sb}");
    assert!(counter(&sb, "xdp", "drop_rate_limited") >= 1000, "{sb}");
    // Raising the rate limit at run time lets the same source through XDP
    // again (user space then drops them: their origin is no member).
    let before = counter(&ctl(b, &["status"]), "xdp", "drop_rate_limited");
    ctl(b, &["rate", "0", "1"]);
    let again = good_shape.clone();
    x.run(move || {
        let s = UdpSocket::bind("10.89.0.4:0").unwrap();
        for _ in 0..20 {
            s.send_to(&again, "10.89.0.2:7400").unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let sb = ctl(b, &["status"]);
    assert_eq!(counter(&sb, "xdp", "drop_rate_limited"), before, "{sb}");
    ctl(b, &["rate", "300", "300"]);

    // Deny is checked after validation and before the rate limit, so
    // well-formed packets from a denied source count as denied.
    ctl(b, &["deny", "10.89.0.4"]);
    x.run(move || {
        let s = UdpSocket::bind("10.89.0.4:0").unwrap();
        for _ in 0..30 {
            s.send_to(&good_shape, "10.89.0.2:7400").unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let sb = ctl(b, &["status"]);
    assert!(counter(&sb, "xdp", "drop_denied") >= 30, "{sb}");
    let metrics = ctl_metrics(b);
    assert!(
        metrics.contains("mesh_xdp_packets_total{mesh_xdp_reason=\"drop_denied\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_xdp_attached{mesh_xdp_mode=\"native\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("mesh_xsk_sockets{mesh_xsk_bind_mode=\"copy\"} 1"),
        "{metrics}"
    );
    drop(daemons);
}

/// `/metrics` of the node in `ns`, fetched from inside the namespace.
fn ctl_metrics(ns: &Ns) -> String {
    ns.run(|| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:7480").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
}

#[test]
fn four_meshd_nodes_on_xdp_run_the_protocol_cores() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipping: needs root for namespaces and XDP");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = common::mesh_ca(dir.path(), "ca");
    let sw = Ns::new("hsw");
    sw.ip(&["link", "add", "br0", "type", "bridge"]);
    sw.ip(&["link", "set", "br0", "up"]);
    let names = ["ha", "hb", "hc", "hd"];
    let nss: Vec<Ns> = names.iter().map(|n| Ns::new(n)).collect();
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let mut daemons = Vec::new();
    for (i, ns) in nss.iter().enumerate() {
        let ip = format!("10.88.0.{}", i + 1);
        plug(&sw, "br0", ns, &format!("q{i}"), &ip);
        let seeds: &[&str] = if i == 0 { &[] } else { &["10.88.0.1"] };
        let cfg = write_config(dir.path(), &ca, names[i], &ip, seeds, 4, |c| {
            c.overlay.tree = TreeMode::Plumtree;
        });
        daemons.push(Daemon::meshd(ns, &cfg, &log(names[i])));
    }
    let logs = || read_logs(names.iter().map(|n| (n.to_string(), log(n))));
    wait(
        "the mesh to form",
        Duration::from_secs(20),
        || {
            nss.iter().all(|n| {
                try_status(n).is_some_and(|s| {
                    s["overlay"]["members"]["alive"] == 3 && s["overlay"]["admitted"] == 4
                })
            })
        },
        &logs,
    );
    for n in &nss {
        let s = try_status(n).unwrap_or_default();
        assert_eq!(s["backend"], "xdp", "{s}");
        assert_eq!(
            s["overlay"]["tree"],
            serde_json::Value::Null,
            "plumtree: {s}"
        );
    }
    let subs: Vec<Child> = nss.iter().map(|ns| collect(ns, "t", 40)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut ids = Vec::new();
    for k in 0..20 {
        for (i, who) in [(1usize, "hb"), (3, "hd")] {
            let r = ctl(&nss[i], &["publish", "t", &format!("msg {k} from {who}")]);
            ids.push(r["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    for (i, sub) in subs.into_iter().enumerate() {
        let got = finish(sub, Duration::from_secs(20));
        let missing = ids.iter().filter(|id| !got.contains(*id)).count();
        assert_eq!(missing, 0, "node {} missed {missing}\n{}", names[i], logs());
    }
    // Data went through AF_XDP both ways (AF_XDP TX finds the peers' MACs in
    // the kernel's ARP table: the control plane's QUIC traffic resolved
    // them), and the duplicate reports of the fast path made the cores prune.
    let (mut prunes, mut forwarded) = (0u64, 0u64);
    for ns in &nss {
        let st = ctl(ns, &["status"]);
        assert!(counter(&st, "xdp", "redirect") > 0, "{st}");
        forwarded += st["forwarded"].as_u64().unwrap_or(0);
        let m = ctl_metrics(ns);
        prunes += m
            .lines()
            .filter(|l| l.starts_with("mesh_gossip_tree_prunes_total"))
            .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
            .sum::<u64>();
    }
    assert!(forwarded >= 40, "forwarded {forwarded}\n{}", logs());
    assert!(prunes > 0, "no Plumtree prune\n{}", logs());
    drop(daemons);
}
