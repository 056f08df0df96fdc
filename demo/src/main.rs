//! `mesh-demo`: the main job on a built-in default. Creates a mesh CA, enrolls
//! and starts a local mesh of `meshd` processes (each on its own loopback
//! address, on the protocol cores over mutual TLS), lets it form,
//! publishes signed messages from several nodes while a misbehaving node
//! sends forged, tampered, replayed and junk datagrams, then prints delivery,
//! latency and rejection figures and stops everything it started.
//!
//! Exit status 0 means every node got every message and no forged message was
//! delivered anywhere.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use controlplane::config::Config;
use controlplane::enroll::CaDir;
use dataplane::clock::wall_us;
use dataplane::identity::Identity;
use dataplane::wire::{self, Kind};

/// Local multi-node mesh demo.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Number of meshd processes.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Number of nodes that publish.
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// Messages each publisher sends.
    #[arg(long, default_value_t = 50)]
    messages: usize,
    /// UDP port every node uses (each on its own 127.0.0.x address).
    #[arg(long, default_value_t = 17400)]
    port: u16,
    /// Agent API port (same address as the node).
    #[arg(long, default_value_t = 17480)]
    api_port: u16,
    /// Path of the meshd binary (default: next to this program).
    #[arg(long)]
    meshd: Option<PathBuf>,
    /// Keep the working directory (CA, configs, keys, logs) for inspection.
    #[arg(long)]
    keep: bool,
    /// Print every node's active view at the end, eager links (the fast
    /// path's forward set) marked `*`.
    #[arg(long)]
    show_tree: bool,
}

struct Node {
    ip: [u8; 4],
    udp: SocketAddr,
    api: SocketAddr,
    child: Child,
}

#[derive(Clone, Debug)]
struct Seen {
    id: String,
    text: Option<String>,
    timestamp_us: u64,
    received_us: u64,
    local: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.nodes < 2 || args.nodes > 200 {
        bail!("--nodes must be 2..=200");
    }
    let publishers = args.publishers.clamp(1, args.nodes);
    let meshd = match &args.meshd {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no exe dir")?
            .join("meshd"),
    };
    if !meshd.exists() {
        bail!(
            "meshd not found at {} (build it or pass --meshd)",
            meshd.display()
        );
    }
    let dir = tempfile::Builder::new().prefix("mesh-demo-").tempdir()?;
    let work = dir.path().to_owned();
    println!(
        "mesh-demo: {} nodes, {} publishers x {} messages, work dir {}",
        args.nodes,
        publishers,
        args.messages,
        work.display()
    );

