//! Node-to-node control traffic over QUIC with mutual TLS, each node's
//! certificate bound to its Ed25519 node identity.
//!
//! # Trust model
//!
//! * A **mesh CA** ([`MeshCa`], an Ed25519 key and a self-signed certificate)
//!   is the only trust anchor. The operator keeps its key offline and issues
//!   one certificate per node with [`MeshCa::issue`].
//! * A node certificate's SubjectPublicKeyInfo **is** the node's Ed25519
//!   identity key, so the TLS 1.3 CertificateVerify signature made during the
//!   handshake proves possession of the identity key itself: the authenticated
//!   peer id ([`NodeId`]) is read from the verified certificate, never from
//!   anything the peer merely claims.
//! * Both sides must present a certificate that chains to the mesh CA, is
//!   within its validity window and holds an Ed25519 key; otherwise the
//!   handshake fails. A dialer may also pin the [`NodeId`] it expects.
//!
//! # Pieces
//!
//! * [`ca`]: the mesh CA, node certificates, the node key in PKCS#8 form.
//! * [`verify`]: the rustls client and server certificate verifiers.
//! * [`frame`]: the `u16` little-endian length prefix used on streams.
//! * [`endpoint`]: [`Transport`], the tokio/quinn endpoint: dial, accept,
//!   send, one bounded receive queue, peer events.
//!
//! Everything received from the network is treated as hostile: no panics,
//! bounded allocation (at most one frame of [`MAX_FRAME_LEN`] bytes per
//! stream read), drops are counted in [`TransportStats`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod ca;
pub mod endpoint;
mod error;
pub mod frame;
pub mod verify;

pub use ca::{MeshCa, node_id_from_seed, node_private_key};
pub use endpoint::{PeerConn, PeerEvent, Transport, TransportConfig, TransportStats};
pub use error::Error;
pub use frame::MAX_FRAME_LEN;
pub use rustls::pki_types::CertificateDer;
pub use verify::node_id_from_cert;

use std::fmt;

/// A node's identity on the mesh: its 32-byte Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lower-case hex of the 32 bytes (64 characters).
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        for b in self.0 {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", &self.to_hex()[..16])
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex()[..16])
    }
}

impl From<[u8; 32]> for NodeId {
    fn from(b: [u8; 32]) -> Self {
        NodeId(b)
    }
}

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
