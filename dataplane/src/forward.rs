//! The forward decision: where a data message goes next.
//!
//! The control plane publishes a [`ForwardSet`] (its tree's or view's peers)
//! through an arc-swap; the tile reads a snapshot per batch and, for every
//! accepted data message with hops left, sends a copy with the hop limit
//! decremented to up to `fanout` of those peers ([`choose_peers`]), never
//! back to the sender. A local publish goes to the set's origin list. The
//! copies of one batch are sent together (`Forwarding::flush`).

use std::net::SocketAddr;

use rand::Rng;
use rand::rngs::SmallRng;

use crate::backend::TxSink;
use crate::pipeline::MAX_BATCH;
use crate::wire::{self, Packet};

/// Peers the tile forwards data messages to, published by the control plane.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ForwardSet {
    /// Addresses of live peers: where a received data message is forwarded.
    pub peers: Vec<SocketAddr>,
    /// Where a message this node publishes goes, if not `peers`: the rooted tree's origin
    /// pushes to every active neighbour, so a new message does not hang on one datagram
    /// while only its origin has it. Empty: `peers`.
    pub origin: Vec<SocketAddr>,
}

/// Largest fanout the forward decision supports.
pub const MAX_FANOUT: usize = 32;

/// Forward decision: fills `out` with up to `out.len()` distinct peers chosen
/// uniformly at random from `peers`, never `exclude` (the sender), and
/// returns how many it chose. No allocation; for up to 64 peers a bitmask
/// tracks what is taken, beyond that a bounded rejection loop does.
pub fn choose_peers<R: Rng>(
    rng: &mut R,
    peers: &[SocketAddr],
    exclude: Option<SocketAddr>,
    out: &mut [SocketAddr],
) -> usize {
    let n = peers.len();
    if n == 0 || out.is_empty() {
        return 0;
    }
    if n <= 64 {
        // Bit i set: peer i is taken (or is the sender).
        let mut taken: u64 = match exclude.and_then(|e| peers.iter().position(|p| *p == e)) {
            Some(i) => 1 << i,
            None => 0,
        };
        let k = out.len().min(n - taken.count_ones() as usize);
        for slot in out.iter_mut().take(k) {
            loop {
                // Lemire's multiply-shift: uniform index without division.
                let r = ((u64::from(rng.random::<u32>()) * n as u64) >> 32) as usize;
                if taken & (1 << r) == 0 {
                    taken |= 1 << r;
                    *slot = peers[r];
                    break;
                }
            }
        }
        return k;
    }
    let mut k = 0;
    let mut tries = 0;
    while k < out.len() && tries < 16 * out.len() {
        tries += 1;
        let p = peers[((u64::from(rng.random::<u32>()) * n as u64) >> 32) as usize];
        if Some(p) != exclude && !out[..k].contains(&p) {
            out[k] = p;
            k += 1;
        }
    }
    k
}

/// Reusable buffers and the draw for the forwarding of one batch, plus the
/// totals the tile publishes.
pub(crate) struct Forwarding {
    /// One datagram copy per forwarded message (hop limit rewritten).
    bufs: Vec<Vec<u8>>,
    /// Buffers in use this batch.
    used: usize,
    /// (destination, buffer index) pairs.
    tx: Vec<(SocketAddr, usize)>,
    /// Scratch for the forward decision.
    dests: [SocketAddr; MAX_FANOUT],
    /// Send list storage, recycled across batches.
    msgs: Vec<(SocketAddr, &'static [u8])>,
    /// Peers per message (at most [`MAX_FANOUT`]).
    fanout: usize,
    rng: SmallRng,
    /// Datagrams sent so far (one per destination).
    pub(crate) sent: u64,
    /// Datagrams the backend refused so far.
    pub(crate) failed: u64,
}

impl Forwarding {
    pub(crate) fn new(fanout: usize, rng: SmallRng) -> Forwarding {
        let fanout = fanout.min(MAX_FANOUT);
        let cap = MAX_BATCH * fanout.max(1);
        Forwarding {
            bufs: (0..MAX_BATCH)
                .map(|_| Vec::with_capacity(wire::MAX_DATAGRAM))
                .collect(),
            used: 0,
            tx: Vec::with_capacity(cap),
            dests: [SocketAddr::from(([0, 0, 0, 0], 0)); MAX_FANOUT],
            msgs: Vec::with_capacity(cap),
            fanout,
            rng,
            sent: 0,
            failed: 0,
        }
    }

