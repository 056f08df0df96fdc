//! AF_XDP backend: one socket per RX queue, built on `xsk-rs` (libxdp).
//!
//! The UMEM is split in two pools: the first half of the frames cycles
//! between the fill ring and the RX ring, the second half between a free
//! list, the TX ring and the completion ring. Nothing is allocated per
//! packet: descriptor arrays and metadata are sized at start-up from the
//! batch size and ring sizes.
//!
//! Receive is batched and non-blocking: [`XskSocket::recv_batch`] returns
//! the previous batch's frames to the fill ring, takes up to `batch`
//! descriptors from the RX ring (kicking the kernel only when the
//! need_wakeup flag asks for it) and parses each frame in place; packet `i`
//! is then [`XskRx::packet`] (`&[u8]` into the UMEM) from
//! [`XskRx::from`]. Frames that are not well-formed UDP are counted and
//! skipped. The source MAC of each received frame is learned into the
//! neighbour table that TX uses.
//!
//! Transmit ([`XskTx::send_batch`]) reaps the completion ring into the free
//! list, writes Ethernet + IP + UDP headers and the payload straight into
//! free TX frames, and produces them on the TX ring in one go.
//!
//! The XDP program decides what reaches the socket: [`XskSocket::open`]
//! registers the socket in the program's XSKMAP for its queue, so the
//! program from [`crate::xdp`] must be loaded (and attached) first. libxdp's
//! default program is never loaded (`XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD`).

pub mod frame;

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd};

use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

use crate::backend::{Backend, RxView, TxSink};
use crate::xdp::XdpControl;
use frame::Mac;

/// Whether to ask for zero-copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ZeroCopy {
    /// Try zero-copy, fall back to copy mode (logged).
    Auto,
    /// Zero-copy or fail.
    Required,
    /// Copy mode.
    Off,
}

mesh_types::labels! {
    /// The bind mode obtained (`mesh.xsk.bind_mode`; `Display` is the log
    /// form, `zero-copy`).
    pub enum BindMode {
        /// Frames DMA'd straight into the UMEM.
        ZeroCopy = 0 => "zero_copy",
        /// The kernel copies frames into the UMEM.
        Copy = 1 => "copy",
    }
}

impl std::fmt::Display for BindMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindMode::ZeroCopy => "zero-copy",
            BindMode::Copy => "copy",
        })
    }
}

/// Socket settings (usually from a hardware profile).
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Interface name (in the calling thread's network namespace).
    pub ifname: String,
    /// RX queue to bind.
    pub queue: u32,
    /// UMEM frame size: 2048 or 4096.
    pub frame_size: u32,
    /// UMEM frames in total; half for RX, half for TX. Power of two.
    pub frame_count: u32,
    /// RX ring entries (power of two).
    pub rx_ring: u32,
    /// TX ring entries (power of two).
    pub tx_ring: u32,
    /// Fill ring entries (power of two, at least `frame_count / 2`).
    pub fill_ring: u32,
    /// Completion ring entries (power of two).
    pub comp_ring: u32,
    /// Largest receive batch (1 to 256).
    pub batch: usize,
    /// Zero-copy policy.
    pub zero_copy: ZeroCopy,
    /// Use the need_wakeup flag (syscalls only when the kernel asks).
    pub need_wakeup: bool,
    /// Source IP and UDP port of sent datagrams.
    pub local: SocketAddr,
    /// Source MAC of sent frames; `None` reads the interface's address.
    pub local_mac: Option<Mac>,
    /// Static neighbours (IP → MAC); more are learned from received frames.
    pub neighbours: Vec<(IpAddr, Mac)>,
}

impl XskConfig {
    /// Defaults for a veth test link.
    pub fn veth(ifname: &str, local: SocketAddr) -> XskConfig {
        XskConfig {
            ifname: ifname.to_string(),
            queue: 0,
            frame_size: 2048,
            frame_count: 4096,
            rx_ring: 2048,
            tx_ring: 2048,
            fill_ring: 2048,
            comp_ring: 2048,
            batch: 64,
            zero_copy: ZeroCopy::Auto,
            need_wakeup: true,
            local,
            local_mac: None,
            neighbours: Vec::new(),
        }
    }
}

