//! Glue between `meshd` and the sans-IO protocol cores ([`mesh_protocol::Node`]: SWIM with
//! Lifeguard suspicion, HyParView partial views, Plumtree, anti-entropy, partition healing).
//!
//! The cores speak only in node ids. This module holds what the driver adds around them and
//! that can be tested without sockets:
//!
//! - [`encode_frame`] / [`decode_frame`]: the mutual-TLS control frame that carries one core
//!   [`Message`] plus *address hints* — `(node id, mesh address)` for the ids the message
//!   names, so the receiver can reach a node it just heard of (a `JoinAck` sample, a shuffle
//!   origin, a `PingReq` target);
//! - [`AddressBook`]: node id ↔ mesh address. Addresses proven by a mutual-TLS handshake
//!   are *verified*; hints are not, and a hint never overwrites a verified address. A dial to
//!   a hinted address names the expected id, so a wrong hint fails the handshake and is
//!   forgotten;
//! - [`msg_id`] / [`data_id`]: the core's 32-byte [`MsgId`] for a data message's 16-byte id;
//! - [`Admitted`]: the bounded set of origins the fast path accepts data from.
//!
//! ```text
//! frame = [FRAME_OVERLAY][hints u8 ≤ MAX_HINTS][hints × PEER_ENTRY_LEN][core message]
//!       | [FRAME_DATAGRAM][signed data datagram]        (graft / pull answers)
//! ```

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;

use dataplane::wire::MessageId;
use mesh_protocol::{Message, MsgId, NodeId};

use crate::control::{PEER_ENTRY_LEN, decode_peer_entry, encode_peer_entry};

/// First byte of a control frame carrying a protocol-core message (the simple peer-table
/// mode's frames start with a datagram kind, 1..=6).
pub const FRAME_OVERLAY: u8 = 0x10;
/// First byte of a control frame carrying one signed data datagram: a graft or pull answer
/// sent over mutual TLS. The sending member vouches for the message's origin (see
/// [`Admitted`]); the receiver still checks the signature and the replay window.
pub const FRAME_DATAGRAM: u8 = 0x11;
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

/// The core's id of a data message: its 16-byte id, zero-padded. (Anti-entropy buckets by
/// byte 0 and fingerprints bytes 8..16, all inside the hash.)
pub fn msg_id(id: &MessageId) -> MsgId {
    let mut b = [0u8; 32];
    b[..16].copy_from_slice(&id.0);
    MsgId(b)
}

/// The data message id of a core id made by [`msg_id`].
pub fn data_id(id: &MsgId) -> MessageId {
    let mut b = [0u8; 16];
    b.copy_from_slice(&id.0[..16]);
    MessageId(b)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr: SocketAddr,
    verified: bool,
}

/// Node id ↔ mesh (data) address, bounded.
#[derive(Debug)]
pub struct AddressBook {
    by_id: HashMap<NodeId, Entry>,
    by_addr: HashMap<SocketAddr, NodeId>,
    capacity: usize,
    refused: u64,
}

impl AddressBook {
    /// An empty book holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        AddressBook {
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            capacity: capacity.max(1),
            refused: 0,
        }
    }

    /// The mesh address of `id`, if known.
    pub fn addr(&self, id: &NodeId) -> Option<SocketAddr> {
        self.by_id.get(id).map(|e| e.addr)
    }

    /// Whether `id`'s address was proven by a handshake.
    pub fn is_verified(&self, id: &NodeId) -> bool {
        self.by_id.get(id).is_some_and(|e| e.verified)
    }

    /// The node at mesh address `addr`, if known.
    pub fn id_at(&self, addr: &SocketAddr) -> Option<NodeId> {
        self.by_addr.get(addr).copied()
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// New entries refused because the book was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Records an address proven by a mutual-TLS handshake (replaces anything older: a node
    /// may come back on a new address).
    pub fn learn_verified(&mut self, id: NodeId, addr: SocketAddr) {
        self.insert(
            id,
            Entry {
                addr,
                verified: true,
            },
        );
    }

    /// Records a hint from a peer. Ignored when `id` already has an address (verified or
    /// hinted first: a later hint cannot redirect it). Returns whether it was recorded.
    pub fn learn_hint(&mut self, id: NodeId, addr: SocketAddr) -> bool {
        if self.by_id.contains_key(&id) {
            return false;
        }
        self.insert(
            id,
            Entry {
                addr,
                verified: false,
            },
        )
    }

    /// Forgets an unverified entry (its dial failed or reached another node).
    pub fn forget_hint(&mut self, id: &NodeId) {
        if let Some(e) = self.by_id.get(id)
            && !e.verified
        {
            let addr = e.addr;
            self.by_id.remove(id);
            if self.by_addr.get(&addr) == Some(id) {
                self.by_addr.remove(&addr);
            }
        }
    }

    fn insert(&mut self, id: NodeId, e: Entry) -> bool {
        if !self.by_id.contains_key(&id) && self.by_id.len() >= self.capacity {
            self.refused += 1;
            return false;
        }
        if let Some(old) = self.by_id.insert(id, e)
            && old.addr != e.addr
            && self.by_addr.get(&old.addr) == Some(&id)
        {
            self.by_addr.remove(&old.addr);
        }
        // Two ids on one address: the newest verified claim wins the reverse map.
        if e.verified || !self.by_addr.contains_key(&e.addr) {
            self.by_addr.insert(e.addr, id);
        }
        true
    }
}

