//! Ethernet / IPv4 / IPv6 / UDP framing for the AF_XDP backend: reading the
//! source address and UDP payload of a received frame in place, and writing
//! the headers of a frame to send. Pure functions over byte slices, no
//! allocation; the XDP program has already dropped malformed mesh traffic,
//! but these checks stand on their own (every byte is hostile).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Ethernet header length.
pub const ETH_HLEN: usize = 14;
/// IPv4 header length written by [`write_udp`] (no options).
pub const IPV4_HLEN: usize = 20;
/// IPv6 header length.
pub const IPV6_HLEN: usize = 40;
/// UDP header length.
pub const UDP_HLEN: usize = 8;
/// `ETH_P_IP`.
pub const ETH_P_IP: u16 = 0x0800;
/// `ETH_P_IPV6`.
pub const ETH_P_IPV6: u16 = 0x86DD;
/// `ETH_P_8021Q`.
pub const ETH_P_8021Q: u16 = 0x8100;
/// `ETH_P_8021AD`.
pub const ETH_P_8021AD: u16 = 0x88A8;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// Hop limit / TTL of frames we send.
pub const DEFAULT_TTL: u8 = 64;

/// A MAC address.
pub type Mac = [u8; 6];

/// A received UDP datagram, viewed in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UdpView<'a> {
    /// Source MAC.
    pub src_mac: Mac,
    /// Destination MAC.
    pub dst_mac: Mac,
    /// Source IP and port.
    pub src: SocketAddr,
    /// Destination IP and port.
    pub dst: SocketAddr,
    /// Offset of the UDP payload in the frame.
    pub payload_offset: usize,
    /// The UDP payload (length from the UDP header, never past the frame).
    pub payload: &'a [u8],
}

fn be16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(off)?, *b.get(off + 1)?]))
}

fn mac_at(b: &[u8], off: usize) -> Option<Mac> {
    b.get(off..off + 6)?.try_into().ok()
}

/// Parses Ethernet (up to two VLAN tags), IPv4 (not fragmented) or IPv6
/// (with up to four hop-by-hop / routing / destination-option headers), and
/// UDP. `None` for anything else or when a length field disagrees with
/// another or overruns the frame. Never panics.
pub fn parse_udp(frame: &[u8]) -> Option<UdpView<'_>> {
    let dst_mac = mac_at(frame, 0)?;
    let src_mac = mac_at(frame, 6)?;
    let mut proto = be16(frame, 12)?;
    let mut off = ETH_HLEN;
    for _ in 0..2 {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            break;
        }
        proto = be16(frame, off + 2)?;
        off += 4;
    }
    let (src_ip, dst_ip, udp_off, l4_len) = match proto {
        ETH_P_IP => {
            let ip = frame.get(off..off + IPV4_HLEN)?;
            if ip[0] >> 4 != 4 || ip[9] != IPPROTO_UDP {
                return None;
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([ip[6], ip[7]]);
            if ihl < IPV4_HLEN || frag & 0x3fff != 0 {
                return None;
            }
            let tot = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
            let l4 = tot.checked_sub(ihl)?;
            let s = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
            let d = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
            (IpAddr::V4(s), IpAddr::V4(d), off + ihl, l4)
        }
        ETH_P_IPV6 => {
            let ip = frame.get(off..off + IPV6_HLEN)?;
            let plen = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
            let mut next = ip[6];
            let s: [u8; 16] = ip[8..24].try_into().ok()?;
            let d: [u8; 16] = ip[24..40].try_into().ok()?;
            let mut cur = off + IPV6_HLEN;
            let mut ext = 0usize;
            for _ in 0..4 {
                if !matches!(next, 0 | 43 | 60) {
                    break;
                }
                let h = frame.get(cur..cur + 2)?;
                let len = (usize::from(h[1]) + 1) * 8;
                next = h[0];
                cur += len;
                ext += len;
            }
            if next != IPPROTO_UDP {
                return None;
            }
            let l4 = plen.checked_sub(ext)?;
            (
                IpAddr::V6(Ipv6Addr::from(s)),
                IpAddr::V6(Ipv6Addr::from(d)),
                cur,
                l4,
            )
        }
        _ => return None,
    };
    let udp = frame.get(udp_off..udp_off + UDP_HLEN)?;
    let sport = u16::from_be_bytes([udp[0], udp[1]]);
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let ulen = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if ulen != l4_len || ulen < UDP_HLEN {
        return None;
    }
    let payload_offset = udp_off + UDP_HLEN;
    let payload = frame.get(payload_offset..udp_off + ulen)?;
    Some(UdpView {
        src_mac,
        dst_mac,
        src: SocketAddr::new(src_ip, sport),
        dst: SocketAddr::new(dst_ip, dport),
        payload_offset,
        payload,
    })
}

/// Bytes of headers [`write_udp`] puts before a payload to `dst`.
pub fn header_len(dst: &SocketAddr) -> usize {
    ETH_HLEN
        + UDP_HLEN
        + match dst {
            SocketAddr::V4(_) => IPV4_HLEN,
            SocketAddr::V6(_) => IPV6_HLEN,
        }
}

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

/// The Internet checksum of `data` (RFC 1071).
pub fn checksum(data: &[u8]) -> u16 {
    fold(sum16(data, 0))
}

