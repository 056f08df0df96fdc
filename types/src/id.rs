//! [`NodeId`] and [`MsgId`].

use core::fmt;

fn write_hex(f: &mut impl fmt::Write, bytes: &[u8]) -> fmt::Result {
    for b in bytes {
        write!(f, "{b:02x}")?;
    }
    Ok(())
}

fn hex_string(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    // Writing into a String cannot fail.
    let _ = write_hex(&mut s, bytes);
    s
}

/// A node's identity: its 32-byte Ed25519 public key.
///
/// Cores never see addresses; drivers map `NodeId`s to sockets. `Display` is the full hex
/// form, `Debug` the first 8 hex characters (for logs).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex of the 32 bytes (64 characters).
    pub fn to_hex(&self) -> String {
        hex_string(&self.0)
    }

    /// First 8 hex characters, for logs.
    pub fn short(&self) -> String {
        hex_string(&self.0[..4])
    }
}

impl From<[u8; 32]> for NodeId {
    fn from(b: [u8; 32]) -> Self {
        NodeId(b)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("N")?;
        write_hex(f, &self.0[..4])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// A signed message's id: the first 16 bytes of SHA-256 over its signature (the data plane
/// derives it), so one signed message has one id at every hop whatever its hop limit.
///
/// Anti-entropy buckets by the first byte and fingerprints with bytes 8..16, so ids must be
/// uniformly distributed (a cryptographic hash is).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MsgId(pub [u8; 16]);

impl MsgId {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// Lower-case hex form (32 characters), as the agent API shows it.
    pub fn to_hex(&self) -> String {
        hex_string(&self.0)
    }
}

impl From<[u8; 16]> for MsgId {
    fn from(b: [u8; 16]) -> Self {
        MsgId(b)
    }
}

impl fmt::Debug for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("M")?;
        write_hex(f, &self.0[..4])
    }
}

impl fmt::Display for MsgId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_forms() {
        let mut b = [0u8; 32];
        b[0] = 0xab;
        b[31] = 0x01;
        let id = NodeId(b);
        assert_eq!(id.to_hex().len(), 64);
        assert!(id.to_hex().starts_with("ab000000"));
        assert!(id.to_hex().ends_with("01"));
        assert_eq!(id.short(), "ab000000");
        assert_eq!(format!("{id:?}"), "Nab000000");
        assert_eq!(format!("{id}"), id.to_hex());
        let m = MsgId([0x5a; 16]);
        assert_eq!(m.to_hex(), "5a".repeat(16));
        assert_eq!(format!("{m:?}"), "M5a5a5a5a");
    }
}