/// Errors opening a socket.
#[derive(Debug, thiserror::Error)]
pub enum XskError {
    /// A setting is out of range.
    #[error("invalid AF_XDP setting `{field}`: {why}")]
    Setting {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// UMEM creation failed.
    #[error("creating the UMEM ({frames} frames of {frame_size} bytes) failed: {detail}")]
    Umem {
        /// Frames.
        frames: u32,
        /// Frame size.
        frame_size: u32,
        /// libxdp's error.
        detail: String,
    },
    /// Socket creation or bind failed.
    #[error("binding an AF_XDP socket to {ifname} queue {queue} in {mode} mode failed: {detail}")]
    Bind {
        /// Interface.
        ifname: String,
        /// Queue.
        queue: u32,
        /// Mode tried.
        mode: BindMode,
        /// libxdp's error.
        detail: String,
    },
    /// Reading the interface MAC failed.
    #[error("reading the MAC address of {ifname}: {source}")]
    Mac {
        /// Interface.
        ifname: String,
        /// OS error.
        source: io::Error,
    },
    /// Registering in the XSKMAP failed.
    #[error("registering the socket in the XDP program's XSKMAP: {0}")]
    Register(#[from] crate::xdp::XdpError),
}

/// Counters of one socket (plain integers; one socket per thread).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Frames taken from the RX ring.
    pub rx_frames: u64,
    /// Frames that were not well-formed UDP (skipped).
    pub rx_malformed: u64,
    /// Fill-ring wakeups issued.
    pub rx_wakeups: u64,
    /// Datagrams queued on the TX ring.
    pub tx_queued: u64,
    /// TX completions reaped.
    pub tx_completed: u64,
    /// Datagrams not sent: no free TX frame or ring slot.
    pub tx_ring_full: u64,
    /// Datagrams not sent: destination MAC unknown.
    pub tx_no_neighbour: u64,
    /// Datagrams not sent: too large for a frame or address family mismatch.
    pub tx_unframeable: u64,
}

const NEIGHBOURS: usize = 64;

/// A small fixed neighbour table (IP → MAC), replaced round-robin.
#[derive(Clone, Debug)]
pub struct Neighbours {
    entries: [(IpAddr, Mac); NEIGHBOURS],
    len: usize,
    next: usize,
}

impl Default for Neighbours {
    fn default() -> Self {
        Neighbours {
            entries: [(IpAddr::from([0u8; 4]), [0; 6]); NEIGHBOURS],
            len: 0,
            next: 0,
        }
    }
}

impl Neighbours {
    /// MAC for `ip`.
    pub fn get(&self, ip: IpAddr) -> Option<Mac> {
        self.entries[..self.len]
            .iter()
            .find(|(a, _)| *a == ip)
            .map(|(_, m)| *m)
    }