    let mut nodes = Vec::new();
    let result = run(&args, publishers, &meshd, &work, &mut nodes);
    for n in &mut nodes {
        // SAFETY: plain kill(2) on a child we started.
        unsafe {
            libc::kill(n.child.id() as i32, libc::SIGTERM);
        }
    }
    for n in &mut nodes {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match n.child.try_wait() {
                Ok(Some(_)) => break,
                _ if Instant::now() > deadline => {
                    let _ = n.child.kill();
                    let _ = n.child.wait();
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }
    if args.keep {
        let kept = dir.keep();
        println!("kept {}", kept.display());
    }
    result
}

/// Enrolls node `i` with the demo CA (the operator's `meshctl enroll`) and writes its
/// config; returns the config's path.
fn write_config(
    work: &Path,
    i: usize,
    node_ip: [u8; 4],
    args: &Args,
    seeds: &[SocketAddr],
    ca: &CaDir,
) -> anyhow::Result<PathBuf> {
    let nd = work.join(format!("node{i}"));
    let node = ca.enroll(
        &nd.join("node.key"),
        &nd.join("node.crt"),
        Duration::from_secs(86_400),
    )?;
    let mut cfg = Config::default();
    node.apply(&mut cfg);
    cfg.node.listen = SocketAddr::from((node_ip, args.port));
    cfg.node.api_listen = SocketAddr::from((node_ip, args.api_port));
    cfg.node.bootstrap = seeds.to_vec();
    cfg.overlay.expected_size = args.nodes as u64;
    // Probe twice a second: a crashed demo node is declared dead in seconds.
    cfg.overlay.probe_interval_ms = 500;
    cfg.overlay.probe_timeout_ms = 200;
    cfg.dataplane.socket_rcvbuf = 4 << 20;
    cfg.validate()?;
    let path = nd.join("meshd.toml");
    std::fs::write(&path, toml::to_string(&cfg)?)?;
    Ok(path)
}

fn status(api: SocketAddr) -> anyhow::Result<serde_json::Value> {
    Ok(ureq::get(&format!("http://{api}/v1/status"))
        .timeout(Duration::from_secs(2))
        .call()?
        .into_json()?)
}

fn run(
    args: &Args,
    publishers: usize,
    meshd: &Path,
    work: &Path,
    nodes: &mut Vec<Node>,
) -> anyhow::Result<()> {
    let ip_of = |i: usize| [127u8, 0, 1 + (i / 200) as u8, 11 + (i % 200) as u8];
    // The operator's `meshctl ca init`.
    let ca = CaDir::init(&work.join("ca"))?;
    println!("mutual TLS between nodes: on (QUIC, every node enrolled by a demo mesh CA)");
    println!(
        "control plane: SWIM + HyParView partial views + a rooted dissemination tree with Plumtree repair; the fast path forwards along the tree"
    );
    let seeds: Vec<SocketAddr> = (0..2.min(args.nodes))
        .map(|i| SocketAddr::from((ip_of(i), args.port)))
        .collect();
    for i in 0..args.nodes {
        let ip = ip_of(i);
        let my_seeds: Vec<SocketAddr> = seeds
            .iter()
            .copied()
            .filter(|s| s.ip() != std::net::IpAddr::from(ip))
            .collect();
        let cfg = write_config(work, i, ip, args, &my_seeds, &ca)?;
        let log = std::fs::File::create(work.join(format!("node{i}/meshd.log")))?;
        let child = Command::new(meshd)
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", meshd.display()))?;
        nodes.push(Node {
            ip,
            udp: SocketAddr::from((ip, args.port)),
            api: SocketAddr::from((ip, args.api_port)),
            child,
        });
    }

    // Wait for the mesh to form: every node has a neighbour, admits every
    // origin and follows the same tree root.
    let t0 = Instant::now();
    // A node is ready once it has a neighbour, admits every origin, and sits in the tree:
    // the root, or attached to a parent.
    let formed = |s: &serde_json::Value| {
        let tree = &s["overlay"]["tree"];
        s["overlay"]["active"].as_u64().unwrap_or(0) >= 1
            && s["overlay"]["admitted"].as_u64().unwrap_or(0) as usize >= args.nodes
            && (tree["is_root"] == true || tree["parent"].is_string())
    };
    loop {
        let mut ready = 0;
        let mut roots = std::collections::BTreeSet::new();
        for n in nodes.iter_mut() {
            if let Ok(Some(st)) = n.child.try_wait() {
                bail!(
                    "meshd at {} exited early ({st}); see {}",
                    n.udp,
                    work.display()
                );
            }
            if let Ok(s) = status(n.api)
                && formed(&s)
            {
                ready += 1;
                roots.insert(s["overlay"]["tree"]["root"].to_string());
            }
        }
        if ready == nodes.len() && roots.len() <= 1 {
            break;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            bail!(
                "mesh did not form within 30 s ({ready}/{} nodes ready)",
                nodes.len()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("mesh formed in {} ms", t0.elapsed().as_millis());

    // Subscribers: one stream per node.
    let seen: Arc<Mutex<Vec<Vec<Seen>>>> = Arc::new(Mutex::new(vec![Vec::new(); nodes.len()]));
    for (i, n) in nodes.iter().enumerate() {
        let seen = seen.clone();
        let url = format!("http://{}/v1/subscribe", n.api);
        let resp = ureq::get(&url)
            .query("topic", "demo")
            .call()
            .with_context(|| format!("subscribe at {url}"))?;
        std::thread::spawn(move || {
            let reader = BufReader::new(resp.into_reader());
            for line in reader.lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let s = Seen {
                    id: v["id"].as_str().unwrap_or_default().to_owned(),
                    text: v["text"].as_str().map(str::to_owned),
                    timestamp_us: v["timestamp_us"].as_u64().unwrap_or(0),
                    received_us: v["received_us"].as_u64().unwrap_or(0),
                    local: v["local"].as_bool().unwrap_or(false),
                };
                if let Ok(mut g) = seen.lock() {
                    g[i].push(s);
                }
            }
        });
    }
    std::thread::sleep(Duration::from_millis(200));

    // The misbehaving node.
    let targets: Vec<SocketAddr> = nodes.iter().map(|n| n.udp).collect();
    let victim = {
        let s = status(nodes[0].api)?;
        let hex_id = s["node_id"].as_str().unwrap_or_default().to_owned();
        let mut id = [0u8; 32];
        hex::decode_to_slice(&hex_id, &mut id).context("node id")?;
        id
    };
    let adversary = std::thread::spawn(move || attack(&targets, victim, ATTACK_ROUNDS));

    // Publish.
    let mut expected: HashSet<String> = HashSet::new();
    let client = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(5))
        .build();
    for k in 0..args.messages {
        for (p, n) in nodes.iter().enumerate().take(publishers) {
            let body =
                serde_json::json!({ "topic": "demo", "text": format!("hello {k} from node {p}") });
            let r: serde_json::Value = client
                .post(&format!("http://{}/v1/publish", n.api))
                .send_json(body)
                .context("publish")?
                .into_json()?;
            expected.insert(r["id"].as_str().unwrap_or_default().to_owned());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let attack_report = adversary
        .join()
        .map_err(|_| anyhow::anyhow!("adversary thread panicked"))??;

    // Wait for delivery.
    let t1 = Instant::now();
    loop {
        let done = {
            let g = seen.lock().map_err(|_| anyhow::anyhow!("lock"))?;
            g.iter().all(|v| {
                let ids: HashSet<&str> = v.iter().map(|s| s.id.as_str()).collect();
                expected.iter().all(|e| ids.contains(e.as_str()))
            })
        };
        if done || t1.elapsed() > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));

    // Summary.
    let g = seen.lock().map_err(|_| anyhow::anyhow!("lock"))?.clone();
    let mut all_lat: Vec<u64> = Vec::new();
    let mut forged_delivered = 0;
    let mut total_ok = true;
    let mut totals: HashMap<String, u64> = HashMap::new();
    println!();
    println!(
        "{:<4} {:<17} {:>19} {:>8} {:>8} {:>10} {:>10} {:>10} {:>7} {:>6}",
        "node",
        "address",
        "delivered/expected",
        "p50 ms",
        "p99 ms",
        "dup-drop",
        "sig-reject",
        "non-member",
        "stale",
        "junk"
    );
    for (i, n) in nodes.iter().enumerate() {
        let ids: HashSet<&str> = g[i].iter().map(|s| s.id.as_str()).collect();
        let got = expected.iter().filter(|e| ids.contains(e.as_str())).count();
        total_ok &= got == expected.len();
        forged_delivered += g[i]
            .iter()
            .filter(|s| {
                s.text.as_deref().is_some_and(|t| {
                    t.starts_with("FORGED")
                        || t.starts_with("TAMPERED")
                        || t.starts_with("REPLAYED")
                })
            })
            .count();
        let mut lat: Vec<u64> = g[i]
            .iter()
            .filter(|s| !s.local)
            .map(|s| s.received_us.saturating_sub(s.timestamp_us))
            .collect();
        lat.sort_unstable();
        all_lat.extend(&lat);
        let st = status(n.api).unwrap_or_default();
        let d = |r: &str| st["dropped"][r].as_u64().unwrap_or(0);
        let junk = [
            "truncated",
            "oversized",
            "bad_magic",
            "bad_version",
            "bad_kind",
            "bad_reserved",
            "length_mismatch",
        ]
        .iter()
        .map(|r| d(r))
        .sum::<u64>();
        for (k, v) in [
            ("duplicate", d("duplicate")),
            ("bad_signature", d("bad_signature")),
            ("unknown_origin", d("unknown_origin")),
            ("stale", d("stale")),
            ("junk", junk),
        ] {
            *totals.entry(k.to_owned()).or_default() += v;
        }
        println!(
            "{:<4} {:<17} {:>9}/{:<9} {:>8.2} {:>8.2} {:>10} {:>10} {:>10} {:>7} {:>6}",
            i,
            format!(
                "{}.{}.{}.{}:{}",
                n.ip[0],
                n.ip[1],
                n.ip[2],
                n.ip[3],
                n.udp.port()
            ),
            got,
            expected.len(),
            pct(&lat, 50) as f64 / 1000.0,
            pct(&lat, 99) as f64 / 1000.0,
            d("duplicate"),
            d("bad_signature"),
            d("unknown_origin"),
            d("stale"),
            junk
        );
    }
    all_lat.sort_unstable();
    println!();
    println!(
        "delivery: {}",
        if total_ok {
            "100% (every node got every message)"
        } else {
            "INCOMPLETE"
        }
    );
    println!(
        "dissemination latency over all nodes: p50 {:.2} ms, p99 {:.2} ms ({} deliveries)",
        pct(&all_lat, 50) as f64 / 1000.0,
        pct(&all_lat, 99) as f64 / 1000.0,
        all_lat.len()
    );
    {
        // Partial views and the dissemination tree, from one status read per node.
        let overlays: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| status(n.api).unwrap_or_default()["overlay"].take())
            .collect();
        let views: Vec<String> = overlays
            .iter()
            .map(|o| {
                format!(
                    "{}/{}/{}",
                    o["active"].as_u64().unwrap_or(0),
                    o["passive"].as_u64().unwrap_or(0),
                    o["eager"].as_u64().unwrap_or(0)
                )
            })
            .collect();
        if args.show_tree {
            for n in nodes.iter() {
                let p: serde_json::Value = ureq::get(&format!("http://{}/v1/peers", n.api))
                    .call()?
                    .into_json()?;
                let e: Vec<String> = p
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|x| {
                                format!(
                                    "{}{}",
                                    x["addr"].as_str().unwrap_or("?"),
                                    if x["eager"] == true { "*" } else { "" }
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                println!("  {} -> {}", n.udp, e.join(" "));
            }
        }
        println!(
            "overlay views per node (active/passive/eager of {} others): {}",
            nodes.len() - 1,
            views.join(" ")
        );
        // The rooted tree: who the nodes follow, how deep, how many links.
        let trees: Vec<&serde_json::Value> = overlays.iter().map(|o| &o["tree"]).collect();
        let roots: std::collections::BTreeSet<String> = trees
            .iter()
            .filter_map(|t| t["root"].as_str())
            .map(|r| r.chars().take(8).collect())
            .collect();
        if !roots.is_empty() {
            let depth = trees.iter().filter_map(|t| t["hops"].as_u64()).max();
            let links = trees
                .iter()
                .filter_map(|t| t["children"].as_u64())
                .sum::<u64>();
            let changes = trees
                .iter()
                .filter_map(|t| t["parent_changes"].as_u64())
                .sum::<u64>();
            println!(
                "dissemination tree: {} root(s) ({}), depth {}, {} tree links for {} nodes, {} parent changes since start",
                roots.len(),
                roots.into_iter().collect::<Vec<_>>().join(", "),
                depth.unwrap_or(0),
                links,
                nodes.len(),
                changes
            );
        }
    }
    println!(
        "duplicates dropped before verify: {}",
        totals.get("duplicate").copied().unwrap_or(0)
    );
    println!(
        "misbehaving node sent {} forged, {} tampered, {} replayed (stale), {} junk datagrams",
        attack_report.forged, attack_report.tampered, attack_report.replayed, attack_report.junk
    );
    println!(
        "rejected: {} bad signature, {} from non-members (before verify), {} stale, {} malformed",
        totals.get("bad_signature").copied().unwrap_or(0),
        totals.get("unknown_origin").copied().unwrap_or(0),
        totals.get("stale").copied().unwrap_or(0),
        totals.get("junk").copied().unwrap_or(0)
    );
    println!("forged/tampered/replayed messages delivered: {forged_delivered}");
    if !total_ok || forged_delivered > 0 {
        bail!("demo failed: delivery incomplete or forged messages delivered");
    }
    println!("\nmesh-demo: OK");
    Ok(())
}

/// Rounds of bad datagrams the misbehaving node sends to every node.
const ATTACK_ROUNDS: usize = 20;

fn pct(sorted: &[u64], p: usize) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) * p) / 100]
}

struct AttackReport {
    forged: usize,
    tampered: usize,
    replayed: usize,
    junk: usize,
}

/// Sends every kind of bad datagram to every target.
fn attack(targets: &[SocketAddr], victim: [u8; 32], rounds: usize) -> anyhow::Result<AttackReport> {
    let me = Identity::generate()?;
    let sock = UdpSocket::bind("127.0.0.99:0").context("binding the misbehaving node's socket")?;
    let mut r = AttackReport {
        forged: 0,
        tampered: 0,
        replayed: 0,
        junk: 0,
    };
    let mut payload = Vec::new();
    let mut buf = Vec::new();
    for k in 0..rounds {
        for t in targets {
            // Forged: claims the victim's key, signed with ours.
            wire::data_payload("demo", format!("FORGED {k}").as_bytes(), &mut payload)?;
            me.seal(Kind::Data, 4, k as u64, wall_us(), &payload, &mut buf)?;
            buf[16..48].copy_from_slice(&victim);
            sock.send_to(&buf, t)?;
            r.forged += 1;
            // Tampered: validly signed, then the body changed.
            wire::data_payload("demo", format!("TAMPERED {k}").as_bytes(), &mut payload)?;
            me.seal(Kind::Data, 4, k as u64, wall_us(), &payload, &mut buf)?;
            let last = buf.len() - wire::SIGNATURE_LEN - 1;
            buf[last] ^= 0x01;
            sock.send_to(&buf, t)?;
            r.tampered += 1;
            // Replayed: a validly signed message from ten minutes ago.
            wire::data_payload("demo", format!("REPLAYED {k}").as_bytes(), &mut payload)?;
            me.seal(
                Kind::Data,
                4,
                k as u64,
                wall_us() - 600_000_000,
                &payload,
                &mut buf,
            )?;
            sock.send_to(&buf, t)?;
            r.replayed += 1;
            // Junk.
            let junk: Vec<u8> = (0..(50 + k * 7) % 1500)
                .map(|i| (i * 31 + k) as u8)
                .collect();
            sock.send_to(&junk, t)?;
            r.junk += 1;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(r)
}
