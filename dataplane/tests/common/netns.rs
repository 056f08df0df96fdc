//! Uniquely named network namespaces (pid + counter), removed on drop, and
//! veth pairs between them. Code runs inside a namespace on a thread that
//! `setns(2)`s into it, so bpffs and /sys of the test process stay as they
//! are (`ip netns exec` would remount /sys).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A network namespace made for one test.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

fn run(args: &[&str]) -> io::Result<String> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl NetNs {
    /// Creates `mtest-<tag>-<pid>-<n>` with `lo` up.
    pub fn new(tag: &str) -> io::Result<NetNs> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("mt-{tag}-{}-{n}", std::process::id());
        run(&["ip", "netns", "add", &name])?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args...`.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let mut v = vec!["ip", "-n", self.name.as_str()];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs a command inside the namespace with nsenter (keeps /sys).
    pub fn exec(&self, args: &[&str]) -> io::Result<String> {
        let net = format!("--net=/run/netns/{}", self.name);
        let mut v = vec!["nsenter", net.as_str()];
        v.extend_from_slice(args);
        run(&v)
    }

    /// Runs `f` on a new thread that has entered this namespace.
    pub fn spawn<F, R>(&self, f: F) -> std::thread::JoinHandle<io::Result<R>>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path)?;
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
    }

    /// Runs `f` inside the namespace and waits for it.
    pub fn run<F, R>(&self, f: F) -> io::Result<R>
    where
        F: FnOnce() -> R + Send + 'static,
        R: Send + 'static,
    {
        self.spawn(f)
            .join()
            .map_err(|_| io::Error::other("namespace thread panicked"))?
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// Makes a veth pair `a_if` (in `a`, address `a_addr`) <-> `b_if` (in `b`,
/// address `b_addr`), both up. Addresses with prefix, e.g. "10.9.0.1/24".
pub fn veth(
    a: &NetNs,
    a_if: &str,
    a_addr: &str,
    b: &NetNs,
    b_if: &str,
    b_addr: &str,
) -> io::Result<()> {
    run(&[
        "ip",
        "link",
        "add",
        "name",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    for (ns, ifn, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        ns.ip(&["addr", "add", addr, "dev", ifn])?;
        ns.ip(&["link", "set", ifn, "up"])?;
    }
    Ok(())
}

/// MAC address of `ifname` in `ns`.
pub fn mac(ns: &NetNs, ifname: &str) -> io::Result<[u8; 6]> {
    let out = ns.ip(&["-br", "link", "show", ifname])?;
    let field = out
        .split_whitespace()
        .nth(2)
        .ok_or_else(|| io::Error::other(format!("no MAC in {out:?}")))?;
    let mut mac = [0u8; 6];
    for (i, p) in field.split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(p, 16).map_err(io::Error::other)?;
    }
    Ok(mac)
}
