//! Helpers shared by the XDP / AF_XDP integration tests.
#![allow(dead_code)]

pub mod netns;
pub mod packets;

/// True when running as root; otherwise prints why the test is skipped.
pub fn root_or_skip(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        eprintln!("{test}: skipped, needs root (CAP_BPF, CAP_NET_ADMIN); euid = {euid}");
        return false;
    }
    true
}
