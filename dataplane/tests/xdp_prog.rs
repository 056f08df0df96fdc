//! The XDP program under BPF_PROG_TEST_RUN: a table of packets with the
//! expected action and counter, the deny and rate limits, redirect with a
//! bound AF_XDP socket, and thousands of random / mutated frames that are
//! redirected exactly when they are well-formed.
//!
//! Needs root (CAP_BPF + CAP_NET_ADMIN); prints why and returns otherwise.

mod common;

use common::netns::NetNs;
use common::packets::{
    PORT, V4_PAYLOAD, V4_UDP, datagram, udp_frame, well_formed, well_formed_for,
};
use dataplane::wire::{Kind, MAX_PAYLOAD};
use dataplane::xdp::{MeshXdp, Reason, XDP_DROP, XDP_PASS, XDP_REDIRECT, XdpCounters, XdpSettings};
use dataplane::xsk::{XskConfig, XskSocket, ZeroCopy};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SRC4: &str = "10.1.0.1:5000";
const DST4: &str = "10.1.0.2:7946";
const SRC6: &str = "[fd00::1]:5000";
const DST6: &str = "[fd00::2]:7946";

fn load(test: &str) -> Option<MeshXdp> {
    if !common::root_or_skip(test) {
        return None;
    }
    let settings = XdpSettings {
        ports: vec![PORT, 9999],
        ..XdpSettings::default()
    };
    match MeshXdp::load(&settings) {
        Ok(x) => Some(x),
        Err(e) => {
            eprintln!("{test}: skipped, BPF unavailable: {e}");
            None
        }
    }
}

fn delta(before: &XdpCounters, after: &XdpCounters) -> Vec<(Reason, u64)> {
    Reason::ALL
        .iter()
        .filter_map(|r| {
            let d = after[*r as usize] - before[*r as usize];
            (d != 0).then_some((*r, d))
        })
        .collect()
}

/// Runs `frame` once and checks the action and that exactly one counter,
/// `reason`, went up by one.
fn expect(xdp: &MeshXdp, name: &str, frame: &[u8], action: u32, reason: Reason) {
    let before = xdp.control().counters().expect("counters");
    let got = xdp.test_run(frame).expect("test_run");
    let after = xdp.control().counters().expect("counters");
    assert_eq!(got, action, "{name}: action");
    assert_eq!(
        delta(&before, &after),
        vec![(reason, 1)],
        "{name}: counters"
    );
}

fn good4() -> Vec<u8> {
    udp_frame(SRC4, DST4, &[], &datagram(Kind::Data, 10, 1))
}

/// Sets the big-endian u16 at `off`.
fn put16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_be_bytes());
}

