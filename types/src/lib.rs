//! The vocabulary every mesh crate shares, so ids and times cross crate boundaries without
//! conversions:
//!
//! - [`NodeId`]: a node's identity, its 32-byte Ed25519 public key;
//! - [`MsgId`]: a signed message's id, 16 bytes derived from its signature;
//! - [`Instant`]: monotonic nanoseconds from an origin the driver chooses (the cores never read
//!   a clock; the simulator starts at zero and jumps);
//! - [`labels!`]: one definition for the small enums that label metrics (value, `ALL`,
//!   `COUNT`, `as_str`), whose names must match the registry.
//!
//! No dependencies: the sans-IO cores, the data plane and the transport all use it.

#![forbid(unsafe_code)]

mod id;
mod labels;
mod time;

pub use id::{MsgId, NodeId};
pub use time::{Duration, Instant, scale};
