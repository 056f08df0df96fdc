//! Per-peer links over mutual TLS: in-order frame writers, frames held while a dial runs,
//! dials to known nodes (expecting their id) and to seeds (by address, to learn their id).
//!
//! Every frame to a peer goes through that peer's one writer task, which drains a bounded
//! queue onto the peer's ordered stream: a task per send could reorder frames, and the cores'
//! state messages (tree beacons, SWIM updates) must not arrive older-after-newer. Dials run as
//! tasks and report back through [`DialDone`], which the driver hands to [`Links::dial_done`].

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use mesh_protocol::{Instant, NodeId};
use mesh_transport::Transport;
use tokio::sync::mpsc;

use crate::metrics::label::OverlayFrameOutcome as Outcome;
use crate::service::Service;

/// Frames kept per node while its handshake runs.
const MAX_QUEUED: usize = 32;
/// Frames queued per peer writer; further ones are refused (counted `unsent`).
const FRAME_QUEUE: usize = 1024;
/// Peers with a writer task. Past this, idle writers are dropped (their tasks end), so the
/// map does not grow with every node ever contacted.
const MAX_WRITERS: usize = 4096;
/// Seed re-dial period while this node has no neighbour, and afterwards.
const SEED_RETRY_ISOLATED: std::time::Duration = std::time::Duration::from_secs(1);
const SEED_RETRY: std::time::Duration = std::time::Duration::from_secs(10);

/// Result of a dial.
pub(super) enum DialDone {
    /// A seed answered (with its id) or not.
    Seed(SocketAddr, Option<NodeId>),
    /// A dial to a known node finished (its mesh address, whether the handshake succeeded).
    Peer(NodeId, SocketAddr, bool),
}

/// What a finished dial means to the driver.
pub(super) enum Dialed {
    /// Nothing to do.
    Nothing,
    /// A seed's id is now known.
    Seed(NodeId, SocketAddr),
    /// A node's handshake succeeded at this address.
    Verified(NodeId, SocketAddr),
    /// A dial to this node failed: its hinted address was wrong or it is down.
    Failed(NodeId),
}

/// The QUIC address of a node's mesh address (port + 1).
pub(super) fn control_addr_of(data: SocketAddr) -> Option<SocketAddr> {
    data.port()
        .checked_add(1)
        .map(|p| SocketAddr::new(data.ip(), p))
}

/// The mesh (data) address of a node's QUIC address (port − 1).
pub(super) fn data_addr_of(control: SocketAddr) -> Option<SocketAddr> {
    control
        .port()
        .checked_sub(1)
        .filter(|p| *p != 0)
        .map(|p| SocketAddr::new(control.ip(), p))
}

/// Seeds from `node.bootstrap`: dialled by address until their id is known.
struct Seeds {
    addrs: Vec<SocketAddr>,
    ids: HashMap<SocketAddr, NodeId>,
    dialing: HashSet<SocketAddr>,
    next_dial: Instant,
}

/// The links to every peer.
pub(super) struct Links {
    transport: Arc<Transport>,
    service: Arc<Service>,
    writers: HashMap<NodeId, mpsc::Sender<Vec<u8>>>,
    queued: HashMap<NodeId, Vec<Vec<u8>>>,
    dialing: HashSet<NodeId>,
    dial_tx: mpsc::Sender<DialDone>,
    seeds: Seeds,
}

/// Starts the task that writes `to`'s frames in order; it ends at the first send error (the
/// connection is gone) and the next frame starts a new one.
fn spawn_frame_writer(tr: Arc<Transport>, to: NodeId) -> mpsc::Sender<Vec<u8>> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(FRAME_QUEUE);
    tokio::spawn(async move {
        while let Some(f) = rx.recv().await {
            if let Err(e) = tr.send(&to, &f).await {
                tracing::debug!(peer = %to, error = %e, "frame not sent");
                return;
            }
        }
    });
    tx
}

