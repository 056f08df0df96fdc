//! Hardware profiles (`hw-profiles/*.toml`): how the fast path uses a NIC —
//! XDP attach mode, AF_XDP zero-copy, queues, ring and UMEM sizes, batch,
//! busy polling, and which cores run the fast path and the control plane.
//!
//! [`Profile::load_named`] reads `<dir>/<name>.toml`; unknown keys, wrong
//! types and out-of-range values are errors that name the field
//! (`xsk.fill_ring`, `cores.fast_path`, ...).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::xdp::AttachPolicy;
use crate::xsk::{XskConfig, ZeroCopy};

/// A parsed and validated hardware profile.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Profile name; must equal the file stem.
    pub name: String,
    /// One line saying which machine / NIC this is for.
    pub description: String,
    /// XDP program settings.
    pub xdp: XdpSection,
    /// AF_XDP socket settings.
    pub xsk: XskSection,
    /// Busy-poll settings of the AF_XDP sockets.
    pub busy_poll: BusyPoll,
    /// Core placement.
    pub cores: Cores,
}

/// `[xdp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdpSection {
    /// `native`, `generic` or `native-or-generic`.
    pub mode: AttachPolicy,
}

/// `[xsk]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XskSection {
    /// `auto`, `required` or `off`.
    pub zero_copy: ZeroCopy,
    /// RX queues to serve, one AF_XDP socket (and fast-path core) each.
    pub queues: Vec<u32>,
    /// UMEM frame size: 2048 or 4096.
    pub frame_size: u32,
    /// UMEM frames per socket (power of two); half RX, half TX.
    pub frame_count: u32,
    /// RX ring entries (power of two).
    pub rx_ring: u32,
    /// TX ring entries (power of two).
    pub tx_ring: u32,
    /// Fill ring entries (power of two, >= frame_count / 2).
    pub fill_ring: u32,
    /// Completion ring entries (power of two).
    pub comp_ring: u32,
    /// Largest RX batch (1..=256).
    pub batch: u32,
    /// Use XDP_USE_NEED_WAKEUP.
    pub need_wakeup: bool,
}

/// `[busy_poll]`: socket options on each AF_XDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusyPoll {
    /// Turn busy polling on.
    pub enabled: bool,
    /// `SO_BUSY_POLL` in microseconds (0..=1000).
    pub usecs: u32,
    /// `SO_BUSY_POLL_BUDGET`: packets per busy-poll round (0..=1024).
    pub budget: u32,
    /// `SO_PREFER_BUSY_POLL`.
    pub prefer: bool,
}

/// `[cores]`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cores {
    /// One core per queue for the fast-path threads, in queue order.
    pub fast_path: Vec<usize>,
    /// Cores for the control plane (tokio workers); disjoint from fast_path.
    pub control_plane: Vec<usize>,
}

/// Errors loading a profile.
#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    /// The name is not `[a-z0-9-]+`.
    #[error("profile name `{0}` must be lower-case letters, digits and dashes")]
    BadName(String),
    /// The file could not be read.
    #[error("reading hardware profile {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
    /// TOML syntax, unknown key or wrong type (the message names the key).
    #[error("hardware profile {path}: {message}")]
    Parse {
        /// File.
        path: PathBuf,
        /// toml's message, with the key and line.
        message: String,
    },
    /// A value is out of range.
    #[error("hardware profile {path}: invalid `{field}`: {why}")]
    Invalid {
        /// File.
        path: PathBuf,
        /// Dotted field name.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
}

fn pow2(field: &'static str, v: u32, min: u32, max: u32) -> Result<(), (&'static str, String)> {
    if !v.is_power_of_two() || v < min || v > max {
        return Err((field, format!("{v} is not a power of two in {min}..={max}")));
    }
    Ok(())
}

