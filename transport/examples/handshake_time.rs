//! Prints how long a new node takes to join one peer on loopback: bind a
//! fresh endpoint, dial the seed, full QUIC + TLS 1.3 mutual-certificate
//! handshake, and the server's preamble (so both sides accepted). Also the
//! first frame's round trip.
//!
//! `cargo run -p mesh-transport --example handshake_time [rounds]`
//!
//! Prints, never asserts: the machines are shared and noisy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mesh_transport::{MeshCa, Transport, TransportConfig, node_id_from_seed};

fn seed(n: u32) -> [u8; 32] {
    let mut s = [0x42u8; 32];
    s[..4].copy_from_slice(&n.to_le_bytes());
    s
}

fn bind(ca: &MeshCa, n: u32) -> Result<Transport, Box<dyn std::error::Error>> {
    let s = seed(n);
    let cert = ca.issue(node_id_from_seed(&s).0, Duration::from_secs(600))?;
    Ok(Transport::bind(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        s,
        cert,
        ca.cert_der().clone(),
        TransportConfig::default(),
    )?)
}

fn summary(name: &str, mut v: Vec<Duration>) {
    v.sort();
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    println!(
        "{name:<28} n={:<4} min={:>9.3?} p50={:>9.3?} p90={:>9.3?} max={:>9.3?}",
        v.len(),
        pick(0.0),
        pick(0.5),
        pick(0.9),
        pick(1.0)
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(50);
    let ca = MeshCa::generate()?;
    let seed_node = bind(&ca, 0)?;
    let seed_addr = seed_node.local_addr()?;
    let seed_id = seed_node.node_id();

    let mut join = Vec::new();
    let mut handshake = Vec::new();
    let mut first_rtt = Vec::new();
    for n in 1..=rounds {
        let t0 = Instant::now();
        let node = bind(&ca, n)?;
        let t1 = Instant::now();
        node.connect(seed_addr, Some(seed_id)).await?;
        let t2 = Instant::now();
        join.push(t2 - t0);
        handshake.push(t2 - t1);
        // First frame there and back (the seed echoes it).
        node.send(&seed_id, b"ping").await?;
        let (from, _, p) = seed_node.recv().await.ok_or("seed closed")?;
        seed_node.send(&from, &p).await?;
        node.recv().await.ok_or("node closed")?;
        first_rtt.push(t2.elapsed());
        node.shutdown().await;
    }
    println!("loopback, {rounds} fresh nodes joining one seed (Ed25519 mTLS over QUIC):");
    summary("bind + dial + handshake", join);
    summary("dial + handshake only", handshake);
    summary("first frame round trip", first_rtt);
    Ok(())
}