    /// Records or updates `ip`'s MAC.
    pub fn learn(&mut self, ip: IpAddr, mac: Mac) {
        if let Some(e) = self.entries[..self.len].iter_mut().find(|(a, _)| *a == ip) {
            e.1 = mac;
            return;
        }
        if self.len < NEIGHBOURS {
            self.entries[self.len] = (ip, mac);
            self.len += 1;
        } else {
            self.entries[self.next] = (ip, mac);
            self.next = (self.next + 1) % NEIGHBOURS;
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct RxMeta {
    desc: u16,
    off: u16,
    len: u16,
    src: SocketAddr,
    mac: Mac,
}

/// Receive half of an [`XskSocket`].
pub struct XskRx {
    rxq: RxQueue,
    fq: FillQueue,
    umem: Umem,
    descs: Vec<FrameDesc>,
    held: usize,
    meta: Vec<RxMeta>,
    need_wakeup: bool,
    stats: XskStats,
}

impl XskRx {
    fn release(&mut self) {
        if self.held == 0 {
            return;
        }
        // SAFETY: the held descriptors came from this UMEM's RX ring and no
        // view of them outlives this call (views borrow `self`, and this
        // takes `&mut self`), so handing them back to the kernel is sound.
        let n = unsafe { self.fq.produce(&self.descs[..self.held]) };
        if n == self.held {
            self.held = 0;
            self.meta.clear();
        }
        // Otherwise the fill ring was full (cannot happen: it holds every RX
        // frame); keep them and retry on the next call.
    }

    fn recv(&mut self) -> io::Result<usize> {
        self.release();
        if self.held != 0 {
            return Ok(0);
        }
        let cap = self.descs.len();
        // SAFETY: descs belong to no ring while we hold them; consume writes
        // descriptors of this socket's UMEM into them.
        let n = unsafe { self.rxq.consume(&mut self.descs[..cap]) };
        if n == 0 {
            if self.need_wakeup && self.fq.needs_wakeup() {
                self.stats.rx_wakeups += 1;
                self.fq.wakeup(self.rxq.fd_mut(), 0)?;
            }
            return Ok(0);
        }
        self.held = n;
        self.stats.rx_frames += n as u64;
        for (i, d) in self.descs[..n].iter().enumerate() {
            // SAFETY: d was just consumed from the RX ring of this UMEM and
            // is not on any ring until release(), so the kernel is not
            // writing to it while we read.
            let data = unsafe { self.umem.data(d) };
            match frame::parse_udp(data.contents()) {
                Some(v) => self.meta.push(RxMeta {
                    desc: i as u16,
                    off: v.payload_offset as u16,
                    len: v.payload.len() as u16,
                    src: v.src,
                    mac: v.src_mac,
                }),
                None => self.stats.rx_malformed += 1,
            }
        }
        Ok(self.meta.len())
    }
}

impl RxView for XskRx {
    fn len(&self) -> usize {
        self.meta.len()
    }

    fn packet(&self, i: usize) -> &[u8] {
        let Some(m) = self.meta.get(i) else {
            return &[];
        };
        let Some(d) = self.descs.get(usize::from(m.desc)) else {
            return &[];
        };
        // SAFETY: the descriptor is held (not on any ring) until the next
        // recv/release, which needs `&mut self`, so the frame is stable for
        // the lifetime of this borrow.
        let data = unsafe { self.umem.data(d) };
        let start = usize::from(m.off);
        data.contents()
            .get(start..start + usize::from(m.len))
            .unwrap_or(&[])
    }

    fn from(&self, i: usize) -> SocketAddr {
        self.meta
            .get(i)
            .map(|m| m.src)
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }
}

/// Send half of an [`XskSocket`].
pub struct XskTx {
    txq: TxQueue,
    cq: CompQueue,
    umem: Umem,
    free: Vec<FrameDesc>,
    out: Vec<FrameDesc>,
    comp: Vec<FrameDesc>,
    local: SocketAddr,
    local_mac: Mac,
    neighbours: Neighbours,
    /// Interface whose kernel neighbour (ARP) entries fill misses.
    ifname: String,
    /// Last read of the kernel's ARP table (rate-limits reads on misses).
    arp_read_at: Option<std::time::Instant>,
    ip_id: u16,
    tx_frames: usize,
    need_wakeup: bool,
    stats: XskStats,
}

/// Least time between two reads of the kernel ARP table on neighbour misses.
const ARP_REREAD: std::time::Duration = std::time::Duration::from_millis(200);

/// Complete IPv4 entries of `ifname` in an ARP table in `/proc/net/arp` format:
/// `IP address  HW type  Flags  HW address  Mask  Device`. Malformed lines are skipped.
pub fn parse_arp_table(text: &str, ifname: &str) -> Vec<(IpAddr, Mac)> {
    const COMPLETE: u32 = 0x2;
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let [ip, _, flags, mac, _, dev] = f.as_slice() else {
                return None;
            };
            let flags = u32::from_str_radix(flags.trim_start_matches("0x"), 16).ok()?;
            if *dev != ifname || flags & COMPLETE == 0 {
                return None;
            }
            let ip: IpAddr = ip.parse().ok()?;
            let mut m = [0u8; 6];
            let mut parts = mac.split(':');
            for b in &mut m {
                *b = u8::from_str_radix(parts.next()?, 16).ok()?;
            }
            (parts.next().is_none() && m != [0; 6]).then_some((ip, m))
        })
        .collect()
}

impl XskTx {
    /// On a neighbour miss: learns the kernel's complete ARP entries for this interface
    /// (the kernel resolves peers the control plane talks to over its own sockets), at most
    /// once per [`ARP_REREAD`]. Returns whether it read the table.
    fn learn_from_kernel(&mut self) -> bool {
        let now = std::time::Instant::now();
        if self
            .arp_read_at
            .is_some_and(|t| now.duration_since(t) < ARP_REREAD)
        {
            return false;
        }
        self.arp_read_at = Some(now);
        let Ok(text) = std::fs::read_to_string("/proc/net/arp") else {
            return false;
        };
        for (ip, mac) in parse_arp_table(&text, &self.ifname) {
            self.neighbours.learn(ip, mac);
        }
        true
    }

