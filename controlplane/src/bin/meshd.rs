//! `meshd`: the mesh node daemon.
//!
//! ```text
//! meshd --config /etc/meshd/meshd.toml
//! meshd --print-default-config > meshd.toml
//! ```
//! Every config key is documented in `controlplane/default.toml`.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use controlplane::config::Config;
use tracing_subscriber::EnvFilter;

/// Mesh node daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML). Without it, built-in defaults are used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Print the documented default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Print this node's id (its Ed25519 public key, hex), creating the key
    /// file if needed, and exit. The mesh CA issues the node certificate for
    /// this key (`meshctl ca issue`).
    #[arg(long)]
    print_node_id: bool,
    /// Log filter (tracing EnvFilter syntax), overrides RUST_LOG.
    #[arg(long, default_value = "info")]
    log: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", include_str!("../../default.toml"));
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("bad --log filter")?)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cfg = match &args.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    for key in cfg.retired_keys() {
        tracing::warn!(
            key,
            "config key of the retired peer-table control plane has no effect: remove it"
        );
    }
    if args.print_node_id {
        let (id, _) = dataplane::identity::Identity::load_or_create(&cfg.node.key_file)?;
        println!("{}", id.node_id());
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?;
    rt.block_on(async move {
        let node = controlplane::node::start(cfg).await?;
        tracing::info!(node = %node.id(), udp = %node.udp_addr(), api = %node.api_addr(), "meshd running");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing SIGTERM handler")?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        tracing::info!("shutting down");
        node.shutdown().await;
        Ok(())
    })
}