/// Origins the fast path accepts data from: this node, every node that proved a CA-issued
/// certificate to it, and every node such a member named in a control message. Grows only
/// (a member declared dead may be back after a heal, and its messages from the split must
/// still pass), up to a bound; `dirty` says when to republish it to the fast path.
#[derive(Debug)]
pub struct Admitted {
    set: HashSet<[u8; 32]>,
    capacity: usize,
    dirty: bool,
    refused: u64,
}

impl Admitted {
    /// A set holding `me`, at most `capacity` ids.
    pub fn new(me: [u8; 32], capacity: usize) -> Self {
        Admitted {
            set: HashSet::from([me]),
            capacity: capacity.max(1),
            dirty: true,
            refused: 0,
        }
    }

    /// Admits `id` (no-op when present; counted and refused when full).
    pub fn admit(&mut self, id: &NodeId) {
        if self.set.contains(id.as_bytes()) {
            return;
        }
        if self.set.len() >= self.capacity {
            self.refused += 1;
            return;
        }
        self.set.insert(*id.as_bytes());
        self.dirty = true;
    }

    /// Whether `id` is admitted.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.set.contains(id.as_bytes())
    }

    /// Admitted ids.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is admitted (never true: this node always is).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Ids refused because the set was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// A copy to publish, if anything changed since the last call.
    pub fn take_snapshot(&mut self) -> Option<HashSet<[u8; 32]>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.set.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_protocol::{MemberState, wire::MemberUpdate};

    fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }
    fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], p))
    }

    #[test]
    fn frames_round_trip_with_hints() {
        let msg = Message::PingReq {
            seq: 9,
            target: id(3),
            updates: vec![MemberUpdate {
                node: id(4),
                state: MemberState::alive(2),
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

    #[test]
    fn ids_map_both_ways() {
        let d = MessageId([7; 16]);
        assert_eq!(data_id(&msg_id(&d)), d);
        assert_eq!(&msg_id(&d).0[16..], &[0u8; 16]);
    }

    #[test]
    fn a_hint_never_redirects_a_known_node() {
        let mut b = AddressBook::new(8);
        b.learn_verified(id(1), addr(1));
        assert!(!b.learn_hint(id(1), addr(666)));
        assert_eq!(b.addr(&id(1)), Some(addr(1)));
        assert!(b.learn_hint(id(2), addr(2)));
        assert!(!b.learn_hint(id(2), addr(667)), "first hint sticks");
        assert!(!b.is_verified(&id(2)));
        b.forget_hint(&id(2));
        assert_eq!(b.addr(&id(2)), None);
        assert_eq!(b.id_at(&addr(2)), None);
        b.forget_hint(&id(1));
        assert_eq!(b.addr(&id(1)), Some(addr(1)), "verified entries stay");
        // a node back on a new address: the old reverse entry goes
        b.learn_verified(id(1), addr(11));
        assert_eq!(b.id_at(&addr(1)), None);
        assert_eq!(b.id_at(&addr(11)), Some(id(1)));
    }

    #[test]
    fn the_book_and_the_admitted_set_are_bounded() {
        let mut b = AddressBook::new(2);
        b.learn_verified(id(1), addr(1));
        b.learn_verified(id(2), addr(2));
        assert!(!b.learn_hint(id(3), addr(3)));
        b.learn_verified(id(4), addr(4));
        assert_eq!((b.len(), b.refused()), (2, 2));
        let mut a = Admitted::new([0; 32], 2);
        assert!(a.take_snapshot().is_some());
        assert!(a.take_snapshot().is_none(), "clean after a snapshot");
        a.admit(&id(1));
        a.admit(&id(1));
        a.admit(&id(2));
        assert_eq!((a.len(), a.refused()), (2, 1));
        assert!(a.contains(&id(1)) && !a.contains(&id(2)));
        assert_eq!(a.take_snapshot().map(|s| s.len()), Some(2));
    }
}
