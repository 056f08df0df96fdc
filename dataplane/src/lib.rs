//! The mesh data plane: everything a packet touches between the NIC and the
//! control plane.
//!
//! Layers, top-down (imports point downward):
//! - [`tile`]: the receive thread: owns a backend, runs the pipeline on every
//!   batch, hands accepted messages to the control plane, forwards;
//! - [`forward`]: the forward decision ([`forward::ForwardSet`],
//!   [`forward::choose_peers`]) and the batched sending of copies;
//! - [`pipeline`]: the stages every backend runs on a batch (parse → replay
//!   window → admission → dedup probe → verify → accepted), with a drop
//!   reason for every packet that does not make it;
//! - [`verify`]: Ed25519 signature verification of a batch, inline or on a
//!   pool of worker threads;
//! - [`dedup`]: the fixed-memory seen-cache;
//! - [`wire`]: the datagram format, read in place;
//! - [`identity`]: node keys;
//! - [`backend`]: the seam between the tile and what moves bytes, with two
//!   implementations: [`udp`] (`recvmmsg` / `sendmmsg`, portable) and
//!   [`xsk`] (AF_XDP, fed by the XDP program loaded by [`xdp`]);
//! - [`clock`]: the wall clock the wire format uses;
//! - [`profile`]: hardware profiles (ring sizes, busy polling).
#![deny(missing_docs)]

pub mod backend;
pub mod clock;
pub mod dedup;
pub mod forward;
pub mod identity;
pub mod pipeline;
pub mod profile;
pub mod tile;
pub mod udp;
pub mod verify;
pub mod wire;
pub mod xdp;
pub mod xsk;
