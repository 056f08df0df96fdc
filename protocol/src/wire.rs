//! The control-plane messages and their compact binary encoding.
//!
//! Layout: one tag byte, then fields in order; integers little-endian; node ids 32 raw bytes,
//! message ids 16; lists as a `u8` count followed by items; the gossip payload as a `u16` length followed by
//! bytes. Every list has a hard maximum ([`MAX_UPDATES`], [`MAX_IDS`], [`MAX_NODES`],
//! [`DIGEST_BUCKETS`], [`MAX_PAYLOAD`]) checked *before* allocating, so a hostile length field
//! cannot make the decoder allocate more than the datagram it was handed. Every encoded message
//! is at most [`MAX_ENCODED`] bytes (it travels inside the mesh's signed datagrams or QUIC
//! streams). [`Message::decode`] never panics and rejects trailing bytes.

use crate::auth::{SIGNATURE_LEN, Signature};
use crate::heal::{MemberState, Status};
use crate::id::{MsgId, NodeId};

/// Upper bound on the encoded size of any [`Message`].
pub const MAX_ENCODED: usize = 1100;
/// Most membership updates piggybacked on one SWIM message.
pub const MAX_UPDATES: usize = 10;
/// Most bytes of piggybacked updates in one SWIM message (10 self statements, or 5
/// accusations); the piggyback stops before it would exceed this.
pub const MAX_UPDATE_BYTES: usize = 10 * UPDATE_LEN;
/// Encoded size of a self statement (`Alive`/`Left`): node, incarnation, flags, signature.
pub const UPDATE_LEN: usize = 32 + 8 + 1 + SIGNATURE_LEN;
/// Encoded size of an accusation (`Suspect`/`Dead`): a self statement's fields plus the
/// accuser and its signature.
pub const ACCUSATION_LEN: usize = UPDATE_LEN + 32 + SIGNATURE_LEN;
/// Most message ids in one `IHave`, `Graft`, `SyncIds` or `Pull`.
pub const MAX_IDS: usize = 24;
/// Most node ids in one `JoinAck`, `Shuffle` or `ShuffleReply`.
pub const MAX_NODES: usize = 16;
/// Number of anti-entropy digest buckets (exactly this many hashes in a `SyncDigest`).
pub const DIGEST_BUCKETS: usize = 32;
/// Largest broadcast payload in bytes.
pub const MAX_PAYLOAD: usize = 1024;
/// Encoded size of a [`MsgId`].
const MSG_ID_LEN: usize = 16;
/// Encoded size of one `IHave` entry: the id and its `u16` round.
const IHAVE_ITEM_LEN: usize = MSG_ID_LEN + 2;

/// A signed membership fact gossiped by SWIM: `node` is in `state` (see
/// [`crate::membership::statement`] for what is signed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberUpdate {
    /// The member the fact is about.
    pub node: NodeId,
    /// Its incarnation and status (a lattice element, see [`crate::heal`]).
    pub state: MemberState,
    /// `Alive`/`Left`: `node`'s signature over the statement. `Suspect`/`Dead`: `node`'s
    /// signature over `Alive(incarnation)`, the proof that it reached that incarnation.
    pub sig: Signature,
    /// `Suspect`/`Dead` (and only those): the accuser and its signature over the
    /// accusation (Lifeguard counts distinct accusers as independent confirmations).
    pub accuser: Option<(NodeId, Signature)>,
}

impl MemberUpdate {
    /// Encoded size of this update.
    pub fn encoded_len(&self) -> usize {
        if self.accuser.is_some() {
            ACCUSATION_LEN
        } else {
            UPDATE_LEN
        }
    }
}

