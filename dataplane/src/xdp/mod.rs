//! Loader and control handle for the XDP filter in `ebpf/mesh_xdp.c`.
//!
//! The object is compiled by `build.rs` (clang, BPF target) and embedded
//! here; [`MeshXdp::load`] loads it with libbpf (through `libbpf-rs`),
//! [`MeshXdp::attach`] attaches it to an interface as a BPF link, so the
//! program is detached when the [`MeshXdp`] is dropped *and* when the
//! process dies (the kernel closes the link fd). Attaching through a link
//! also makes the detach independent of the caller's network namespace.
//!
//! The control plane gets an [`XdpControl`] (cloneable, `Send + Sync`, holds
//! only map fds): [`XdpControl::deny`], [`XdpControl::allow`],
//! [`XdpControl::set_rate`], [`XdpControl::counters`].

pub mod abi;
pub mod bench;

use std::ffi::CString;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags, MapHandle, Object, ObjectBuilder, ProgramInput};
use zerocopy::{FromBytes, IntoBytes};

use abi::{MeshAddr, MeshConfig};

/// The compiled XDP object (ELF, BPF target), built from `ebpf/` by `build.rs`.
pub const MESH_XDP_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mesh_xdp.o"));

/// Name of the XDP program in the object.
pub const PROGRAM_NAME: &str = "mesh_xdp";

/// `XDP_ABORTED`.
pub const XDP_ABORTED: u32 = 0;
/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// `XDP_TX`.
pub const XDP_TX: u32 = 3;
/// `XDP_REDIRECT`.
pub const XDP_REDIRECT: u32 = 4;

mesh_types::labels! {
    /// Every verdict and reason the program counts (`enum mesh_xdp_reason`).
    /// Values index [`XdpCounters`] (`MESH_XDP_REASON_COUNT` is `COUNT`);
    /// names are the `mesh.xdp.reason` attribute values of the
    /// `mesh.xdp.packets` metric.
    pub enum Reason {
        /// Not UDP to a mesh port: passed to the kernel stack untouched.
        PassNotMesh = 0 => "pass_not_mesh",
        /// Well-formed mesh datagram but no AF_XDP socket on its RX queue: passed.
        PassNoSocket = 1 => "pass_no_socket",
        /// Well-formed mesh datagram redirected to the queue's AF_XDP socket.
        Redirect = 2 => "redirect",
        /// Frame ends inside a header, or the UDP payload is shorter than 128 bytes.
        DropTruncated = 3 => "drop_truncated",
        /// UDP payload longer than 1232 bytes.
        DropOversized = 4 => "drop_oversized",
        /// Magic is not `MSH1`.
        DropBadMagic = 5 => "drop_bad_magic",
        /// Version is not 1.
        DropBadVersion = 6 => "drop_bad_version",
        /// Reserved bytes or flags not zero.
        DropBadReserved = 7 => "drop_bad_reserved",
        /// Kind is not 1 (data).
        DropBadKind = 8 => "drop_bad_kind",
        /// `payload_len`, UDP length and IP length disagree.
        DropLengthMismatch = 9 => "drop_length_mismatch",
        /// Fragmented mesh datagram.
        DropBadL3 = 10 => "drop_bad_l3",
        /// Source on the deny map.
        DropDenied = 11 => "drop_denied",
        /// Source over its token bucket.
        DropRateLimited = 12 => "drop_rate_limited",
    }
}

impl Reason {
    /// The enumerator's name in `mesh_wire.h`.
    pub fn c_name(self) -> String {
        format!("MESH_{}", self.as_str().to_ascii_uppercase())
    }

    /// True for the reasons whose action is `XDP_DROP`.
    pub fn is_drop(self) -> bool {
        (self as u32) >= Reason::DropTruncated as u32
    }
}

/// Per-reason packet counts summed over CPUs, indexed by [`Reason`] value.
pub type XdpCounters = [u64; Reason::COUNT];

