//! Six `meshd` processes in their own network namespaces on one bridge.
//! The bridge ports of three of them go down: both sides say they are cut
//! off, keep serving their agents, and publish; the ports come back up and,
//! with nobody re-joining by hand, every message reaches every node. Then a
//! node is killed (detected and removed by the others) and restarted with the
//! same key (it rejoins and receives again).
//!
//! The nodes run the protocol cores (SWIM, HyParView partial views, the rooted
//! tree with Plumtree repair) over mutual TLS, enrolled by a test mesh CA.
//!
//! Needs root; otherwise it says why and passes.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Daemon, Ns, collect, ctl, finish, plug, read_logs, try_status, wait};
use controlplane::enroll::CaDir;

const NODES: usize = 6;

/// Node `i`'s config file: enrolled by `ca`, seeds on both sides of the future cut.
fn write_config(dir: &Path, i: usize, ca: &CaDir) -> PathBuf {
    let seeds: Vec<SocketAddr> = [1, 4]
        .iter()
        .filter(|&&s| s != i + 1)
        .map(|s| SocketAddr::from(([10, 90, 0, *s as u8], 7400)))
        .collect();
    let listen = SocketAddr::from(([10, 90, 0, i as u8 + 1], 7400));
    let name = format!("n{i}");
    let mut c = common::member_config(ca, dir, &name, listen, seeds, NODES as u64);
    c.node.api_listen = "127.0.0.1:7480".parse().unwrap();
    // Push-pull anti-entropy every 100 ms: the heal's repairs are quick.
    c.gossip.anti_entropy_interval_ms = 100;
    common::write_config(dir, &name, &c)
}

/// Members the node believes alive.
fn alive(st: &serde_json::Value) -> u64 {
    st["overlay"]["members"]["alive"].as_u64().unwrap_or(0)
}

/// Every other node known alive, a neighbour, and every origin admitted.
fn formed(st: &serde_json::Value, others: u64) -> bool {
    alive(st) == others
        && st["overlay"]["active"].as_u64().unwrap_or(0) >= 1
        && st["overlay"]["admitted"].as_u64().unwrap_or(0) > others
}