#[test]
fn table_of_packets_gets_the_expected_verdict_and_counter() {
    let Some(xdp) = load("table_of_packets_gets_the_expected_verdict_and_counter") else {
        return;
    };
    let d = datagram(Kind::Data, 10, 1);
    let cases: Vec<(&str, Vec<u8>, u32, Reason)> = vec![
        ("ipv4 good", good4(), XDP_PASS, Reason::PassNoSocket),
        (
            "ipv6 good",
            udp_frame(SRC6, DST6, &[], &d),
            XDP_PASS,
            Reason::PassNoSocket,
        ),
        (
            "vlan good",
            udp_frame(SRC4, DST4, &[42], &d),
            XDP_PASS,
            Reason::PassNoSocket,
        ),
        (
            "qinq ipv6 good",
            udp_frame(SRC6, DST6, &[7, 42], &d),
            XDP_PASS,
            Reason::PassNoSocket,
        ),
        (
            "ipv4 with options",
            {
                let mut f = good4();
                f.splice(14 + 20..14 + 20, [1u8, 1, 1, 1]);
                f[14] = 0x46;
                let tot = u16::from_be_bytes([f[16], f[17]]);
                put16(&mut f, 16, tot + 4);
                f
            },
            XDP_PASS,
            Reason::PassNoSocket,
        ),
        (
            "ipv6 hop-by-hop header",
            {
                let mut f = udp_frame(SRC6, DST6, &[], &d);
                f.splice(14 + 40..14 + 40, [17u8, 0, 1, 4, 0, 0, 0, 0]);
                f[14 + 6] = 0;
                let pl = u16::from_be_bytes([f[18], f[19]]);
                put16(&mut f, 18, pl + 8);
                f
            },
            XDP_PASS,
            Reason::PassNoSocket,
        ),
        (
            "ipv6 fragment header",
            {
                let mut f = udp_frame(SRC6, DST6, &[], &d);
                f.splice(14 + 40..14 + 40, [17u8, 0, 0, 1, 0, 0, 0, 1]);
                f[14 + 6] = 44;
                let pl = u16::from_be_bytes([f[18], f[19]]);
                put16(&mut f, 18, pl + 8);
                f
            },
            XDP_PASS,
            Reason::PassNotMesh,
        ),
        (
            "second configured port",
            udp_frame(SRC4, "10.1.0.2:9999", &[], &d),
            XDP_PASS,
            Reason::PassNoSocket,
        ),
        (
            "smallest datagram",
            udp_frame(SRC4, DST4, &[], &datagram(Kind::Data, 0, 1)),
            XDP_PASS,
            Reason::PassNoSocket,
        ),
        (
            "largest datagram",
            udp_frame(SRC6, DST6, &[], &datagram(Kind::Data, MAX_PAYLOAD, 1)),
            XDP_PASS,
            Reason::PassNoSocket,
        ),
        (
            "other udp port",
            udp_frame(SRC4, "10.1.0.2:53", &[], &d),
            XDP_PASS,
            Reason::PassNotMesh,
        ),
        (
            "junk to other port",
            udp_frame(SRC4, "10.1.0.2:53", &[], b"junk"),
            XDP_PASS,
            Reason::PassNotMesh,
        ),
        ("runt frame", vec![0u8; 14], XDP_PASS, Reason::PassNotMesh),
        (
            "frame ends inside the ip header",
            good4()[..20].to_vec(),
            XDP_PASS,
            Reason::PassNotMesh,
        ),
        (
            "frame ends inside the vlan tag",
            udp_frame(SRC4, DST4, &[3], &d)[..16].to_vec(),
            XDP_PASS,
            Reason::PassNotMesh,
        ),
        (
            "arp",
            {
                let mut f = good4();
                put16(&mut f, 12, 0x0806);
                f
            },
            XDP_PASS,
            Reason::PassNotMesh,
        ),
        (
            "tcp to mesh port",
            {
                let mut f = good4();
                f[14 + 9] = 6;
                f
            },
            XDP_PASS,
            Reason::PassNotMesh,
        ),
        (
            "udp payload 127 bytes",
            udp_frame(SRC4, DST4, &[], &d[..127]),
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "frame cut short of the ip length",
            {
                let mut f = good4();
                f.truncate(f.len() - 1);
                f
            },
            XDP_DROP,
            Reason::DropTruncated,
        ),
        (
            "udp payload 1233 bytes",
            {
                let mut big = datagram(Kind::Data, MAX_PAYLOAD, 1);
                big.push(0);
                udp_frame(SRC4, DST4, &[], &big)
            },
            XDP_DROP,
            Reason::DropOversized,
        ),
        (
            "bad magic",
            {
                let mut f = good4();
                f[V4_PAYLOAD] = b'X';
                f
            },
            XDP_DROP,
            Reason::DropBadMagic,
        ),
        (
            "bad version",
            {
                let mut f = good4();
                f[V4_PAYLOAD + 8] = 2;
                f
            },
            XDP_DROP,
            Reason::DropBadVersion,
        ),
        (
            "reserved byte set",
            {
                let mut f = good4();
                f[V4_PAYLOAD + 14] = 1;
                f
            },
            XDP_DROP,
            Reason::DropBadReserved,
        ),
        (
            "flags set",
            {
                let mut f = good4();
                f[V4_PAYLOAD + 10] = 0x80;
                f
            },
            XDP_DROP,
            Reason::DropBadReserved,
        ),
        (
            "kind 0",
            {
                let mut f = good4();
                f[V4_PAYLOAD + 9] = 0;
                f
            },
            XDP_DROP,
            Reason::DropBadKind,
        ),
        (
            "kind 2 (the retired join)",
            {
                let mut f = good4();
                f[V4_PAYLOAD + 9] = 2;
                f
            },
            XDP_DROP,
            Reason::DropBadKind,
        ),
        (
            "kind 6 (the retired leave)",
            {
                let mut f = good4();
                f[V4_PAYLOAD + 9] = 6;
                f
            },
            XDP_DROP,
            Reason::DropBadKind,
        ),
        (
            "kind 7",
            {
                let mut f = good4();
                f[V4_PAYLOAD + 9] = 7;
                f
            },
            XDP_DROP,
            Reason::DropBadKind,
        ),
        (
            "payload_len disagrees",
            {
                let mut f = good4();
                f[V4_PAYLOAD + 12] = 11;
                f
            },
            XDP_DROP,
            Reason::DropLengthMismatch,
        ),
        (
            "udp length disagrees with ip length",
            {
                let mut f = good4();
                let ul = u16::from_be_bytes([f[V4_UDP + 4], f[V4_UDP + 5]]);
                put16(&mut f, V4_UDP + 4, ul - 1);
                f
            },
            XDP_DROP,
            Reason::DropLengthMismatch,
        ),
        (
            "ip total length below headers",
            {
                let mut f = good4();
                put16(&mut f, 14 + 2, 24);
                f
            },
            XDP_DROP,
            Reason::DropLengthMismatch,
        ),
        (
            "ipv6 payload length disagrees",
            {
                let mut f = udp_frame(SRC6, DST6, &[], &d);
                let pl = u16::from_be_bytes([f[14 + 4], f[14 + 5]]);
                put16(&mut f, 14 + 4, pl + 1);
                f
            },
            XDP_DROP,
            Reason::DropLengthMismatch,
        ),
        (
            "first fragment to mesh port",
            {
                let mut f = good4();
                put16(&mut f, 14 + 6, 0x2000);
                f
            },
            XDP_DROP,
            Reason::DropBadL3,
        ),
        (
            "non-first fragment",
            {
                let mut f = good4();
                put16(&mut f, 14 + 6, 0x0010);
                f
            },
            XDP_PASS,
            Reason::PassNotMesh,
        ),
    ];
    for (name, frame, action, reason) in &cases {
        assert_eq!(
            well_formed_for(frame, &[PORT, 9999]),
            *reason == Reason::PassNoSocket,
            "{name}: reference parser disagrees with the table"
        );
        expect(&xdp, name, frame, *action, *reason);
    }
}

