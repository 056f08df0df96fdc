//! [`AddressBook`]: node id ↔ mesh address, bounded.
//!
//! Addresses proven by a mutual-TLS handshake are *verified*; hints (named in frames) are
//! not, and a hint never overwrites a verified address. A dial to a hinted address names the
//! expected id, so a wrong hint fails the handshake and is forgotten.

use std::collections::HashMap;
use std::net::SocketAddr;

use mesh_protocol::NodeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    addr: SocketAddr,
    verified: bool,
}

/// Node id ↔ mesh (data) address, bounded.
#[derive(Debug)]
pub struct AddressBook {
    by_id: HashMap<NodeId, Entry>,
    by_addr: HashMap<SocketAddr, NodeId>,
    capacity: usize,
    refused: u64,
}

impl AddressBook {
    /// An empty book holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        AddressBook {
            by_id: HashMap::new(),
            by_addr: HashMap::new(),
            capacity: capacity.max(1),
            refused: 0,
        }
    }

    /// The mesh address of `id`, if known.
    pub fn addr(&self, id: &NodeId) -> Option<SocketAddr> {
        self.by_id.get(id).map(|e| e.addr)
    }

    /// Whether `id`'s address was proven by a handshake.
    pub fn is_verified(&self, id: &NodeId) -> bool {
        self.by_id.get(id).is_some_and(|e| e.verified)
    }

    /// The node at mesh address `addr`, if known.
    pub fn id_at(&self, addr: &SocketAddr) -> Option<NodeId> {
        self.by_addr.get(addr).copied()
    }

    /// Entries.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether the book is empty.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// New entries refused because the book was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Records an address proven by a mutual-TLS handshake (replaces anything older: a node
    /// may come back on a new address).
    pub fn learn_verified(&mut self, id: NodeId, addr: SocketAddr) {
        self.insert(
            id,
            Entry {
                addr,
                verified: true,
            },
        );
    }

    /// Records a hint from a peer. Ignored when `id` already has an address (verified or
    /// hinted first: a later hint cannot redirect it). Returns whether it was recorded.
    pub fn learn_hint(&mut self, id: NodeId, addr: SocketAddr) -> bool {
        if self.by_id.contains_key(&id) {
            return false;
        }
        self.insert(
            id,
            Entry {
                addr,
                verified: false,
            },
        )
    }

    /// Forgets an unverified entry (its dial failed or reached another node).
    pub fn forget_hint(&mut self, id: &NodeId) {
        if let Some(e) = self.by_id.get(id)
            && !e.verified
        {
            let addr = e.addr;
            self.by_id.remove(id);
            if self.by_addr.get(&addr) == Some(id) {
                self.by_addr.remove(&addr);
            }
        }
    }

    fn insert(&mut self, id: NodeId, e: Entry) -> bool {
        if !self.by_id.contains_key(&id) && self.by_id.len() >= self.capacity {
            self.refused += 1;
            return false;
        }
        if let Some(old) = self.by_id.insert(id, e)
            && old.addr != e.addr
            && self.by_addr.get(&old.addr) == Some(&id)
        {
            self.by_addr.remove(&old.addr);
        }
        // Two ids on one address: the newest verified claim wins the reverse map.
        if e.verified || !self.by_addr.contains_key(&e.addr) {
            self.by_addr.insert(e.addr, id);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{addr, id};

    #[test]
    fn a_hint_never_redirects_a_known_node() {
        let mut b = AddressBook::new(8);
        b.learn_verified(id(1), addr(1));
        assert!(!b.learn_hint(id(1), addr(666)));
        assert_eq!(b.addr(&id(1)), Some(addr(1)));
        assert!(b.learn_hint(id(2), addr(2)));
        assert!(!b.learn_hint(id(2), addr(667)), "first hint sticks");
        assert!(!b.is_verified(&id(2)));
        b.forget_hint(&id(2));
        assert_eq!(b.addr(&id(2)), None);
        assert_eq!(b.id_at(&addr(2)), None);
        b.forget_hint(&id(1));
        assert_eq!(b.addr(&id(1)), Some(addr(1)), "verified entries stay");
        // a node back on a new address: the old reverse entry goes
        b.learn_verified(id(1), addr(11));
        assert_eq!(b.id_at(&addr(1)), None);
        assert_eq!(b.id_at(&addr(11)), Some(id(1)));
    }

    #[test]
    fn the_book_is_bounded() {
        let mut b = AddressBook::new(2);
        b.learn_verified(id(1), addr(1));
        b.learn_verified(id(2), addr(2));
        assert!(!b.learn_hint(id(3), addr(3)));
        b.learn_verified(id(4), addr(4));
        assert_eq!((b.len(), b.refused()), (2, 2));
    }
}