impl Profile {
    /// Loads `<dir>/<name>.toml`.
    pub fn load_named(dir: &Path, name: &str) -> Result<Profile, ProfileError> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(ProfileError::BadName(name.to_string()));
        }
        let path = dir.join(format!("{name}.toml"));
        let text = std::fs::read_to_string(&path).map_err(|source| ProfileError::Io {
            path: path.clone(),
            source,
        })?;
        let p = Profile::parse(&text, &path)?;
        if p.name != name {
            return Err(ProfileError::Invalid {
                path,
                field: "name",
                why: format!("`{}` differs from the file name `{name}`", p.name),
            });
        }
        Ok(p)
    }

    /// Parses and validates TOML text; `path` is used in messages only.
    pub fn parse(text: &str, path: &Path) -> Result<Profile, ProfileError> {
        let p: Profile = toml::from_str(text).map_err(|e| ProfileError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        p.validate().map_err(|(field, why)| ProfileError::Invalid {
            path: path.to_path_buf(),
            field,
            why,
        })?;
        Ok(p)
    }

    /// Range checks; the error names the dotted field.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let x = &self.xsk;
        if x.queues.is_empty() || x.queues.len() > 64 {
            return Err((
                "xsk.queues",
                format!("need 1 to 64 queues, got {}", x.queues.len()),
            ));
        }
        let mut q = x.queues.clone();
        q.sort_unstable();
        q.dedup();
        if q.len() != x.queues.len() || q.iter().any(|&v| v >= crate::xdp::abi::MAX_QUEUES) {
            return Err((
                "xsk.queues",
                format!("{:?} must be distinct and below 64", x.queues),
            ));
        }
        if x.frame_size != 2048 && x.frame_size != 4096 {
            return Err((
                "xsk.frame_size",
                format!("{} is not 2048 or 4096", x.frame_size),
            ));
        }
        pow2("xsk.frame_count", x.frame_count, 64, 1 << 20)?;
        pow2("xsk.rx_ring", x.rx_ring, 64, 1 << 16)?;
        pow2("xsk.tx_ring", x.tx_ring, 64, 1 << 16)?;
        pow2("xsk.fill_ring", x.fill_ring, 64, 1 << 16)?;
        pow2("xsk.comp_ring", x.comp_ring, 64, 1 << 16)?;
        if x.fill_ring < x.frame_count / 2 {
            return Err((
                "xsk.fill_ring",
                format!(
                    "{} is below frame_count / 2 = {}: every RX frame must fit the fill ring",
                    x.fill_ring,
                    x.frame_count / 2
                ),
            ));
        }
        if !(1..=256).contains(&x.batch) {
            return Err(("xsk.batch", format!("{} is not in 1..=256", x.batch)));
        }
        if x.batch > x.rx_ring || 2 * x.batch > x.frame_count / 2 {
            return Err((
                "xsk.batch",
                format!(
                    "{} does not fit the RX ring or the RX half of the UMEM",
                    x.batch
                ),
            ));
        }
        let b = &self.busy_poll;
        if b.usecs > 1000 {
            return Err(("busy_poll.usecs", format!("{} is above 1000", b.usecs)));
        }
        if b.budget > 1024 {
            return Err(("busy_poll.budget", format!("{} is above 1024", b.budget)));
        }
        if b.enabled && (b.usecs == 0 || b.budget == 0) {
            return Err((
                "busy_poll.usecs",
                "busy polling enabled needs usecs and budget above zero".to_string(),
            ));
        }
        let c = &self.cores;
        if c.fast_path.len() != x.queues.len() {
            return Err((
                "cores.fast_path",
                format!(
                    "{} cores for {} queues: need one fast-path core per queue",
                    c.fast_path.len(),
                    x.queues.len()
                ),
            ));
        }
        let mut fp = c.fast_path.clone();
        fp.sort_unstable();
        fp.dedup();
        if fp.len() != c.fast_path.len() {
            return Err((
                "cores.fast_path",
                format!("{:?} repeats a core", c.fast_path),
            ));
        }
        if c.control_plane.is_empty() {
            return Err(("cores.control_plane", "needs at least one core".to_string()));
        }
        if let Some(shared) = c.control_plane.iter().find(|k| c.fast_path.contains(k)) {
            return Err((
                "cores.control_plane",
                format!("core {shared} is also a fast-path core"),
            ));
        }
        if self.description.trim().is_empty() {
            return Err((
                "description",
                "must say which machine this is for".to_string(),
            ));
        }
        Ok(())
    }

    /// Cores named by the profile that this machine does not have (for a
    /// start-up warning or error; profiles are written for other machines).
    pub fn missing_cores(&self) -> Vec<usize> {
        let have = core_affinity::get_core_ids().map(|v| v.len()).unwrap_or(0);
        self.cores
            .fast_path
            .iter()
            .chain(&self.cores.control_plane)
            .copied()
            .filter(|&c| c >= have)
            .collect()
    }

    /// The socket settings for queue index `i` (into `xsk.queues`).
    pub fn xsk_config(&self, i: usize, ifname: &str, local: SocketAddr) -> Option<XskConfig> {
        let x = &self.xsk;
        Some(XskConfig {
            ifname: ifname.to_string(),
            queue: *x.queues.get(i)?,
            frame_size: x.frame_size,
            frame_count: x.frame_count,
            rx_ring: x.rx_ring,
            tx_ring: x.tx_ring,
            fill_ring: x.fill_ring,
            comp_ring: x.comp_ring,
            batch: x.batch as usize,
            zero_copy: x.zero_copy,
            need_wakeup: x.need_wakeup,
            local,
            local_mac: None,
            neighbours: Vec::new(),
        })
    }
}