#[test]
fn denied_sources_are_dropped_until_allowed() {
    let Some(xdp) = load("denied_sources_are_dropped_until_allowed") else {
        return;
    };
    let c = xdp.control();
    let v6 = udp_frame(SRC6, DST6, &[], &datagram(Kind::Data, 3, 1));
    c.deny("10.1.0.1".parse().expect("ip")).expect("deny");
    c.deny("fd00::1".parse().expect("ip")).expect("deny");
    expect(&xdp, "denied v4", &good4(), XDP_DROP, Reason::DropDenied);
    expect(&xdp, "denied v6", &v6, XDP_DROP, Reason::DropDenied);
    let other = udp_frame("10.1.0.9:5000", DST4, &[], &datagram(Kind::Data, 1, 1));
    expect(&xdp, "other source", &other, XDP_PASS, Reason::PassNoSocket);
    // Malformed traffic from a denied source is still counted as malformed.
    let mut bad = good4();
    bad[V4_PAYLOAD] = 0;
    expect(
        &xdp,
        "denied but malformed",
        &bad,
        XDP_DROP,
        Reason::DropBadMagic,
    );
    assert!(c.allow("10.1.0.1".parse().expect("ip")).expect("allow"));
    assert!(!c.allow("10.1.0.1".parse().expect("ip")).expect("allow"));
    expect(
        &xdp,
        "allowed again",
        &good4(),
        XDP_PASS,
        Reason::PassNoSocket,
    );
    expect(&xdp, "v6 still denied", &v6, XDP_DROP, Reason::DropDenied);
}

