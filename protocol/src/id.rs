//! Identities, shared with every mesh crate through `mesh-types`: [`NodeId`] (the 32-byte
//! Ed25519 public key) and [`MsgId`] (16 bytes of SHA-256 over a signed message's signature,
//! computed by the data plane). Both are opaque byte strings to the cores.

pub use mesh_types::{MsgId, NodeId};
