//! Dissemination of membership updates: a bounded queue of facts piggybacked on SWIM's own
//! messages (`Ping`, `Ack`, `PingReq`), each sent `lambda * ceil(log2 n)` times.

use crate::wire::{MAX_UPDATE_BYTES, MAX_UPDATES, MemberUpdate};

/// Updates waiting to be piggybacked, each with the transmissions it has left.
#[derive(Clone, Debug)]
pub(crate) struct UpdateQueue {
    pending: Vec<(MemberUpdate, u32)>,
    retransmit_mult: u32,
    max: usize,
}

impl UpdateQueue {
    /// An empty queue holding at most `max` updates, each sent `retransmit_mult * log2 n`
    /// times.
    pub(crate) fn new(retransmit_mult: u32, max: usize) -> Self {
        UpdateQueue {
            pending: Vec::new(),
            retransmit_mult,
            max,
        }
    }

    /// Queues `u` for `lambda * ceil(log2(n + 1))` transmissions, replacing any queued update
    /// about the same member. When full, the update with the fewest transmissions left goes.
    pub(crate) fn enqueue(&mut self, u: MemberUpdate, n: u64) {
        let times = self.retransmit_mult * (64 - n.max(1).leading_zeros()).max(1);
        if let Some(e) = self.pending.iter_mut().find(|(x, _)| x.node == u.node) {
            *e = (u, times);
            return;
        }
        if self.pending.len() >= self.max
            && let Some(i) = self
                .pending
                .iter()
                .enumerate()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(i, _)| i)
        {
            self.pending.swap_remove(i);
        }
        self.pending.push((u, times));
    }

    /// The piggyback list for one message: `first` (own state and any claim about the
    /// recipient), then queued updates, at most [`MAX_UPDATES`] and [`MAX_UPDATE_BYTES`] in
    /// all. The queued ones taken move to the back (so every update gets its turn) or go once
    /// sent often enough; one that does not fit in the bytes left waits for the next message.
    pub(crate) fn piggyback(&mut self, first: &[MemberUpdate]) -> Vec<MemberUpdate> {
        let mut v: Vec<MemberUpdate> = Vec::with_capacity(MAX_UPDATES);
        let mut bytes = 0;
        for u in first {
            if v.len() < MAX_UPDATES && bytes + u.encoded_len() <= MAX_UPDATE_BYTES {
                bytes += u.encoded_len();
                v.push(*u);
            }
        }
        let mut waiting = Vec::with_capacity(self.pending.len());
        let mut taken = Vec::new();
        for (u, left) in self.pending.drain(..) {
            let dup = v.iter().any(|x| x.node == u.node);
            let fits = v.len() < MAX_UPDATES && bytes + u.encoded_len() <= MAX_UPDATE_BYTES;
            if v.len() < MAX_UPDATES && (dup || fits) {
                if !dup {
                    bytes += u.encoded_len();
                    v.push(u);
                }
                if left > 1 {
                    taken.push((u, left - 1));
                }
            } else {
                waiting.push((u, left));
            }
        }
        waiting.extend(taken);
        self.pending = waiting;
        v
    }

    /// Updates waiting.
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heal::MemberState;
    use crate::id::NodeId;

    fn up(b: u8, incarnation: u64) -> MemberUpdate {
        MemberUpdate {
            node: NodeId([b; 32]),
            state: MemberState::alive(incarnation),
            sig: [0; 64],
            accuser: None,
        }
    }

    #[test]
    fn piggyback_is_bounded_and_retransmits_a_limited_number_of_times() {
        let mut q = UpdateQueue::new(3, 64);
        for i in 0..20 {
            q.enqueue(up(i, 1), 1);
        }
        let me = up(200, 0);
        let v = q.piggyback(&[me]);
        assert_eq!(v.len(), MAX_UPDATES);
        assert_eq!(v[0], me);
        // n = 1 -> 3 * 1 transmissions each; 20 updates * 3 / 9 per message -> 7 messages
        let mut msgs = 1;
        while q.len() > 0 {
            q.piggyback(&[me]);
            msgs += 1;
        }
        assert_eq!(msgs, 7);
    }

    #[test]
    fn a_newer_fact_replaces_the_queued_one_and_a_full_queue_drops_the_most_sent() {
        let mut q = UpdateQueue::new(1, 2);
        q.enqueue(up(1, 1), 1);
        q.enqueue(up(1, 2), 1);
        assert_eq!(q.len(), 1);
        q.enqueue(up(2, 1), 1 << 20);
        q.enqueue(up(3, 1), 1 << 20);
        assert_eq!(q.len(), 2);
        let v = q.piggyback(&[]);
        assert!(v.iter().all(|u| u.node != NodeId([1; 32])), "{v:?}");
    }
}
