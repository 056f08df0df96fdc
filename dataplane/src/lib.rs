//! The mesh data plane: everything a packet touches between the NIC and the
//! control plane.
//!
//! Layers, top-down (imports point downward):
//! - [`pipeline`]: the stages every backend runs on a batch (parse → replay
//!   window → dedup probe → verify → deliver / forward decision), with a drop
//!   reason for every packet that does not make it;
//! - [`verify`]: Ed25519 signature verification of a batch;
//! - [`dedup`]: the fixed-memory seen-cache;
//! - [`wire`]: the datagram format, read in place;
//! - [`identity`]: node keys;
//! - [`udp`]: the portable UDP backend (`recvmmsg` / `sendmmsg`).
#![deny(missing_docs)]

pub mod dedup;
pub mod identity;
pub mod pipeline;
pub mod profile;
pub mod tile;
pub mod udp;
pub mod verify;
pub mod wire;
pub mod xdp;
pub mod xsk;