    /// Moves completed TX frames back to the free list, and kicks the
    /// kernel again while frames are still outstanding (copy mode sends at
    /// most 32 per kick).
    pub fn reap(&mut self) {
        if self.in_flight() > 0 && self.must_kick() {
            // Errors here are transient (ENOBUFS, EAGAIN are absorbed by
            // xsk-rs); the next send or reap kicks again.
            let _ = self.txq.wakeup();
        }
        loop {
            let cap = self.comp.len();
            // SAFETY: completed descriptors are TX frames of this UMEM that
            // the kernel has finished with.
            let n = unsafe { self.cq.consume(&mut self.comp[..cap]) };
            if n == 0 {
                break;
            }
            self.stats.tx_completed += n as u64;
            self.free.extend_from_slice(&self.comp[..n]);
        }
    }

    /// Without need_wakeup every TX needs a kick; with it, only when flagged.
    fn must_kick(&self) -> bool {
        !self.need_wakeup || self.txq.needs_wakeup()
    }

    /// The neighbour table.
    pub fn neighbours_mut(&mut self) -> &mut Neighbours {
        &mut self.neighbours
    }

    /// Frames on the TX ring or waiting for completion.
    pub fn in_flight(&self) -> usize {
        self.tx_frames - self.free.len()
    }

