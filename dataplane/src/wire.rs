//! The mesh datagram: a fixed 64-byte little-endian header, a payload, and the
//! origin's Ed25519 signature.
//!
//! ```text
//! offset  size  field          signed  notes
//!      0     4  magic          no      b"MSH1"; anything else is not ours
//!      4     1  hop_limit      no      decremented by every forwarder
//!      5     3  reserved       no      must be zero
//!      8     1  version        yes     WIRE_VERSION
//!      9     1  kind           yes     see [`Kind`]
//!     10     1  flags          yes     must be zero in version 1
//!     11     1  reserved       yes     must be zero
//!     12     2  payload_len    yes     bytes of payload that follow the header
//!     14     2  reserved       yes     must be zero
//!     16    32  origin         yes     origin's Ed25519 public key
//!     48     8  sequence       yes     origin's message counter
//!     56     8  timestamp_us   yes     origin's wall clock, µs since the Unix epoch
//!     64     n  payload        yes
//!   64+n    64  signature      -       Ed25519 over bytes [8, 64+n)
//! ```
//!
//! Only the first eight bytes are outside the signature, and of those only the
//! hop limit may change in flight; the reserved bytes must be zero so that a
//! forwarder cannot smuggle data past the signature. The XDP program in `ebpf/`
//! checks the same invariants (magic, version, lengths) with the constants
//! below, mirrored in `ebpf/include/mesh_wire.h`.
//!
//! A datagram never exceeds [`MAX_DATAGRAM`] bytes of UDP payload, which fits
//! the IPv6 minimum MTU (1280) with IPv6 and UDP headers, so nothing is ever
//! fragmented.

use sha2::{Digest, Sha256};
use zerocopy::byteorder::little_endian::{U16, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Magic bytes at offset 0 of every mesh datagram.
pub const MAGIC: [u8; 4] = *b"MSH1";
/// Wire format version this build speaks.
pub const WIRE_VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 64;
/// Size of the trailing Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;
/// Offset where the signed region starts.
pub const SIGNED_OFFSET: usize = 8;
/// Largest UDP payload a mesh datagram may have (IPv6 minimum MTU 1280 − 40 − 8).
pub const MAX_DATAGRAM: usize = 1232;
/// Largest payload that fits in one datagram.
pub const MAX_PAYLOAD: usize = MAX_DATAGRAM - HEADER_LEN - SIGNATURE_LEN;
/// Smallest well-formed datagram (empty payload).
pub const MIN_DATAGRAM: usize = HEADER_LEN + SIGNATURE_LEN;

/// What a datagram carries. Values are part of the wire format; a kind byte
/// this version does not know is [`DecodeError::BadKind`]. (Kinds 2 to 6
/// belonged to the retired peer-table control plane; membership and repair
/// now travel over mutual TLS, so they are `BadKind` too.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// An application message published by an agent: `[topic_len u8][topic][body]`.
    Data = 1,
}

impl Kind {
    /// Decodes a kind byte; `None` for values this version does not know.
    pub fn from_u8(v: u8) -> Option<Kind> {
        match v {
            1 => Some(Kind::Data),
            _ => None,
        }
    }
}

/// The fixed header, read in place from the receive buffer.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy, Debug)]
#[repr(C)]
pub struct Header {
    /// [`MAGIC`].
    pub magic: [u8; 4],
    /// Remaining hops; a node forwards only when this is above 1.
    pub hop_limit: u8,
    /// Must be zero.
    pub reserved0: [u8; 3],
    /// [`WIRE_VERSION`].
    pub version: u8,
    /// [`Kind`] as a byte.
    pub kind: u8,
    /// Must be zero in version 1.
    pub flags: u8,
    /// Must be zero.
    pub reserved1: u8,
    /// Payload bytes after the header.
    pub payload_len: U16,
    /// Must be zero.
    pub reserved2: U16,
    /// Origin's Ed25519 public key.
    pub origin: [u8; 32],
    /// Origin's per-key message counter.
    pub sequence: U64,
    /// Origin's wall clock at signing, microseconds since the Unix epoch.
    pub timestamp_us: U64,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_LEN);