/// How to attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachPolicy {
    /// Driver (native) mode only; fail when the driver lacks XDP support.
    Native,
    /// Generic (SKB) mode only: works everywhere, costs an skb per packet.
    Generic,
    /// Native, and generic if native fails (say so in the logs and metric).
    NativeOrGeneric,
}

mesh_types::labels! {
    /// The mode the program actually runs in (`mesh.xdp.mode`).
    pub enum XdpMode {
        /// In the driver, before any skb is built.
        Native = 0 => "native",
        /// Generic (SKB) mode.
        Generic = 1 => "generic",
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Program settings written into the config map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XdpSettings {
    /// UDP ports carrying mesh traffic (1 to 4, non-zero).
    pub ports: Vec<u16>,
    /// Sustained packets per second allowed per source address; 0 = off.
    pub rate_pps: u64,
    /// Token-bucket depth in packets (1 to 1e9).
    pub burst: u64,
    /// Token-bucket LRU entries (sources tracked at once).
    pub bucket_entries: u32,
    /// Deny hash capacity.
    pub deny_entries: u32,
}

impl Default for XdpSettings {
    fn default() -> Self {
        XdpSettings {
            ports: vec![7946],
            rate_pps: 0,
            burst: 64,
            bucket_entries: abi::DEFAULT_BUCKETS,
            deny_entries: abi::DEFAULT_DENY,
        }
    }
}

/// Errors of the loader and control handle.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// libbpf refused the object (verifier log goes to stderr).
    #[error("loading the XDP program failed: {0}")]
    Load(#[source] libbpf_rs::Error),
    /// A map or the program is missing from the object (build mismatch).
    #[error("the XDP object has no {0}")]
    Missing(&'static str),
    /// A settings value is out of range.
    #[error("invalid XDP setting `{field}`: {why}")]
    Setting {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// No such interface in this network namespace.
    #[error("interface `{0}` not found in this network namespace")]
    NoInterface(String),
    /// Attaching failed.
    #[error("attaching XDP to `{ifname}` in {mode} mode failed: {source}{hint}")]
    Attach {
        /// Interface name.
        ifname: String,
        /// The mode tried.
        mode: XdpMode,
        /// OS error.
        source: std::io::Error,
        /// Hint for the common causes.
        hint: &'static str,
    },
    /// Already attached.
    #[error("the program is already attached to interface index {0}")]
    AlreadyAttached(i32),
    /// A map operation failed.
    #[error("XDP map `{map}` {op} failed: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Operation.
        op: &'static str,
        /// libbpf error.
        source: libbpf_rs::Error,
    },
    /// `BPF_PROG_TEST_RUN` failed.
    #[error("BPF_PROG_TEST_RUN failed: {0}")]
    TestRun(#[source] libbpf_rs::Error),
}

fn map_err(map: &'static str, op: &'static str) -> impl FnOnce(libbpf_rs::Error) -> XdpError {
    move |source| XdpError::Map { map, op, source }
}

/// Map handles the control plane needs; [`XdpControl::try_clone`] dups the fds
/// for another thread.
#[derive(Debug)]
pub struct XdpControl {
    config: MapHandle,
    counters: MapHandle,
    deny: MapHandle,
    buckets: MapHandle,
    xsks: MapHandle,
}

impl XdpControl {
    /// Duplicates the map fds.
    pub fn try_clone(&self) -> Result<XdpControl, XdpError> {
        let dup = |m: &MapHandle, name| MapHandle::try_from(m).map_err(map_err(name, "dup"));
        Ok(XdpControl {
            config: dup(&self.config, "mesh_config")?,
            counters: dup(&self.counters, "mesh_counters")?,
            deny: dup(&self.deny, "mesh_deny")?,
            buckets: dup(&self.buckets, "mesh_buckets")?,
            xsks: dup(&self.xsks, "mesh_xsks")?,
        })
    }

    /// Drops every packet from `ip` at the driver from now on.
    pub fn deny(&self, ip: IpAddr) -> Result<(), XdpError> {
        let key = MeshAddr::from_ip(ip);
        self.deny
            .update(key.as_bytes(), &[1u8], MapFlags::ANY)
            .map_err(map_err("mesh_deny", "update"))
    }

    /// Removes `ip` from the deny map; `Ok(false)` when it was not there.
    pub fn allow(&self, ip: IpAddr) -> Result<bool, XdpError> {
        let key = MeshAddr::from_ip(ip);
        match self.deny.delete(key.as_bytes()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(map_err("mesh_deny", "delete")(e)),
        }
    }

    /// True when `ip` is on the deny map.
    pub fn is_denied(&self, ip: IpAddr) -> Result<bool, XdpError> {
        let key = MeshAddr::from_ip(ip);
        Ok(self
            .deny
            .lookup(key.as_bytes(), MapFlags::ANY)
            .map_err(map_err("mesh_deny", "lookup"))?
            .is_some())
    }

    fn read_config(&self) -> Result<MeshConfig, XdpError> {
        let v = self
            .config
            .lookup(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("mesh_config", "lookup"))?
            .unwrap_or_default();
        MeshConfig::read_from_bytes(&v)
            .map_err(|_| XdpError::Missing("mesh_config of the right size"))
    }

    fn write_config(&self, cfg: &MeshConfig) -> Result<(), XdpError> {
        self.config
            .update(&0u32.to_ne_bytes(), cfg.as_bytes(), MapFlags::ANY)
            .map_err(map_err("mesh_config", "update"))
    }

    /// Sets the per-source token bucket: `pps` sustained (0 = off) and
    /// `burst` packets deep. Existing buckets are forgotten so the new
    /// limits apply at once.
    pub fn set_rate(&self, pps: u64, burst: u64) -> Result<(), XdpError> {
        check_rate(pps, burst)?;
        let mut cfg = self.read_config()?;
        cfg.rate_pps = pps;
        cfg.burst = burst;
        self.write_config(&cfg)?;
        self.clear_buckets()
    }

    /// Sets the mesh UDP ports (1 to 4, non-zero).
    pub fn set_ports(&self, ports: &[u16]) -> Result<(), XdpError> {
        let mut cfg = self.read_config()?;
        cfg.ports = check_ports(ports)?;
        self.write_config(&cfg)
    }

    /// Forgets every source's token bucket.
    pub fn clear_buckets(&self) -> Result<(), XdpError> {
        let keys: Vec<Vec<u8>> = self.buckets.keys().collect();
        for k in keys {
            match self.buckets.delete(&k) {
                Ok(()) => {}
                Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => {}
                Err(e) => return Err(map_err("mesh_buckets", "delete")(e)),
            }
        }
        Ok(())
    }

    /// Per-reason counts, summed over CPUs.
    pub fn counters(&self) -> Result<XdpCounters, XdpError> {
        let mut out = [0u64; Reason::COUNT];
        for (i, slot) in out.iter_mut().enumerate() {
            let per_cpu = self
                .counters
                .lookup_percpu(&(i as u32).to_ne_bytes(), MapFlags::ANY)
                .map_err(map_err("mesh_counters", "lookup"))?
                .unwrap_or_default();
            *slot = per_cpu
                .iter()
                .map(|v| {
                    let mut b = [0u8; 8];
                    let n = v.len().min(8);
                    b[..n].copy_from_slice(&v[..n]);
                    u64::from_ne_bytes(b)
                })
                .fold(0u64, u64::wrapping_add);
        }
        Ok(out)
    }

    /// Zeroes every counter on every CPU (tests and benchmarks).
    pub fn reset_counters(&self) -> Result<(), XdpError> {
        let ncpu = libbpf_rs::num_possible_cpus().map_err(map_err("mesh_counters", "reset"))?;
        let zeros = vec![vec![0u8; 8]; ncpu];
        for i in 0..Reason::COUNT as u32 {
            self.counters
                .update_percpu(&i.to_ne_bytes(), &zeros, MapFlags::ANY)
                .map_err(map_err("mesh_counters", "reset"))?;
        }
        Ok(())
    }

    /// Points RX queue `queue` at the AF_XDP socket `xsk_fd`: mesh datagrams
    /// arriving on that queue are redirected to it from now on.
    pub fn register_xsk(&self, queue: u32, xsk_fd: BorrowedFd<'_>) -> Result<(), XdpError> {
        if queue >= abi::MAX_QUEUES {
            return Err(XdpError::Setting {
                field: "queue",
                why: format!("{queue} is not below {}", abi::MAX_QUEUES),
            });
        }
        let fd = xsk_fd.as_raw_fd() as u32;
        self.xsks
            .update(&queue.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("mesh_xsks", "update"))
    }

    /// Removes RX queue `queue`'s socket; its mesh datagrams are passed again.
    pub fn unregister_xsk(&self, queue: u32) -> Result<(), XdpError> {
        match self.xsks.delete(&queue.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_err("mesh_xsks", "delete")(e)),
        }
    }
}

fn check_rate(pps: u64, burst: u64) -> Result<(), XdpError> {
    if pps > 1_000_000_000 {
        return Err(XdpError::Setting {
            field: "rate_pps",
            why: format!("{pps} is above 1e9"),
        });
    }
    if burst == 0 || burst > 1_000_000_000 {
        return Err(XdpError::Setting {
            field: "burst",
            why: format!("{burst} is not in 1..=1e9"),
        });
    }
    Ok(())
}

fn check_ports(ports: &[u16]) -> Result<[u16; abi::MAX_PORTS], XdpError> {
    if ports.is_empty() || ports.len() > abi::MAX_PORTS || ports.contains(&0) {
        return Err(XdpError::Setting {
            field: "ports",
            why: format!("need 1 to {} non-zero ports, got {ports:?}", abi::MAX_PORTS),
        });
    }
    let mut out = [0u16; abi::MAX_PORTS];
    out[..ports.len()].copy_from_slice(ports);
    Ok(out)
}

struct Attachment {
    link: OwnedFd,
    ifindex: i32,
    mode: XdpMode,
}

/// The loaded program and its maps; detaches on drop.
pub struct MeshXdp {
    object: Object,
    control: XdpControl,
    attached: Option<Attachment>,
}

impl std::fmt::Debug for MeshXdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshXdp")
            .field(
                "attached",
                &self.attached.as_ref().map(|a| (a.ifindex, a.mode)),
            )
            .finish_non_exhaustive()
    }
}

impl MeshXdp {
    /// Loads the embedded program (verifier runs here) and writes `settings`
    /// into its config map. Needs `CAP_BPF` + `CAP_NET_ADMIN` (root).
    pub fn load(settings: &XdpSettings) -> Result<MeshXdp, XdpError> {
        let ports = check_ports(&settings.ports)?;
        check_rate(settings.rate_pps, settings.burst)?;
        for (field, v) in [
            ("bucket_entries", settings.bucket_entries),
            ("deny_entries", settings.deny_entries),
        ] {
            if v == 0 || v > 1 << 24 {
                return Err(XdpError::Setting {
                    field,
                    why: format!("{v} is not in 1..=16777216"),
                });
            }
        }
        let mut open = ObjectBuilder::default()
            .open_memory(MESH_XDP_OBJECT)
            .map_err(XdpError::Load)?;
        for mut m in open.maps_mut() {
            let name = m.name().to_string_lossy().into_owned();
            let n = match name.as_str() {
                "mesh_buckets" => settings.bucket_entries,
                "mesh_deny" => settings.deny_entries,
                _ => continue,
            };
            m.set_max_entries(n).map_err(XdpError::Load)?;
        }
        let object = open.load().map_err(XdpError::Load)?;
        let handle = |name: &'static str| -> Result<MapHandle, XdpError> {
            let m = object
                .maps()
                .find(|m| m.name().to_str() == Some(name))
                .ok_or(XdpError::Missing(name))?;
            MapHandle::try_from(&m).map_err(map_err(name, "dup"))
        };
        let control = XdpControl {
            config: handle("mesh_config")?,
            counters: handle("mesh_counters")?,
            deny: handle("mesh_deny")?,
            buckets: handle("mesh_buckets")?,
            xsks: handle("mesh_xsks")?,
        };
        control.write_config(&MeshConfig {
            ports,
            rate_pps: settings.rate_pps,
            burst: settings.burst,
            flags: 0,
            pad: 0,
        })?;
        Ok(MeshXdp {
            object,
            control,
            attached: None,
        })
    }

    /// The control-plane handle (map fds only).
    pub fn control(&self) -> &XdpControl {
        &self.control
    }

    fn prog_fd(&self) -> Result<BorrowedFd<'_>, XdpError> {
        self.object
            .progs()
            .find(|p| p.name().to_str() == Some(PROGRAM_NAME))
            .map(|p| {
                let raw = p.as_fd().as_raw_fd();
                // SAFETY: the program fd is owned by `self.object`, which
                // outlives the returned borrow (tied to `&self`).
                unsafe { BorrowedFd::borrow_raw(raw) }
            })
            .ok_or(XdpError::Missing("mesh_xdp program"))
    }

    /// Attaches to `ifname` (resolved in the calling thread's network
    /// namespace) and returns the mode obtained. With
    /// [`AttachPolicy::NativeOrGeneric`] a native failure is logged at warn
    /// level before trying generic mode.
    pub fn attach(&mut self, ifname: &str, policy: AttachPolicy) -> Result<XdpMode, XdpError> {
        let ifindex = ifindex(ifname)?;
        if let Some(a) = &self.attached {
            return Err(XdpError::AlreadyAttached(a.ifindex));
        }
        let try_mode = |mode| self.link_create(ifname, ifindex, mode);
        let link = match policy {
            AttachPolicy::Native => try_mode(XdpMode::Native).map(|l| (l, XdpMode::Native)),
            AttachPolicy::Generic => try_mode(XdpMode::Generic).map(|l| (l, XdpMode::Generic)),
            AttachPolicy::NativeOrGeneric => match try_mode(XdpMode::Native) {
                Ok(l) => Ok((l, XdpMode::Native)),
                Err(e) => {
                    tracing::warn!("{e}; falling back to generic (SKB) XDP as configured");
                    try_mode(XdpMode::Generic).map(|l| (l, XdpMode::Generic))
                }
            },
        };
        let (link, mode) = link?;
        tracing::info!("XDP program attached to {ifname} (ifindex {ifindex}) in {mode} mode");
        self.attached = Some(Attachment {
            link,
            ifindex,
            mode,
        });
        Ok(mode)
    }

    fn link_create(&self, ifname: &str, ifindex: i32, mode: XdpMode) -> Result<OwnedFd, XdpError> {
        let prog = self.prog_fd()?;
        let flags = match mode {
            XdpMode::Native => libbpf_rs::libbpf_sys::XDP_FLAGS_DRV_MODE,
            XdpMode::Generic => libbpf_rs::libbpf_sys::XDP_FLAGS_SKB_MODE,
        };
        // SAFETY: an all-zero bpf_link_create_opts is its documented
        // default (libbpf's LIBBPF_OPTS does the same before setting sz).
        let mut opts: libbpf_rs::libbpf_sys::bpf_link_create_opts = unsafe { core::mem::zeroed() };
        opts.sz = core::mem::size_of::<libbpf_rs::libbpf_sys::bpf_link_create_opts>() as _;
        opts.flags = flags;
        // SAFETY: prog is a valid program fd, opts is initialised with its
        // size, and libbpf only reads it during the call.
        let fd = unsafe {
            libbpf_rs::libbpf_sys::bpf_link_create(
                prog.as_raw_fd(),
                ifindex,
                libbpf_rs::libbpf_sys::BPF_XDP,
                &opts,
            )
        };
        if fd < 0 {
            let source = std::io::Error::from_raw_os_error(-fd);
            let hint = match -fd {
                libc::EBUSY | libc::EEXIST => {
                    " (another XDP program is attached to this interface; this kernel has one per interface)"
                }
                libc::EOPNOTSUPP | libc::EINVAL if mode == XdpMode::Native => {
                    " (the driver has no native XDP support; set xdp_mode = \"generic\" or \"native-or-generic\" to allow generic mode)"
                }
                libc::EPERM => " (needs CAP_NET_ADMIN and CAP_BPF)",
                _ => "",
            };
            return Err(XdpError::Attach {
                ifname: ifname.to_string(),
                mode,
                source,
                hint,
            });
        }
        // SAFETY: bpf_link_create returned a fresh fd we now own.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// The mode the program runs in, when attached.
    pub fn mode(&self) -> Option<XdpMode> {
        self.attached.as_ref().map(|a| a.mode)
    }

    /// Interface index attached to, when attached.
    pub fn ifindex(&self) -> Option<i32> {
        self.attached.as_ref().map(|a| a.ifindex)
    }

    /// Detaches (closing the link); a no-op when not attached.
    pub fn detach(&mut self) {
        if let Some(a) = self.attached.take() {
            tracing::info!("XDP program detached from ifindex {}", a.ifindex);
            drop(a.link);
        }
    }

    /// Runs the program once on `frame` with `BPF_PROG_TEST_RUN` (RX queue 0,
    /// no interface) and returns the XDP action. Counters are updated as for a
    /// real packet. The kernel refuses frames shorter than an Ethernet header
    /// (no driver delivers those either).
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, XdpError> {
        if frame.len() < 14 {
            return Err(XdpError::Setting {
                field: "frame",
                why: format!("{} bytes is shorter than an Ethernet header", frame.len()),
            });
        }
        let prog = self
            .object
            .progs_mut()
            .find(|p| p.name().to_str() == Some(PROGRAM_NAME))
            .ok_or(XdpError::Missing("mesh_xdp program"))?;
        let input = ProgramInput {
            data_in: Some(frame),
            repeat: 1,
            ..ProgramInput::default()
        };
        let out = prog.test_run(input).map_err(XdpError::TestRun)?;
        Ok(out.return_value)
    }
}

