//! [`Admitted`]: the bounded set of origins the fast path accepts data from.

use std::collections::HashSet;

use mesh_protocol::NodeId;

/// Origins the fast path accepts data from: this node, every node that proved a CA-issued
/// certificate to it, and every node such a member named in a control message. Grows only
/// (a member declared dead may be back after a heal, and its messages from the split must
/// still pass), up to a bound; `dirty` says when to republish it to the fast path.
#[derive(Debug)]
pub struct Admitted {
    set: HashSet<[u8; 32]>,
    capacity: usize,
    dirty: bool,
    refused: u64,
}

impl Admitted {
    /// A set holding `me`, at most `capacity` ids.
    pub fn new(me: [u8; 32], capacity: usize) -> Self {
        Admitted {
            set: HashSet::from([me]),
            capacity: capacity.max(1),
            dirty: true,
            refused: 0,
        }
    }

    /// Admits `id` (no-op when present; counted and refused when full).
    pub fn admit(&mut self, id: &NodeId) {
        if self.set.contains(id.as_bytes()) {
            return;
        }
        if self.set.len() >= self.capacity {
            self.refused += 1;
            return;
        }
        self.set.insert(*id.as_bytes());
        self.dirty = true;
    }

    /// Whether `id` is admitted.
    pub fn contains(&self, id: &NodeId) -> bool {
        self.set.contains(id.as_bytes())
    }

    /// Admitted ids.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    /// Whether nothing is admitted (never true: this node always is).
    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Ids refused because the set was full.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// A copy to publish, if anything changed since the last call.
    pub fn take_snapshot(&mut self) -> Option<HashSet<[u8; 32]>> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        Some(self.set.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::id;

    #[test]
    fn the_admitted_set_is_bounded() {
        let mut a = Admitted::new([0; 32], 2);
        assert!(a.take_snapshot().is_some());
        assert!(a.take_snapshot().is_none(), "clean after a snapshot");
        a.admit(&id(1));
        a.admit(&id(1));
        a.admit(&id(2));
        assert_eq!((a.len(), a.refused()), (2, 1));
        assert!(a.contains(&id(1)) && !a.contains(&id(2)));
        assert_eq!(a.take_snapshot().map(|s| s.len()), Some(2));
    }
}
