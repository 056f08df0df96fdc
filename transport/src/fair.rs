//! The receive side: one bounded queue per peer, served round-robin.
//!
//! Every frame or datagram received from a peer goes into **that peer's**
//! queue (one per authenticated [`NodeId`], shared by its at most
//! `max_links_per_peer` connections, so opening a second connection does
//! not double a peer's share). [`Transport::recv`](crate::Transport::recv)
//! takes one frame from the peer at the head of a ring of peers with frames
//! waiting and moves that peer to the back: with `k` peers waiting, a frame
//! at position `p` (from 0) of its peer's queue is handed out within
//! `k * (p + 1)` calls, however many frames the other peers have queued.
//! The ring counts frames, not bytes: what the consumer pays per frame
//! (decode, signature checks) is about the same for every frame, and bytes
//! are bounded by the per-peer byte cap.
//!
//! Limits ([`TransportConfig`](crate::TransportConfig) fields):
//!
//! * per peer: at most `peer_recv_queue` frames and `peer_recv_queue_bytes`
//!   payload bytes; beyond, a stream frame waits for room (its reader stops,
//!   and QUIC flow control stops the sender: frames of an ordered stream are
//!   never lost in the middle), a datagram is dropped and counted as
//!   `frames_dropped_peer_queue_full`. A flooding peer only ever fills its
//!   own queue and stalls only its own streams.
//! * in total: at most `recv_queue` frames and `recv_queue_bytes` bytes,
//!   except that a peer holding fewer than [`FLOOR_FRAMES`] frames and at
//!   most [`FLOOR_BYTES`] bytes (with the new frame) is always admitted (up
//!   to its own caps), so many flooding peers together still cannot lock out
//!   a quiet one; otherwise dropped and counted as
//!   `frames_dropped_total_queue_full`. Worst-case memory is therefore
//!   `recv_queue_bytes + FLOOR_BYTES x peers`.
//!
//! A peer's queue is freed as soon as it is empty: only peers with frames
//! waiting hold memory. Push and pop are O(1) under one short mutex.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use tokio::sync::Notify;

use crate::NodeId;

/// A peer with fewer frames than this queued is exempt from the total caps.
pub const FLOOR_FRAMES: usize = 8;
/// ... provided it holds at most this many bytes (with the new frame).
pub const FLOOR_BYTES: usize = 128 * 1024;

/// Caps of a [`FairQueue`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub peer_frames: usize,
    pub peer_bytes: usize,
    pub total_frames: usize,
    pub total_bytes: usize,
}

/// What [`FairQueue::push`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued for [`FairQueue::pop`].
    Queued,
    /// Dropped: the sender's own queue is at its frame or byte cap.
    PeerFull,
    /// Dropped: all queues together are at the total frame or byte cap.
    TotalFull,
}

struct PeerQueue {
    frames: VecDeque<(SocketAddr, Bytes)>,
    bytes: usize,
}

#[derive(Default)]
struct State {
    peers: HashMap<NodeId, PeerQueue>,
    /// Peers with frames waiting, each exactly once, next to serve first.
    ready: VecDeque<NodeId>,
    frames: usize,
    bytes: usize,
}

/// Per-peer bounded queues with a round-robin reader; see the module docs.
pub(crate) struct FairQueue {
    limits: Limits,
    state: Mutex<State>,
    /// Woken (one waiter, or a stored permit) on every queued frame.
    pub notify: Notify,
    /// Woken (every waiter) when a frame leaves a queue: stream readers waiting for room.
    space: Notify,
}

impl FairQueue {
    pub fn new(limits: Limits) -> Self {
        FairQueue {
            limits,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            space: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update below keeps the counts consistent before anything
        // that could panic, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queue `payload` from `peer`, or say why it was dropped.
    pub fn push(&self, peer: NodeId, addr: SocketAddr, payload: Bytes) -> Push {
        let len = payload.len();
        let l = self.limits;
        let mut guard = self.lock();
        let st = &mut *guard;
        let (queued, bytes) = st
            .peers
            .get(&peer)
            .map_or((0, 0), |q| (q.frames.len(), q.bytes));
        if queued >= l.peer_frames || bytes + len > l.peer_bytes {
            return Push::PeerFull;
        }
        let floor = queued < FLOOR_FRAMES && bytes + len <= FLOOR_BYTES;
        if !floor && (st.frames >= l.total_frames || st.bytes + len > l.total_bytes) {
            return Push::TotalFull;
        }
        let q = match st.peers.entry(peer) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                st.ready.push_back(peer);
                e.insert(PeerQueue {
                    frames: VecDeque::new(),
                    bytes: 0,
                })
            }
        };
        q.frames.push_back((addr, payload));
        q.bytes += len;
        st.frames += 1;
        st.bytes += len;
        drop(guard);
        self.notify.notify_one();
        Push::Queued
    }