    fn send(&mut self, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
        self.reap();
        let mut sent = 0;
        for chunk in msgs.chunks(self.out.capacity().max(1)) {
            self.out.clear();
            let room = self.txq.nb_free(chunk.len() as u32) as usize;
            for (i, (dst, bytes)) in chunk.iter().enumerate() {
                if i >= room {
                    self.stats.tx_ring_full += (chunk.len() - i) as u64;
                    break;
                }
                let mac = match self.neighbours.get(dst.ip()) {
                    Some(m) => Some(m),
                    None if self.learn_from_kernel() => self.neighbours.get(dst.ip()),
                    None => None,
                };
                let Some(mac) = mac else {
                    self.stats.tx_no_neighbour += 1;
                    continue;
                };
                if dst.is_ipv4() != self.local.is_ipv4() {
                    self.stats.tx_unframeable += 1;
                    continue;
                }
                let Some(mut desc) = self.free.pop() else {
                    self.stats.tx_ring_full += 1;
                    continue;
                };
                let total = frame::header_len(dst) + bytes.len();
                let written = {
                    // SAFETY: desc is a TX frame on our free list: not on any
                    // ring, so nobody else reads or writes it.
                    let mut data = unsafe { self.umem.data_mut(&mut desc) };
                    {
                        let mut c = data.cursor();
                        c.set_pos(total);
                    }
                    let buf = data.contents_mut();
                    if buf.len() < total {
                        None
                    } else {
                        frame::write_udp(
                            buf,
                            self.local_mac,
                            mac,
                            self.local,
                            *dst,
                            bytes,
                            self.ip_id,
                        )
                    }
                };
                if written.is_none() {
                    self.stats.tx_unframeable += 1;
                    self.free.push(desc);
                    continue;
                }
                self.ip_id = self.ip_id.wrapping_add(1);
                self.out.push(desc);
            }
            if self.out.is_empty() {
                continue;
            }
            // SAFETY: every descriptor in `out` is a TX frame of this UMEM
            // that we own and have finished writing.
            let n = unsafe { self.txq.produce(&self.out) };
            if n < self.out.len() {
                // All-or-nothing reservation failed: give the frames back.
                self.stats.tx_ring_full += (self.out.len() - n) as u64;
                self.free.extend_from_slice(&self.out[n..]);
            }
            sent += n;
            self.stats.tx_queued += n as u64;
        }
        // Copy mode transmits at most 32 frames per kick (the kernel's
        // TX_BATCH_SIZE), so kick once per 32; zero-copy only when flagged.
        if sent > 0 && self.must_kick() {
            for _ in 0..sent.div_ceil(32) {
                self.txq.wakeup()?;
            }
        }
        Ok(sent)
    }
}

impl TxSink for XskTx {
    fn send_batch(&mut self, msgs: &[(SocketAddr, &[u8])]) -> io::Result<usize> {
        self.send(msgs)
    }
}

/// One AF_XDP socket bound to one RX queue, registered in the XDP program.
pub struct XskSocket {
    rx: XskRx,
    tx: XskTx,
    mode: BindMode,
    queue: u32,
    control: XdpControl,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("mode", &self.mode)
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

fn pow2(field: &'static str, v: u32) -> Result<QueueSize, XskError> {
    QueueSize::new(v).map_err(|_| XskError::Setting {
        field,
        why: format!("{v} is not a power of two"),
    })
}

/// Reads `ifname`'s hardware address (netns-aware, unlike /sys).
pub fn interface_mac(ifname: &str) -> Result<Mac, XskError> {
    let err = |source| XskError::Mac {
        ifname: ifname.to_string(),
        source,
    };
    let name = ifname.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(err(io::Error::from(io::ErrorKind::InvalidInput)));
    }
    // SAFETY: plain socket(2) call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(err(io::Error::last_os_error()));
    }
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { core::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(name) {
        *d = *s as libc::c_char;
    }
    // SAFETY: fd is a valid socket and req a properly sized ifreq with a
    // NUL-terminated name (checked length < IFNAMSIZ on a zeroed array).
    let rc = unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut req) };
    let e = io::Error::last_os_error();
    // SAFETY: fd was opened above and is not used after this.
    unsafe { libc::close(fd) };
    if rc < 0 {
        return Err(err(e));
    }
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}