impl Drop for MeshXdp {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Interface index of `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<i32, XdpError> {
    let c = CString::new(ifname).map_err(|_| XdpError::NoInterface(ifname.to_string()))?;
    // SAFETY: c is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(XdpError::NoInterface(ifname.to_string()));
    }
    i32::try_from(idx).map_err(|_| XdpError::NoInterface(ifname.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_numbers_are_dense_and_named_uniquely() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Reason::COUNT);
        assert!(!Reason::Redirect.is_drop() && Reason::DropTruncated.is_drop());
    }

    #[test]
    fn settings_out_of_range_name_the_field() {
        let e = check_ports(&[]).unwrap_err().to_string();
        assert!(e.contains("`ports`"), "{e}");
        let e = check_ports(&[1, 2, 3, 4, 5]).unwrap_err().to_string();
        assert!(e.contains("`ports`"), "{e}");
        let e = check_rate(10, 0).unwrap_err().to_string();
        assert!(e.contains("`burst`"), "{e}");
        assert!(check_rate(0, 1).is_ok());
    }

    #[test]
    fn control_handle_crosses_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<XdpControl>();
        send::<MeshXdp>();
    }

    #[test]
    fn embedded_object_is_a_bpf_elf() {
        assert_eq!(&MESH_XDP_OBJECT[..4], b"\x7fELF");
        // e_machine = EM_BPF (247) at offset 18, little endian.
        assert_eq!(
            u16::from_le_bytes([MESH_XDP_OBJECT[18], MESH_XDP_OBJECT[19]]),
            247
        );
    }
}
