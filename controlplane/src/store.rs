//! Bounded store of recent data messages, kept to answer grafts and pulls (Plumtree repair
//! and anti-entropy) with the signed datagram itself.
//!
//! Holds each message's signed bytes for `retention`, up to `max_messages` (oldest evicted
//! first).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use dataplane::wire::MsgId;
use mesh_protocol::{Duration, Instant};

/// The store.
pub struct MessageStore {
    retention: Duration,
    max_messages: usize,
    map: HashMap<MsgId, Arc<[u8]>>,
    order: VecDeque<(Instant, MsgId)>,
}

impl MessageStore {
    /// An empty store.
    pub fn new(retention: Duration, max_messages: usize) -> MessageStore {
        MessageStore {
            retention,
            max_messages: max_messages.max(1),
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Number of messages held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Whether `id` is held.
    pub fn contains(&self, id: &MsgId) -> bool {
        self.map.contains_key(id)
    }

    /// The bytes of `id`, if held.
    pub fn get(&self, id: &MsgId) -> Option<&Arc<[u8]>> {
        self.map.get(id)
    }

    /// Adds a message (no-op if held). Returns false when it was already held.
    pub fn insert(&mut self, now: Instant, id: MsgId, bytes: Arc<[u8]>) -> bool {
        self.expire(now);
        if self.map.contains_key(&id) {
            return false;
        }
        while self.map.len() >= self.max_messages {
            match self.order.pop_front() {
                Some((_, old)) => {
                    self.map.remove(&old);
                }
                None => break,
            }
        }
        self.map.insert(id, bytes);
        self.order.push_back((now, id));
        true
    }

    /// Drops messages older than the retention.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(t, id)) = self.order.front() {
            if now.saturating_since(t) <= self.retention {
                break;
            }
            self.order.pop_front();
            self.map.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> MsgId {
        MsgId([i; 16])
    }

    fn t(ns: u64) -> Instant {
        Instant::from_nanos(ns)
    }

    #[test]
    fn keeps_messages_for_the_retention_then_forgets_them() {
        let mut s = MessageStore::new(Duration::from_nanos(100), 10);
        assert!(s.insert(t(0), id(1), Arc::from(&b"a"[..])));
        assert!(!s.insert(t(5), id(1), Arc::from(&b"a"[..])));
        assert!(s.contains(&id(1)));
        s.expire(t(100));
        assert!(s.contains(&id(1)));
        s.expire(t(101));
        assert!(!s.contains(&id(1)));
    }

    #[test]
    fn is_bounded_oldest_out_first() {
        let mut s = MessageStore::new(Duration::from_nanos(1_000), 3);
        for i in 0..5 {
            s.insert(t(u64::from(i)), id(i), Arc::from(&[i][..]));
        }
        assert_eq!(s.len(), 3);
        assert!(!s.contains(&id(0)) && !s.contains(&id(1)));
        assert!(s.contains(&id(2)) && s.contains(&id(4)));
    }
}
