//! Sans-IO protocol cores of the mesh control plane.
//!
//! Pure state machines: events and time in, messages, events and timers out. No sockets,
//! clocks, tasks or global RNG (the RNG is a constructor argument), so the tokio driver, the
//! AF_XDP data plane's control hooks and the deterministic simulator (`mesh-sim`) all run the
//! same code.
//!
//! Layers, top-down:
//! - [`node`]: the composed [`Node`] the driver runs (`handle_*` in, `poll_*` out); it holds
//!   the cores below and routes messages, timers and commands between them.
//! - [`membership`]: SWIM failure detection with Lifeguard suspicion, `Nack`s and local health,
//!   over a bounded member table ([`membership::Swim`], one module per job).
//! - [`views`]: HyParView active/passive partial views (no node holds the full member list).
//! - [`gossip`]: Plumtree eager/lazy push with graft repair, retained store, push-pull
//!   anti-entropy; the eager set is the data plane's forwarding set.
//! - [`heal`]: member-state CRDT (a join-semilattice), the partition detector, heal probes.
//! - [`tree`]: the rooted breadth-first tree (beacons from the lowest live id) that is the
//!   eager set when enabled.
//! - [`topology`]: RTT estimates and near + random peer choice, rebalancing.
//! - [`wire`]: the [`Message`] enum and its bounded binary encoding.
//! - [`time`], [`id`]: `Instant`, `NodeId`, `MsgId`, re-exported from `mesh-types` (the same
//!   types the data plane, transport and control plane use).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod auth;
pub mod gossip;
pub mod heal;
pub mod id;
pub mod membership;
pub mod node;
pub mod time;
pub mod topology;
pub mod tree;
pub mod views;
pub mod wire;

pub use auth::{Authenticator, ModelAuth, Signature};
pub use gossip::Delivery;
pub use heal::{MemberState, PartitionStatus, Reachability, Status};
pub use id::{MsgId, NodeId};
pub use node::{BoxAuth, Command, CommandError, Event, Node, NodeConfig, NodeStats, NodeStatus};
pub use time::{Duration, Instant};
pub use wire::{DecodeError, Message};