#[test]
fn six_nodes_on_the_protocol_cores_detect_a_partition_heal_and_survive_a_crash() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipping: needs root for network namespaces");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let tag = "h";
    let ca = common::mesh_ca(dir.path(), "ca");
    let sw = Ns::new(&format!("{tag}s"));
    // Two bridges (one per side of the future cut) joined by a trunk veth;
    // the partition is the trunk going down.
    for br in ["br0", "br1"] {
        sw.ip(&["link", "add", br, "type", "bridge"]);
        sw.ip(&["link", "set", br, "up"]);
    }
    sw.ip(&["link", "add", "ta", "type", "veth", "peer", "name", "tb"]);
    sw.ip(&["link", "set", "ta", "master", "br0"]);
    sw.ip(&["link", "set", "tb", "master", "br1"]);
    sw.ip(&["link", "set", "ta", "up"]);
    sw.ip(&["link", "set", "tb", "up"]);
    let nss: Vec<Ns> = (0..NODES).map(|i| Ns::new(&format!("{tag}{i}"))).collect();
    for (i, ns) in nss.iter().enumerate() {
        let bridge = if i < 3 { "br0" } else { "br1" };
        plug(
            &sw,
            bridge,
            ns,
            &format!("q{i}"),
            &format!("10.90.0.{}", i + 1),
        );
    }
    let cfgs: Vec<PathBuf> = (0..NODES)
        .map(|i| write_config(dir.path(), i, &ca))
        .collect();
    let log = |i: usize| dir.path().join(format!("n{i}.log"));
    let mut daemons: Vec<Option<Daemon>> = (0..NODES)
        .map(|i| Some(Daemon::meshd(&nss[i], &cfgs[i], &log(i))))
        .collect();
    let logs = || read_logs((0..NODES).map(|i| (format!("n{i}"), log(i))));
    let status = |i: usize| try_status(&nss[i]).unwrap_or(serde_json::Value::Null);

    wait(
        "a mesh of 6",
        Duration::from_secs(20),
        || (0..NODES).all(|i| formed(&status(i), NODES as u64 - 1)),
        &logs,
    );
    // The rooted tree's root as each node in `nodes` sees it (one entry when
    // they agree).
    let roots = |nodes: &[usize]| {
        nodes
            .iter()
            .map(|i| match status(*i)["overlay"]["tree"]["root"].as_str() {
                Some(r) => r.to_owned(),
                None => format!("no root at n{i}"),
            })
            .collect::<HashSet<String>>()
    };
    wait(
        "one rooted tree",
        Duration::from_secs(10),
        || roots(&[0, 1, 2, 3, 4, 5]).len() == 1,
        &logs,
    );
    // Partial views: nobody's active view holds the whole mesh.
    let views: Vec<u64> = (0..NODES)
        .map(|i| status(i)["overlay"]["active"].as_u64().unwrap_or(0))
        .collect();
    assert!(
        views.iter().all(|v| *v < NODES as u64 - 1),
        "active views {views:?}"
    );

    // Cut {3,4,5} off from {0,1,2}.
    let side_a = [0usize, 1, 2];
    let side_b = [3usize, 4, 5];
    sw.ip(&["link", "set", "ta", "down"]);
    wait(
        "every node to report the partition",
        Duration::from_secs(20),
        || (0..NODES).all(|i| status(i)["partitioned"] == true),
        &logs,
    );

    // The side without the root presumes it lost and elects its own.
    wait(
        "a root on each side",
        Duration::from_secs(20),
        || {
            let (a, b) = (roots(&side_a), roots(&side_b));
            a.len() == 1 && b.len() == 1 && a != b
        },
        &logs,
    );

    // Both sides keep serving their agents: publish on each side.
    let subs: Vec<std::process::Child> = nss.iter().map(|ns| collect(ns, "t", 10)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut ids = HashSet::new();
    for k in 0..5 {
        for (i, side) in [(0usize, "a"), (3usize, "b")] {
            let r = ctl(
                &nss[i],
                &["publish", "t", &format!("{k} during split on side {side}")],
            );
            ids.insert(r["id"].as_str().unwrap_or_default().to_owned());
        }
    }
    // Each side delivers its own messages. Partial views first replace the
    // neighbours on the other side (declared dead) from the passive view, then
    // anti-entropy and lazy push catch up, which takes seconds.
    wait(
        "each side to deliver its own messages",
        Duration::from_secs(15),
        || {
            side_a
                .iter()
                .chain(&side_b)
                .all(|i| status(*i)["stored_messages"].as_u64().unwrap_or(0) >= 5)
        },
        &|| {
            format!(
                "{}\n{}",
                (0..NODES)
                    .map(|i| status(i).to_string())
                    .collect::<Vec<_>>()
                    .join("\n"),
                logs()
            )
        },
    );

    // Heal: nobody re-joins by hand.
    sw.ip(&["link", "set", "ta", "up"]);
    for (i, sub) in subs.into_iter().enumerate() {
        let got = finish(sub, Duration::from_secs(30));
        let missing: Vec<&String> = ids.iter().filter(|id| !got.contains(*id)).collect();
        assert!(
            missing.is_empty(),
            "n{i} missing {} messages after heal\n{}",
            missing.len(),
            logs()
        );
    }
    wait(
        "the partition to clear everywhere",
        Duration::from_secs(15),
        || {
            (0..NODES).all(|i| {
                let st = status(i);
                st["partitioned"] == false && alive(&st) == NODES as u64 - 1
            })
        },
        &logs,
    );

    wait(
        "one rooted tree again",
        Duration::from_secs(15),
        || roots(&[0, 1, 2, 3, 4, 5]).len() == 1,
        &logs,
    );

    // Crash n5: the others detect it and drop it from their live peers.
    let crashed = daemons[5].take().expect("n5 running");
    crashed.crash();
    wait(
        "the crash to be detected",
        Duration::from_secs(20),
        || {
            (0..5).all(|i| {
                let st = status(i);
                // suspected is not enough, it must be declared dead
                alive(&st) == 4 && st["overlay"]["members"]["dead"] == 1
            })
        },
        &logs,
    );
    for (i, ns) in nss.iter().enumerate().take(5) {
        let peers = ctl(ns, &["peers"]);
        let addrs: Vec<&str> = peers
            .as_array()
            .map(|a| a.iter().filter_map(|p| p["addr"].as_str()).collect())
            .unwrap_or_default();
        assert!(
            !addrs.contains(&"10.90.0.6:7400"),
            "n{i} still lists the crashed node: {peers}"
        );
    }

    // Restart with the same key: it rejoins and receives new messages.
    daemons[5] = Some(Daemon::meshd(&nss[5], &cfgs[5], &log(5)));
    wait(
        "the restarted node to rejoin",
        Duration::from_secs(15),
        || formed(&status(5), 5) && (0..5).all(|i| alive(&status(i)) == 5),
        &logs,
    );
    // Its own topic: anti-entropy also brings the restarted node the older
    // messages on `t`, which must not be mistaken for the new one.
    let sub = collect(&nss[5], "after", 1);
    std::thread::sleep(Duration::from_millis(300));
    let r = ctl(&nss[1], &["publish", "after", "after restart"]);
    let got = finish(sub, Duration::from_secs(10));
    assert!(
        got.contains(r["id"].as_str().unwrap_or_default()),
        "restarted node did not receive\n{}",
        logs()
    );
    drop(daemons);
}
