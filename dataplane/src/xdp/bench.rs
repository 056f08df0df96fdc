//! Load generator and baseline receiver for the pps benchmark
//! (`dataplane/examples/xdp_pps.rs`), built from `ebpf/bench_xdp.c`.
//!
//! The generator is `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`: the
//! kernel runs `gen_redirect` on copies of one frame, `repeat` times, and
//! really transmits each copy into the veth named by [`BenchXdp::set_target`]
//! (about 6 Mpps on the development VM, far above a sendmmsg sender).

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder, ProgramInput};

use super::XdpError;

/// The compiled benchmark object.
pub const BENCH_XDP_OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/bench_xdp.o"));

/// `BPF_F_TEST_XDP_LIVE_FRAMES`.
pub const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;

/// The loaded benchmark programs.
pub struct BenchXdp {
    object: Object,
    drop_link: Option<OwnedFd>,
}

impl std::fmt::Debug for BenchXdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BenchXdp").finish_non_exhaustive()
    }
}

impl BenchXdp {
    /// Loads both programs.
    pub fn load() -> Result<BenchXdp, XdpError> {
        let object = ObjectBuilder::default()
            .open_memory(BENCH_XDP_OBJECT)
            .map_err(XdpError::Load)?
            .load()
            .map_err(XdpError::Load)?;
        Ok(BenchXdp {
            object,
            drop_link: None,
        })
    }

    /// Sets the interface (index in the caller's namespace) the generator
    /// transmits into.
    pub fn set_target(&self, ifindex: i32) -> Result<(), XdpError> {
        let map = self
            .object
            .maps()
            .find(|m| m.name().to_str() == Some("bench_cfg"))
            .ok_or(XdpError::Missing("bench_cfg"))?;
        map.update(
            &0u32.to_ne_bytes(),
            &(ifindex as u32).to_ne_bytes(),
            MapFlags::ANY,
        )
        .map_err(|source| XdpError::Map {
            map: "bench_cfg",
            op: "update",
            source,
        })
    }

    /// Sends `repeat` live copies of `frame` through the target; returns the
    /// time the kernel took.
    pub fn generate(&self, frame: &[u8], repeat: u32) -> Result<Duration, XdpError> {
        let prog = self
            .object
            .progs_mut()
            .find(|p| p.name().to_str() == Some("gen_redirect"))
            .ok_or(XdpError::Missing("gen_redirect program"))?;
        let input = ProgramInput {
            data_in: Some(frame),
            repeat,
            flags: BPF_F_TEST_XDP_LIVE_FRAMES,
            ..ProgramInput::default()
        };
        let t = Instant::now();
        prog.test_run(input).map_err(XdpError::TestRun)?;
        Ok(t.elapsed())
    }

    /// Attaches `bare_drop` natively to `ifindex` (detached on drop).
    pub fn attach_drop(&mut self, ifindex: i32) -> Result<(), XdpError> {
        let prog = self
            .object
            .progs()
            .find(|p| p.name().to_str() == Some("bare_drop"))
            .ok_or(XdpError::Missing("bare_drop program"))?;
        // SAFETY: zeroed opts are libbpf's default; sz is set below.
        let mut opts: libbpf_rs::libbpf_sys::bpf_link_create_opts = unsafe { core::mem::zeroed() };
        opts.sz = core::mem::size_of::<libbpf_rs::libbpf_sys::bpf_link_create_opts>() as _;
        opts.flags = libbpf_rs::libbpf_sys::XDP_FLAGS_DRV_MODE;
        // SAFETY: valid program fd and initialised opts, read during the call.
        let fd = unsafe {
            libbpf_rs::libbpf_sys::bpf_link_create(
                prog.as_fd().as_raw_fd(),
                ifindex,
                libbpf_rs::libbpf_sys::BPF_XDP,
                &opts,
            )
        };
        if fd < 0 {
            return Err(XdpError::Attach {
                ifname: format!("ifindex {ifindex}"),
                mode: super::XdpMode::Native,
                source: std::io::Error::from_raw_os_error(-fd),
                hint: "",
            });
        }
        // SAFETY: a fresh fd returned by bpf_link_create, owned from here.
        self.drop_link = Some(unsafe { OwnedFd::from_raw_fd(fd) });
        Ok(())
    }

    /// Packets `bare_drop` has dropped, summed over CPUs.
    pub fn drop_count(&self) -> Result<u64, XdpError> {
        let map = self
            .object
            .maps()
            .find(|m| m.name().to_str() == Some("bench_count"))
            .ok_or(XdpError::Missing("bench_count"))?;
        let v = map
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(|source| XdpError::Map {
                map: "bench_count",
                op: "lookup",
                source,
            })?
            .unwrap_or_default();
        Ok(v.iter()
            .map(|b| {
                let mut a = [0u8; 8];
                let n = b.len().min(8);
                a[..n].copy_from_slice(&b[..n]);
                u64::from_ne_bytes(a)
            })
            .sum())
    }
}
