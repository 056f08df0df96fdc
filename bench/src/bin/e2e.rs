//! End-to-end benchmark: N `meshd` processes on loopback, agents over the
//! public agent API, one publisher, M messages.
//!
//! ```text
//! e2e --meshd PATH --meshctl PATH [--nodes 8] [--messages 2000] [--rate max,500]
//!     [--payload 512] [--label new] [--round 1] [--json FILE]
//! e2e --compare FILE... [--baseline old] [--json FILE]
//! ```
//!
//! One run: a mesh CA (`meshctl ca init`), per node a key (derived from
//! `--key-seed`, so old and new get the same node ids) and a certificate
//! (`meshd --print-node-id`, `meshctl ca issue`), a config per node (node `i`
//! on 127.0.<subnet>.<i+1>, mesh port, QUIC on mesh port + 1, API port;
//! bootstrap = node 0), wait until the mesh is formed (every node has a
//! neighbour, admits every origin and follows one tree root, when its status
//! says so) and a warm-up message reaches every subscriber. Then, for each
//! rate, the publisher (an agent on node 0) posts M messages to
//! `POST /v1/publish` and one subscriber per other node reads
//! `GET /v1/subscribe`. Each body carries the run, the sequence number and
//! the send time (taken just before the publish call); the subscriber takes
//! the read time as soon as it has the line, so the latency is app to app.
//!
//! Per run it prints delivered/expected, latency p50/p99/max, delivered/s,
//! CPU µs per delivered message (every meshd thread from
//! `/proc/<pid>/task/*/schedstat` plus this process's agent threads, read
//! before the first publish and after the last delivery; `/proc/<pid>/stat`
//! utime + stime beside it in the JSON) and duplicates per delivery (the
//! `duplicate` drop reason summed over nodes, from `/v1/status` or
//! `/metrics`, over the same window).
//!
//! Works against the binaries before and after the removal of
//! `[overlay] mode` and `[tls] enabled`: the config keys written are filtered
//! by what `meshd --print-default-config` documents (unknown keys are an
//! error), so `mode = "hyparview"` and `enabled = true` are written only
//! where they exist.
//! Every meshd is killed when this process ends, however it ends
//! (`PR_SET_PDEATHSIG`, and a guard that stops them on return or panic).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::{Deserialize, Serialize};

/// End-to-end benchmark over the agent API of N meshd processes.
#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Path of meshd.
    #[arg(long, default_value = "target/release/meshd")]
    meshd: PathBuf,
    /// Path of meshctl (for `ca init` / `ca issue`).
    #[arg(long, default_value = "target/release/meshctl")]
    meshctl: PathBuf,
    /// Number of meshd processes.
    #[arg(long, default_value_t = 8)]
    nodes: usize,
    /// Messages per run.
    #[arg(long, default_value_t = 2000)]
    messages: usize,
    /// Publish rates, one run each: `max` (back to back) or messages/s.
    #[arg(long, value_delimiter = ',', default_value = "max,500")]
    rate: Vec<String>,
    /// Message body size in bytes (the `text` field).
    #[arg(long, default_value_t = 512)]
    payload: usize,
    /// Mesh UDP port (QUIC uses the next one).
    #[arg(long, default_value_t = 17600)]
    port: u16,
    /// Agent API port.
    #[arg(long, default_value_t = 17680)]
    api_port: u16,
    /// Third octet of the node addresses: node i is 127.0.SUBNET.(i+1).
    #[arg(long, default_value_t = 2)]
    subnet: u8,
    /// Label of this build in the output (e.g. old, new).
    #[arg(long, default_value = "run")]
    label: String,
    /// Round number, recorded in the output.
    #[arg(long, default_value_t = 1)]
    round: u32,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Node keys derived from this seed, so every run (old and new) has the
    /// same node ids and so the same tree root; 0: fresh keys from meshd.
    #[arg(long, default_value_t = 1)]
    key_seed: u64,
    /// Keep the working directory (configs, keys, logs).
    #[arg(long)]
    keep: bool,
    /// Instead of running: read result files and print the comparison table.
    #[arg(long, num_args = 1.., value_name = "FILE")]
    compare: Vec<PathBuf>,
    /// With --compare: the label ratios are taken against.
    #[arg(long, default_value = "old")]
    baseline: String,
}

