//! Runs the real `mesh-demo` against real `meshd` processes (8 of them, each
//! on its own loopback address) and checks its verdict and summary.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The `meshd` binary. It belongs to the `controlplane` package, so cargo does not build
/// it for this package's tests: ask cargo for it (a no-op when it is up to date, as in a
/// workspace run) and take the path cargo reports.
fn meshd() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["build", "-p", "controlplane", "--bin", "meshd"])
        .args([
            "--message-format",
            "json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build for meshd");
    assert!(out.status.success(), "building meshd failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "meshd")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported no meshd executable")
}

#[test]
fn demo_mesh_delivers_everything_and_rejects_the_misbehaving_node() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-demo"))
        .arg("--meshd")
        .arg(meshd())
        .args(["--nodes", "8", "--publishers", "3", "--messages", "10"])
        // Ports away from the interactive demo's defaults.
        .args(["--port", "27400", "--api-port", "27480"])
        .output()
        .expect("run mesh-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mesh-demo failed\n{stdout}\n{stderr}");
    assert!(stdout.contains("delivery: 100%"), "{stdout}");
    assert!(
        stdout.contains("forged/tampered/replayed messages delivered: 0"),
        "{stdout}"
    );
    // Every node enrolled by the demo's CA; the protocol cores, with partial views.
    assert!(stdout.contains("mutual TLS between nodes: on"), "{stdout}");
    assert!(
        stdout.contains("control plane: SWIM + HyParView"),
        "{stdout}"
    );
    assert!(stdout.contains("overlay views per node"), "{stdout}");
    // One rooted tree spans the eight nodes.
    assert!(stdout.contains("dissemination tree: 1 root(s)"), "{stdout}");
    // Eight node rows, each 30/30.
    assert_eq!(stdout.matches("30/30").count(), 8, "{stdout}");
    // The misbehaving node's traffic was rejected, each kind where it should be: forged
    // (a member's origin) by signature, its own origin before verification, replays as
    // stale.
    let rejected = stdout
        .lines()
        .find(|l| l.starts_with("rejected: "))
        .expect("rejected line");
    let count = |what: &str| -> u64 {
        rejected
            .split(", ")
            .find(|p| p.contains(what))
            .and_then(|p| p.trim_start_matches("rejected: ").split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    for what in ["bad signature", "from non-members", "stale", "malformed"] {
        assert!(count(what) > 0, "nothing {what}: {rejected}");
    }
}