/// Why a datagram was rejected by the decoder. Values match the `reason`
/// members of `mesh.dataplane.packets.dropped` in `registry/` and the XDP
/// program's counters where the two overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[repr(u8)]
pub enum DecodeError {
    /// Shorter than header + signature.
    #[error("datagram shorter than the {MIN_DATAGRAM}-byte minimum")]
    Truncated = 1,
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram longer than {MAX_DATAGRAM} bytes")]
    Oversized = 2,
    /// Magic bytes are not [`MAGIC`].
    #[error("bad magic")]
    BadMagic = 3,
    /// Version is not [`WIRE_VERSION`].
    #[error("unsupported wire version")]
    BadVersion = 4,
    /// Kind byte unknown.
    #[error("unknown message kind")]
    BadKind = 5,
    /// Reserved bytes or flags are not zero.
    #[error("reserved bytes or flags not zero")]
    BadReserved = 6,
    /// `payload_len` disagrees with the datagram length.
    #[error("payload length field disagrees with the datagram length")]
    LengthMismatch = 7,
}

/// A validated view of one datagram, borrowing the receive buffer. Built only
/// by [`Packet::parse`], so every accessor is in bounds.
#[derive(Clone, Copy, Debug)]
pub struct Packet<'a> {
    bytes: &'a [u8],
    header: &'a Header,
    kind: Kind,
}

impl<'a> Packet<'a> {
    /// Validates `bytes` as one mesh datagram without copying. Never panics.
    pub fn parse(bytes: &'a [u8]) -> Result<Packet<'a>, DecodeError> {
        if bytes.len() < MIN_DATAGRAM {
            return Err(DecodeError::Truncated);
        }
        if bytes.len() > MAX_DATAGRAM {
            return Err(DecodeError::Oversized);
        }
        let (header, _) = Header::ref_from_prefix(bytes).map_err(|_| DecodeError::Truncated)?;
        if header.magic != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        if header.version != WIRE_VERSION {
            return Err(DecodeError::BadVersion);
        }
        if header.reserved0 != [0; 3]
            || header.flags != 0
            || header.reserved1 != 0
            || header.reserved2.get() != 0
        {
            return Err(DecodeError::BadReserved);
        }
        let kind = Kind::from_u8(header.kind).ok_or(DecodeError::BadKind)?;
        if HEADER_LEN + usize::from(header.payload_len.get()) + SIGNATURE_LEN != bytes.len() {
            return Err(DecodeError::LengthMismatch);
        }
        Ok(Packet {
            bytes,
            header,
            kind,
        })
    }

    /// The whole datagram.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The fixed header.
    pub fn header(&self) -> &'a Header {
        self.header
    }

    /// Message kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Remaining hop count.
    pub fn hop_limit(&self) -> u8 {
        self.header.hop_limit
    }

    /// Origin public key bytes.
    pub fn origin(&self) -> &'a [u8; 32] {
        &self.header.origin
    }

    /// Origin's sequence number.
    pub fn sequence(&self) -> u64 {
        self.header.sequence.get()
    }

    /// Origin's timestamp, µs since the Unix epoch.
    pub fn timestamp_us(&self) -> u64 {
        self.header.timestamp_us.get()
    }

    /// Payload bytes.
    pub fn payload(&self) -> &'a [u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - SIGNATURE_LEN]
    }

    /// Bytes covered by the signature.
    pub fn signed_bytes(&self) -> &'a [u8] {
        &self.bytes[SIGNED_OFFSET..self.bytes.len() - SIGNATURE_LEN]
    }

    /// The 64-byte signature.
    pub fn signature(&self) -> &'a [u8; SIGNATURE_LEN] {
        let start = self.bytes.len() - SIGNATURE_LEN;
        // The slice is exactly SIGNATURE_LEN long because parse checked the
        // length, so the conversion cannot fail; fall back to a zero array
        // rather than panic to keep this function total.
        self.bytes[start..]
            .try_into()
            .unwrap_or(&[0u8; SIGNATURE_LEN])
    }

    /// Message id: derived from the signature, so the same signed message has
    /// the same id at every hop whatever its hop limit.
    pub fn message_id(&self) -> MsgId {
        message_id(self.signature())
    }
}

pub use mesh_types::MsgId;

/// Derives the id of the message carrying `signature`: the first half of
/// SHA-256 over it.
pub fn message_id(signature: &[u8; SIGNATURE_LEN]) -> MsgId {
    let digest = Sha256::digest(signature);
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    MsgId(id)
}

/// Errors building a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// Payload is larger than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    PayloadTooLarge(usize),
    /// Topic is longer than 255 bytes or empty.
    #[error("topic must be 1 to 255 bytes, got {0}")]
    BadTopic(usize),
}

