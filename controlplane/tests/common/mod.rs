//! Shared helpers of the namespace tests: uniquely named network namespaces
//! removed on drop, daemons stopped on drop, `meshctl` inside a namespace.
#![allow(dead_code)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Makes namespace names unique within the process.
static N: AtomicU32 = AtomicU32::new(0);

pub fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "`{}`: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A namespace removed on drop.
pub struct Ns(pub String);

impl Ns {
    pub fn new(tag: &str) -> Ns {
        let name = format!(
            "mx{tag}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        sh(&["ip", "netns", "add", &name]);
        let ns = Ns(name);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }
    pub fn ip(&self, args: &[&str]) {
        let mut v = vec!["ip", "-n", &self.0];
        v.extend_from_slice(args);
        sh(&v);
    }
    pub fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
    /// A command run inside the namespace (nsenter keeps /sys and bpffs).
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path())).arg(program);
        c
    }
    /// Runs `f` on a thread that joined the namespace.
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        let path = self.path();
        std::thread::spawn(move || {
            let file = File::open(&path).expect("open netns");
            // SAFETY: setns on a namespace fd we own; affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

pub struct Daemon(pub Child);

impl Daemon {
    /// Starts `meshd --config cfg` inside `ns`, appending its output to `log`.
    pub fn meshd(ns: &Ns, cfg: &Path, log: &Path) -> Daemon {
        let log = File::options().create(true).append(true).open(log).unwrap();
        Daemon(
            ns.cmd(env!("CARGO_BIN_EXE_meshd"))
                .arg("--config")
                .arg(cfg)
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("start meshd"),
        )
    }

    /// Kills the process at once (a crash: no goodbye to peers).
    pub fn crash(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The daemon logs `(name, path)`, each under a `--- name` line, for failure messages.
pub fn read_logs(logs: impl IntoIterator<Item = (String, PathBuf)>) -> String {
    logs.into_iter()
        .map(|(name, path)| {
            format!(
                "--- {name}\n{}",
                std::fs::read_to_string(path).unwrap_or_default()
            )
        })
        .collect()
}

/// Plugs `ns` into `bridge` of the switch namespace `sw`: a veth `n0` in `ns` (address
/// `ip`/24, up) whose peer `port` is a bridge port.
pub fn plug(sw: &Ns, bridge: &str, ns: &Ns, port: &str, ip: &str) {
    sh(&[
        "ip", "link", "add", "n0", "netns", &ns.0, "type", "veth", "peer", "name", port, "netns",
        &sw.0,
    ]);
    ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "n0"]);
    ns.ip(&["link", "set", "n0", "up"]);
    sw.ip(&["link", "set", port, "master", bridge]);
    sw.ip(&["link", "set", port, "up"]);
}

pub fn ctl(ns: &Ns, args: &[&str]) -> serde_json::Value {
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_meshctl"))
        .args(["--api", "127.0.0.1:7480"])
        .args(args)
        .output()
        .expect("meshctl");
    assert!(
        out.status.success(),
        "meshctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
}

pub fn try_status(ns: &Ns) -> Option<serde_json::Value> {
    let out = ns
        .cmd(env!("CARGO_BIN_EXE_meshctl"))
        .args(["--api", "127.0.0.1:7480", "status"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

/// Waits until a node's books balance (`received == accepted + dropped`).
/// The fast path publishes its counters one at a time and the verify pool
/// may hold messages in flight, so a single read can be off; heartbeats keep
/// arriving, so wait for a quiet moment (at most 5 s).
pub async fn wait_balanced(n: &controlplane::node::NodeHandle, who: &str) {
    let t0 = Instant::now();
    loop {
        let st = n.status().await.expect("status");
        let acc: u64 = st.accepted.values().sum();
        let drp: u64 = st.dropped.values().sum();
        if st.received == acc + drp {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{who}: received {} != accepted {acc} + dropped {drp}",
            st.received
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `[tls]` and `[overlay]` sections that put a node on the protocol cores:
/// issues a certificate from `ca` (whose PEM is at `ca_pem`) for the key at
/// `dir/{name}.key` (created if missing). Fast SWIM periods for tests.
pub fn hyparview_sections(
    dir: &std::path::Path,
    name: &str,
    ca: &mesh_transport::MeshCa,
    ca_pem: &std::path::Path,
    expected: usize,
) -> String {
    let key = dir.join(format!("{name}.key"));
    let (id, _) = dataplane::identity::Identity::load_or_create(&key).expect("node key");
    let cert = write_cert(dir, name, id.node_id().0, ca);
    format!(
        r#"
[tls]
enabled = true
ca_cert = "{ca}"
cert = "{cert}"

[overlay]
mode = "hyparview"
expected_size = {expected}
probe_interval_ms = 200
probe_timeout_ms = 100
"#,
        ca = ca_pem.display(),
        cert = cert.display(),
    )
}

/// Starts `meshctl subscribe TOPIC --count N` in the node's namespace.
pub fn collect(ns: &Ns, topic: &str, count: usize) -> Child {
    ns.cmd(env!("CARGO_BIN_EXE_meshctl"))
        .args([
            "--api",
            "127.0.0.1:7480",
            "subscribe",
            topic,
            "--count",
            &count.to_string(),
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("subscribe")
}

/// Waits for a subscriber from [`collect`] (killed after `limit`) and returns
/// the message ids it printed.
pub fn finish(sub: Child, limit: Duration) -> std::collections::HashSet<String> {
    let pid = sub.id();
    let guard = std::thread::spawn(move || {
        std::thread::sleep(limit);
        // SAFETY: kill(2) on a child of ours that may already be gone.
        unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
        }
    });
    let out = sub.wait_with_output().expect("subscriber");
    drop(guard);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect()
}

/// Issues `ca`'s certificate (one hour) for `node_id` into `dir/{name}.crt`.
pub fn write_cert(
    dir: &std::path::Path,
    name: &str,
    node_id: [u8; 32],
    ca: &mesh_transport::MeshCa,
) -> std::path::PathBuf {
    let der = ca.issue(node_id, Duration::from_secs(3600)).expect("issue");
    let cert = dir.join(format!("{name}.crt"));
    std::fs::write(&cert, mesh_transport::ca::cert_to_pem(&der)).expect("write cert");
    cert
}

/// A member's files: the key for `seed` in `dir/{name}.key` (mode 0600) and
/// `ca`'s certificate for it. Returns `(key, cert)`.
/// An in-process member's config: key and CA-issued certificate written to `dir` (from
/// `seed`, files named after `name`), mesh address `listen`, agent API on an ephemeral
/// loopback port, `bootstrap` seeds, mutual TLS on.
pub fn member_config(
    dir: &Path,
    name: &str,
    seed: [u8; 32],
    ca: &mesh_transport::MeshCa,
    ca_pem: &Path,
    listen: std::net::SocketAddr,
    bootstrap: Vec<std::net::SocketAddr>,
) -> controlplane::config::Config {
    let (key, cert) = write_member(dir, name, seed, ca);
    let mut c = controlplane::config::Config::default();
    c.node.key_file = key;
    c.node.listen = listen;
    c.node.api_listen = "127.0.0.1:0".parse().unwrap();
    c.node.bootstrap = bootstrap;
    c.tls.enabled = true;
    c.tls.ca_cert = ca_pem.to_owned();
    c.tls.cert = cert;
    c
}

/// Polls `f` every 100 ms until it holds; fails after `limit` with `what` and `logs()`.
pub fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool, logs: &dyn Fn() -> String) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn write_member(
    dir: &std::path::Path,
    name: &str,
    seed: [u8; 32],
    ca: &mesh_transport::MeshCa,
) -> (std::path::PathBuf, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&key, format!("{}\n", hex::encode(seed))).expect("write key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod key");
    let id = dataplane::identity::Identity::from_seed(seed).node_id().0;
    (key.clone(), write_cert(dir, name, id, ca))
}
