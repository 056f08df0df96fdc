//! Payloads of the control datagrams (`Join`, `PeerList`, `IHave`, `IWant`,
//! `Leave`). They travel inside the same signed envelope as data messages, so
//! every control message is authenticated by its sender's node key.
//!
//! ```text
//! Join, Leave   empty
//! PeerList      count u8 (≤ 16), then count × [node id 32][family u8 4|6][ip 16][port u16 LE]
//! IHave, IWant  count u8 (≤ 64), then count × [message id 16]
//! ```
//! Decoding never allocates more than the bounds above and never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use dataplane::identity::NodeId;
use dataplane::wire::{Kind, MessageId};

/// Most entries in one `PeerList`.
pub const MAX_PEERS_PER_LIST: usize = 16;
/// Most ids in one `IHave` / `IWant`.
pub const MAX_IDS_PER_DIGEST: usize = 64;
/// Bytes of one `(node id, address)` entry: id 32, family 1, IPv6-mapped address 16, port 2.
pub const PEER_ENTRY_LEN: usize = 32 + 1 + 16 + 2;

/// Appends one `(node id, address)` entry ([`PEER_ENTRY_LEN`] bytes).
pub fn encode_peer_entry(id: &[u8; 32], addr: SocketAddr, out: &mut Vec<u8>) {
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
pub fn decode_peer_entry(e: &[u8]) -> Result<([u8; 32], SocketAddr), ControlDecodeError> {
    if e.len() != PEER_ENTRY_LEN {
        return Err(ControlDecodeError::BadLength);
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
        _ => return Err(ControlDecodeError::BadFamily),
    };
    Ok((id, SocketAddr::new(ip, port)))
}

/// A decoded control payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ControlMsg {
    /// Hello / heartbeat.
    Join,
    /// Peers the sender knows.
    PeerList(Vec<(NodeId, SocketAddr)>),
    /// Ids the sender holds.
    IHave(Vec<MessageId>),
    /// Ids the sender asks for.
    IWant(Vec<MessageId>),
    /// The sender is leaving.
    Leave,
}

/// Why a control payload was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ControlDecodeError {
    /// Not a control kind.
    #[error("not a control message kind")]
    NotControl,
    /// Length does not match the count, or the count is over its bound.
    #[error("control payload length or count out of bounds")]
    BadLength,
    /// Unknown address family byte.
    #[error("unknown address family")]
    BadFamily,
}

impl ControlMsg {
    /// The datagram kind carrying this message.
    pub fn kind(&self) -> Kind {
        match self {
            ControlMsg::Join => Kind::Join,
            ControlMsg::PeerList(_) => Kind::PeerList,
            ControlMsg::IHave(_) => Kind::IHave,
            ControlMsg::IWant(_) => Kind::IWant,
            ControlMsg::Leave => Kind::Leave,
        }
    }

    /// Encodes the payload into `out` (cleared first). Lists longer than
    /// their bound are truncated to it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        match self {
            ControlMsg::Join | ControlMsg::Leave => {}
            ControlMsg::PeerList(peers) => {
                let n = peers.len().min(MAX_PEERS_PER_LIST);
                out.push(n as u8);
                for (id, addr) in &peers[..n] {
                    encode_peer_entry(&id.0, *addr, out);
                }
            }
            ControlMsg::IHave(ids) | ControlMsg::IWant(ids) => {
                let n = ids.len().min(MAX_IDS_PER_DIGEST);
                out.push(n as u8);
                for id in &ids[..n] {
                    out.extend_from_slice(&id.0);
                }
            }
        }
    }

    /// Decodes the payload of a datagram of `kind`.
    pub fn decode(kind: Kind, payload: &[u8]) -> Result<ControlMsg, ControlDecodeError> {
        match kind {
            Kind::Data => Err(ControlDecodeError::NotControl),
            Kind::Join | Kind::Leave => {
                if !payload.is_empty() {
                    return Err(ControlDecodeError::BadLength);
                }
                Ok(if kind == Kind::Join {
                    ControlMsg::Join
                } else {
                    ControlMsg::Leave
                })
            }
            Kind::PeerList => {
                let (&n, rest) = payload.split_first().ok_or(ControlDecodeError::BadLength)?;
                let n = usize::from(n);
                if n > MAX_PEERS_PER_LIST || rest.len() != n * PEER_ENTRY_LEN {
                    return Err(ControlDecodeError::BadLength);
                }
                let mut peers = Vec::with_capacity(n);
                for e in rest.chunks_exact(PEER_ENTRY_LEN) {
                    let (id, addr) = decode_peer_entry(e)?;
                    peers.push((NodeId(id), addr));
                }
                Ok(ControlMsg::PeerList(peers))
            }
            Kind::IHave | Kind::IWant => {
                let (&n, rest) = payload.split_first().ok_or(ControlDecodeError::BadLength)?;
                let n = usize::from(n);
                if n > MAX_IDS_PER_DIGEST || rest.len() != n * 16 {
                    return Err(ControlDecodeError::BadLength);
                }
                let ids = rest
                    .chunks_exact(16)
                    .map(|c| {
                        let mut id = [0u8; 16];
                        id.copy_from_slice(c);
                        MessageId(id)
                    })
                    .collect();
                Ok(if kind == Kind::IHave {
                    ControlMsg::IHave(ids)
                } else {
                    ControlMsg::IWant(ids)
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips() {
        let peers = vec![
            (NodeId([1; 32]), "127.0.0.5:7400".parse().unwrap()),
            (NodeId([2; 32]), "[::1]:9".parse().unwrap()),
        ];
        for m in [
            ControlMsg::Join,
            ControlMsg::Leave,
            ControlMsg::PeerList(peers),
            ControlMsg::IHave(vec![MessageId([7; 16]); 64]),
            ControlMsg::IWant(vec![MessageId([8; 16])]),
        ] {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            assert!(buf.len() <= dataplane::wire::MAX_PAYLOAD);
            assert_eq!(ControlMsg::decode(m.kind(), &buf).unwrap(), m);
        }
    }

    #[test]
    fn counts_over_the_bound_and_bad_lengths_are_rejected() {
        let mut p = vec![65u8];
        p.extend(std::iter::repeat_n(0u8, 65 * 16));
        assert_eq!(
            ControlMsg::decode(Kind::IHave, &p),
            Err(ControlDecodeError::BadLength)
        );
        assert_eq!(
            ControlMsg::decode(Kind::IWant, &[2, 0, 0]),
            Err(ControlDecodeError::BadLength)
        );
        assert_eq!(
            ControlMsg::decode(Kind::PeerList, &[]),
            Err(ControlDecodeError::BadLength)
        );
        assert_eq!(
            ControlMsg::decode(Kind::Join, &[1]),
            Err(ControlDecodeError::BadLength)
        );
        let mut e = vec![1u8];
        e.extend([0u8; PEER_ENTRY_LEN]);
        e[33] = 9;
        assert_eq!(
            ControlMsg::decode(Kind::PeerList, &e),
            Err(ControlDecodeError::BadFamily)
        );
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut x: u32 = 12345;
        for len in 0..1200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    (x >> 16) as u8
                })
                .collect();
            for kind in [
                Kind::Join,
                Kind::PeerList,
                Kind::IHave,
                Kind::IWant,
                Kind::Leave,
            ] {
                let _ = ControlMsg::decode(kind, &bytes);
            }
        }
    }
}