/// The fields of a datagram before signing.
#[derive(Clone, Copy, Debug)]
pub struct Unsigned<'a> {
    /// Message kind.
    pub kind: Kind,
    /// Initial hop limit.
    pub hop_limit: u8,
    /// Origin public key.
    pub origin: [u8; 32],
    /// Origin's sequence number.
    pub sequence: u64,
    /// µs since the Unix epoch.
    pub timestamp_us: u64,
    /// Payload bytes.
    pub payload: &'a [u8],
}

impl Unsigned<'_> {
    /// Writes header and payload into `out` (cleared first). The caller signs
    /// `out[SIGNED_OFFSET..]` and appends the signature with [`finish`].
    pub fn write_unsigned(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.payload.len() > MAX_PAYLOAD {
            return Err(EncodeError::PayloadTooLarge(self.payload.len()));
        }
        let header = Header {
            magic: MAGIC,
            hop_limit: self.hop_limit,
            reserved0: [0; 3],
            version: WIRE_VERSION,
            kind: self.kind as u8,
            flags: 0,
            reserved1: 0,
            // Checked above: payload fits in u16.
            payload_len: U16::new(self.payload.len() as u16),
            reserved2: U16::new(0),
            origin: self.origin,
            sequence: U64::new(self.sequence),
            timestamp_us: U64::new(self.timestamp_us),
        };
        out.clear();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(self.payload);
        Ok(())
    }
}

/// Appends `signature` to a buffer produced by [`Unsigned::write_unsigned`].
pub fn finish(out: &mut Vec<u8>, signature: &[u8; SIGNATURE_LEN]) {
    out.extend_from_slice(signature);
}

/// Sets the hop limit of an encoded datagram in place (forwarding). Returns
/// false when `bytes` is too short to hold a header.
pub fn set_hop_limit(bytes: &mut [u8], hop_limit: u8) -> bool {
    match bytes.get_mut(4) {
        Some(b) => {
            *b = hop_limit;
            true
        }
        None => false,
    }
}

/// Builds a `Data` payload: `[topic_len u8][topic][body]`.
pub fn data_payload(topic: &str, body: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let t = topic.as_bytes();
    if t.is_empty() || t.len() > 255 {
        return Err(EncodeError::BadTopic(t.len()));
    }
    let total = 1 + t.len() + body.len();
    if total > MAX_PAYLOAD {
        return Err(EncodeError::PayloadTooLarge(total));
    }
    out.clear();
    out.push(t.len() as u8);
    out.extend_from_slice(t);
    out.extend_from_slice(body);
    Ok(())
}

