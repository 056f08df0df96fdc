//! The mutual-TLS control frames between nodes, with no I/O (tested without sockets).
//!
//! The cores speak only in node ids. A frame carries one core [`Message`] plus *address
//! hints*: `(node id, mesh address)` for the ids the message names, so the receiver can reach
//! a node it just heard of (a `JoinAck` sample, a shuffle origin, a `PingReq` target). Hints
//! are not trusted: see [`crate::book::AddressBook`].
//!
//! ```text
//! frame = [FRAME_OVERLAY][hints u8 ≤ MAX_HINTS][hints × PEER_ENTRY_LEN][core message]
//!       | [FRAME_DATAGRAM][signed data datagram]        (graft / pull answers)
//!       | [FRAME_EVIDENCE][len u16 LE][datagram a][datagram b]   (equivocation evidence)
//! entry = [node id 32][family u8: 4 | 6][IPv6 or v4-mapped 16][port u16 LE]
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use mesh_protocol::{Message, NodeId};

/// First byte of a control frame carrying a protocol-core message.
pub const FRAME_OVERLAY: u8 = 0x10;
/// First byte of a control frame carrying one signed data datagram: a graft or pull answer
/// sent over mutual TLS. The sending member vouches for the message's origin (see
/// [`crate::admission::Admitted`]); the receiver's fast path screens it like any datagram.
pub const FRAME_DATAGRAM: u8 = 0x11;
/// First byte of a control frame carrying evidence of equivocation: two signed data
/// datagrams with one origin and sequence and different bodies.
pub const FRAME_EVIDENCE: u8 = 0x12;
/// Most address hints in one frame.
pub const MAX_HINTS: usize = 32;

/// Why an overlay frame was rejected (counted, never acted on).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not an overlay frame, or truncated before the message.
    #[error("not an overlay frame or truncated")]
    Malformed,
    /// A hint entry is malformed.
    #[error("bad address hint")]
    BadHint,
    /// The core message failed to decode.
    #[error("bad core message: {0}")]
    Message(#[from] mesh_protocol::DecodeError),
}

/// Bytes of one `(node id, address)` hint entry.
pub const PEER_ENTRY_LEN: usize = 32 + 1 + 16 + 2;

/// Appends one `(node id, address)` entry ([`PEER_ENTRY_LEN`] bytes).
fn encode_peer_entry(id: &[u8; 32], addr: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(id);
    let (fam, ip) = match addr.ip() {
        IpAddr::V4(v4) => (4u8, v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => (6u8, v6.octets()),
    };
    out.push(fam);
    out.extend_from_slice(&ip);
    out.extend_from_slice(&addr.port().to_le_bytes());
}

/// Decodes one entry; `e` must be [`PEER_ENTRY_LEN`] bytes.
fn decode_peer_entry(e: &[u8]) -> Result<([u8; 32], SocketAddr), FrameError> {
    if e.len() != PEER_ENTRY_LEN {
        return Err(FrameError::BadHint);
    }
    let mut id = [0u8; 32];
    id.copy_from_slice(&e[..32]);
    let mut ip = [0u8; 16];
    ip.copy_from_slice(&e[33..49]);
    let port = u16::from_le_bytes([e[49], e[50]]);
    let ip = match e[32] {
        4 => {
            let v6 = Ipv6Addr::from(ip);
            IpAddr::V4(v6.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED))
        }
        6 => IpAddr::V6(Ipv6Addr::from(ip)),
        _ => return Err(FrameError::BadHint),
    };
    Ok((id, SocketAddr::new(ip, port)))
}

/// Encodes `msg` with `hints` (at most [`MAX_HINTS`] kept) into `out` (cleared first).
pub fn encode_frame(hints: &[(NodeId, SocketAddr)], msg: &Message, out: &mut Vec<u8>) {
    out.clear();
    out.push(FRAME_OVERLAY);
    let n = hints.len().min(MAX_HINTS);
    out.push(n as u8);
    for (id, addr) in &hints[..n] {
        encode_peer_entry(id.as_bytes(), *addr, out);
    }
    msg.encode(out);
}