/// The figures of one run (one rate on one mesh).
#[derive(Serialize, Deserialize, Debug, Clone)]
struct RunResult {
    label: String,
    round: u32,
    /// `max` or messages per second.
    rate: String,
    nodes: usize,
    messages: usize,
    payload: usize,
    meshd: String,
    /// Messages the publisher got a 200 for.
    published: usize,
    publish_errors: usize,
    /// published x subscribers.
    expected: usize,
    /// Distinct (subscriber, message) pairs read.
    delivered: usize,
    /// Lines read again for a message a subscriber already had.
    app_duplicates: usize,
    /// `{"lagged": n}` totals.
    lagged: u64,
    lat_p50_ms: f64,
    lat_p99_ms: f64,
    lat_max_ms: f64,
    /// Achieved publish rate.
    publish_per_s: f64,
    /// Deliveries / (last delivery - first publish).
    delivered_per_s: f64,
    /// (meshd + agents) CPU µs / delivery, from schedstat.
    cpu_us_per_delivery: f64,
    cpu_meshd_us: f64,
    cpu_agents_us: f64,
    /// meshd CPU µs per delivery by thread name (summed over nodes).
    cpu_meshd_us_per_delivery_by_thread: BTreeMap<String, f64>,
    /// meshd utime + stime (clock ticks, coarse) per delivery.
    cpu_stat_us_per_delivery: f64,
    /// Sum of the `duplicate` drop reason over nodes during the run.
    duplicates: u64,
    duplicates_per_delivery: f64,
    /// Window of the CPU and duplicate figures.
    window_ms: f64,
    /// meshd CPU while idle (µs per second, all nodes), before the runs.
    idle_meshd_us_per_s: f64,
    formation_ms: f64,
}

/// Everything written by `--json`.
#[derive(Serialize, Deserialize, Debug)]
struct Output {
    runs: Vec<RunResult>,
}

/// One message seen by a subscriber.
struct Seen {
    run: u32,
    seq: u32,
    lat_ns: u64,
    recv_ns: u64,
}

#[derive(Default)]
struct SubState {
    seen: Vec<Seen>,
    /// Lines read per run (so the wait for delivery does not scan `seen`).
    lines: HashMap<u32, usize>,
    lagged: u64,
}

/// The started meshd processes, stopped on drop (return, error or panic).
#[derive(Default)]
struct Fleet {
    children: Vec<Child>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in &mut self.children {
            // SAFETY: kill(2) on a child we started and have not reaped.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.children {
            loop {
                match c.try_wait() {
                    Ok(Some(_)) => break,
                    Ok(None) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break;
                    }
                }
            }
        }
    }
}

