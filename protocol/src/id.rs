//! Identities: [`NodeId`] (the Ed25519 public key in the real node) and [`MsgId`] (a hash of a
//! signed broadcast, computed by the driver). Both are opaque 32-byte strings to the cores.

use core::fmt;

/// A node's identity: 32 bytes, the Ed25519 public key in the real mesh.
///
/// Cores never see addresses; the driver maps `NodeId`s to sockets.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 32]);

impl From<[u8; 32]> for NodeId {
    fn from(b: [u8; 32]) -> Self {
        NodeId(b)
    }
}

impl NodeId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "N")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A broadcast message id: 32 bytes, a hash of the signed message (the driver computes it).
///
/// Anti-entropy buckets by the first byte and fingerprints with bytes 8..16, so ids must be
/// uniformly distributed (any cryptographic hash is).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MsgId(pub [u8; 32]);

impl From<[u8; 32]> for MsgId {
    fn from(b: [u8; 32]) -> Self {
        MsgId(b)
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "M")?;
        for b in &self.0[..4] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}
