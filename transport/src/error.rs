//! The crate's error type. Each variant names what was being done.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::NodeId;

/// Errors of the mesh transport.
///
/// Variants marked *config* mean the caller's input or files are wrong;
/// *peer* variants mean the remote side failed or was refused; nothing here
/// means a bug in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Generating a key or signing a certificate failed (*config*: usually a
    /// validity window that cannot be encoded).
    #[error("{what}: {source}")]
    Cert {
        /// What was being done.
        what: &'static str,
        /// Cause.
        source: rcgen::Error,
    },
    /// A PEM or DER input could not be parsed or is inconsistent (*config*).
    #[error("{what}: {why}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// Reading or writing a file failed (*config*).
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A [`TransportConfig`](crate::TransportConfig) field is out of range (*config*).
    #[error("transport config field `{field}`: {why}")]
    Config {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// The node's own certificate does not fit its key or the CA (*config*).
    #[error("own node certificate: {0}")]
    OwnCertificate(String),
    /// Building the TLS configuration failed (*config*).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Binding the UDP socket failed (*config*: address in use, no permission).
    #[error("binding QUIC endpoint on {addr}: {source}")]
    Bind {
        /// Requested address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// The dial could not even start (*config*: bad address, endpoint closed).
    #[error("dialing {addr}: {source}")]
    Connect {
        /// Remote address.
        addr: SocketAddr,
        /// Cause.
        source: quinn::ConnectError,
    },
    /// The QUIC/TLS handshake failed (*peer*: unreachable, refused, or its
    /// certificate was rejected; the reason names the verifier's verdict).
    #[error("handshake with {addr} failed: {source}")]
    Handshake {
        /// Remote address.
        addr: SocketAddr,
        /// Cause.
        source: quinn::ConnectionError,
    },
    /// The handshake completed but the peer has no usable identity (*peer*).
    #[error("peer {addr} has no usable identity: {why}")]
    NoPeerIdentity {
        /// Remote address.
        addr: SocketAddr,
        /// What is missing.
        why: String,
    },
    /// The peer authenticated as a different node than the one pinned (*peer*).
    #[error("peer {addr} is node {got}, expected {expected}")]
    WrongPeer {
        /// Remote address.
        addr: SocketAddr,
        /// The pinned id.
        expected: NodeId,
        /// The authenticated id.
        got: NodeId,
    },
    /// A frame is larger than the configured maximum (*config*); nothing was sent.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Frame length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// There is no live connection to this peer (*peer*).
    #[error("no live connection to node {0}")]
    NotConnected(NodeId),
    /// Writing to the peer's stream failed; the connection is going away (*peer*).
    #[error("sending to node {peer}: {source}")]
    Send {
        /// Peer.
        peer: NodeId,
        /// Cause.
        source: quinn::WriteError,
    },
    /// Opening the outgoing stream failed (*peer*).
    #[error("opening stream to {addr}: {source}")]
    OpenStream {
        /// Remote address.
        addr: SocketAddr,
        /// Cause.
        source: quinn::ConnectionError,
    },
    /// Sending a datagram failed (too large, unsupported by the peer, or the
    /// connection is lost).
    #[error("datagram to node {peer}: {source}")]
    Datagram {
        /// Peer.
        peer: NodeId,
        /// Cause.
        source: quinn::SendDatagramError,
    },
    /// The connection limit is reached (*config*: raise `max_connections`).
    #[error("connection limit of {0} reached")]
    TooManyConnections(usize),
    /// The peer authenticated as this node itself (*config*: a seed or
    /// peer list names our own address).
    #[error("{addr} is this node itself")]
    SelfDial {
        /// Remote address.
        addr: SocketAddr,
    },
    /// The dial did not complete in time (*peer*: unreachable or silent).
    #[error("dialing {addr}: no confirmed connection within {after:?}")]
    Timeout {
        /// Remote address.
        addr: SocketAddr,
        /// The configured handshake timeout.
        after: std::time::Duration,
    },
    /// The peer broke the stream protocol (*peer*).
    #[error("peer {addr} broke the stream protocol: {why}")]
    Protocol {
        /// Remote address.
        addr: SocketAddr,
        /// What is wrong.
        why: String,
    },
}
