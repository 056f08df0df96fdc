//! Attach modes and clean-up, in private namespaces: native where the driver
//! has it (veth), a clear error where it does not (loopback) unless generic
//! mode is configured, detach on drop; AF_XDP zero-copy required on veth is a
//! clear error, `auto` falls back to copy mode; busy-poll options apply.
//!
//! Needs root; prints why and returns otherwise.

mod common;

use common::netns::{NetNs, veth};
use dataplane::profile::{BusyPoll, apply_busy_poll};
use dataplane::xdp::{AttachPolicy, MeshXdp, XdpError, XdpMode, XdpSettings};
use dataplane::xsk::{BindMode, XskConfig, XskError, XskSocket, ZeroCopy};

fn xdp_on(ns: &NetNs, ifname: &str) -> bool {
    ns.ip(&["link", "show", "dev", ifname])
        .map(|s| s.contains("xdp"))
        .unwrap_or(false)
}

#[test]
fn attach_modes_are_reported_and_the_program_detaches_on_drop() {
    if !common::root_or_skip("attach_modes_are_reported_and_the_program_detaches_on_drop") {
        return;
    }
    let (a, b) = match (NetNs::new("aa"), NetNs::new("ab")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipped: cannot make network namespaces: {e}");
            return;
        }
    };
    veth(&a, "v0", "10.66.0.1/24", &b, "v1", "10.66.0.2/24").expect("veth");

    // veth: native.
    let attached = a
        .run(|| {
            let mut x = MeshXdp::load(&XdpSettings::default()).expect("load");
            let mode = x.attach("v0", AttachPolicy::Native).expect("attach");
            // A second attach of the same object is refused.
            let again = x.attach("v0", AttachPolicy::Native);
            (mode, matches!(again, Err(XdpError::AlreadyAttached(_))), x)
        })
        .expect("netns");
    let (mode, refused, x) = attached;
    assert_eq!(mode, XdpMode::Native);
    assert!(refused);
    assert!(xdp_on(&a, "v0"), "program visible on v0");
    // Dropped on another thread, outside the namespace: the link still
    // detaches the right interface.
    drop(x);
    assert!(!xdp_on(&a, "v0"), "program gone after drop");

    // Another program already there: a clear error, not a silent replace.
    let busy = a
        .run(|| {
            let mut first = MeshXdp::load(&XdpSettings::default()).expect("load");
            first.attach("v0", AttachPolicy::Native).expect("attach");
            let mut second = MeshXdp::load(&XdpSettings::default()).expect("load");
            second
                .attach("v0", AttachPolicy::Native)
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .expect("netns");
    let msg = busy.expect_err("second program refused");
    assert!(msg.contains("v0") && msg.contains("native"), "{msg}");

    // Loopback has no native XDP: an error naming the fix, unless configured.
    let lo = a
        .run(|| {
            let mut x = MeshXdp::load(&XdpSettings::default()).expect("load");
            let native = x
                .attach("lo", AttachPolicy::Native)
                .map_err(|e| e.to_string());
            let fallback = x
                .attach("lo", AttachPolicy::NativeOrGeneric)
                .map_err(|e| e.to_string());
            drop(x);
            let mut g = MeshXdp::load(&XdpSettings::default()).expect("load");
            let generic = g
                .attach("lo", AttachPolicy::Generic)
                .map_err(|e| e.to_string());
            (native, fallback, generic)
        })
        .expect("netns");
    let native = lo.0.expect_err("no native XDP on lo");
    assert!(
        native.contains("generic"),
        "error says how to allow generic: {native}"
    );
    assert_eq!(lo.1, Ok(XdpMode::Generic));
    assert_eq!(lo.2, Ok(XdpMode::Generic));
    assert!(!xdp_on(&a, "lo"), "generic program detached on drop");

    let missing = a
        .run(|| {
            let mut x = MeshXdp::load(&XdpSettings::default()).expect("load");
            x.attach("nope0", AttachPolicy::Native)
                .map_err(|e| e.to_string())
        })
        .expect("netns");
    assert!(missing.expect_err("no such interface").contains("nope0"));
}

#[test]
fn zero_copy_is_required_or_falls_back_to_copy_and_busy_poll_applies() {
    if !common::root_or_skip("zero_copy_is_required_or_falls_back_to_copy_and_busy_poll_applies") {
        return;
    }
    let (a, b) = match (NetNs::new("za"), NetNs::new("zb")) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("skipped: cannot make network namespaces: {e}");
            return;
        }
    };
    veth(&a, "v0", "10.67.0.1/24", &b, "v1", "10.67.0.2/24").expect("veth");
    let out = a
        .run(|| {
            let mut x = MeshXdp::load(&XdpSettings::default()).expect("load");
            x.attach("v0", AttachPolicy::Native).expect("attach");
            let mut cfg = XskConfig::veth("v0", "10.67.0.1:7946".parse().expect("addr"));
            cfg.zero_copy = ZeroCopy::Required;
            let required = XskSocket::open(&cfg, x.control()).map(|s| s.mode());
            let required: Result<(), String> = match required {
                Err(e @ XskError::Bind { .. }) => Err(e.to_string()),
                other => Err(format!("unexpected: {other:?}")),
            };
            cfg.zero_copy = ZeroCopy::Auto;
            let sock = XskSocket::open(&cfg, x.control()).expect("auto");
            let busy = apply_busy_poll(
                sock.fd(),
                &BusyPoll {
                    enabled: true,
                    usecs: 20,
                    budget: 64,
                    prefer: true,
                },
            )
            .map_err(|e| e.to_string());
            cfg.batch = 0;
            let bad = XskSocket::open(&cfg, x.control())
                .map(|_| ())
                .map_err(|e| e.to_string());
            (required, sock.mode(), busy, bad)
        })
        .expect("netns");
    let required = out.0.expect_err("veth has no zero-copy");
    assert!(
        required.contains("zero-copy") && required.contains("v0"),
        "{required}"
    );
    assert_eq!(out.1, BindMode::Copy);
    assert_eq!(out.2, Ok(()));
    assert!(out.3.expect_err("batch 0").contains("`batch`"));
}
