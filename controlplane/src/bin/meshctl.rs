//! `meshctl`: talks to a running `meshd` over its agent API.
//!
//! ```text
//! meshctl [--api 127.0.0.1:7480] status
//! meshctl peers
//! meshctl publish TOPIC TEXT
//! meshctl subscribe TOPIC [--count N]
//! meshctl deny IP | allow IP      (XDP backend)
//! meshctl rate PPS BURST          (XDP backend)
//! meshctl ca init --dir DIR        (or `meshctl ca init DIR`)
//! meshctl enroll --ca-dir DIR --key node.key --cert node.crt [--days N]
//! meshctl ca issue --ca DIR --node-id HEX --out node.crt [--days N]
//! ```
//!
//! `ca init`, `enroll` and `ca issue` work offline (see `controlplane::enroll`).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use controlplane::enroll::{self, CaDir};

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
    /// Enroll a node (offline): create its key if absent, write the CA's certificate for it.
    Enroll {
        /// CA directory (`meshctl ca init`).
        #[arg(long)]
        ca_dir: PathBuf,
        /// The node's key file (`node.key_file`); created with mode 0600 if absent, never
        /// replaced.
        #[arg(long)]
        key: PathBuf,
        /// Where to write the node's certificate (`tls.cert`); an older one is replaced.
        #[arg(long)]
        cert: PathBuf,
        /// Validity of the certificate in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
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
        #[arg(value_name = "DIR", required_unless_present = "dir")]
        path: Option<PathBuf>,
        /// The same, as an option.
        #[arg(long, conflicts_with = "path")]
        dir: Option<PathBuf>,
    },
    /// Issue a node certificate for a node id (`meshd --print-node-id`).
    Issue {
        /// CA directory.
        #[arg(long)]
        ca: PathBuf,
        /// The node's id: its Ed25519 public key, 64 hex characters.
        #[arg(long)]
        node_id: String,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Where to write the certificate (PEM).
        #[arg(long)]
        out: PathBuf,
    },
}

fn ca(cmd: CaCmd) -> anyhow::Result<()> {
    match cmd {
        CaCmd::Init { path, dir } => {
            let dir = dir.or(path).context("give the CA directory (--dir DIR)")?;
            let ca = CaDir::init(&dir)?;
            println!(
                "mesh CA written to {} (ca.crt for the nodes; keep ca.key, mode 0600, offline)",
                ca.dir().display()
            );
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
            CaDir::open(&ca)?.issue(key, &out, enroll::validity_days(days)?)?;
            println!(
                "certificate for {} written to {}",
                node_id.trim(),
                out.display()
            );
        }
    }
    Ok(())
}

fn enroll_node(ca_dir: &Path, key: &Path, cert: &Path, days: u64) -> anyhow::Result<()> {
    let e = CaDir::open(ca_dir)?.enroll(key, cert, enroll::validity_days(days)?)?;
    println!("node {}", e.node_id_hex());
    println!(
        "  key  {} ({})",
        e.key.display(),
        if e.key_created { "created" } else { "kept" }
    );
    println!("  cert {} (valid {days} days)", e.cert.display());
    println!("config lines for this node:\n{}", e.config_snippet());
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
        Cmd::Enroll {
            ca_dir,
            key,
            cert,
            days,
        } => return enroll_node(&ca_dir, &key, &cert, days),
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
        Cmd::Ca { .. } | Cmd::Enroll { .. } => unreachable!("handled above"),
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