/// Every message the composed [`crate::Node`] sends or accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// SWIM direct probe (also used for suspect re-probes and partition-heal probes).
    Ping {
        /// Probe sequence number echoed in the `Ack`.
        seq: u32,
        /// Piggybacked membership updates (sender's own state first).
        updates: Vec<MemberUpdate>,
    },
    /// SWIM probe answer (sent to the prober directly, or relayed for an indirect probe).
    Ack {
        /// The sequence number of the probe being answered.
        seq: u32,
        /// Piggybacked membership updates.
        updates: Vec<MemberUpdate>,
    },
    /// SWIM indirect probe request: "ping `target` for me and relay its ack with `seq`".
    PingReq {
        /// The requester's probe sequence number.
        seq: u32,
        /// The node to probe.
        target: NodeId,
        /// Piggybacked membership updates.
        updates: Vec<MemberUpdate>,
    },
    /// HyParView: the sender asks to join through the receiver.
    Join,
    /// HyParView: random walk that places a joiner in active/passive views.
    ForwardJoin {
        /// The joining node.
        joiner: NodeId,
        /// Remaining walk length.
        ttl: u8,
    },
    /// HyParView: "I put you in my active view; here are some peers for your passive view".
    JoinAck {
        /// Passive-view sample.
        nodes: Vec<NodeId>,
    },
    /// HyParView: ask to become an active neighbour.
    Neighbor {
        /// High priority requests (empty active view, partition heal) are always accepted.
        high_priority: bool,
    },
    /// HyParView: answer to `Neighbor`.
    NeighborReply {
        /// Whether the receiver added the sender to its active view.
        accepted: bool,
    },
    /// HyParView: the sender dropped the receiver from its active view.
    Disconnect {
        /// `true` if the sender is leaving the mesh (drop it from the passive view too).
        leaving: bool,
    },
    /// HyParView: passive-view shuffle walk.
    Shuffle {
        /// The node that started the shuffle (the reply goes to it directly).
        origin: NodeId,
        /// Remaining walk length.
        ttl: u8,
        /// Sample of the origin's views.
        nodes: Vec<NodeId>,
    },
    /// HyParView: shuffle answer with a sample of the receiver's passive view.
    ShuffleReply {
        /// Passive-view sample.
        nodes: Vec<NodeId>,
    },
    /// Plumtree eager push (also answers `Graft` and `Pull`).
    Gossip {
        /// Message id.
        id: MsgId,
        /// Hops from the origin at the sender (the origin sends 0).
        round: u16,
        /// Opaque payload (the signed agent message).
        payload: Vec<u8>,
    },
    /// Plumtree lazy push: ids the sender has, each with the sender's hop count for it
    /// (lets the receiver switch to a shorter tree path).
    IHave {
        /// Announced `(id, round)` pairs.
        ids: Vec<(MsgId, u16)>,
    },
    /// Plumtree repair: send me these and make the link eager.
    Graft {
        /// Requested ids.
        ids: Vec<MsgId>,
    },
    /// Plumtree: make the link lazy (duplicate received).
    Prune,
    /// Lifeguard: the indirect probe asked with `seq` got no ack from its target in time.
    /// Tells the requester that this helper is alive and answering, so a missing `Nack`
    /// points at the requester's own health.
    Nack {
        /// The requester's probe sequence number.
        seq: u32,
    },
    /// Rooted tree: the sender's position in the dissemination tree (sent to every active
    /// neighbour when it changes, and with every new wave of the root's sequence number).
    Beacon {
        /// The root the sender follows (the lowest node id it knows to be live).
        root: NodeId,
        /// The root's wave number the sender has seen through its parent.
        seq: u32,
        /// The sender's hop distance from the root along the tree.
        hops: u16,
        /// The receiver is the sender's parent (so the sender is its child).
        child: bool,
        /// The root's signature over [`crate::tree::wave_statement`]`(root, seq)`: only the
        /// holder of `root`'s key can start a wave.
        sig: crate::auth::Signature,
    },
    /// Anti-entropy: per-bucket fingerprints of the retained message ids.
    SyncDigest {
        /// Exactly [`DIGEST_BUCKETS`] fingerprints.
        hashes: Vec<u64>,
    },
    /// Anti-entropy: the sender's ids in a bucket whose fingerprint differed.
    SyncIds {
        /// Bucket index (< [`DIGEST_BUCKETS`]).
        bucket: u8,
        /// `true` when this answers a `SyncIds` (no further answer is sent).
        reply: bool,
        /// Ids (possibly one page of several).
        ids: Vec<MsgId>,
    },
    /// Anti-entropy: send me these payloads (answered with `Gossip`, no tree change requested).
    Pull {
        /// Requested ids.
        ids: Vec<MsgId>,
    },
}