impl XskSocket {
    /// Creates the UMEM and the socket, binds it to `cfg.ifname` /
    /// `cfg.queue` (zero-copy per `cfg.zero_copy`), fills the fill ring and
    /// registers the socket in the program's XSKMAP. Logs the mode obtained.
    pub fn open(cfg: &XskConfig, control: &XdpControl) -> Result<XskSocket, XskError> {
        let setting = |field, why: String| XskError::Setting { field, why };
        if !(1..=256).contains(&cfg.batch) {
            return Err(setting("batch", format!("{} is not in 1..=256", cfg.batch)));
        }
        if !cfg.frame_count.is_power_of_two() || cfg.frame_count < 16 {
            return Err(setting(
                "frame_count",
                format!("{} is not a power of two >= 16", cfg.frame_count),
            ));
        }
        if cfg.fill_ring < cfg.frame_count / 2 {
            return Err(setting(
                "fill_ring",
                format!(
                    "{} is below frame_count / 2 = {} (every RX frame must fit)",
                    cfg.fill_ring,
                    cfg.frame_count / 2
                ),
            ));
        }
        let local_mac = match cfg.local_mac {
            Some(m) => m,
            None => interface_mac(&cfg.ifname)?,
        };
        let modes: &[BindMode] = match cfg.zero_copy {
            ZeroCopy::Auto => &[BindMode::ZeroCopy, BindMode::Copy],
            ZeroCopy::Required => &[BindMode::ZeroCopy],
            ZeroCopy::Off => &[BindMode::Copy],
        };
        let mut last = None;
        for &mode in modes {
            match Self::bind(cfg, mode, local_mac) {
                Ok((rx, tx)) => {
                    if mode == BindMode::Copy
                        && cfg.zero_copy == ZeroCopy::Auto
                        && let Some(e) = &last
                    {
                        tracing::warn!("{e}; using copy mode");
                    }
                    tracing::info!(
                        "AF_XDP socket on {} queue {} bound in {mode} mode",
                        cfg.ifname,
                        cfg.queue
                    );
                    let mut sock = XskSocket {
                        rx,
                        tx,
                        mode,
                        queue: cfg.queue,
                        control: control.try_clone()?,
                    };
                    for (ip, mac) in &cfg.neighbours {
                        sock.tx.neighbours.learn(*ip, *mac);
                    }
                    control.register_xsk(cfg.queue, sock.fd())?;
                    return Ok(sock);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| setting("zero_copy", "no mode to try".into())))
    }

    fn bind(cfg: &XskConfig, mode: BindMode, local_mac: Mac) -> Result<(XskRx, XskTx), XskError> {
        let setting = |field, why: String| XskError::Setting { field, why };
        let frame_size = FrameSize::new(cfg.frame_size)
            .map_err(|e| setting("frame_size", format!("{}: {e}", cfg.frame_size)))?;
        let umem_cfg = UmemConfig::builder()
            .frame_size(frame_size)
            .fill_queue_size(pow2("fill_ring", cfg.fill_ring)?)
            .comp_queue_size(pow2("comp_ring", cfg.comp_ring)?)
            .build()
            .map_err(|e| setting("frame_size", e.to_string()))?;
        let frames = NonZeroU32::new(cfg.frame_count)
            .ok_or_else(|| setting("frame_count", "must be > 0".into()))?;
        let (umem, mut descs) = Umem::new(umem_cfg, frames, false).map_err(|e| XskError::Umem {
            frames: cfg.frame_count,
            frame_size: cfg.frame_size,
            detail: e.to_string(),
        })?;
        let mut bind = match mode {
            BindMode::ZeroCopy => BindFlags::XDP_ZEROCOPY,
            BindMode::Copy => BindFlags::XDP_COPY,
        };
        if cfg.need_wakeup {
            bind |= BindFlags::XDP_USE_NEED_WAKEUP;
        }
        let sock_cfg = SocketConfig::builder()
            .rx_queue_size(pow2("rx_ring", cfg.rx_ring)?)
            .tx_queue_size(pow2("tx_ring", cfg.tx_ring)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(bind)
            .build();
        let name = CString::new(cfg.ifname.as_str())
            .map_err(|_| setting("interface", format!("{:?} contains NUL", cfg.ifname)))?;
        let bind_err = |detail: String| XskError::Bind {
            ifname: cfg.ifname.clone(),
            queue: cfg.queue,
            mode,
            detail,
        };
        // SAFETY: the UMEM is not shared with another socket, and the
        // libxdp program load is inhibited (the contract of Socket::new).
        let (txq, rxq, fq_cq) =
            unsafe { xsk_rs::Socket::new(sock_cfg, &umem, &Interface::new(name), cfg.queue) }
                .map_err(|e| {
                    let detail = match std::error::Error::source(&e) {
                        Some(s) => format!("{e}: {s}"),
                        None => e.to_string(),
                    };
                    bind_err(detail)
                })?;
        let (mut fq, cq) = fq_cq.ok_or_else(|| bind_err("no fill/completion ring".into()))?;
        let tx_frames = descs.split_off(descs.len() / 2);
        // SAFETY: RX frames are fresh UMEM frames owned by nobody else.
        let filled = unsafe { fq.produce(&descs) };
        if filled != descs.len() {
            return Err(bind_err(format!(
                "fill ring took {filled} of {} frames",
                descs.len()
            )));
        }
        let batch = cfg.batch;
        let rx = XskRx {
            rxq,
            fq,
            umem: umem.clone(),
            descs: vec![FrameDesc::default(); batch],
            held: 0,
            meta: Vec::with_capacity(batch),
            need_wakeup: cfg.need_wakeup,
            stats: XskStats::default(),
        };
        let mut free = Vec::with_capacity(tx_frames.len());
        free.extend_from_slice(&tx_frames);
        let tx = XskTx {
            txq,
            cq,
            umem,
            free,
            out: Vec::with_capacity(batch),
            comp: vec![FrameDesc::default(); cfg.comp_ring.max(1) as usize],
            local: cfg.local,
            local_mac,
            neighbours: Neighbours::default(),
            ifname: cfg.ifname.clone(),
            arp_read_at: None,
            ip_id: 0,
            tx_frames: tx_frames.len(),
            need_wakeup: cfg.need_wakeup,
            stats: XskStats::default(),
        };
        Ok((rx, tx))
    }

    /// The bind mode obtained.
    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// The socket fd (for poll(2)).
    pub fn fd(&self) -> BorrowedFd<'_> {
        let raw = self.rx.rxq.fd().as_raw_fd();
        // SAFETY: the fd is owned by the socket inside `self.rx`, which
        // outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(raw) }
    }

    /// Receive half (views of the current batch).
    pub fn rx(&self) -> &XskRx {
        &self.rx
    }

    /// Send half.
    pub fn tx(&mut self) -> &mut XskTx {
        &mut self.tx
    }

    /// RX and TX counters merged.
    pub fn stats(&self) -> XskStats {
        let (r, t) = (&self.rx.stats, &self.tx.stats);
        XskStats {
            rx_frames: r.rx_frames,
            rx_malformed: r.rx_malformed,
            rx_wakeups: r.rx_wakeups,
            tx_queued: t.tx_queued,
            tx_completed: t.tx_completed,
            tx_ring_full: t.tx_ring_full,
            tx_no_neighbour: t.tx_no_neighbour,
            tx_unframeable: t.tx_unframeable,
        }
    }

    /// Blocks up to `timeout_ms` until the socket is readable (for idle
    /// loops that do not busy-poll). Returns true when readable.
    pub fn poll_readable(&mut self, timeout_ms: i32) -> io::Result<bool> {
        self.rx.rxq.poll(timeout_ms)
    }
}

impl Backend for XskSocket {
    type Rx = XskRx;
    type Tx = XskTx;