    /// Queues an accepted message received from `from`: a message with hops
    /// left goes, hop limit − 1, to up to `fanout` of `peers` (never
    /// `from`). Sent by the next [`Forwarding::flush`].
    pub(crate) fn queue(&mut self, peers: &[SocketAddr], packet: &Packet<'_>, from: SocketAddr) {
        if packet.hop_limit() <= 1 {
            return;
        }
        let used = self.used;
        let Some(buf) = self.bufs.get_mut(used) else {
            return;
        };
        buf.clear();
        buf.extend_from_slice(packet.as_bytes());
        wire::set_hop_limit(buf, packet.hop_limit() - 1);
        let k = choose_peers(
            &mut self.rng,
            peers,
            Some(from),
            &mut self.dests[..self.fanout],
        );
        let dests = self.dests;
        self.tx.extend(dests[..k].iter().map(|d| (*d, used)));
        self.used += 1;
    }

    /// Sends a message this node sealed, now: to the set's origin list, or
    /// to up to `fanout` of its peers when the list is empty.
    pub(crate) fn publish<T: TxSink>(&mut self, set: &ForwardSet, bytes: &[u8], tx: &mut T) {
        let peers = if set.origin.is_empty() {
            &set.peers
        } else {
            &set.origin
        };
        let k = choose_peers(&mut self.rng, peers, None, &mut self.dests[..self.fanout]);
        let mut msgs = crate::pipeline::recycle(std::mem::take(&mut self.msgs));
        msgs.extend(self.dests[..k].iter().map(|d| (*d, bytes)));
        let sent = tx.send_batch(&msgs).unwrap_or(0);
        self.sent += sent as u64;
        self.failed += (msgs.len() - sent) as u64;
        self.msgs = crate::pipeline::recycle(msgs);
    }

    /// Sends what was queued.
    pub(crate) fn flush<T: TxSink>(&mut self, tx: &mut T) {
        if !self.tx.is_empty() {
            let mut msgs = crate::pipeline::recycle(std::mem::take(&mut self.msgs));
            msgs.extend(self.tx.iter().map(|(d, i)| (*d, &self.bufs[*i][..])));
            let sent = tx.send_batch(&msgs).unwrap_or(0);
            self.sent += sent as u64;
            self.failed += (msgs.len() - sent) as u64;
            self.msgs = crate::pipeline::recycle(msgs);
        }
        self.used = 0;
        self.tx.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn forward_choice_never_includes_the_sender_and_never_repeats() {
        let peers: Vec<SocketAddr> = (1..=8)
            .map(|i| SocketAddr::from(([127, 0, 0, i], 7000)))
            .collect();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0u32; 8];
        for _ in 0..1000 {
            let mut out = [peers[0]; 3];
            assert_eq!(choose_peers(&mut rng, &peers, Some(peers[2]), &mut out), 3);
            assert!(!out.contains(&peers[2]));
            let mut d = out.to_vec();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3);
            for p in out {
                counts[peers.iter().position(|x| *x == p).unwrap()] += 1;
            }
        }
        // Roughly uniform over the 7 eligible peers (3000 picks, ~428 each).
        assert_eq!(counts[2], 0);
        for (i, c) in counts.iter().enumerate().filter(|(i, _)| *i != 2) {
            assert!((300..560).contains(c), "peer {i} picked {c} times");
        }
        let mut out = [peers[0]; 5];
        assert_eq!(
            choose_peers(&mut rng, &peers[..2], Some(peers[0]), &mut out),
            1
        );
        assert_eq!(out[0], peers[1]);
        assert_eq!(choose_peers(&mut rng, &[], None, &mut out), 0);
        // Large peer sets take the rejection path.
        let many: Vec<SocketAddr> = (0..200u16)
            .map(|i| SocketAddr::from(([10, 0, (i >> 8) as u8, i as u8], 1)))
            .collect();
        let mut out = [many[0]; 8];
        assert_eq!(choose_peers(&mut rng, &many, Some(many[5]), &mut out), 8);
        assert!(!out.contains(&many[5]));
    }
}
