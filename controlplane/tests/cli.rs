//! The real binaries: `meshd` starts from a config file and rejects a bad one
//! with an error naming the key; `meshctl` status / peers / publish /
//! subscribe work against it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn meshctl(api: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .arg("--api")
        .arg(api)
        .args(args)
        .output()
        .expect("run meshctl")
}

#[test]
fn meshd_rejects_a_bad_config_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[gossip]\nfanoutt = 3\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("fanoutt"), "{err}");

    std::fs::write(&cfg, "[gossip]\nfanout = 0\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("gossip.fanout"));

    // A corrupt key file is an error, and the file is left alone.
    let key = dir.path().join("node.key");
    std::fs::write(&key, "garbage\n").unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "[node]\nkey_file = \"{}\"\nlisten = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\n",
            key.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_meshd"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("corrupt"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), "garbage\n");
}

#[test]
fn meshctl_drives_a_running_meshd() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("meshd.toml");
    let api = "127.0.3.1:37480";
    std::fs::write(
        &cfg,
        format!(
            "[node]\nkey_file = \"{}\"\nlisten = \"127.0.3.1:37400\"\napi_listen = \"{api}\"\n",
            dir.path().join("node.key").display()
        ),
    )
    .unwrap();
    let _d = Daemon(
        Command::new(env!("CARGO_BIN_EXE_meshd"))
            .arg("--config")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t0 = Instant::now();
    loop {
        let out = meshctl(api, &["status"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(v["listen"], "127.0.3.1:37400");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "meshd did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let sub = Command::new(env!("CARGO_BIN_EXE_meshctl"))
        .args(["--api", api, "subscribe", "jobs", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = meshctl(api, &["publish", "jobs", "build the index"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let got = sub.wait_with_output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&got.stdout).unwrap();
    assert_eq!(line["text"], "build the index");
    assert_eq!(line["id"], receipt["id"]);
    let out = meshctl(api, &["peers"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    let out = meshctl(api, &["publish", "", "x"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("topic"));
}