/// Writes an Ethernet + IPv4/IPv6 + UDP frame carrying `payload` into `buf`
/// and returns its length. Checksums are computed (IPv4 header and UDP, which
/// IPv6 requires). `None` when `src` and `dst` are of different families, the
/// payload does not fit a UDP datagram, or `buf` is too small. `ip_id` is the
/// IPv4 identification field (ignored for IPv6).
pub fn write_udp(
    buf: &mut [u8],
    src_mac: Mac,
    dst_mac: Mac,
    src: SocketAddr,
    dst: SocketAddr,
    payload: &[u8],
    ip_id: u16,
) -> Option<usize> {
    let hl = header_len(&dst);
    let total = hl.checked_add(payload.len())?;
    let ulen = u16::try_from(UDP_HLEN + payload.len()).ok()?;
    let frame = buf.get_mut(..total)?;
    frame[0..6].copy_from_slice(&dst_mac);
    frame[6..12].copy_from_slice(&src_mac);
    let udp_off = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            frame[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
            let tot = u16::try_from(IPV4_HLEN + usize::from(ulen)).ok()?;
            let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV4_HLEN];
            ip[0] = 0x45;
            ip[1] = 0;
            ip[2..4].copy_from_slice(&tot.to_be_bytes());
            ip[4..6].copy_from_slice(&ip_id.to_be_bytes());
            ip[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
            ip[8] = DEFAULT_TTL;
            ip[9] = IPPROTO_UDP;
            ip[10..12].copy_from_slice(&[0, 0]);
            ip[12..16].copy_from_slice(&s.octets());
            ip[16..20].copy_from_slice(&d.octets());
            let c = checksum(ip);
            ip[10..12].copy_from_slice(&c.to_be_bytes());
            ETH_HLEN + IPV4_HLEN
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            frame[12..14].copy_from_slice(&ETH_P_IPV6.to_be_bytes());
            let ip = &mut frame[ETH_HLEN..ETH_HLEN + IPV6_HLEN];
            ip[0..4].copy_from_slice(&[0x60, 0, 0, 0]);
            ip[4..6].copy_from_slice(&ulen.to_be_bytes());
            ip[6] = IPPROTO_UDP;
            ip[7] = DEFAULT_TTL;
            ip[8..24].copy_from_slice(&s.octets());
            ip[24..40].copy_from_slice(&d.octets());
            ETH_HLEN + IPV6_HLEN
        }
        _ => return None,
    };
    {
        let udp = &mut frame[udp_off..udp_off + UDP_HLEN];
        udp[0..2].copy_from_slice(&src.port().to_be_bytes());
        udp[2..4].copy_from_slice(&dst.port().to_be_bytes());
        udp[4..6].copy_from_slice(&ulen.to_be_bytes());
        udp[6..8].copy_from_slice(&[0, 0]);
    }
    frame[udp_off + UDP_HLEN..].copy_from_slice(payload);
    // Pseudo-header + UDP header + payload.
    let mut acc = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
        _ => return None,
    };
    acc += u32::from(IPPROTO_UDP) + u32::from(ulen);
    let mut c = fold(sum16(&frame[udp_off..], acc));
    if c == 0 {
        c = 0xffff;
    }
    frame[udp_off + 6..udp_off + 8].copy_from_slice(&c.to_be_bytes());
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    #[test]
    fn written_v4_and_v6_frames_parse_back_with_valid_checksums() {
        for (s, d) in [
            (addr("10.0.0.1:5000"), addr("10.0.0.2:7946")),
            (addr("[fd00::1]:5000"), addr("[fd00::2]:7946")),
        ] {
            let mut buf = [0u8; 1600];
            let payload = b"hello mesh";
            let n = write_udp(&mut buf, [1; 6], [2; 6], s, d, payload, 7).unwrap_or(0);
            assert_eq!(n, header_len(&d) + payload.len());
            let v = parse_udp(&buf[..n]).expect("parses");
            assert_eq!((v.src, v.dst, v.payload), (s, d, &payload[..]));
            assert_eq!((v.src_mac, v.dst_mac), ([1; 6], [2; 6]));
            let udp_off = v.payload_offset - UDP_HLEN;
            // UDP checksum verifies to zero over pseudo-header + datagram.
            let (si, di) = match (s.ip(), d.ip()) {
                (IpAddr::V4(a), IpAddr::V4(b)) => (a.octets().to_vec(), b.octets().to_vec()),
                (IpAddr::V6(a), IpAddr::V6(b)) => (a.octets().to_vec(), b.octets().to_vec()),
                _ => unreachable!(),
            };
            let acc = sum16(&di, sum16(&si, 0)) + u32::from(IPPROTO_UDP) + (n - udp_off) as u32;
            assert_eq!(fold(sum16(&buf[udp_off..n], acc)), 0);
            if s.is_ipv4() {
                assert_eq!(checksum(&buf[ETH_HLEN..ETH_HLEN + IPV4_HLEN]), 0);
            }
        }
    }

    #[test]
    fn vlan_tags_are_skipped_and_lengths_are_checked() {
        let mut buf = [0u8; 1600];
        let n = write_udp(
            &mut buf,
            [1; 6],
            [2; 6],
            addr("1.2.3.4:1"),
            addr("5.6.7.8:2"),
            b"abc",
            0,
        )
        .unwrap_or(0);
        let mut tagged = buf[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        tagged.extend_from_slice(&buf[12..n]);
        assert_eq!(parse_udp(&tagged).map(|v| v.payload), Some(&b"abc"[..]));
        // UDP length one larger than the IP length says: rejected.
        let mut bad = buf[..n].to_vec();
        bad[ETH_HLEN + IPV4_HLEN + 5] += 1;
        assert_eq!(parse_udp(&bad), None);
        // Frame cut inside the payload: rejected.
        assert_eq!(parse_udp(&buf[..n - 1]), None);
        // Mixed families cannot be written.
        assert_eq!(
            write_udp(
                &mut buf,
                [0; 6],
                [0; 6],
                addr("1.2.3.4:1"),
                addr("[::1]:2"),
                b"",
                0
            ),
            None
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_udp(&bytes);
        }
    }
}