struct Node {
    api: SocketAddr,
    pid: u32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.compare.is_empty() {
        return compare(&args);
    }
    if !(2..=250).contains(&args.nodes) {
        bail!("--nodes must be 2..=250");
    }
    if args.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if args.payload < 40 || args.payload > 1000 {
        bail!("--payload must be 40..=1000 bytes (the API takes at most 1104 with the topic)");
    }
    let rates = args
        .rate
        .iter()
        .map(|r| parse_rate(r))
        .collect::<anyhow::Result<Vec<_>>>()?;
    for p in [&args.meshd, &args.meshctl] {
        if !p.exists() {
            bail!(
                "{} not found (build it or pass --meshd / --meshctl)",
                p.display()
            );
        }
    }
    let dir = tempfile::Builder::new().prefix("mesh-e2e-").tempdir()?;
    let mut fleet = Fleet::default();
    let result = run(&args, &rates, dir.path(), &mut fleet);
    drop(fleet);
    if args.keep || result.is_err() {
        let kept = dir.keep();
        eprintln!("e2e: work dir kept at {}", kept.display());
    }
    let runs = result?;
    if let Some(path) = &args.json {
        let out = Output { runs };
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `max` -> None, a number -> Some(messages per second).
fn parse_rate(r: &str) -> anyhow::Result<Option<f64>> {
    if r == "max" {
        return Ok(None);
    }
    let v: f64 = r
        .parse()
        .with_context(|| format!("--rate {r}: `max` or messages per second"))?;
    if !(v > 0.0 && v.is_finite()) {
        bail!("--rate {r}: must be positive");
    }
    Ok(Some(v))
}

fn rate_name(r: Option<f64>) -> String {
    match r {
        None => "max".to_owned(),
        Some(v) => format!("{v}"),
    }
}

/// Runs `program args` and returns its stdout; fails with its stderr.
fn output(program: &Path, args: &[&std::ffi::OsStr]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    if !out.status.success() {
        bail!(
            "{} {:?} failed: {}{}",
            program.display(),
            args,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The keys `meshd --print-default-config` documents, per section.
struct Known(toml::Table);

impl Known {
    fn load(meshd: &Path) -> anyhow::Result<Known> {
        let text = output(meshd, &["--print-default-config".as_ref()])?;
        let t: toml::Table = toml::from_str(&text).context("parsing the default config")?;
        Ok(Known(t))
    }

    fn has(&self, section: &str, key: &str) -> bool {
        self.0
            .get(section)
            .and_then(|s| s.as_table())
            .is_some_and(|s| s.contains_key(key))
    }
}

/// Puts `key = value` into `[section]` if meshd knows the key; `required`
/// keys that it does not know are an error.
fn set(
    cfg: &mut toml::Table,
    known: &Known,
    section: &str,
    key: &str,
    value: impl Into<toml::Value>,
    required: bool,
) -> anyhow::Result<()> {
    if !known.has(section, key) {
        if required {
            bail!("meshd does not know [{section}] {key}: this benchmark needs updating");
        }
        return Ok(());
    }
    let s = cfg
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let Some(t) = s.as_table_mut() {
        t.insert(key.to_owned(), value.into());
    }
    Ok(())
}

fn ip_of(subnet: u8, i: usize) -> [u8; 4] {
    [127, 0, subnet, (i + 1) as u8]
}

fn run(
    args: &Args,
    rates: &[Option<f64>],
    work: &Path,
    fleet: &mut Fleet,
) -> anyhow::Result<Vec<RunResult>> {
    let known = Known::load(&args.meshd)?;
    let with_mode = known.has("overlay", "mode");
    let ca_dir = work.join("ca");
    output(
        &args.meshctl,
        &["ca".as_ref(), "init".as_ref(), ca_dir.as_os_str()],
    )?;
    let ca_cert = ca_dir.join("ca.crt");
    if !ca_cert.exists() {
        bail!("meshctl ca init wrote no {}", ca_cert.display());
    }
    eprintln!(
        "e2e [{} r{}]: {} nodes, {} messages of {} B, rates {:?}, meshd {}{}",
        args.label,
        args.round,
        args.nodes,
        args.messages,
        args.payload,
        args.rate,
        args.meshd.display(),
        if with_mode {
            " (writes [overlay] mode = \"hyparview\")"
        } else {
            ""
        }
    );

    let mut nodes = Vec::new();
    let seed = SocketAddr::from((ip_of(args.subnet, 0), args.port));
    for i in 0..args.nodes {
        let nd = work.join(format!("node{i}"));
        std::fs::create_dir_all(&nd)?;
        let ip = ip_of(args.subnet, i);
        let mut cfg = toml::Table::new();
        let key = nd.join("node.key");
        let cert = nd.join("node.crt");
        set(&mut cfg, &known, "node", "key_file", path_str(&key)?, true)?;
        set(
            &mut cfg,
            &known,
            "node",
            "listen",
            SocketAddr::from((ip, args.port)).to_string(),
            true,
        )?;
        set(
            &mut cfg,
            &known,
            "node",
            "api_listen",
            SocketAddr::from((ip, args.api_port)).to_string(),
            true,
        )?;
        let boot: Vec<toml::Value> = if i == 0 {
            Vec::new()
        } else {
            vec![seed.to_string().into()]
        };
        set(&mut cfg, &known, "node", "bootstrap", boot, true)?;
        set(&mut cfg, &known, "tls", "enabled", true, false)?;
        set(
            &mut cfg,
            &known,
            "tls",
            "ca_cert",
            path_str(&ca_cert)?,
            true,
        )?;
        set(&mut cfg, &known, "tls", "cert", path_str(&cert)?, true)?;
        if with_mode {
            set(&mut cfg, &known, "overlay", "mode", "hyparview", true)?;
        }
        set(
            &mut cfg,
            &known,
            "overlay",
            "expected_size",
            args.nodes as i64,
            false,
        )?;
        let path = nd.join("meshd.toml");
        std::fs::write(&path, toml::to_string(&cfg)?)?;

        if args.key_seed != 0 {
            write_key(&key, args.key_seed, i)?;
        }
        // The operator's steps: the node's id, then a certificate for it.
        let out = output(
            &args.meshd,
            &[
                "--print-node-id".as_ref(),
                "--config".as_ref(),
                path.as_os_str(),
            ],
        )?;
        let id = out
            .lines()
            .map(str::trim)
            .rfind(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
            .with_context(|| format!("meshd --print-node-id printed no id: {out}"))?
            .to_owned();
        output(
            &args.meshctl,
            &[
                "ca".as_ref(),
                "issue".as_ref(),
                "--ca".as_ref(),
                ca_dir.as_os_str(),
                "--node-id".as_ref(),
                id.as_ref(),
                "--out".as_ref(),
                cert.as_os_str(),
            ],
        )?;

        let log = std::fs::File::create(nd.join("meshd.log"))?;
        let mut cmd = Command::new(&args.meshd);
        cmd.arg("--config")
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // SAFETY: prctl(2) is async-signal-safe and touches no memory of the
        // parent; it makes the kernel kill the child when this process dies.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", args.meshd.display()))?;
        nodes.push(Node {
            api: SocketAddr::from((ip, args.api_port)),
            pid: child.id(),
        });
        fleet.children.push(child);
    }

    let t0 = Instant::now();
    wait_formed(args, &nodes, fleet, work)?;

    // Agents: one subscriber per node but the publisher's, and the publisher.
    let epoch = Instant::now();
    let mut subs = Vec::new();
    let mut agent_tids = Vec::new();
    let (tid_tx, tid_rx) = mpsc::channel();
    for n in &nodes[1..] {
        let state = Arc::new(Mutex::new(SubState::default()));
        subscribe(n.api, state.clone(), epoch, tid_tx.clone())?;
        subs.push(state);
    }
    let (job_tx, done_rx) = publisher(nodes[0].api, args.payload, epoch, tid_tx)?;
    for _ in 0..subs.len() + 1 {
        agent_tids.push(
            tid_rx
                .recv_timeout(Duration::from_secs(5))
                .context("agent thread did not start")?,
        );
    }

    // Warm-up: run 0, until every subscriber has read one message.
    let warm = Instant::now();
    let mut k = 0;
    loop {
        job_tx
            .send(Job {
                run: 0,
                count: 1,
                rate: None,
                first_seq: k,
            })
            .context("publisher gone")?;
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
        k += 1;
        std::thread::sleep(Duration::from_millis(100));
        let all = subs
            .iter()
            .all(|s| s.lock().is_ok_and(|g| g.lines.contains_key(&0)));
        if all {
            break;
        }
        if warm.elapsed() > Duration::from_secs(30) {
            bail!("warm-up messages did not reach every subscriber within 30 s");
        }
    }
    let formation_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Idle cost: the mesh's own traffic (probes, beacons, anti-entropy).
    std::thread::sleep(Duration::from_millis(500));
    let c0 = meshd_cpu(&nodes);
    let i0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let idle_meshd_us_per_s =
        cpu_delta(&c0, &meshd_cpu(&nodes)).0 / 1e3 / i0.elapsed().as_secs_f64();
    eprintln!(
        "e2e [{} r{}]: mesh formed and warm in {formation_ms:.0} ms; idle meshd CPU {:.0} µs/s",
        args.label, args.round, idle_meshd_us_per_s
    );

    let mut results = Vec::new();
    for (r, &rate) in rates.iter().enumerate() {
        let run_id = r as u32 + 1;
        let dup0 = duplicates(&nodes)?;
        let cpu0 = meshd_cpu(&nodes);
        let a0 = tids_cpu(&agent_tids);
        let start = Instant::now();
        let start_ns = epoch.elapsed().as_nanos() as u64;
        job_tx
            .send(Job {
                run: run_id,
                count: args.messages,
                rate,
                first_seq: 0,
            })
            .context("publisher gone")?;
        let expected_per_sub = args.messages;
        let mut report = None;
        let mut last_progress = Instant::now();
        let mut last_count = 0usize;
        loop {
            if report.is_none()
                && let Ok(rep) = done_rx.try_recv()
            {
                report = Some(rep);
            }
            let count: usize = subs
                .iter()
                .map(|s| {
                    s.lock()
                        .map(|g| g.lines.get(&run_id).copied().unwrap_or(0))
                        .unwrap_or(0)
                })
                .sum();
            if count != last_count {
                last_count = count;
                last_progress = Instant::now();
            }
            if let Some(rep) = &report {
                let want = rep.published * subs.len();
                if count >= want || last_progress.elapsed() > Duration::from_secs(5) {
                    break;
                }
            } else if start.elapsed() > Duration::from_secs(600) {
                bail!("publisher did not finish within 600 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let window = start.elapsed();
        let cpu1 = meshd_cpu(&nodes);
        let a1 = tids_cpu(&agent_tids);
        let dup1 = duplicates(&nodes)?;
        let rep = report.context("no publisher report")?;

        let mut lats = Vec::new();
        let mut delivered = 0usize;
        let mut app_dups = 0usize;
        let mut lagged = 0;
        let mut last_recv = start_ns;
        for s in &subs {
            let g = s
                .lock()
                .map_err(|_| anyhow::anyhow!("subscriber lock poisoned"))?;
            lagged += g.lagged;
            let mut got = HashSet::new();
            for m in g.seen.iter().filter(|m| m.run == run_id) {
                if (m.seq as usize) < expected_per_sub && got.insert(m.seq) {
                    delivered += 1;
                    lats.push(m.lat_ns);
                    last_recv = last_recv.max(m.recv_ns);
                } else {
                    app_dups += 1;
                }
            }
        }
        lats.sort_unstable();
        let (meshd_ns, meshd_stat_ns, by_thread) = cpu_delta(&cpu0, &cpu1);
        let agents_ns = a1
            .iter()
            .zip(&a0)
            .map(|(b, a)| b.saturating_sub(*a))
            .sum::<u64>() as f64;
        let per = |x: f64| {
            if delivered > 0 {
                x / delivered as f64
            } else {
                0.0
            }
        };
        let span_s = (last_recv.saturating_sub(start_ns)) as f64 / 1e9;
        let res = RunResult {
            label: args.label.clone(),
            round: args.round,
            rate: rate_name(rate),
            nodes: args.nodes,
            messages: args.messages,
            payload: args.payload,
            meshd: args.meshd.display().to_string(),
            published: rep.published,
            publish_errors: rep.errors,
            expected: rep.published * subs.len(),
            delivered,
            app_duplicates: app_dups,
            lagged,
            lat_p50_ms: pct(&lats, 0.50) / 1e6,
            lat_p99_ms: pct(&lats, 0.99) / 1e6,
            lat_max_ms: lats.last().copied().unwrap_or(0) as f64 / 1e6,
            publish_per_s: rep.published as f64 / rep.elapsed.as_secs_f64().max(1e-9),
            delivered_per_s: if span_s > 0.0 {
                delivered as f64 / span_s
            } else {
                0.0
            },
            cpu_us_per_delivery: per((meshd_ns + agents_ns) / 1e3),
            cpu_meshd_us: meshd_ns / 1e3,
            cpu_agents_us: agents_ns / 1e3,
            cpu_meshd_us_per_delivery_by_thread: by_thread
                .into_iter()
                .map(|(k, v)| (k, per(v / 1e3)))
                .collect(),
            cpu_stat_us_per_delivery: per(meshd_stat_ns / 1e3),
            duplicates: dup1.saturating_sub(dup0),
            duplicates_per_delivery: per(dup1.saturating_sub(dup0) as f64),
            window_ms: window.as_secs_f64() * 1e3,
            idle_meshd_us_per_s,
            formation_ms,
        };
        println!(
            "{} r{} rate {:>4}: delivered {}/{}{}, latency p50 {:.3} ms p99 {:.3} ms max {:.1} ms, {:.0} delivered/s (published {:.0}/s), CPU {:.1} µs/delivery (meshd {:.0} ms + agents {:.0} ms), duplicates {:.3}/delivery",
            res.label,
            res.round,
            res.rate,
            res.delivered,
            res.expected,
            if res.publish_errors > 0 || res.app_duplicates > 0 || res.lagged > 0 {
                format!(
                    " ({} publish errors, {} repeated lines, {} lagged)",
                    res.publish_errors, res.app_duplicates, res.lagged
                )
            } else {
                String::new()
            },
            res.lat_p50_ms,
            res.lat_p99_ms,
            res.lat_max_ms,
            res.delivered_per_s,
            res.publish_per_s,
            res.cpu_us_per_delivery,
            res.cpu_meshd_us / 1e3,
            res.cpu_agents_us / 1e3,
            res.duplicates_per_delivery
        );
        let mut threads: Vec<(&String, &f64)> =
            res.cpu_meshd_us_per_delivery_by_thread.iter().collect();
        threads.sort_by(|a, b| b.1.total_cmp(a.1));
        println!(
            "    meshd CPU by thread, µs/delivery: {}",
            threads
                .iter()
                .filter(|(_, v)| **v >= 0.05)
                .map(|(k, v)| format!("{k} {v:.1}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        results.push(res);
        // Let repairs and stragglers of this run settle before the next one.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(results)
}

/// Writes node `i`'s key (a 32-byte seed, hex, mode 0600) derived from `seed`.
fn write_key(path: &Path, seed: u64, i: usize) -> anyhow::Result<()> {
    use sha2::Digest;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut h = sha2::Sha256::new();
    h.update(b"mesh-e2e node key");
    h.update(seed.to_le_bytes());
    h.update((i as u64).to_le_bytes());
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    writeln!(f, "{hex}")?;
    Ok(())
}

fn path_str(p: &Path) -> anyhow::Result<String> {
    p.to_str()
        .map(str::to_owned)
        .with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .build()
}

fn status(api: SocketAddr) -> anyhow::Result<serde_json::Value> {
    Ok(ureq::get(&format!("http://{api}/v1/status"))
        .timeout(Duration::from_secs(2))
        .call()?
        .into_json()?)
}

/// The first number found at one of `paths` in `v`.
fn find_u64(v: &serde_json::Value, paths: &[&[&str]]) -> Option<u64> {
    paths.iter().find_map(|p| {
        let mut x = v;
        for k in p.iter() {
            x = x.get(k)?;
        }
        x.as_u64()
    })
}

/// Every node has a neighbour, admits every origin and follows one tree
/// root (each criterion only where the node's status reports it).
fn wait_formed(args: &Args, nodes: &[Node], fleet: &mut Fleet, work: &Path) -> anyhow::Result<()> {
    let t0 = Instant::now();
    loop {
        let mut ready = 0;
        let mut roots = HashSet::new();
        for (i, c) in fleet.children.iter_mut().enumerate() {
            if let Ok(Some(st)) = c.try_wait() {
                bail!(
                    "meshd {i} exited early ({st}); log: {}",
                    work.join(format!("node{i}/meshd.log")).display()
                );
            }
        }
        for n in nodes {
            let Ok(s) = status(n.api) else { continue };
            let peers = find_u64(
                &s,
                &[
                    &["overlay", "active"],
                    &["active"],
                    &["peers_live"],
                    &["peers"],
                ],
            )
            .unwrap_or(0);
            let admitted = find_u64(&s, &[&["overlay", "admitted"], &["admitted"]]);
            if peers >= 1 && admitted.is_none_or(|a| a as usize >= args.nodes) {
                ready += 1;
                let root = s
                    .pointer("/overlay/tree/root")
                    .or_else(|| s.pointer("/tree/root"))
                    .cloned()
                    .unwrap_or_default();
                roots.insert(root.to_string());
            }
        }
        if ready == nodes.len() && roots.len() <= 1 {
            return Ok(());
        }
        if t0.elapsed() > Duration::from_secs(60) {
            bail!(
                "mesh did not form within 60 s ({ready}/{} nodes ready, {} roots); logs in {}",
                nodes.len(),
                roots.len(),
                work.display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn gettid() -> u32 {
    // SAFETY: gettid(2) has no preconditions.
    unsafe { libc::gettid() as u32 }
}

/// Starts a subscriber thread on `api` that records every line of the e2e topic.
fn subscribe(
    api: SocketAddr,
    state: Arc<Mutex<SubState>>,
    epoch: Instant,
    tid: mpsc::Sender<u32>,
) -> anyhow::Result<()> {
    let url = format!("http://{api}/v1/subscribe");
    let resp = agent()
        .get(&url)
        .query("topic", "e2e")
        .call()
        .with_context(|| format!("GET {url}"))?;
    std::thread::Builder::new()
        .name(format!("sub-{api}"))
        .spawn(move || {
            let _ = tid.send(gettid());
            drop(tid);
            let mut reader = BufReader::new(resp.into_reader());
            let mut line = String::new();
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let now = epoch.elapsed().as_nanos() as u64;
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if let Some(n) = v.get("lagged").and_then(|x| x.as_u64()) {
                    if let Ok(mut g) = state.lock() {
                        g.lagged += n;
                    }
                    continue;
                }
                let Some(text) = v.get("text").and_then(|x| x.as_str()) else {
                    continue;
                };
                let mut it = text.split(' ');
                let (Some(run), Some(seq), Some(sent)) = (
                    it.next().and_then(|x| x.parse::<u32>().ok()),
                    it.next().and_then(|x| x.parse::<u32>().ok()),
                    it.next().and_then(|x| x.parse::<u64>().ok()),
                ) else {
                    continue;
                };
                if let Ok(mut g) = state.lock() {
                    *g.lines.entry(run).or_default() += 1;
                    g.seen.push(Seen {
                        run,
                        seq,
                        lat_ns: now.saturating_sub(sent),
                        recv_ns: now,
                    });
                }
            }
        })?;
    Ok(())
}

/// A batch of messages for the publisher.
struct Job {
    run: u32,
    count: usize,
    rate: Option<f64>,
    first_seq: usize,
}

struct PubReport {
    published: usize,
    errors: usize,
    elapsed: Duration,
}

/// Starts the publisher thread (an agent of the node at `api`).
fn publisher(
    api: SocketAddr,
    payload: usize,
    epoch: Instant,
    tid: mpsc::Sender<u32>,
) -> anyhow::Result<(mpsc::Sender<Job>, mpsc::Receiver<PubReport>)> {
    let (job_tx, job_rx) = mpsc::channel::<Job>();
    let (done_tx, done_rx) = mpsc::channel();
    let url = format!("http://{api}/v1/publish");
    let client = ureq::AgentBuilder::new()
        .timeout_connect(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .build();
    std::thread::Builder::new()
        .name("publisher".to_owned())
        .spawn(move || {
            let _ = tid.send(gettid());
            drop(tid);
            let mut text = String::with_capacity(payload);
            for job in job_rx {
                let t0 = Instant::now();
                let mut published = 0;
                let mut errors = 0;
                for k in 0..job.count {
                    if let Some(rate) = job.rate {
                        let due = t0 + Duration::from_secs_f64(k as f64 / rate);
                        let now = Instant::now();
                        if due > now {
                            std::thread::sleep(due - now);
                        }
                    }
                    let seq = job.first_seq + k;
                    text.clear();
                    let sent = epoch.elapsed().as_nanos() as u64;
                    use std::fmt::Write;
                    let _ = write!(text, "{} {seq} {sent} ", job.run);
                    while text.len() < payload {
                        text.push('x');
                    }
                    let body = serde_json::json!({ "topic": "e2e", "text": text });
                    // One retry when the connection failed (a pooled keep-alive
                    // connection the server closed), never after an answer.
                    let mut answer = client.post(&url).send_json(&body);
                    if matches!(answer, Err(ureq::Error::Transport(_))) {
                        answer = client.post(&url).send_json(&body);
                    }
                    match answer {
                        Ok(r) => {
                            // Read the answer to the end so the connection is reused.
                            let _ = r.into_string();
                            published += 1;
                        }
                        Err(_) => errors += 1,
                    }
                }
                let _ = done_tx.send(PubReport {
                    published,
                    errors,
                    elapsed: t0.elapsed(),
                });
            }
        })?;
    Ok((job_tx, done_rx))
}

/// Per meshd process: schedstat ns and name per thread, and utime + stime in ns.
type Cpu = Vec<(HashMap<u32, (u64, String)>, u64)>;

fn meshd_cpu(nodes: &[Node]) -> Cpu {
    nodes
        .iter()
        .map(|n| (threads_ns(n.pid), stat_ns(n.pid)))
        .collect()
}

/// CPU spent between `a` and `b` over all processes: schedstat ns, stat ns,
/// and schedstat ns by thread name. A thread that started in between counts
/// in full; one that ended in between is lost to schedstat (the stat figure
/// keeps it).
fn cpu_delta(a: &Cpu, b: &Cpu) -> (f64, f64, BTreeMap<String, f64>) {
    let mut sched = 0u64;
    let mut stat = 0u64;
    let mut by_name: BTreeMap<String, f64> = BTreeMap::new();
    for ((ta, sa), (tb, sb)) in a.iter().zip(b) {
        for (tid, (ns, name)) in tb {
            let d = ns.saturating_sub(ta.get(tid).map_or(0, |x| x.0));
            sched += d;
            *by_name.entry(name.clone()).or_default() += d as f64;
        }
        stat += sb.saturating_sub(*sa);
    }
    (sched as f64, stat as f64, by_name)
}

/// First field of /proc/<pid>/task/<tid>/schedstat (ns on CPU) and the
/// thread's name, per thread.
fn threads_ns(pid: u32) -> HashMap<u32, (u64, String)> {
    let mut m = HashMap::new();
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return m;
    };
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if let Some(ns) = schedstat(&e.path().join("schedstat")) {
            let name = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
            m.insert(tid, (ns, name.trim().to_owned()));
        }
    }
    m
}

fn schedstat(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The process's utime + stime from /proc/<pid>/stat, in ns.
fn stat_ns(pid: u32) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    // Fields after the command name, which may hold spaces: state is field 3,
    // utime field 14, stime field 15.
    let Some(rest) = s.rfind(')').map(|i| &s[i + 1..]) else {
        return 0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    (ticks(11) + ticks(12)) * 1_000_000_000 / hz
}

/// schedstat ns of this process's threads `tids`.
fn tids_cpu(tids: &[u32]) -> Vec<u64> {
    tids.iter()
        .map(|t| schedstat(Path::new(&format!("/proc/self/task/{t}/schedstat"))).unwrap_or(0))
        .collect()
}

/// The `duplicate` drop reason summed over nodes: `/v1/status` `dropped`,
/// else the Prometheus text of `/metrics`.
fn duplicates(nodes: &[Node]) -> anyhow::Result<u64> {
    let mut sum = 0;
    for n in nodes {
        let s = status(n.api).with_context(|| format!("status of {}", n.api))?;
        if let Some(d) = s.pointer("/dropped/duplicate").and_then(|x| x.as_u64()) {
            sum += d;
            continue;
        }
        let text = agent()
            .get(&format!("http://{}/metrics", n.api))
            .call()?
            .into_string()?;
        sum += metrics_duplicates(&text);
    }
    Ok(sum)
}

/// Sums the samples of drop counters labelled `reason="duplicate"`.
fn metrics_duplicates(text: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#') && l.contains("drop") && l.contains("\"duplicate\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The `q` quantile (nearest rank) of sorted nanoseconds.
fn pct(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64
}

/// The median of `v` (mean of the two middle values for an even count).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// `--compare`: medians over rounds per label and rate, ratios to the baseline.
fn compare(args: &Args) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for f in &args.compare {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        let out: Output =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", f.display()))?;
        runs.extend(out.runs);
    }
    if runs.is_empty() {
        bail!("no runs in the given files");
    }
    let mut labels: Vec<String> = Vec::new();
    let mut rates: Vec<String> = Vec::new();
    for r in &runs {
        if !labels.contains(&r.label) {
            labels.push(r.label.clone());
        }
        if !rates.contains(&r.rate) {
            rates.push(r.rate.clone());
        }
    }
    // The baseline first, then the others in order of appearance.
    if let Some(i) = labels.iter().position(|l| *l == args.baseline) {
        let b = labels.remove(i);
        labels.insert(0, b);
    }
    let base = labels[0].clone();
    let first = &runs[0];
    println!(
        "{} nodes, {} messages of {} B per run, one publisher; medians over rounds ({})",
        first.nodes,
        first.messages,
        first.payload,
        labels
            .iter()
            .map(|l| format!(
                "{l}: {}",
                runs.iter()
                    .filter(|r| r.label == *l)
                    .map(|r| r.round)
                    .collect::<HashSet<_>>()
                    .len()
            ))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    type Metric = (&'static str, fn(&RunResult) -> f64, usize);
    let metrics: [Metric; 9] = [
        (
            "delivered / expected (%)",
            |r| pct_of(r.delivered, r.expected),
            2,
        ),
        ("latency p50 (ms)", |r| r.lat_p50_ms, 3),
        ("latency p99 (ms)", |r| r.lat_p99_ms, 3),
        ("latency max (ms)", |r| r.lat_max_ms, 1),
        ("published/s", |r| r.publish_per_s, 0),
        ("delivered/s", |r| r.delivered_per_s, 0),
        (
            "CPU µs / delivery (meshd + agents)",
            |r| r.cpu_us_per_delivery,
            1,
        ),
        ("duplicates / delivery", |r| r.duplicates_per_delivery, 3),
        (
            "idle meshd CPU (ms/s, all nodes)",
            |r| r.idle_meshd_us_per_s / 1e3,
            1,
        ),
    ];
    let mut header = String::from("| rate | metric |");
    let mut rule = String::from("| --- | --- |");
    for l in &labels {
        header += &format!(" {l} |");
        rule += " ---: |";
    }
    for l in labels.iter().skip(1) {
        header += &format!(" {l}/{base} |");
        rule += " ---: |";
    }
    println!("{header}");
    println!("{rule}");
    let mut table = BTreeMap::new();
    for rate in &rates {
        let rate_txt = if rate == "max" {
            "max".to_owned()
        } else {
            format!("{rate}/s")
        };
        for (name, f, prec) in &metrics {
            let med: Vec<f64> = labels
                .iter()
                .map(|l| {
                    median(
                        runs.iter()
                            .filter(|r| r.label == *l && r.rate == *rate)
                            .map(f)
                            .collect(),
                    )
                })
                .collect();
            let mut line = format!("| {rate_txt} | {name} |");
            for m in &med {
                line += &format!(" {m:.prec$} |", prec = *prec);
            }
            for m in med.iter().skip(1) {
                let ratio = m / med[0];
                if ratio.is_finite() {
                    line += &format!(" {ratio:.2}x |");
                } else {
                    line += " - |";
                }
            }
            println!("{line}");
            table.insert(format!("{rate} {name}"), med);
        }
    }
    println!();
    println!(
        "| label | round | rate | delivered | p50 ms | p99 ms | delivered/s | CPU µs/delivery | dup/delivery |"
    );
    println!("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |");
    for r in &runs {
        println!(
            "| {} | {} | {} | {}/{} | {:.3} | {:.3} | {:.0} | {:.1} | {:.3} |",
            r.label,
            r.round,
            r.rate,
            r.delivered,
            r.expected,
            r.lat_p50_ms,
            r.lat_p99_ms,
            r.delivered_per_s,
            r.cpu_us_per_delivery,
            r.duplicates_per_delivery
        );
    }
    if let Some(path) = &args.json {
        let out = serde_json::json!({
            "labels": labels,
            "baseline": base,
            "medians": table,
            "runs": runs,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn pct_of(a: usize, b: usize) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 * 100.0 / b as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_duplicates_sums_only_the_duplicate_reason() {
        let text = "# HELP mesh_dataplane_dropped x\n\
            mesh_dataplane_dropped_total{reason=\"duplicate\"} 12\n\
            mesh_dataplane_dropped_total{reason=\"stale\"} 5\n\
            mesh_dataplane_dropped_total{tile=\"1\",reason=\"duplicate\"} 3\n";
        assert_eq!(metrics_duplicates(text), 15);
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(pct(&v, 0.50), 50.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert_eq!(pct(&[7], 0.99), 7.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0, 10.0]), 2.5);
    }

    #[test]
    fn config_keys_are_written_only_where_meshd_documents_them() {
        let known = Known(
            toml::from_str("[overlay]\nexpected_size = 1000\n[tls]\ncert = \"x\"\n").expect("toml"),
        );
        let mut cfg = toml::Table::new();
        set(&mut cfg, &known, "overlay", "mode", "hyparview", false).expect("optional");
        set(&mut cfg, &known, "tls", "enabled", true, false).expect("optional");
        set(&mut cfg, &known, "overlay", "expected_size", 8, false).expect("known");
        set(&mut cfg, &known, "tls", "cert", "/c", true).expect("known");
        assert!(set(&mut cfg, &known, "tls", "ca_cert", "/a", true).is_err());
        let text = toml::to_string(&cfg).expect("toml");
        assert!(!text.contains("mode"), "{text}");
        assert!(!text.contains("enabled"), "{text}");
        assert!(text.contains("expected_size = 8"), "{text}");
        assert!(text.contains("cert = \"/c\""), "{text}");
    }

    #[test]
    fn rates_are_max_or_positive() {
        assert_eq!(parse_rate("max").expect("max"), None);
        assert_eq!(parse_rate("500").expect("500"), Some(500.0));
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("fast").is_err());
    }

    #[test]
    fn stat_of_this_process_is_read() {
        // Burn a little CPU so utime is at least one tick on any machine.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(30) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(stat_ns(std::process::id()) > 0);
        assert!(!threads_ns(std::process::id()).is_empty());
    }
}