/// Why a byte string is not a valid [`Message`]. Decoding has no side effects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input ended inside a field.
    #[error("truncated message")]
    Truncated,
    /// The first byte names no message.
    #[error("unknown message tag {0}")]
    UnknownTag(u8),
    /// A list or payload length exceeds its maximum.
    #[error("length {0} over its limit")]
    TooLong(usize),
    /// A field holds a value outside its domain (status, bool, bucket).
    #[error("invalid field value")]
    InvalidValue,
    /// Bytes remain after a complete message.
    #[error("trailing bytes")]
    TrailingBytes,
}

struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated);
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::InvalidValue),
        }
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let mut a = [0u8; 2];
        a.copy_from_slice(self.take(2)?);
        Ok(u16::from_le_bytes(a))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let mut a = [0u8; 4];
        a.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(a))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn b32(&mut self) -> Result<[u8; 32], DecodeError> {
        let mut a = [0u8; 32];
        a.copy_from_slice(self.take(32)?);
        Ok(a)
    }
    fn msg_id(&mut self) -> Result<MsgId, DecodeError> {
        let mut a = [0u8; MSG_ID_LEN];
        a.copy_from_slice(self.take(MSG_ID_LEN)?);
        Ok(MsgId(a))
    }
    /// Reads a `u8` count, checks it against `max` and against the bytes left
    /// (`item` bytes each) before anything is allocated.
    fn count(&mut self, max: usize, item: usize) -> Result<usize, DecodeError> {
        let n = self.u8()? as usize;
        if n > max {
            return Err(DecodeError::TooLong(n));
        }
        if n * item > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        Ok(n)
    }
    fn sig(&mut self) -> Result<Signature, DecodeError> {
        let mut a = [0u8; SIGNATURE_LEN];
        a.copy_from_slice(self.take(SIGNATURE_LEN)?);
        Ok(a)
    }
    /// Updates: an accuser is present exactly for `Suspect`/`Dead`, and the list is at most
    /// [`MAX_UPDATE_BYTES`].
    fn updates(&mut self) -> Result<Vec<MemberUpdate>, DecodeError> {
        let n = self.count(MAX_UPDATES, UPDATE_LEN)?;
        let mut v = Vec::with_capacity(n);
        let mut bytes = 0;
        for _ in 0..n {
            let node = NodeId(self.b32()?);
            let incarnation = self.u64()?;
            let flags = self.u8()?;
            let status = Status::from_u8(flags & !ACCUSER_FLAG).ok_or(DecodeError::InvalidValue)?;
            let sig = self.sig()?;
            let accused = matches!(status, Status::Suspect | Status::Dead);
            if accused != (flags & ACCUSER_FLAG != 0) {
                return Err(DecodeError::InvalidValue);
            }
            let accuser = if accused {
                Some((NodeId(self.b32()?), self.sig()?))
            } else {
                None
            };
            let u = MemberUpdate {
                node,
                state: MemberState {
                    incarnation,
                    status,
                },
                sig,
                accuser,
            };
            bytes += u.encoded_len();
            if bytes > MAX_UPDATE_BYTES {
                return Err(DecodeError::TooLong(bytes));
            }
            v.push(u);
        }
        Ok(v)
    }
    fn nodes(&mut self) -> Result<Vec<NodeId>, DecodeError> {
        let n = self.count(MAX_NODES, 32)?;
        (0..n).map(|_| self.b32().map(NodeId)).collect()
    }
    fn ids(&mut self) -> Result<Vec<MsgId>, DecodeError> {
        let n = self.count(MAX_IDS, MSG_ID_LEN)?;
        (0..n).map(|_| self.msg_id()).collect()
    }
}

