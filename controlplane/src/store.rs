//! Bounded store of recent data messages, kept for anti-entropy repair.
//!
//! Holds each message's signed bytes for `retention`, up to `max_messages`
//! (oldest evicted first). Ids come out newest first for IHAVE digests.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use dataplane::wire::MessageId;

use crate::peers::Nanos;

/// The store.
pub struct MessageStore {
    retention_ns: Nanos,
    max_messages: usize,
    map: HashMap<MessageId, Arc<[u8]>>,
    order: VecDeque<(Nanos, MessageId)>,
}

impl MessageStore {
    /// An empty store.
    pub fn new(retention_ns: Nanos, max_messages: usize) -> MessageStore {
        MessageStore {
            retention_ns,
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
    pub fn contains(&self, id: &MessageId) -> bool {
        self.map.contains_key(id)
    }

    /// The bytes of `id`, if held.
    pub fn get(&self, id: &MessageId) -> Option<&Arc<[u8]>> {
        self.map.get(id)
    }

    /// Adds a message (no-op if held). Returns false when it was already held.
    pub fn insert(&mut self, now: Nanos, id: MessageId, bytes: Arc<[u8]>) -> bool {
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
    pub fn expire(&mut self, now: Nanos) {
        while let Some(&(t, id)) = self.order.front() {
            if now.saturating_sub(t) <= self.retention_ns {
                break;
            }
            self.order.pop_front();
            self.map.remove(&id);
        }
    }

    /// Up to `max` ids, newest first.
    pub fn newest_ids(&self, max: usize) -> Vec<MessageId> {
        self.order
            .iter()
            .rev()
            .take(max)
            .map(|(_, id)| *id)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(i: u8) -> MessageId {
        MessageId([i; 16])
    }

    #[test]
    fn keeps_messages_for_the_retention_then_forgets_them() {
        let mut s = MessageStore::new(100, 10);
        assert!(s.insert(0, id(1), Arc::from(&b"a"[..])));
        assert!(!s.insert(5, id(1), Arc::from(&b"a"[..])));
        assert!(s.contains(&id(1)));
        s.expire(100);
        assert!(s.contains(&id(1)));
        s.expire(101);
        assert!(!s.contains(&id(1)));
    }

    #[test]
    fn is_bounded_and_lists_newest_first() {
        let mut s = MessageStore::new(1_000, 3);
        for i in 0..5 {
            s.insert(u64::from(i), id(i), Arc::from(&[i][..]));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.newest_ids(2), vec![id(4), id(3)]);
        assert!(!s.contains(&id(0)));
    }
}
