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
//! * [`endpoint`]: [`Transport`], the tokio/quinn endpoint: dial, accept
//!   (with address validation, a handshake cap and rate, and a reserve for
//!   the node's own dials), send, receive, peer events.
//! * [`fair`]: the receive side, one bounded queue per peer served in turn.
//!
//! Everything received from the network is treated as hostile: no panics,
//! bounded allocation (at most one frame of [`MAX_FRAME_LEN`] bytes per
//! stream read), drops are counted in [`TransportStats`].
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod ca;
pub mod endpoint;
mod error;
pub mod fair;
pub mod frame;
pub mod verify;

pub use ca::{MeshCa, node_id_from_seed, node_private_key};
pub use endpoint::{PeerConn, PeerEvent, Transport, TransportConfig, TransportStats};
pub use error::Error;
pub use frame::MAX_FRAME_LEN;
pub use rustls::pki_types::CertificateDer;
pub use verify::node_id_from_cert;

/// A node's identity on the mesh: its 32-byte Ed25519 public key (the one id type every
/// mesh crate shares; `Display` is the full hex form).
pub use mesh_types::NodeId;

/// Result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