/// Decodes an overlay frame. Never panics and allocates at most [`MAX_HINTS`] hints plus what
/// the core's bounded decoder allows.
pub fn decode_frame(frame: &[u8]) -> Result<(Vec<(NodeId, SocketAddr)>, Message), FrameError> {
    let [FRAME_OVERLAY, n, rest @ ..] = frame else {
        return Err(FrameError::Malformed);
    };
    let n = usize::from(*n);
    if n > MAX_HINTS || rest.len() < n * PEER_ENTRY_LEN {
        return Err(FrameError::Malformed);
    }
    let (entries, msg) = rest.split_at(n * PEER_ENTRY_LEN);
    let mut hints = Vec::with_capacity(n);
    for e in entries.chunks_exact(PEER_ENTRY_LEN) {
        let (id, addr) = decode_peer_entry(e).map_err(|_| FrameError::BadHint)?;
        hints.push((NodeId(id), addr));
    }
    Ok((hints, Message::decode(msg)?))
}

/// An evidence frame holding datagrams `a` and `b`; `None` if either is larger than a
/// datagram may be.
pub fn encode_evidence(a: &[u8], b: &[u8]) -> Option<Vec<u8>> {
    let max = dataplane::wire::MAX_DATAGRAM;
    if a.len() > max || b.len() > max {
        return None;
    }
    let len = u16::try_from(a.len()).ok()?;
    let mut out = Vec::with_capacity(3 + a.len() + b.len());
    out.push(FRAME_EVIDENCE);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(a);
    out.extend_from_slice(b);
    Some(out)
}

/// The two datagrams of an evidence frame (not yet parsed or verified); `None` when the
/// frame is malformed or a datagram is over the size limit.
pub fn decode_evidence(frame: &[u8]) -> Option<(&[u8], &[u8])> {
    let [FRAME_EVIDENCE, l0, l1, rest @ ..] = frame else {
        return None;
    };
    let len = usize::from(u16::from_le_bytes([*l0, *l1]));
    let max = dataplane::wire::MAX_DATAGRAM;
    if len > rest.len() || len > max || rest.len() - len > max {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{addr, id};
    use mesh_protocol::{MemberState, wire::MemberUpdate};

    #[test]
    fn frames_round_trip_with_hints() {
        let msg = Message::PingReq {
            seq: 9,
            target: id(3),
            updates: vec![MemberUpdate {
                node: id(4),
                state: MemberState::alive(2),
                sig: [7; 64],
                accuser: None,
            }],
        };
        let hints = vec![
            (id(3), addr(7400)),
            (id(4), "[fd00::4]:7400".parse().unwrap()),
        ];
        let mut f = Vec::new();
        encode_frame(&hints, &msg, &mut f);
        assert_eq!(decode_frame(&f).unwrap(), (hints, msg));
    }

    #[test]
    fn evidence_frames_round_trip_and_reject_garbage() {
        let f = encode_evidence(b"first", b"second one").expect("fits");
        assert_eq!(
            decode_evidence(&f),
            Some((&b"first"[..], &b"second one"[..]))
        );
        assert_eq!(decode_evidence(&f[..2]), None);
        assert_eq!(decode_evidence(&[FRAME_EVIDENCE, 0xff, 0xff, 1, 2]), None);
        let big = vec![0u8; dataplane::wire::MAX_DATAGRAM + 1];
        assert!(encode_evidence(&big, b"x").is_none());
        for cut in 0..f.len() {
            let _ = decode_evidence(&f[..cut]);
        }
    }

    #[test]
    fn hostile_frames_are_rejected_not_panicked_on() {
        let mut f = Vec::new();
        encode_frame(&[(id(1), addr(1))], &Message::Prune, &mut f);
        for cut in 0..f.len() {
            assert!(decode_frame(&f[..cut]).is_err(), "prefix of {cut} bytes");
        }
        let mut over = vec![FRAME_OVERLAY, (MAX_HINTS + 1) as u8];
        over.resize(2 + (MAX_HINTS + 1) * PEER_ENTRY_LEN + 1, 0);
        assert_eq!(decode_frame(&over), Err(FrameError::Malformed));
        let mut bad_family = f.clone();
        bad_family[2 + 32] = 9;
        assert_eq!(decode_frame(&bad_family), Err(FrameError::BadHint));
        // every byte string: an error or a message, never a panic
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            let mut b: Vec<u8> = (0..len).map(|i| (x >> (i % 56)) as u8).collect();
            if let Some(first) = b.first_mut() {
                *first = FRAME_OVERLAY;
            }
            if b.len() > 1 {
                b[1] %= 3;
            }
            let _ = decode_frame(&b);
        }
    }
}