#[test]
fn sources_over_their_token_bucket_are_dropped_per_source() {
    let Some(xdp) = load("sources_over_their_token_bucket_are_dropped_per_source") else {
        return;
    };
    let c = xdp.control();
    // 1 packet/s sustained, burst 3: the 4th and 5th packets in the same
    // second are over the limit (a stall of a full second between two
    // runs would refill one token; the test does not depend on timing
    // shorter than that).
    c.set_rate(1, 3).expect("set_rate");
    for i in 0..3 {
        expect(
            &xdp,
            &format!("burst {i}"),
            &good4(),
            XDP_PASS,
            Reason::PassNoSocket,
        );
    }
    expect(
        &xdp,
        "over rate",
        &good4(),
        XDP_DROP,
        Reason::DropRateLimited,
    );
    expect(
        &xdp,
        "still over",
        &good4(),
        XDP_DROP,
        Reason::DropRateLimited,
    );
    let v6 = udp_frame(SRC6, DST6, &[], &datagram(Kind::Data, 1, 1));
    expect(
        &xdp,
        "other source has its own bucket",
        &v6,
        XDP_PASS,
        Reason::PassNoSocket,
    );
    // Junk does not spend tokens or get counted as rate-limited.
    let mut bad = good4();
    bad[V4_PAYLOAD + 8] = 9;
    expect(
        &xdp,
        "junk from limited source",
        &bad,
        XDP_DROP,
        Reason::DropBadVersion,
    );
    // Non-mesh traffic is never limited.
    let dns = udp_frame(SRC4, "10.1.0.2:53", &[], b"q");
    expect(
        &xdp,
        "non-mesh from limited source",
        &dns,
        XDP_PASS,
        Reason::PassNotMesh,
    );
    // New settings reset the buckets; rate 0 turns limiting off.
    c.set_rate(0, 1).expect("set_rate");
    for i in 0..10 {
        expect(
            &xdp,
            &format!("unlimited {i}"),
            &good4(),
            XDP_PASS,
            Reason::PassNoSocket,
        );
    }
    assert!(c.set_rate(5, 0).is_err(), "burst 0 rejected");
}