    fn recv_batch(&mut self) -> io::Result<usize> {
        let n = self.rx.recv()?;
        for m in &self.rx.meta {
            self.tx.neighbours.learn(m.src.ip(), m.mac);
        }
        Ok(n)
    }

    fn halves(&mut self) -> (&XskRx, &mut XskTx) {
        (&self.rx, &mut self.tx)
    }
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        if let Err(e) = self.control.unregister_xsk(self.queue) {
            tracing::warn!("removing AF_XDP socket from the XSKMAP: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arp_table_parsing_keeps_complete_entries_of_the_interface() {
        let text = "\
IP address       HW type     Flags       HW address            Mask     Device
10.88.0.2        0x1         0x2         0a:1b:2c:3d:4e:5f     *        n0
10.88.0.3        0x1         0x0         00:00:00:00:00:00     *        n0
10.88.0.4        0x1         0x2         11:22:33:44:55:66     *        eth1
10.88.0.5        0x1         0x2         zz:22:33:44:55:66     *        n0
bogus line
10.88.0.6        0x1         0x6         01:02:03:04:05:06     *        n0
";
        let got = parse_arp_table(text, "n0");
        assert_eq!(
            got,
            vec![
                (
                    "10.88.0.2".parse().unwrap(),
                    [0x0a, 0x1b, 0x2c, 0x3d, 0x4e, 0x5f]
                ),
                ("10.88.0.6".parse().unwrap(), [1, 2, 3, 4, 5, 6]),
            ]
        );
    }
}
