//! The mesh control plane and the `meshd` daemon's building blocks.
//!
//! The driver side:
//! - [`node`]: start-up and the run-time driver of one node (fast path, core, links);
//! - [`frames`]: the mutual-TLS control frames (core messages with address hints);
//! - [`book`]: node id ↔ mesh address, hints never overriding handshakes;
//! - [`admission`]: the bounded set of origins the fast path admits;
//! - [`store`]: recent signed messages kept to answer grafts and pulls;
//! - [`xdp_backend`]: attaches XDP and starts the AF_XDP tiles.
//!
//! The service side (depends on no driver module):
//! - [`service`]: what a running node offers agents and exporters, and its types;
//! - [`api`]: the agent HTTP/JSON API and `/metrics`;
//! - [`metrics`]: metric names from `registry/` and the Prometheus exporter;
//! - [`otlp`]: OTLP export of every registry metric.
//!
//! And [`config`], the `meshd` configuration file.
#![deny(missing_docs)]

pub mod admission;
pub mod api;
pub mod book;
pub mod config;
pub mod enroll;
pub mod frames;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod service;
pub mod store;
pub mod xdp_backend;

/// Ids and addresses for unit tests.
#[cfg(test)]
mod testutil {
    use std::net::SocketAddr;

    use mesh_protocol::NodeId;

    /// A node id of 32 bytes `b`.
    pub(crate) fn id(b: u8) -> NodeId {
        NodeId([b; 32])
    }

    /// `10.0.0.1:p`.
    pub(crate) fn addr(p: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, 1], p))
    }
}
