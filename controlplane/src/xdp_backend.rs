//! Starts the XDP + AF_XDP fast path for a node: loads and attaches the XDP
//! program on the configured interface, then one AF_XDP socket and tile per
//! RX queue of the hardware profile, each on its profile core.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use dataplane::forward::ForwardSet;
use dataplane::profile::{self, Profile};
use dataplane::tile::{self, TileConfig, TileHandle, handoff};
use dataplane::xdp::{MeshXdp, XdpControl, XdpMode, XdpSettings};
use dataplane::xsk::{BindMode, XskSocket};

use crate::config::Config;
use crate::metrics::Metrics;

/// The attached program; detached when dropped.
pub struct Running {
    xdp: MeshXdp,
    /// Mode the program got.
    pub mode: XdpMode,
}

impl Running {
    /// Deny list, rate and counters.
    pub fn control(&self) -> &XdpControl {
        self.xdp.control()
    }
}

/// Loads the profile, attaches XDP and starts one tile per profile queue.
pub fn start(
    cfg: &Config,
    udp_addr: SocketAddr,
    tile_cfg: TileConfig,
    forward: &Arc<ArcSwap<ForwardSet>>,
    make_sender: &dyn Fn() -> handoff::InboundSender,
    metrics: &Metrics,
) -> anyhow::Result<(Running, Vec<TileHandle>)> {
    let x = &cfg.dataplane.xdp;
    let prof = Profile::load_named(&x.profiles_dir, &x.profile).with_context(|| {
        format!(
            "hardware profile `{}` in {}",
            x.profile,
            x.profiles_dir.display()
        )
    })?;
    let missing = prof.missing_cores();
    if !missing.is_empty() {
        tracing::warn!(?missing, profile = %prof.name, "profile names cores this machine lacks; those threads run unpinned");
    }
    let mut xdp = MeshXdp::load(&XdpSettings {
        ports: vec![cfg.node.listen.port()],
        rate_pps: x.rate_pps,
        burst: x.burst,
        ..XdpSettings::default()
    })
    .context("loading the XDP program")?;
    for ip in &x.deny {
        xdp.control()
            .deny(*ip)
            .with_context(|| format!("denying {ip}"))?;
    }
    let mode = xdp
        .attach(&x.interface, prof.xdp.mode)
        .with_context(|| format!("attaching XDP to {}", x.interface))?;
    tracing::info!(interface = %x.interface, %mode, profile = %prof.name, "XDP program attached");
    metrics
        .xdp_attached
        .with_label_values(&[&mode.to_string()])
        .set(1);

    let mut tiles = Vec::new();
    for (i, queue) in prof.xsk.queues.iter().enumerate() {
        let xcfg = prof
            .xsk_config(i, &x.interface, cfg.node.listen)
            .context("profile queue list")?;
        let control = xdp.control().try_clone().context("cloning XDP maps")?;
        let busy = prof.busy_poll;
        let core = prof
            .cores
            .fast_path
            .get(i)
            .copied()
            .filter(|c| !missing.contains(c));
        let tcfg = TileConfig {
            batch_size: xcfg.batch,
            core,
            ..tile_cfg.clone()
        };
        let (bind_tx, bind_rx) = std::sync::mpsc::channel::<BindMode>();
        let q = *queue;
        let tile = tile::spawn_tile(
            format!("mesh-xsk-q{q}"),
            udp_addr,
            tcfg,
            forward.clone(),
            make_sender(),
            move || {
                let sock = XskSocket::open(&xcfg, &control).map_err(|e| {
                    std::io::Error::other(format!("AF_XDP socket on queue {q}: {e}"))
                })?;
                profile::apply_busy_poll(sock.fd(), &busy)?;
                let _ = bind_tx.send(sock.mode());
                let fd = sock.fd().as_raw_fd();
                Ok((sock, fd))
            },
        )?;
        if let Ok(bind) = bind_rx.recv() {
            tracing::info!(queue = q, %bind, core = ?core, "AF_XDP socket bound");
            metrics
                .xsk_sockets
                .with_label_values(&[bind.as_str()])
                .inc();
        }
        tiles.push(tile);
    }
    Ok((Running { xdp, mode }, tiles))
}
