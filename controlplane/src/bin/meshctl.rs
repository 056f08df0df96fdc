//! `meshctl`: talks to a running `meshd` over its agent API.
//!
//! ```text
//! meshctl [--api 127.0.0.1:7480] status
//! meshctl peers
//! meshctl publish TOPIC TEXT
//! meshctl subscribe TOPIC [--count N]
//! meshctl deny IP | allow IP      (XDP backend)
//! meshctl rate PPS BURST          (XDP backend)
//! meshctl ca init DIR
//! meshctl ca issue --ca DIR --node-id HEX --out node.crt
//! ```

use std::io::{BufRead, BufReader, Write};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// Client for the meshd agent API.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Agent API address of the node.
    #[arg(long, default_value = "127.0.0.1:7480", env = "MESHD_API")]
    api: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Node status (JSON).
    Status,
    /// Live peers (JSON).
    Peers,
    /// Publish TEXT on TOPIC.
    Publish {
        /// Topic (1-255 bytes).
        topic: String,
        /// Message text.
        text: String,
    },
    /// Drop packets from IP in XDP (XDP backend only).
    Deny {
        /// Source address.
        ip: std::net::IpAddr,
    },
    /// Remove IP from the XDP deny list.
    Allow {
        /// Source address.
        ip: std::net::IpAddr,
    },
    /// Set the per-source rate limit in XDP (XDP backend only).
    Rate {
        /// Packets per second per source address (0 = no limit).
        pps: u64,
        /// Bucket depth in packets.
        burst: u64,
    },
    /// Mesh certificate authority (offline; needs no running node).
    Ca {
        #[command(subcommand)]
        cmd: CaCmd,
    },
    /// Print messages on TOPIC as they arrive, one JSON object per line.
    Subscribe {
        /// Topic.
        topic: String,
        /// Exit after this many messages.
        #[arg(long)]
        count: Option<usize>,
    },
}

#[derive(Subcommand, Debug)]
enum CaCmd {
    /// Create a mesh CA in DIR (ca.crt, and ca.key with mode 0600).
    Init {
        /// Directory for the CA files (must not hold a CA yet).
        dir: std::path::PathBuf,
    },
    /// Issue a node certificate for a node id (`meshd --print-node-id`).
    Issue {
        /// CA directory.
        #[arg(long)]
        ca: std::path::PathBuf,
        /// The node's id: its Ed25519 public key, 64 hex characters.
        #[arg(long)]
        node_id: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let ca = mesh_transport::MeshCa::generate().context("generating the CA key")?;
            ca.save(&dir)
                .with_context(|| format!("saving the CA in {}", dir.display()))?;
            println!("mesh CA written to {}", dir.display());
        }
        CaCmd::Issue {
            ca,
            node_id,
            days,
            out,
        } => {
            let mut key = [0u8; 32];
            hex::decode_to_slice(node_id.trim(), &mut key)
                .context("--node-id must be 64 hex characters (meshd --print-node-id)")?;
            let ca = mesh_transport::MeshCa::load(&ca)
                .with_context(|| format!("loading the CA from {}", ca.display()))?;
            let cert = ca
                .issue(
                    key,
                    std::time::Duration::from_secs(days.saturating_mul(86_400)),
                )
                .context("issuing the certificate")?;
            std::fs::write(&out, mesh_transport::ca::cert_to_pem(&cert))
                .with_context(|| format!("writing {}", out.display()))?;
            println!(
                "certificate for {} written to {}",
                node_id.trim(),
                out.display()
            );
        }
    }
    Ok(())
}

fn get(url: &str) -> anyhow::Result<serde_json::Value> {
    let resp = ureq::get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    resp.into_json().context("reading JSON")
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let args = match args.cmd {
        Cmd::Ca { cmd } => return ca(cmd),
        _ => args,
    };
    let base = format!("http://{}", args.api);
    let out = std::io::stdout();
    let mut out = out.lock();
    match args.cmd {
        Cmd::Status => {
            let v = get(&format!("{base}/v1/status"))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Cmd::Peers => {
            let v = get(&format!("{base}/v1/peers"))?;
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        }
        Cmd::Publish { topic, text } => {
            let resp = ureq::post(&format!("{base}/v1/publish"))
                .send_json(serde_json::json!({ "topic": topic, "text": text }));
            match resp {
                Ok(r) => {
                    let v: serde_json::Value = r.into_json()?;
                    writeln!(out, "{v}")?;
                }
                Err(ureq::Error::Status(code, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    bail!("publish failed ({code}): {body}");
                }
                Err(e) => return Err(e).context("POST /v1/publish"),
            }
        }
        Cmd::Ca { .. } => unreachable!("handled above"),
        Cmd::Rate { pps, burst } => {
            match ureq::post(&format!("{base}/v1/rate"))
                .send_json(serde_json::json!({ "pps": pps, "burst": burst }))
            {
                Ok(r) => {
                    let v: serde_json::Value = r.into_json()?;
                    writeln!(out, "{v}")?;
                }
                Err(ureq::Error::Status(code, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    bail!("rate failed ({code}): {body}");
                }
                Err(e) => return Err(e).context("POST /v1/rate"),
            }
        }
        Cmd::Deny { ip } | Cmd::Allow { ip } => {
            let path = if matches!(args.cmd, Cmd::Deny { .. }) {
                "deny"
            } else {
                "allow"
            };
            match ureq::post(&format!("{base}/v1/{path}"))
                .send_json(serde_json::json!({ "ip": ip }))
            {
                Ok(r) => {
                    let v: serde_json::Value = r.into_json()?;
                    writeln!(out, "{v}")?;
                }
                Err(ureq::Error::Status(code, r)) => {
                    let body = r.into_string().unwrap_or_default();
                    bail!("{path} failed ({code}): {body}");
                }
                Err(e) => return Err(e).context(format!("POST /v1/{path}")),
            }
        }
        Cmd::Subscribe { topic, count } => {
            let url = format!("{base}/v1/subscribe");
            let resp = ureq::get(&url)
                .query("topic", &topic)
                .call()
                .with_context(|| format!("GET {url}"))?;
            let reader = BufReader::new(resp.into_reader());
            for (n, line) in reader.lines().enumerate() {
                let line = line.context("reading stream")?;
                writeln!(out, "{line}")?;
                out.flush()?;
                if count.is_some_and(|c| n + 1 >= c) {
                    break;
                }
            }
        }
    }
    Ok(())
}