    /// Queues a stream frame from `peer`, waiting while the caps leave no room for it
    /// (instead of dropping it). Returns whether it had to wait. An ordered, reliable
    /// stream must not lose a frame in its middle: the reader of that peer's stream stops
    /// instead, QUIC flow control then stops the sender, and the other peers' readers go
    /// on (their queues are their own). `on_wait` runs once, when it first has to wait.
    pub async fn push_wait(
        &self,
        peer: NodeId,
        addr: SocketAddr,
        payload: Bytes,
        on_wait: impl FnOnce(),
    ) -> bool {
        let mut waited = false;
        let mut on_wait = Some(on_wait);
        loop {
            let room = self.space.notified();
            tokio::pin!(room);
            // Registered before the attempt, so a pop in between is not missed.
            room.as_mut().enable();
            match self.push(peer, addr, payload.clone()) {
                Push::Queued => return waited,
                Push::PeerFull | Push::TotalFull => {
                    waited = true;
                    if let Some(f) = on_wait.take() {
                        f();
                    }
                    room.await;
                }
            }
        }
    }

    /// The next frame: one from the peer at the head of the ring, which
    /// then goes to the back if it has more.
    pub fn pop(&self) -> Option<(NodeId, SocketAddr, Bytes)> {
        let mut guard = self.lock();
        let st = &mut *guard;
        while let Some(peer) = st.ready.pop_front() {
            let Entry::Occupied(mut e) = st.peers.entry(peer) else {
                continue; // not reachable: ready and peers change together
            };
            let Some((addr, payload)) = e.get_mut().frames.pop_front() else {
                e.remove();
                continue;
            };
            let q = e.get_mut();
            q.bytes -= payload.len();
            if q.frames.is_empty() {
                e.remove();
            } else {
                st.ready.push_back(peer);
            }
            st.frames -= 1;
            st.bytes -= payload.len();
            drop(guard);
            self.space.notify_waiters();
            return Some((peer, addr, payload));
        }
        None
    }

    /// Frames and bytes queued now, all peers together.
    pub fn len(&self) -> (usize, usize) {
        let st = self.lock();
        (st.frames, st.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 32])
    }

    fn addr() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    fn q(peer_frames: usize, total_frames: usize) -> FairQueue {
        FairQueue::new(Limits {
            peer_frames,
            peer_bytes: 1 << 20,
            total_frames,
            total_bytes: 1 << 20,
        })
    }

    #[test]
    fn peers_are_served_in_turn_and_in_order() {
        let fq = q(100, 1000);
        for i in 0..50u8 {
            assert_eq!(fq.push(id(1), addr(), Bytes::from(vec![i])), Push::Queued);
        }
        for i in 0..3u8 {
            assert_eq!(fq.push(id(2), addr(), Bytes::from(vec![i])), Push::Queued);
            assert_eq!(fq.push(id(3), addr(), Bytes::from(vec![i])), Push::Queued);
        }
        let first: Vec<(u8, u8)> = (0..9)
            .map(|_| {
                let (p, _, b) = fq.pop().expect("frame");
                (p.0[0], b[0])
            })
            .collect();
        assert_eq!(
            first,
            [
                (1, 0),
                (2, 0),
                (3, 0),
                (1, 1),
                (2, 1),
                (3, 1),
                (1, 2),
                (2, 2),
                (3, 2)
            ]
        );
        for i in 3..50u8 {
            assert_eq!(fq.pop().map(|f| (f.0, f.2[0])), Some((id(1), i)));
        }
        assert!(fq.pop().is_none());
        assert_eq!(fq.len(), (0, 0));
    }

    #[test]
    fn a_full_peer_queue_drops_only_that_peer() {
        let fq = FairQueue::new(Limits {
            peer_frames: 4,
            peer_bytes: 10,
            total_frames: 1000,
            total_bytes: 1000,
        });
        for _ in 0..4 {
            assert_eq!(
                fq.push(id(1), addr(), Bytes::from_static(b"a")),
                Push::Queued
            );
        }
        assert_eq!(
            fq.push(id(1), addr(), Bytes::from_static(b"a")),
            Push::PeerFull
        );
        // Bytes cap: 6 + 5 > 10.
        assert_eq!(
            fq.push(id(2), addr(), Bytes::from(vec![0; 6])),
            Push::Queued
        );
        assert_eq!(
            fq.push(id(2), addr(), Bytes::from(vec![0; 5])),
            Push::PeerFull
        );
        assert_eq!(
            fq.push(id(3), addr(), Bytes::from_static(b"b")),
            Push::Queued
        );
        assert_eq!(fq.len(), (6, 11));
    }

    #[test]
    fn the_total_cap_spares_quiet_peers() {
        let fq = q(100, 20);
        for _ in 0..20 {
            assert_eq!(
                fq.push(id(1), addr(), Bytes::from_static(b"x")),
                Push::Queued
            );
        }
        assert_eq!(
            fq.push(id(1), addr(), Bytes::from_static(b"x")),
            Push::TotalFull
        );
        for _ in 0..FLOOR_FRAMES {
            assert_eq!(
                fq.push(id(2), addr(), Bytes::from_static(b"y")),
                Push::Queued
            );
        }
        assert_eq!(
            fq.push(id(2), addr(), Bytes::from_static(b"y")),
            Push::TotalFull
        );
    }
}
