//! Test frames: mesh datagrams wrapped in Ethernet (+VLAN) / IP / UDP.

use dataplane::wire::{self, Kind};
use dataplane::xsk::frame;
use std::net::SocketAddr;

/// Mesh UDP port used by the tests.
pub const PORT: u16 = 7946;

/// A well-formed (unsigned-content) mesh datagram with `payload_len` bytes.
pub fn datagram(kind: Kind, payload_len: usize, seq: u64) -> Vec<u8> {
    let payload = vec![0x5a; payload_len];
    let mut out = Vec::new();
    let r = wire::Unsigned {
        kind,
        hop_limit: 4,
        origin: [7; 32],
        sequence: seq,
        timestamp_us: 1,
        payload: &payload,
    }
    .write_unsigned(&mut out);
    assert!(r.is_ok(), "payload_len {payload_len} too large");
    wire::finish(&mut out, &[0xee; 64]);
    out
}

/// Ethernet frame from `src` to `dst` carrying `udp_payload`, with VLAN tags.
pub fn udp_frame(src: &str, dst: &str, vlans: &[u16], udp_payload: &[u8]) -> Vec<u8> {
    let src: SocketAddr = src.parse().expect("test address");
    let dst: SocketAddr = dst.parse().expect("test address");
    let mut buf = vec![0u8; 14 + 40 + 8 + udp_payload.len()];
    let n = frame::write_udp(
        &mut buf,
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        src,
        dst,
        udp_payload,
        1,
    )
    .expect("frame fits");
    buf.truncate(n);
    for (i, vid) in vlans.iter().enumerate() {
        let tpid: u16 = if i + 1 < vlans.len() { 0x88a8 } else { 0x8100 };
        let at = 12;
        let tag = [(tpid >> 8) as u8, tpid as u8, (vid >> 8) as u8, *vid as u8];
        buf.splice(at..at, tag);
    }
    buf
}

/// Offset of the UDP header in an untagged IPv4 frame.
pub const V4_UDP: usize = 14 + 20;
/// Offset of the UDP payload in an untagged IPv4 frame.
pub const V4_PAYLOAD: usize = V4_UDP + 8;
/// Offset of the UDP payload in an untagged IPv6 frame.
pub const V6_PAYLOAD: usize = 14 + 40 + 8;

/// Reference judgement: is this frame a well-formed mesh datagram to `PORT`
/// that the XDP program must let through to the socket?
pub fn well_formed(frame_bytes: &[u8]) -> bool {
    well_formed_for(frame_bytes, &[PORT])
}

/// [`well_formed`] with the mesh ports given.
pub fn well_formed_for(frame_bytes: &[u8], ports: &[u16]) -> bool {
    match frame::parse_udp(frame_bytes) {
        Some(v) => ports.contains(&v.dst.port()) && wire::Packet::parse(v.payload).is_ok(),
        None => false,
    }
}
