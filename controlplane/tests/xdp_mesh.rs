//! Three `meshd` processes on the XDP + AF_XDP backend, each in its own
//! network namespace, joined by veth pairs to a bridge; a fourth namespace
//! holds a misbehaving host. Gossip crosses for real: every message reaches
//! every node, the middle node forwards through its AF_XDP TX, and junk,
//! over-rate and denied packets are counted as dropped in XDP.
//!
//! A second test runs four nodes on XDP with the protocol cores
//! (`overlay.mode = "hyparview"`, mutual TLS on port + 1, which XDP passes to
//! the kernel) and `tree = "plumtree"`: every message everywhere, Plumtree
//! prunes fed by the fast path's duplicate reports. (Four nodes make a full
//! mesh, where the rooted tree's origin reaches everyone directly; the rooted
//! tree runs end to end in `partition.rs` and `tests/overlay.rs`.)
//!
//! Needs root (CI runs as root); otherwise it says why and passes.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::Duration;

use common::{Daemon, Ns, collect, ctl, finish, plug, read_logs, try_status, wait};

use dataplane::identity::Identity;
use dataplane::tile::wall_us;
use dataplane::wire::{self, Kind};

fn write_config(dir: &Path, name: &str, ip: &str, bootstrap: &[&str], extra: &str) -> PathBuf {
    let profiles = format!("{}/../hw-profiles", env!("CARGO_MANIFEST_DIR"));
    let seeds: Vec<String> = bootstrap.iter().map(|s| format!("\"{s}:7400\"")).collect();
    let text = format!(
        r#"[node]
key_file = "{key}"
listen = "{ip}:7400"
api_listen = "127.0.0.1:7480"
bootstrap = [{seeds}]

[gossip]
fanout = 1
heartbeat_interval_ms = 100
peer_timeout_ms = 1500
peer_exchange_interval_ms = 100
anti_entropy_interval_ms = 200

[dataplane]
backend = "xdp"
socket_rcvbuf = 4194304

[dataplane.xdp]
interface = "n0"
profile = "veth-test"
profiles_dir = "{profiles}"
rate_pps = 300
burst = 300
"#,
        key = dir.join(format!("{name}.key")).display(),
        seeds = seeds.join(", "),
    ) + extra;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
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
    let cfgs = [
        write_config(dir.path(), "a", "10.89.0.1", &["10.89.0.2"], ""),
        write_config(dir.path(), "b", "10.89.0.2", &[], ""),
        write_config(dir.path(), "c", "10.89.0.3", &["10.89.0.2"], ""),
    ];
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let daemons: Vec<Daemon> = [a, b, c]
        .iter()
        .enumerate()
        .map(|(i, ns)| Daemon::meshd(ns, &cfgs[i], &log(names[i])))
        .collect();
    let logs = || read_logs(names[..3].iter().map(|n| (n.to_string(), log(n))));

    // Mesh forms on the XDP backend.
    wait(
        "the mesh to form",
        Duration::from_secs(20),
        || {
            [a, b, c]
                .iter()
                .all(|n| try_status(n).is_some_and(|s| s["peers_live"] == 2))
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
    // again (its bad signatures are then counted in user space).
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
    let ca = mesh_transport::MeshCa::generate().unwrap();
    let ca_pem = dir.path().join("ca.crt");
    std::fs::write(&ca_pem, ca.cert_pem()).unwrap();
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
        let extra = common::hyparview_sections(dir.path(), names[i], &ca, &ca_pem, 4)
            + "tree = \"plumtree\"\n";
        let seeds: &[&str] = if i == 0 { &[] } else { &["10.88.0.1"] };
        let cfg = write_config(dir.path(), names[i], &ip, seeds, &extra);
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
        assert_eq!(s["overlay_mode"], "hyparview", "{s}");
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