fn put_count(out: &mut Vec<u8>, len: usize, max: usize) -> usize {
    debug_assert!(len <= max, "list of {len} over wire limit {max}");
    let n = len.min(max);
    out.push(n as u8);
    n
}

/// Status-byte flag: the accuser and its signature follow the proof.
const ACCUSER_FLAG: u8 = 0x80;

/// How many of `u` go on the wire: at most [`MAX_UPDATES`] and [`MAX_UPDATE_BYTES`].
fn updates_that_fit(u: &[MemberUpdate]) -> usize {
    let mut bytes = 0;
    u.iter()
        .take(MAX_UPDATES)
        .take_while(|x| {
            bytes += x.encoded_len();
            bytes <= MAX_UPDATE_BYTES
        })
        .count()
}

fn put_updates(out: &mut Vec<u8>, u: &[MemberUpdate]) {
    let fit = updates_that_fit(u);
    debug_assert_eq!(fit, u.len(), "updates over the wire limit");
    let n = put_count(out, fit, MAX_UPDATES);
    for x in &u[..n] {
        out.extend_from_slice(&x.node.0);
        out.extend_from_slice(&x.state.incarnation.to_le_bytes());
        match x.accuser {
            Some((a, sig)) => {
                out.push(x.state.status as u8 | ACCUSER_FLAG);
                out.extend_from_slice(&x.sig);
                out.extend_from_slice(&a.0);
                out.extend_from_slice(&sig);
            }
            None => {
                out.push(x.state.status as u8);
                out.extend_from_slice(&x.sig);
            }
        }
    }
}

fn put_nodes(out: &mut Vec<u8>, u: &[NodeId]) {
    let n = put_count(out, u.len(), MAX_NODES);
    for x in &u[..n] {
        out.extend_from_slice(&x.0);
    }
}

fn put_ids(out: &mut Vec<u8>, u: &[MsgId]) {
    let n = put_count(out, u.len(), MAX_IDS);
    for x in &u[..n] {
        out.extend_from_slice(&x.0);
    }
}

impl Message {
    /// Every node id the message names (besides its sender and receiver): the ids a driver
    /// must be able to reach if the receiver acts on them (it attaches address hints for
    /// these). At most [`MAX_NODES`] + [`MAX_UPDATES`] + 1 ids, in message order.
    pub fn mentioned_nodes(&self) -> Vec<NodeId> {
        let ups = |u: &[MemberUpdate]| u.iter().map(|x| x.node).collect::<Vec<_>>();
        match self {
            Message::Ping { updates, .. } | Message::Ack { updates, .. } => ups(updates),
            Message::PingReq {
                target, updates, ..
            } => {
                let mut v = vec![*target];
                v.extend(ups(updates));
                v
            }
            Message::ForwardJoin { joiner, .. } => vec![*joiner],
            Message::JoinAck { nodes } | Message::ShuffleReply { nodes } => nodes.clone(),
            Message::Shuffle { origin, nodes, .. } => {
                let mut v = vec![*origin];
                v.extend_from_slice(nodes);
                v
            }
            _ => Vec::new(),
        }
    }