impl Links {
    /// Links over `transport`; dial results go to `dial_tx`.
    pub(super) fn new(
        transport: Arc<Transport>,
        service: Arc<Service>,
        seeds: Vec<SocketAddr>,
        dial_tx: mpsc::Sender<DialDone>,
    ) -> Self {
        Links {
            transport,
            service,
            writers: HashMap::new(),
            queued: HashMap::new(),
            dialing: HashSet::new(),
            dial_tx,
            seeds: Seeds {
                addrs: seeds,
                ids: HashMap::new(),
                dialing: HashSet::new(),
                next_dial: Instant::ZERO,
            },
        }
    }

    /// The mutual-TLS endpoint.
    pub(super) fn transport(&self) -> &Arc<Transport> {
        &self.transport
    }

    /// Counts frames by outcome (`mesh.overlay.frames`).
    pub(super) fn count(&self, outcome: Outcome, n: usize) {
        if n > 0 {
            self.service.metrics.frames(outcome).inc_by(n as u64);
        }
    }

    /// Sends `frame` to `to`: at once when connected, else after a dial to `addr` (the book's
    /// address for `to`) that must reach `to`'s id. Counted `unsent` when neither works.
    pub(super) fn send(&mut self, to: NodeId, addr: Option<SocketAddr>, frame: Vec<u8>) {
        if self.transport.is_connected(&to) {
            self.write(to, vec![frame]);
            return;
        }
        let Some(addr) = addr else {
            self.count(Outcome::Unsent, 1);
            return;
        };
        let q = self.queued.entry(to).or_default();
        if q.len() >= MAX_QUEUED {
            self.count(Outcome::Unsent, 1);
            return;
        }
        q.push(frame);
        if !self.dialing.insert(to) {
            return;
        }
        let Some(ctrl) = control_addr_of(addr) else {
            return;
        };
        let (tr, done) = (self.transport.clone(), self.dial_tx.clone());
        tokio::spawn(async move {
            let ok = match tr.connect(ctrl, Some(to)).await {
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(%ctrl, peer = %to, error = %e, "dial failed");
                    false
                }
            };
            let _ = done.send(DialDone::Peer(to, addr, ok)).await;
        });
    }

    /// Sends `frame` to `to` only if a connection is up (no dial); returns whether it was queued.
    pub(super) fn send_if_connected(&mut self, to: NodeId, frame: Vec<u8>) -> bool {
        if !self.transport.is_connected(&to) {
            return false;
        }
        self.write(to, vec![frame]);
        true
    }

    /// Hands frames to `to`'s writer, in order.
    fn write(&mut self, to: NodeId, frames: Vec<Vec<u8>>) {
        if frames.is_empty() {
            return;
        }
        if !self.writers.contains_key(&to) && self.writers.len() >= MAX_WRITERS {
            self.writers
                .retain(|_, q| !q.is_closed() && q.capacity() < FRAME_QUEUE);
        }
        let (mut sent, mut unsent) = (0, 0);
        for f in frames {
            let tr = &self.transport;
            let q = self
                .writers
                .entry(to)
                .or_insert_with(|| spawn_frame_writer(tr.clone(), to));
            let f = match q.try_send(f) {
                Ok(()) => {
                    sent += 1;
                    continue;
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    unsent += 1;
                    continue;
                }
                // the writer stopped after a send error: start a new one
                Err(mpsc::error::TrySendError::Closed(f)) => f,
            };
            let q = spawn_frame_writer(self.transport.clone(), to);
            match q.try_send(f) {
                Ok(()) => sent += 1,
                Err(_) => unsent += 1,
            }
            self.writers.insert(to, q);
        }
        self.count(Outcome::Sent, sent);
        self.count(Outcome::Unsent, unsent);
    }

    /// A dial finished: sends what waited for it and says what the driver should learn.
    pub(super) fn dial_done(&mut self, me: NodeId, d: DialDone) -> Dialed {
        match d {
            DialDone::Seed(addr, id) => {
                self.seeds.dialing.remove(&addr);
                let Some(id) = id else {
                    return Dialed::Nothing;
                };
                self.seeds.ids.insert(addr, id);
                if id == me {
                    return Dialed::Nothing; // our own address in the seed list
                }
                tracing::info!(seed = %addr, node = %id.short(), "seed answered");
                Dialed::Seed(id, addr)
            }
            DialDone::Peer(id, addr, ok) => {
                self.dialing.remove(&id);
                let frames = self.queued.remove(&id).unwrap_or_default();
                if ok {
                    self.write(id, frames);
                    Dialed::Verified(id, addr)
                } else {
                    self.count(Outcome::Unsent, frames.len());
                    Dialed::Failed(id)
                }
            }
        }
    }

    /// When seeds are next due for a dial (`Instant::MAX` once every seed answered).
    pub(super) fn next_seed_dial(&self) -> Instant {
        if self.seeds.ids.len() < self.seeds.addrs.len() {
            self.seeds.next_dial
        } else {
            Instant::MAX
        }
    }

    /// Dials the seeds whose id is not known yet, if due; sooner again while `isolated`.
    pub(super) fn dial_seeds_if_due(&mut self, now: Instant, isolated: bool) {
        if now < self.seeds.next_dial || self.seeds.ids.len() >= self.seeds.addrs.len() {
            return;
        }
        self.seeds.next_dial = now
            + if isolated {
                SEED_RETRY_ISOLATED
            } else {
                SEED_RETRY
            };
        for addr in self.seeds.addrs.clone() {
            if self.seeds.ids.contains_key(&addr) || !self.seeds.dialing.insert(addr) {
                continue;
            }
            let Some(ctrl) = control_addr_of(addr) else {
                continue;
            };
            let (tr, done) = (self.transport.clone(), self.dial_tx.clone());
            tokio::spawn(async move {
                let id = match tr.connect(ctrl, None).await {
                    Ok(c) => Some(c.node_id),
                    Err(e) => {
                        tracing::debug!(%ctrl, error = %e, "seed dial failed");
                        None
                    }
                };
                let _ = done.send(DialDone::Seed(addr, id)).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_transport::{MeshCa, TransportConfig, node_id_from_seed};
    use std::time::Duration;

    fn member(ca: &MeshCa, n: u8) -> Transport {
        let seed = [n; 32];
        let cert = ca
            .issue(node_id_from_seed(&seed).0, Duration::from_secs(600))
            .expect("issue");
        Transport::bind(
            "127.0.0.1:0".parse().expect("addr"),
            seed,
            cert,
            ca.cert_der().clone(),
            TransportConfig::default(),
        )
        .expect("bind")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peers_frame_writer_delivers_in_queue_order() {
        let ca = MeshCa::generate().expect("ca");
        let (a, b) = (Arc::new(member(&ca, 1)), member(&ca, 2));
        let b_id = b.node_id();
        a.connect(b.local_addr().expect("addr"), Some(b_id))
            .await
            .expect("connect");
        let q = spawn_frame_writer(a.clone(), b_id);
        for i in 0..500u32 {
            q.try_send(i.to_le_bytes().to_vec())
                .expect("queue has room");
        }
        for i in 0..500u32 {
            let (_, _, f) = tokio::time::timeout(Duration::from_secs(10), b.recv())
                .await
                .expect("in time")
                .expect("frame");
            assert_eq!(f[..], i.to_le_bytes(), "frame {i} out of order");
        }
    }

    #[test]
    fn control_and_data_ports_are_one_apart() {
        let d: SocketAddr = "10.0.0.1:7400".parse().expect("addr");
        let c = control_addr_of(d).expect("control");
        assert_eq!(c.port(), 7401);
        assert_eq!(data_addr_of(c), Some(d));
        assert_eq!(
            control_addr_of("10.0.0.1:65535".parse().expect("addr")),
            None
        );
        assert_eq!(data_addr_of("10.0.0.1:1".parse().expect("addr")), None);
    }
}
