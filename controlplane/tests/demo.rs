//! Runs the real `mesh-demo` against real `meshd` processes (8 of them, each
//! on its own loopback address) and checks its verdict and summary.

use std::process::Command;

#[test]
fn demo_mesh_delivers_everything_and_rejects_the_misbehaving_node() {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh-demo"))
        .args(["--meshd", env!("CARGO_BIN_EXE_meshd")])
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
    // The default control plane is the protocol cores, with partial views.
    assert!(stdout.contains("control plane: hyparview"), "{stdout}");
    assert!(stdout.contains("overlay views per node"), "{stdout}");
    // One rooted tree spans the eight nodes.
    assert!(stdout.contains("dissemination tree: 1 root(s)"), "{stdout}");
    // Eight node rows, each 30/30.
    assert_eq!(stdout.matches("30/30").count(), 8, "{stdout}");
}