/// Splits a `Data` payload into topic and body. `None` when the topic length
/// byte overruns the payload, the topic is empty, or it is not UTF-8.
pub fn split_data_payload(payload: &[u8]) -> Option<(&str, &[u8])> {
    let (&len, rest) = payload.split_first()?;
    let len = usize::from(len);
    if len == 0 || rest.len() < len {
        return None;
    }
    let topic = core::str::from_utf8(&rest[..len]).ok()?;
    Some((topic, &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Unsigned {
            kind: Kind::Data,
            hop_limit: 7,
            origin: [9; 32],
            sequence: 42,
            timestamp_us: 1_700_000_000_000_000,
            payload,
        }
        .write_unsigned(&mut out)
        .unwrap();
        finish(&mut out, &[0xAB; 64]);
        out
    }

    #[test]
    fn round_trip_reads_every_field_in_place() {
        let bytes = sample(b"\x03abchello");
        let p = Packet::parse(&bytes).unwrap();
        assert_eq!(p.kind(), Kind::Data);
        assert_eq!(p.hop_limit(), 7);
        assert_eq!(p.origin(), &[9; 32]);
        assert_eq!(p.sequence(), 42);
        assert_eq!(p.timestamp_us(), 1_700_000_000_000_000);
        assert_eq!(p.payload(), b"\x03abchello");
        assert_eq!(p.signature(), &[0xAB; 64]);
        assert_eq!(p.signed_bytes().len(), HEADER_LEN - SIGNED_OFFSET + 9);
        assert_eq!(
            split_data_payload(p.payload()),
            Some(("abc", &b"hello"[..]))
        );
        // Zero copies: the payload view points into the input buffer.
        assert_eq!(p.payload().as_ptr(), bytes[HEADER_LEN..].as_ptr());
    }

    #[test]
    fn each_malformation_has_its_own_reason() {
        let good = sample(b"xyz");
        assert_eq!(
            Packet::parse(&good[..MIN_DATAGRAM - 1]).unwrap_err(),
            DecodeError::Truncated
        );
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Packet::parse(&b).unwrap_err(), DecodeError::BadMagic);
        let mut b = good.clone();
        b[8] = 2;
        assert_eq!(Packet::parse(&b).unwrap_err(), DecodeError::BadVersion);
        // 0, the retired peer-table kinds 2..=6, and anything else
        for kind in [0u8, 2, 3, 4, 5, 6, 7, 99, 255] {
            let mut b = good.clone();
            b[9] = kind;
            assert_eq!(
                Packet::parse(&b).unwrap_err(),
                DecodeError::BadKind,
                "kind {kind}"
            );
        }
        for off in [5, 6, 7, 10, 11, 14, 15] {
            let mut b = good.clone();
            b[off] = 1;
            assert_eq!(
                Packet::parse(&b).unwrap_err(),
                DecodeError::BadReserved,
                "offset {off}"
            );
        }
        let mut b = good.clone();
        b[12] = 4;
        assert_eq!(Packet::parse(&b).unwrap_err(), DecodeError::LengthMismatch);
        let mut b = good.clone();
        b.push(0);
        assert_eq!(Packet::parse(&b).unwrap_err(), DecodeError::LengthMismatch);
        let big = vec![0u8; MAX_DATAGRAM + 1];
        assert_eq!(Packet::parse(&big).unwrap_err(), DecodeError::Oversized);
    }

    #[test]
    fn largest_payload_fits_and_one_more_byte_does_not() {
        let max = vec![1u8; MAX_PAYLOAD];
        assert_eq!(sample(&max).len(), MAX_DATAGRAM);
        let mut out = Vec::new();
        let err = Unsigned {
            kind: Kind::Data,
            hop_limit: 1,
            origin: [0; 32],
            sequence: 0,
            timestamp_us: 0,
            payload: &vec![0u8; MAX_PAYLOAD + 1],
        }
        .write_unsigned(&mut out)
        .unwrap_err();
        assert_eq!(err, EncodeError::PayloadTooLarge(MAX_PAYLOAD + 1));
    }

    #[test]
    fn message_id_ignores_hop_limit() {
        let mut a = sample(b"p");
        let id = Packet::parse(&a).unwrap().message_id();
        assert!(set_hop_limit(&mut a, 1));
        assert_eq!(Packet::parse(&a).unwrap().message_id(), id);
    }

    #[test]
    fn data_payload_rejects_bad_topics() {
        let mut out = Vec::new();
        assert_eq!(
            data_payload("", b"x", &mut out),
            Err(EncodeError::BadTopic(0))
        );
        assert_eq!(
            data_payload(&"t".repeat(256), b"x", &mut out),
            Err(EncodeError::BadTopic(256))
        );
        assert_eq!(split_data_payload(b""), None);
        assert_eq!(split_data_payload(b"\x05ab"), None);
        assert_eq!(split_data_payload(b"\x00ab"), None);
        assert_eq!(split_data_payload(b"\x02\xff\xfe"), None);
    }

    proptest! {
        #[test]
        fn parse_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            let _ = Packet::parse(&bytes);
        }

        #[test]
        fn mutated_valid_datagrams_never_panic_and_stay_consistent(
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
            cut in any::<usize>(),
        ) {
            let mut b = sample(&payload);
            for (i, v) in flips { let n = b.len(); b[i % n] ^= v; }
            b.truncate(cut % (b.len() + 1));
            if let Ok(p) = Packet::parse(&b) {
                prop_assert_eq!(HEADER_LEN + p.payload().len() + SIGNATURE_LEN, b.len());
                prop_assert_eq!(p.header().magic, MAGIC);
            }
        }

        #[test]
        fn encode_then_parse_round_trips(
            payload in proptest::collection::vec(any::<u8>(), 0..=MAX_PAYLOAD),
            hop in any::<u8>(), seq in any::<u64>(), ts in any::<u64>(),
        ) {
            let mut out = Vec::new();
            Unsigned { kind: Kind::Data, hop_limit: hop, origin: [3; 32], sequence: seq, timestamp_us: ts, payload: &payload }
                .write_unsigned(&mut out).unwrap();
            finish(&mut out, &[7; 64]);
            let p = Packet::parse(&out).unwrap();
            prop_assert_eq!(p.payload(), &payload[..]);
            prop_assert_eq!(p.sequence(), seq);
            prop_assert_eq!(p.timestamp_us(), ts);
            prop_assert_eq!(p.hop_limit(), hop);
        }
    }
}
