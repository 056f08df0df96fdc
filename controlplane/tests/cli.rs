//! The real binaries: `meshctl ca init` and `meshctl enroll` make a mesh CA and node
//! files; `meshd` starts from a config file naming them and rejects a bad one with an
//! error naming the key; `meshctl` status / peers / publish / subscribe work against it,
//! and two `meshd` enrolled this way form a mesh over mutual TLS.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn meshctl(api: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--api")
        .arg(api)
        .args(args)
        .output()
        .expect("run meshctl")
}

/// `meshctl` without a node (the offline CA commands); asserts it succeeded.
fn offline(args: &[&str]) -> String {
    let out = meshctl("127.0.0.1:1", args);
    assert!(
        out.status.success(),
        "meshctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn meshd(cfg: &Path) -> Daemon {
    Daemon(
        Command::new(env!("CARGO_BIN_EXE_meshd"))
            .arg("--config")
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start meshd"),
    )
}

/// The child's output; it is killed if still running after `limit`.
fn output_within(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let guard = std::thread::spawn(move || {
        if finished.recv_timeout(limit).is_err() {
            // SAFETY: kill(2) on our child, still running (not yet reaped) at the deadline.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    });
    let out = child.wait_with_output().expect("wait");
    let _ = done.send(());
    let _ = guard.join();
    out
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

/// Waits for the node's API; returns its status.
fn up(api: &str) -> serde_json::Value {
    let t0 = Instant::now();
    loop {
        let out = meshctl(api, &["status"]);
        if out.status.success() {
            return serde_json::from_slice(&out.stdout).expect("status JSON");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "meshd at {api} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn meshd_rejects_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    let run = |text: &str| {
        std::fs::write(&cfg, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{text}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run("[overlay]\nexpected_sizee = 3\n");
    assert!(err.contains("expected_sizee"), "{err}");
    let err = run("[overlay]\nexpected_size = 0\n");
    assert!(err.contains("overlay.expected_size"), "{err}");

    // A corrupt key file is an error, and the file is left alone.
    let ca = common::mesh_ca(dir.path(), "ca");
    let mut c = common::member_config(
        &ca,
        dir.path(),
        "node",
        "127.0.3.9:37400".parse().unwrap(),
        vec![],
        2,
    );
    let key = dir.path().join("node.key");
    std::fs::write(&key, "garbage\n").unwrap();
    c.node.key_file = key.clone();
    let err = run(&toml::to_string(&c).unwrap());
    assert!(err.contains("corrupt"), "{err}");
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "garbage\n");
}

#[test]
fn meshctl_creates_a_ca_and_enrolls_nodes() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    let out = offline(&["ca", "init", "--dir", &d("ca")]);
    assert!(out.contains("mesh CA written"), "{out}");
    assert_eq!(mode(&dir.path().join("ca/ca.key")), 0o600);
    // A CA is never overwritten.
    let again = meshctl("127.0.0.1:1", &["ca", "init", "--dir", &d("ca")]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already holds a mesh CA"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    // The positional form still works.
    offline(&["ca", "init", &d("ca2")]);
    assert!(dir.path().join("ca2/ca.crt").exists());

    let enroll = |n: &str| {
        offline(&[
            "enroll",
            "--ca-dir",
            &d("ca"),
            "--key",
            &d(&format!("{n}/node.key")),
            "--cert",
            &d(&format!("{n}/node.crt")),
            "--days",
            "30",
        ])
    };
    let out = enroll("n1");
    assert!(out.contains("(created)"), "{out}");
    assert!(out.contains("valid 30 days"), "{out}");
    assert_eq!(mode(&dir.path().join("n1/node.key")), 0o600);
    assert_eq!(mode(&dir.path().join("n1/node.crt")), 0o644);
    let again = enroll("n1");
    assert!(again.contains("(kept)"), "{again}");
    // The id it prints is the one meshd derives from the key.
    let id = out
        .lines()
        .find_map(|l| l.strip_prefix("node "))
        .expect("node id line")
        .to_owned();
    assert_eq!(again.lines().next(), Some(format!("node {id}").as_str()));
    let ca = controlplane::enroll::CaDir::open(&dir.path().join("ca")).unwrap();
    let mut c = common::member_config(
        &ca,
        dir.path(),
        "other",
        "127.0.3.9:37400".parse().unwrap(),
        vec![],
        2,
    );
    c.node.key_file = dir.path().join("n1/node.key");
    let cfg = common::write_config(dir.path(), "n1", &c);
    let printed = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("--config")
        .arg(&cfg)
        .arg("--print-node-id")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&printed.stdout).trim(), id);
    // The config lines it prints parse and name the files.
    let snippet = &out[out.find("[node]").expect("config lines")..];
    let parsed: controlplane::config::Config = toml::from_str(snippet).unwrap();
    assert_eq!(parsed.tls.cert, dir.path().join("n1/node.crt"));
    assert_eq!(parsed.tls.ca_cert, dir.path().join("ca/ca.crt"));

    // `ca issue` for a node whose key lives elsewhere.
    offline(&[
        "ca",
        "issue",
        "--ca",
        &d("ca"),
        "--node-id",
        &id,
        "--out",
        &d("n1/issued.crt"),
    ]);
    let pem = std::fs::read_to_string(dir.path().join("n1/issued.crt")).unwrap();
    let der = mesh_transport::ca::cert_from_pem(&pem).unwrap();
    assert_eq!(
        mesh_transport::node_id_from_cert(&der).unwrap().to_hex(),
        id
    );

    // Bad input is refused with a reason.
    for (args, why) in [
        (
            vec![
                "enroll",
                "--ca-dir",
                &d("nope"),
                "--key",
                &d("k"),
                "--cert",
                &d("c"),
            ],
            "mesh CA",
        ),
        (
            vec![
                "enroll",
                "--ca-dir",
                &d("ca"),
                "--key",
                &d("k"),
                "--cert",
                &d("c"),
                "--days",
                "0",
            ],
            "validity",
        ),
        (
            vec![
                "ca",
                "issue",
                "--ca",
                &d("ca"),
                "--node-id",
                "abc",
                "--out",
                &d("x"),
            ],
            "64 hex",
        ),
    ] {
        let out = meshctl("127.0.0.1:1", &args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why), "{args:?}: {err}");
    }
}

#[test]
fn meshctl_drives_meshd_nodes_it_enrolled() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).display().to_string();
    offline(&["ca", "init", "--dir", &d("ca")]);
    let ca = controlplane::enroll::CaDir::open(&dir.path().join("ca")).unwrap();
    let addr = |i: u8| -> SocketAddr { SocketAddr::from(([127, 0, 3, i], 37400)) };
    let api = |i: u8| format!("127.0.3.{i}:37480");
    let mut daemons = Vec::new();
    for i in 1..=2u8 {
        let n = format!("n{i}");
        offline(&[
            "enroll",
            "--ca-dir",
            &d("ca"),
            "--key",
            &d(&format!("{n}.key")),
            "--cert",
            &d(&format!("{n}.crt")),
        ]);
        // member_config enrolls again: it keeps the key meshctl made and renews the cert.
        let seeds = if i == 1 { vec![] } else { vec![addr(1)] };
        let mut c = common::member_config(&ca, dir.path(), &n, addr(i), seeds, 2);
        c.node.api_listen = api(i).parse().unwrap();
        daemons.push(meshd(&common::write_config(dir.path(), &n, &c)));
        if i == 1 {
            // A lone node: up, no peers, publishes to its own agents.
            let v = up(&api(1));
            assert_eq!(v["listen"], "127.0.3.1:37400");
            let out = meshctl(&api(1), &["peers"]);
            assert!(out.status.success());
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
        }
    }
    up(&api(2));
    let t0 = Instant::now();
    let n2_id = loop {
        let st: serde_json::Value =
            serde_json::from_slice(&meshctl(&api(2), &["status"]).stdout).unwrap_or_default();
        let st1: serde_json::Value =
            serde_json::from_slice(&meshctl(&api(1), &["status"]).stdout).unwrap_or_default();
        if st["overlay"]["members"]["alive"] == 1 && st1["overlay"]["admitted"] == 2 {
            break st["node_id"].as_str().unwrap_or_default().to_owned();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "the two enrolled nodes did not meet: {st}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    // Node 1 lists node 2 as its neighbour.
    let out = meshctl(&api(1), &["peers"]);
    let peers: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(peers[0]["node_id"], n2_id.as_str(), "{peers}");
    assert_eq!(peers[0]["addr"], "127.0.3.2:37400", "{peers}");

    let subs: Vec<Child> = (1..=2)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_meshctl"))
                .args(["--api", &api(i), "subscribe", "jobs", "--count", "1"])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let out = meshctl(&api(1), &["publish", "jobs", "build the index"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, sub) in subs.into_iter().enumerate() {
        let got = output_within(sub, Duration::from_secs(15));
        let line: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
        assert_eq!(line["text"], "build the index", "node {}", i + 1);
        assert_eq!(line["id"], receipt["id"], "node {}", i + 1);
        assert_eq!(line["local"], i == 0, "node {}", i + 1);
    }
    let out = meshctl(&api(1), &["publish", "", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic"));
    drop(daemons);
}
