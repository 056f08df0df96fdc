//! Dissemination of membership updates: a bounded queue of facts piggybacked on SWIM's own
//! messages (`Ping`, `Ack`, `PingReq`), each sent `lambda * ceil(log2 n)` times.

use crate::wire::{MAX_UPDATES, MemberUpdate};

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
    /// recipient), then queued updates, at most [`MAX_UPDATES`] in all. The queued ones taken
    /// move to the back (so every update gets its turn) or go once sent often enough.
    pub(crate) fn piggyback(&mut self, first: &[MemberUpdate]) -> Vec<MemberUpdate> {
        let mut v: Vec<MemberUpdate> = first.iter().take(MAX_UPDATES).copied().collect();
        let room = MAX_UPDATES - v.len();
        let take = room.min(self.pending.len());
        let taken: Vec<(MemberUpdate, u32)> = self.pending.drain(..take).collect();
        for (u, left) in taken {
            if !v.iter().any(|x| x.node == u.node) {
                v.push(u);
            }
            if left > 1 {
                self.pending.push((u, left - 1));
            }
        }
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