    /// Appends the encoding to `out`. Lists longer than their wire limit are truncated
    /// (the cores never build such lists; a debug build asserts).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Message::Ping { seq, updates } => {
                out.push(1);
                out.extend_from_slice(&seq.to_le_bytes());
                put_updates(out, updates);
            }
            Message::Ack { seq, updates } => {
                out.push(2);
                out.extend_from_slice(&seq.to_le_bytes());
                put_updates(out, updates);
            }
            Message::PingReq {
                seq,
                target,
                updates,
            } => {
                out.push(3);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&target.0);
                put_updates(out, updates);
            }
            Message::Join => out.push(4),
            Message::ForwardJoin { joiner, ttl } => {
                out.push(5);
                out.extend_from_slice(&joiner.0);
                out.push(*ttl);
            }
            Message::JoinAck { nodes } => {
                out.push(6);
                put_nodes(out, nodes);
            }
            Message::Neighbor { high_priority } => {
                out.push(7);
                out.push(*high_priority as u8);
            }
            Message::NeighborReply { accepted } => {
                out.push(8);
                out.push(*accepted as u8);
            }
            Message::Disconnect { leaving } => {
                out.push(9);
                out.push(*leaving as u8);
            }
            Message::Shuffle { origin, ttl, nodes } => {
                out.push(10);
                out.extend_from_slice(&origin.0);
                out.push(*ttl);
                put_nodes(out, nodes);
            }
            Message::ShuffleReply { nodes } => {
                out.push(11);
                put_nodes(out, nodes);
            }
            Message::Gossip { id, round, payload } => {
                out.push(12);
                out.extend_from_slice(&id.0);
                out.extend_from_slice(&round.to_le_bytes());
                debug_assert!(payload.len() <= MAX_PAYLOAD);
                let n = payload.len().min(MAX_PAYLOAD);
                out.extend_from_slice(&(n as u16).to_le_bytes());
                out.extend_from_slice(&payload[..n]);
            }
            Message::IHave { ids } => {
                out.push(13);
                let n = put_count(out, ids.len(), MAX_IDS);
                for (id, r) in &ids[..n] {
                    out.extend_from_slice(&id.0);
                    out.extend_from_slice(&r.to_le_bytes());
                }
            }
            Message::Graft { ids } => {
                out.push(14);
                put_ids(out, ids);
            }
            Message::Prune => out.push(15),
            Message::SyncDigest { hashes } => {
                out.push(16);
                debug_assert_eq!(hashes.len(), DIGEST_BUCKETS);
                for i in 0..DIGEST_BUCKETS {
                    let h = hashes.get(i).copied().unwrap_or(0);
                    out.extend_from_slice(&h.to_le_bytes());
                }
            }
            Message::SyncIds { bucket, reply, ids } => {
                out.push(17);
                out.push(*bucket);
                out.push(*reply as u8);
                put_ids(out, ids);
            }
            Message::Pull { ids } => {
                out.push(18);
                put_ids(out, ids);
            }
            Message::Nack { seq } => {
                out.push(19);
                out.extend_from_slice(&seq.to_le_bytes());
            }
            Message::Beacon {
                root,
                seq,
                hops,
                child,
                sig,
            } => {
                out.push(20);
                out.extend_from_slice(&root.0);
                out.extend_from_slice(&seq.to_le_bytes());
                out.extend_from_slice(&hops.to_le_bytes());
                out.push(*child as u8);
                out.extend_from_slice(sig);
            }
        }
    }

    /// The encoded length in bytes (what [`Message::encode`] appends).
    pub fn encoded_len(&self) -> usize {
        let upd = |u: &Vec<MemberUpdate>| {
            1 + u[..updates_that_fit(u)]
                .iter()
                .map(MemberUpdate::encoded_len)
                .sum::<usize>()
        };
        let nodes = |u: &Vec<NodeId>| 1 + 32 * u.len().min(MAX_NODES);
        let ids = |u: &Vec<MsgId>| 1 + MSG_ID_LEN * u.len().min(MAX_IDS);
        1 + match self {
            Message::Ping { updates, .. } | Message::Ack { updates, .. } => 4 + upd(updates),
            Message::PingReq { updates, .. } => 4 + 32 + upd(updates),
            Message::Join | Message::Prune => 0,
            Message::ForwardJoin { .. } => 33,
            Message::JoinAck { nodes: n } | Message::ShuffleReply { nodes: n } => nodes(n),
            Message::Neighbor { .. }
            | Message::NeighborReply { .. }
            | Message::Disconnect { .. } => 1,
            Message::Shuffle { nodes: n, .. } => 33 + nodes(n),
            Message::Gossip { payload, .. } => MSG_ID_LEN + 4 + payload.len().min(MAX_PAYLOAD),
            Message::IHave { ids: i } => 1 + IHAVE_ITEM_LEN * i.len().min(MAX_IDS),
            Message::Graft { ids: i } | Message::Pull { ids: i } => ids(i),
            Message::SyncDigest { .. } => 8 * DIGEST_BUCKETS,
            Message::SyncIds { ids: i, .. } => 2 + ids(i),
            Message::Nack { .. } => 4,
            Message::Beacon { .. } => 32 + 4 + 2 + 1 + crate::auth::SIGNATURE_LEN,
        }
    }

    /// Whether this message carries a broadcast payload (counted as a payload transmission).
    pub fn is_payload(&self) -> bool {
        matches!(self, Message::Gossip { .. })
    }

    /// Decodes one message from exactly `buf`. Never panics; allocates at most in proportion
    /// to `buf.len()`.
    pub fn decode(buf: &[u8]) -> Result<Message, DecodeError> {
        if buf.len() > MAX_ENCODED {
            return Err(DecodeError::TooLong(buf.len()));
        }
        let mut r = Reader { buf };
        let tag = r.u8()?;
        let m = match tag {
            1 => Message::Ping {
                seq: r.u32()?,
                updates: r.updates()?,
            },
            2 => Message::Ack {
                seq: r.u32()?,
                updates: r.updates()?,
            },
            3 => Message::PingReq {
                seq: r.u32()?,
                target: NodeId(r.b32()?),
                updates: r.updates()?,
            },
            4 => Message::Join,
            5 => Message::ForwardJoin {
                joiner: NodeId(r.b32()?),
                ttl: r.u8()?,
            },
            6 => Message::JoinAck { nodes: r.nodes()? },
            7 => Message::Neighbor {
                high_priority: r.bool()?,
            },
            8 => Message::NeighborReply {
                accepted: r.bool()?,
            },
            9 => Message::Disconnect { leaving: r.bool()? },
            10 => Message::Shuffle {
                origin: NodeId(r.b32()?),
                ttl: r.u8()?,
                nodes: r.nodes()?,
            },
            11 => Message::ShuffleReply { nodes: r.nodes()? },
            12 => {
                let id = r.msg_id()?;
                let round = r.u16()?;
                let n = r.u16()? as usize;
                if n > MAX_PAYLOAD {
                    return Err(DecodeError::TooLong(n));
                }
                Message::Gossip {
                    id,
                    round,
                    payload: r.take(n)?.to_vec(),
                }
            }
            13 => {
                let n = r.count(MAX_IDS, IHAVE_ITEM_LEN)?;
                let mut ids = Vec::with_capacity(n);
                for _ in 0..n {
                    ids.push((r.msg_id()?, r.u16()?));
                }
                Message::IHave { ids }
            }
            14 => Message::Graft { ids: r.ids()? },
            15 => Message::Prune,
            16 => {
                let mut hashes = Vec::with_capacity(DIGEST_BUCKETS);
                for _ in 0..DIGEST_BUCKETS {
                    hashes.push(r.u64()?);
                }
                Message::SyncDigest { hashes }
            }
            17 => {
                let bucket = r.u8()?;
                if bucket as usize >= DIGEST_BUCKETS {
                    return Err(DecodeError::InvalidValue);
                }
                Message::SyncIds {
                    bucket,
                    reply: r.bool()?,
                    ids: r.ids()?,
                }
            }
            18 => Message::Pull { ids: r.ids()? },
            19 => Message::Nack { seq: r.u32()? },
            20 => Message::Beacon {
                root: NodeId(r.b32()?),
                seq: r.u32()?,
                hops: r.u16()?,
                child: r.bool()?,
                sig: {
                    let mut sig = [0u8; crate::auth::SIGNATURE_LEN];
                    sig.copy_from_slice(r.take(crate::auth::SIGNATURE_LEN)?);
                    sig
                },
            },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        if !r.buf.is_empty() {
            return Err(DecodeError::TrailingBytes);
        }
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node() -> impl Strategy<Value = NodeId> {
        any::<[u8; 32]>().prop_map(NodeId)
    }
    fn mid() -> impl Strategy<Value = MsgId> {
        any::<[u8; 16]>().prop_map(MsgId)
    }
    fn update() -> impl Strategy<Value = MemberUpdate> {
        (node(), any::<u64>(), 0u8..4, node(), any::<u8>()).prop_map(
            |(node, incarnation, s, by, fill)| {
                let status = Status::from_u8(s).unwrap_or(Status::Alive);
                MemberUpdate {
                    node,
                    state: MemberState {
                        incarnation,
                        status,
                    },
                    sig: [fill; SIGNATURE_LEN],
                    accuser: matches!(status, Status::Suspect | Status::Dead)
                        .then_some((by, [fill ^ 0x55; SIGNATURE_LEN])),
                }
            },
        )
    }

    #[test]
    fn mentioned_nodes_names_every_id_a_receiver_may_contact() {
        let (a, b, c) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
        let up = |node| MemberUpdate {
            node,
            state: MemberState::alive(1),
            sig: [0; SIGNATURE_LEN],
            accuser: None,
        };
        let m = Message::PingReq {
            seq: 1,
            target: a,
            updates: vec![up(b)],
        };
        assert_eq!(m.mentioned_nodes(), vec![a, b]);
        let m = Message::Shuffle {
            origin: c,
            ttl: 2,
            nodes: vec![a, b],
        };
        assert_eq!(m.mentioned_nodes(), vec![c, a, b]);
        assert_eq!(
            Message::ForwardJoin { joiner: b, ttl: 3 }.mentioned_nodes(),
            vec![b]
        );
        assert!(Message::Prune.mentioned_nodes().is_empty());
    }

    fn message() -> impl Strategy<Value = Message> {
        let upd = || {
            proptest::collection::vec(update(), 0..=MAX_UPDATES).prop_map(|mut v| {
                v.truncate(updates_that_fit(&v));
                v
            })
        };
        let nodes = || proptest::collection::vec(node(), 0..=MAX_NODES);
        let ids = || proptest::collection::vec(mid(), 0..=MAX_IDS);
        prop_oneof![
            (any::<u32>(), upd()).prop_map(|(seq, updates)| Message::Ping { seq, updates }),
            (any::<u32>(), upd()).prop_map(|(seq, updates)| Message::Ack { seq, updates }),
            (any::<u32>(), node(), upd()).prop_map(|(seq, target, updates)| Message::PingReq {
                seq,
                target,
                updates
            }),
            Just(Message::Join),
            (node(), any::<u8>()).prop_map(|(joiner, ttl)| Message::ForwardJoin { joiner, ttl }),
            nodes().prop_map(|nodes| Message::JoinAck { nodes }),
            any::<bool>().prop_map(|high_priority| Message::Neighbor { high_priority }),
            any::<bool>().prop_map(|accepted| Message::NeighborReply { accepted }),
            any::<bool>().prop_map(|leaving| Message::Disconnect { leaving }),
            (node(), any::<u8>(), nodes()).prop_map(|(origin, ttl, nodes)| Message::Shuffle {
                origin,
                ttl,
                nodes
            }),
            nodes().prop_map(|nodes| Message::ShuffleReply { nodes }),
            (
                mid(),
                any::<u16>(),
                proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD)
            )
                .prop_map(|(id, round, payload)| Message::Gossip {
                    id,
                    round,
                    payload
                }),
            proptest::collection::vec((mid(), any::<u16>()), 0..=MAX_IDS)
                .prop_map(|ids| Message::IHave { ids }),
            ids().prop_map(|ids| Message::Graft { ids }),
            Just(Message::Prune),
            proptest::collection::vec(any::<u64>(), DIGEST_BUCKETS)
                .prop_map(|hashes| Message::SyncDigest { hashes }),
            (0u8..DIGEST_BUCKETS as u8, any::<bool>(), ids())
                .prop_map(|(bucket, reply, ids)| Message::SyncIds { bucket, reply, ids }),
            ids().prop_map(|ids| Message::Pull { ids }),
            any::<u32>().prop_map(|seq| Message::Nack { seq }),
            (
                node(),
                any::<u32>(),
                any::<u16>(),
                any::<bool>(),
                proptest::collection::vec(any::<u8>(), 64)
            )
                .prop_map(|(root, seq, hops, child, sig)| Message::Beacon {
                    root,
                    seq,
                    hops,
                    child,
                    sig: sig.try_into().expect("64 bytes"),
                }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips_within_the_size_limit(m in message()) {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            prop_assert!(buf.len() <= MAX_ENCODED, "{} bytes", buf.len());
            prop_assert_eq!(buf.len(), m.encoded_len());
            prop_assert_eq!(Message::decode(&buf), Ok(m));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1200)) {
            let _ = Message::decode(&bytes);
        }

        #[test]
        fn every_truncation_of_a_valid_message_is_rejected(m in message(), cut in any::<usize>()) {
            let mut buf = Vec::new();
            m.encode(&mut buf);
            let cut = cut % buf.len();
            prop_assert!(Message::decode(&buf[..cut]).is_err());
        }
    }

    #[test]
    fn message_ids_take_sixteen_bytes_on_the_wire() {
        let id = MsgId([7; 16]);
        let mut buf = Vec::new();
        Message::Gossip {
            id,
            round: 3,
            payload: vec![1, 2],
        }
        .encode(&mut buf);
        // tag, id, round, length, payload
        assert_eq!(buf.len(), 1 + 16 + 2 + 2 + 2);
        assert_eq!(&buf[1..17], &[7; 16]);
        buf.clear();
        Message::IHave {
            ids: vec![(id, 1), (id, 2)],
        }
        .encode(&mut buf);
        assert_eq!(buf.len(), 1 + 1 + 2 * 18);
        buf.clear();
        Message::Pull { ids: vec![id; 3] }.encode(&mut buf);
        assert_eq!(buf.len(), 1 + 1 + 3 * 16);
        // a count that promises more ids than the bytes that follow is cut short
        let mut p = vec![18u8, 2];
        p.extend_from_slice(&[0; 31]);
        assert_eq!(Message::decode(&p), Err(DecodeError::Truncated));
    }

    #[test]
    fn updates_carry_their_signatures_and_an_accuser_exactly_for_accusations() {
        let alive = MemberUpdate {
            node: NodeId([1; 32]),
            state: MemberState::alive(3),
            sig: [2; SIGNATURE_LEN],
            accuser: None,
        };
        let mut buf = Vec::new();
        Message::Ping {
            seq: 1,
            updates: vec![alive],
        }
        .encode(&mut buf);
        assert_eq!(buf.len(), 1 + 4 + 1 + UPDATE_LEN);
        // the status byte says Dead but no accuser follows: refused
        buf[1 + 4 + 1 + 32 + 8] = Status::Dead as u8;
        assert_eq!(Message::decode(&buf), Err(DecodeError::InvalidValue));
        // eleven self statements would exceed the byte budget: the encoder keeps ten, and
        // five accusations fill it
        let acc = MemberUpdate {
            state: MemberState {
                incarnation: 3,
                status: Status::Suspect,
            },
            accuser: Some((NodeId([4; 32]), [5; SIGNATURE_LEN])),
            ..alive
        };
        assert_eq!(updates_that_fit(&[alive; 11]), 10);
        assert_eq!(updates_that_fit(&[acc; 10]), 5);
        assert_eq!(updates_that_fit(&[acc, acc, acc, acc, alive, alive]), 6);
    }

    #[test]
    fn hostile_counts_are_rejected_before_allocation() {
        assert_eq!(Message::decode(&[13, 200]), Err(DecodeError::TooLong(200)));
        assert_eq!(Message::decode(&[13, 20]), Err(DecodeError::Truncated));
        assert_eq!(Message::decode(&[12]), Err(DecodeError::Truncated));
        assert_eq!(Message::decode(&[99]), Err(DecodeError::UnknownTag(99)));
        assert_eq!(Message::decode(&[15, 0]), Err(DecodeError::TrailingBytes));
        assert_eq!(Message::decode(&[7, 2]), Err(DecodeError::InvalidValue));
        let mut g = vec![12u8];
        g.extend_from_slice(&[0; 18]);
        g.extend_from_slice(&5000u16.to_le_bytes());
        assert_eq!(Message::decode(&g), Err(DecodeError::TooLong(5000)));
    }
}
