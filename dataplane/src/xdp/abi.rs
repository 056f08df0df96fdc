//! `#[repr(C)]` mirrors of the structs and numbers in
//! `ebpf/include/mesh_wire.h`. The test at the bottom pins sizes and offsets;
//! the C side is compiled from the same header, so a change on one side
//! without the other fails the build's tests.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// `MESH_MAX_PORTS`: UDP ports the program recognises as mesh traffic.
pub const MAX_PORTS: usize = 4;
/// `MESH_MAX_QUEUES`: slots in the XSKMAP (one per RX queue).
pub const MAX_QUEUES: u32 = 64;
/// `MESH_DEFAULT_BUCKETS`: default token-bucket LRU size.
pub const DEFAULT_BUCKETS: u32 = 65536;
/// `MESH_DEFAULT_DENY`: default deny-hash size.
pub const DEFAULT_DENY: u32 = 65536;

/// `struct mesh_addr`: a source address, IPv4 as v4-mapped IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, IntoBytes, Immutable)]
#[repr(C)]
pub struct MeshAddr {
    /// Network byte order.
    pub addr: [u8; 16],
}

impl MeshAddr {
    /// The key the program builds for `ip` (IPv4 becomes `::ffff:a.b.c.d`).
    pub fn from_ip(ip: std::net::IpAddr) -> MeshAddr {
        let v6 = match ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
            std::net::IpAddr::V6(v6) => v6,
        };
        MeshAddr { addr: v6.octets() }
    }
}

/// `struct mesh_bucket`: token-bucket state per source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, IntoBytes, Immutable)]
#[repr(C)]
pub struct MeshBucket {
    /// Tokens in units of 1e-9 packet.
    pub tokens: u64,
    /// Monotonic ns of the last refill.
    pub last_ns: u64,
}

/// `struct mesh_config`: entry 0 of the config array map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, IntoBytes, FromBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct MeshConfig {
    /// UDP destination ports, host byte order; 0 = unused.
    pub ports: [u16; MAX_PORTS],
    /// Packets per second per source; 0 disables rate limiting.
    pub rate_pps: u64,
    /// Bucket depth in packets.
    pub burst: u64,
    /// Reserved, zero.
    pub flags: u32,
    /// Padding, zero.
    pub pad: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// Offsets as clang lays out `mesh_wire.h` for the BPF target (and
    /// x86-64: the structs contain no pointers or longs).
    #[test]
    fn rust_mirrors_match_the_c_layout() {
        assert_eq!(size_of::<MeshAddr>(), 16);
        assert_eq!(size_of::<MeshBucket>(), 16);
        assert_eq!(offset_of!(MeshBucket, tokens), 0);
        assert_eq!(offset_of!(MeshBucket, last_ns), 8);
        assert_eq!(size_of::<MeshConfig>(), 32);
        assert_eq!(offset_of!(MeshConfig, ports), 0);
        assert_eq!(offset_of!(MeshConfig, rate_pps), 8);
        assert_eq!(offset_of!(MeshConfig, burst), 16);
        assert_eq!(offset_of!(MeshConfig, flags), 24);
        assert_eq!(offset_of!(MeshConfig, pad), 28);
    }

    #[test]
    fn header_constants_match_the_rust_side() {
        let h = include_str!("../../../ebpf/include/mesh_wire.h");
        let define = |name: &str| -> u64 {
            let line = h
                .lines()
                .find(|l| l.starts_with(&format!("#define {name} ")))
                .unwrap_or_else(|| panic!("{name} not in mesh_wire.h"));
            let v = line.split_whitespace().nth(2).unwrap_or_default();
            v.parse().unwrap_or_else(|_| panic!("{name}: {v}"))
        };
        assert_eq!(define("MESH_MAX_PORTS"), MAX_PORTS as u64);
        assert_eq!(define("MESH_MAX_QUEUES"), u64::from(MAX_QUEUES));
        assert_eq!(define("MESH_DEFAULT_BUCKETS"), u64::from(DEFAULT_BUCKETS));
        assert_eq!(define("MESH_DEFAULT_DENY"), u64::from(DEFAULT_DENY));
        assert_eq!(
            define("MESH_WIRE_VERSION"),
            u64::from(crate::wire::WIRE_VERSION)
        );
        assert_eq!(define("MESH_HEADER_LEN"), crate::wire::HEADER_LEN as u64);
        assert_eq!(
            define("MESH_KIND_DATA"),
            crate::wire::Kind::Data as u64,
            "the program passes exactly the kinds the parser knows"
        );
        assert_eq!(
            define("MESH_SIGNATURE_LEN"),
            crate::wire::SIGNATURE_LEN as u64
        );
        assert_eq!(
            define("MESH_MAX_DATAGRAM"),
            crate::wire::MAX_DATAGRAM as u64
        );
        // Reason numbers: the enum in the header against `Reason`.
        for r in super::super::Reason::ALL {
            let needle = format!("{} = {},", r.c_name(), r as u32);
            assert!(h.contains(&needle), "mesh_wire.h lacks `{needle}`");
        }
        assert!(h.contains(&format!(
            "MESH_XDP_REASON_COUNT = {},",
            super::super::Reason::COUNT
        )));
    }

    #[test]
    fn v4_addresses_are_v4_mapped() {
        let a = MeshAddr::from_ip("10.1.2.3".parse().unwrap_or(std::net::IpAddr::from([0; 4])));
        assert_eq!(
            a.addr,
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 1, 2, 3]
        );
    }
}
