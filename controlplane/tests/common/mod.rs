//! Shared helpers of the integration tests: the one node config every test starts from
//! ([`member_config`]: enrolled by a test mesh CA, on the protocol cores with mutual TLS),
//! uniquely named network namespaces removed on drop, daemons stopped on drop, `meshctl`
//! inside a namespace.
#![allow(dead_code)]

use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use controlplane::config::Config;
use controlplane::enroll::{CaDir, DEFAULT_VALIDITY};

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
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if finished.recv_timeout(limit).is_err() {
            // SAFETY: kill(2) on our child, still running (not yet reaped) at the deadline.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    });
    let out = sub.wait_with_output().expect("subscriber");
    let _ = done.send(());
    let _ = guard.join();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["id"].as_str().map(str::to_owned))
        .collect()
}

/// A new mesh CA in `dir/name` (`ca.crt`, `ca.key`), as `meshctl ca init` makes it.
pub fn mesh_ca(dir: &Path, name: &str) -> CaDir {
    CaDir::init(&dir.join(name)).expect("mesh CA")
}

/// The one config every test node starts from (in process, or written to a file for a
/// `meshd` with [`write_config`]): enrolled by `ca` as `meshctl enroll` does (key
/// `dir/{name}.key`, created if absent, and certificate `dir/{name}.crt`), on the protocol
/// cores over mutual TLS, mesh address `listen`, agent API on an ephemeral loopback port,
/// `bootstrap` seeds, partial views sized for `expected` nodes, fast SWIM periods (a
/// crash is declared in seconds).
pub fn member_config(
    ca: &CaDir,
    dir: &Path,
    name: &str,
    listen: SocketAddr,
    bootstrap: Vec<SocketAddr>,
    expected: u64,
) -> Config {
    let node = ca
        .enroll(
            &dir.join(format!("{name}.key")),
            &dir.join(format!("{name}.crt")),
            DEFAULT_VALIDITY,
        )
        .expect("enroll");
    let mut c = Config::default();
    node.apply(&mut c);
    c.node.listen = listen;
    c.node.api_listen = "127.0.0.1:0".parse().unwrap();
    c.node.bootstrap = bootstrap;
    c.overlay.expected_size = expected;
    c.overlay.probe_interval_ms = 200;
    c.overlay.probe_timeout_ms = 100;
    c
}

/// Writes `cfg` as TOML to `dir/{name}.toml` (for a `meshd --config`); returns the path.
pub fn write_config(dir: &Path, name: &str, cfg: &Config) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml::to_string(cfg).expect("config as TOML")).expect("write config");
    path
}

/// The signing identity of the node configured by `cfg` (its key file).
pub fn identity(cfg: &Config) -> dataplane::identity::Identity {
    dataplane::identity::Identity::load_or_create(&cfg.node.key_file)
        .expect("node key")
        .0
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

/// A node's status as the API serves it (JSON), `Null` once it is gone.
pub async fn status_json(n: &controlplane::node::NodeHandle) -> serde_json::Value {
    match n.status().await {
        Some(st) => serde_json::to_value(st).expect("status as JSON"),
        None => serde_json::Value::Null,
    }
}

/// Polls the async `f` every 25 ms until it holds; fails after `limit` naming `what`.
pub async fn wait_async<F: AsyncFnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let t0 = Instant::now();
    while !f().await {
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