/// Pins the calling thread to `core`; false when the core does not exist or
/// the kernel refused.
pub fn pin_current_thread(core: usize) -> bool {
    core_affinity::set_for_current(core_affinity::CoreId { id: core })
}

/// Applies `[busy_poll]` to an AF_XDP socket (no-op when disabled).
pub fn apply_busy_poll(fd: BorrowedFd<'_>, b: &BusyPoll) -> io::Result<()> {
    if !b.enabled {
        return Ok(());
    }
    let set = |opt: libc::c_int, v: libc::c_int| -> io::Result<()> {
        // SAFETY: fd is a valid socket for the duration of the call and the
        // option value is a c_int, as these options expect.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                core::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    };
    set(libc::SO_PREFER_BUSY_POLL, libc::c_int::from(b.prefer))?;
    set(libc::SO_BUSY_POLL, b.usecs as libc::c_int)?;
    set(libc::SO_BUSY_POLL_BUDGET, b.budget as libc::c_int)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../hw-profiles")
    }

    #[test]
    fn shipped_profiles_load_and_validate() {
        for name in ["veth-test", "mlx5-100g", "ice-25g"] {
            let p = Profile::load_named(&dir(), name).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(p.name, name);
            let c = p
                .xsk_config(
                    0,
                    "eth0",
                    "10.0.0.1:7946".parse().unwrap_or_else(|_| unreachable!()),
                )
                .unwrap_or_else(|| panic!("queue 0"));
            assert_eq!(c.batch, p.xsk.batch as usize);
        }
        let veth = Profile::load_named(&dir(), "veth-test").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(veth.xsk.zero_copy, ZeroCopy::Off);
        let mlx = Profile::load_named(&dir(), "mlx5-100g").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(mlx.xdp.mode, AttachPolicy::Native);
        assert_eq!(mlx.xsk.zero_copy, ZeroCopy::Required);
    }

    fn veth_text() -> String {
        std::fs::read_to_string(dir().join("veth-test.toml")).unwrap_or_default()
    }

    fn err_of(text: &str) -> String {
        match Profile::parse(text, Path::new("x.toml")) {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_profiles_are_rejected_naming_the_field() {
        let base = veth_text();
        assert!(!base.is_empty());
        let cases = [
            ("fill_ring = 4096", "fill_ring = 100", "xsk.fill_ring"),
            ("batch = 64", "batch = 0", "xsk.batch"),
            ("frame_size = 2048", "frame_size = 3000", "xsk.frame_size"),
            ("mode = \"native\"", "mode = \"turbo\"", "mode"),
            ("zero_copy = \"off\"", "zero_copy = 1", "zero_copy"),
            ("fast_path = [1]", "fast_path = [1, 2]", "cores.fast_path"),
            (
                "control_plane = [0]",
                "control_plane = [1]",
                "cores.control_plane",
            ),
            ("queues = [0]", "queues = []", "xsk.queues"),
            (
                "need_wakeup = true",
                "need_wakeup = true\nspeed = 9",
                "speed",
            ),
        ];
        for (from, to, field) in cases {
            assert!(base.contains(from), "veth-test.toml lacks `{from}`");
            let e = err_of(&base.replacen(from, to, 1));
            assert!(
                e.contains(field),
                "`{to}`: error does not name `{field}`: {e}"
            );
        }
        assert!(matches!(
            Profile::load_named(&dir(), "../etc/passwd"),
            Err(ProfileError::BadName(_))
        ));
        assert!(matches!(
            Profile::load_named(&dir(), "no-such-profile"),
            Err(ProfileError::Io { .. })
        ));
    }
}
