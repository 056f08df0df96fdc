//! The mesh control plane and the `meshd` daemon's building blocks.
//!
//! - [`node`]: the tokio driver of one node (tile, peers, store, API);
//! - [`peers`]: bootstrap, join, peer exchange and liveness (sans-IO);
//! - [`store`]: recent messages kept for anti-entropy repair;
//! - [`control`]: payloads of the control datagrams;
//! - [`api`]: the agent HTTP/JSON API and `/metrics`;
//! - [`metrics`]: metric names from `registry/` and the Prometheus exporter;
//! - [`otlp`]: OTLP export of every registry metric;
//! - [`overlay`]: glue for the protocol cores (frames with address hints, address book);
//! - [`config`]: the `meshd` configuration file.
#![deny(missing_docs)]

pub mod api;
pub mod config;
pub mod control;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod overlay;
pub mod peers;
pub mod store;
pub mod xdp_backend;