/// Mutates a valid frame: flips, truncation, extension, or a random length.
fn mutate(rng: &mut SmallRng, mut f: Vec<u8>) -> Vec<u8> {
    match rng.random_range(0..6) {
        0 => {
            // Flip bytes in the headers (where the checks are).
            for _ in 0..rng.random_range(1..4) {
                let i = rng.random_range(0..f.len().min(V4_PAYLOAD + 20));
                f[i] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            for _ in 0..rng.random_range(1..6) {
                let i = rng.random_range(0..f.len());
                f[i] = rng.random();
            }
        }
        2 => {
            let n = rng.random_range(0..f.len());
            f.truncate(n);
        }
        3 => {
            for _ in 0..rng.random_range(1..64) {
                f.push(rng.random());
            }
        }
        4 => {
            // Set one length field to a random value.
            let offs = [14 + 2, V4_UDP + 4, V4_PAYLOAD + 12, 14 + 4];
            let o = offs[rng.random_range(0..offs.len())];
            if o + 1 < f.len() {
                put16(&mut f, o, rng.random());
            }
        }
        _ => {}
    }
    f
}

fn random_frame(rng: &mut SmallRng) -> Vec<u8> {
    // data, and the retired peer-table kinds (bad_kind now)
    let kinds = [1u8, 1, 2, 4, 6];
    let kind = kinds[rng.random_range(0..kinds.len())];
    let len = rng.random_range(0..300);
    let vlans: &[u16] = match rng.random_range(0..4) {
        0 => &[5],
        1 => &[5, 6],
        _ => &[],
    };
    let (s, d) = if rng.random_bool(0.5) {
        (SRC4, DST4)
    } else {
        (SRC6, DST6)
    };
    let mut dgram = datagram(Kind::Data, len, rng.random());
    dgram[9] = kind;
    let base = udp_frame(s, d, vlans, &dgram);
    match rng.random_range(0..10) {
        0 => (0..rng.random_range(0..200))
            .map(|_| rng.random())
            .collect(),
        1 => base,
        _ => mutate(rng, base),
    }
}

#[test]
fn random_and_mutated_frames_redirect_only_when_well_formed() {
    let Some(_probe) = load("random_and_mutated_frames_redirect_only_when_well_formed") else {
        return;
    };
    drop(_probe);
    // A real AF_XDP socket bound to `lo` of a private namespace, so the
    // XSKMAP entry exists and good packets get XDP_REDIRECT.
    let ns = match NetNs::new("fuzz") {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("skipped: cannot make a network namespace: {e}");
            return;
        }
    };
    let result = ns.run(|| {
        let xdp = MeshXdp::load(&XdpSettings {
            ports: vec![PORT],
            ..XdpSettings::default()
        })
        .expect("load");
        let mut cfg = XskConfig::veth("lo", "127.0.0.1:7946".parse().expect("addr"));
        cfg.zero_copy = ZeroCopy::Off;
        cfg.frame_count = 64;
        cfg.fill_ring = 64;
        cfg.rx_ring = 64;
        cfg.tx_ring = 64;
        cfg.comp_ring = 64;
        let sock = XskSocket::open(&cfg, xdp.control()).expect("AF_XDP socket on lo");

        expect(
            &xdp,
            "redirect v4",
            &good4(),
            XDP_REDIRECT,
            Reason::Redirect,
        );
        let v6 = udp_frame(SRC6, DST6, &[9], &datagram(Kind::Data, 40, 2));
        expect(
            &xdp,
            "redirect vlan v6",
            &v6,
            XDP_REDIRECT,
            Reason::Redirect,
        );

        let mut rng = SmallRng::seed_from_u64(0x6d657368);
        let (mut redirected, mut dropped, mut passed) = (0u32, 0u32, 0u32);
        let before = xdp.control().counters().expect("counters");
        const N: u32 = 4000;
        let mut i = 0;
        while i < N {
            let f = random_frame(&mut rng);
            if f.len() < 14 {
                // The kernel never hands XDP a frame shorter than Ethernet.
                assert!(xdp.test_run(&f).is_err());
                continue;
            }
            i += 1;
            let action = xdp.test_run(&f).expect("test_run");
            let good = well_formed(&f);
            assert_eq!(
                action == XDP_REDIRECT,
                good,
                "case {i}: action {action}, reference well-formed {good}, frame {f:02x?}"
            );
            assert!(
                matches!(action, XDP_PASS | XDP_DROP | XDP_REDIRECT),
                "case {i}: {action}"
            );
            match action {
                XDP_REDIRECT => redirected += 1,
                XDP_DROP => dropped += 1,
                _ => passed += 1,
            }
        }
        let after = xdp.control().counters().expect("counters");
        let total: u64 = delta(&before, &after).iter().map(|(_, n)| n).sum();
        assert_eq!(total, u64::from(N), "one counter per packet");
        assert_eq!(
            after[Reason::Redirect as usize] - before[Reason::Redirect as usize],
            u64::from(redirected)
        );
        let drops: u64 = Reason::ALL
            .iter()
            .filter(|r| r.is_drop())
            .map(|r| after[*r as usize] - before[*r as usize])
            .sum();
        assert_eq!(drops, u64::from(dropped));
        // The generator must exercise all three outcomes.
        assert!(
            redirected > 100 && dropped > 100 && passed > 100,
            "{redirected}/{dropped}/{passed}"
        );
        drop(sock);
        // With the socket gone the same good packet is passed, not redirected.
        expect(
            &xdp,
            "socket removed",
            &good4(),
            XDP_PASS,
            Reason::PassNoSocket,
        );
    });
    result.expect("namespace thread");
}
