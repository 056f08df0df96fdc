//! Fixed-memory seen-cache keyed by a seeded 64-bit hash of the signature.
//!
//! The data plane probes it *before* verifying a signature (a duplicate never
//! costs a verify) and inserts *after* the signature verified, so a forged copy
//! that reuses a real signature cannot poison the cache and get the real message
//! dropped. The hash is seeded from the OS random source at start, so an
//! attacker cannot aim collisions at one bucket.
//!
//! Layout: `capacity` slots (rounded up to a power of two) in buckets of
//! [`WAYS`] slots; a key lives in one bucket. Memory is 16 bytes a slot,
//! allocated once. An entry lives until `ttl` after its last insert; when a
//! bucket is full of live entries, the one closest to expiry is evicted and
//! counted in [`SeenStats::live_evictions`] (size the cache so that stays zero:
//! capacity ≥ message rate × ttl).

use core::hash::BuildHasher;

/// Slots per bucket (one 128-byte pair of cache lines).
pub const WAYS: usize = 8;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// Hash of the key; 0 means empty.
    tag: u64,
    /// Expiry instant, ns on the caller's clock.
    expires_ns: u64,
}

/// Counters kept by the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeenStats {
    /// Probes that found a live entry.
    pub hits: u64,
    /// Entries inserted or refreshed.
    pub inserts: u64,
    /// Live entries evicted before their expiry because a bucket was full.
    pub live_evictions: u64,
}

/// The seen-cache. Not thread-safe: one per pipeline.
pub struct SeenCache {
    slots: Box<[Slot]>,
    bucket_mask: usize,
    ttl_ns: u64,
    hasher: foldhash::quality::FixedState,
    stats: SeenStats,
}

impl SeenCache {
    /// A cache of at least `capacity` slots (min one bucket) whose entries
    /// live `ttl_ns`, hashing with `seed`.
    pub fn new(capacity: usize, ttl_ns: u64, seed: u64) -> SeenCache {
        let slots = capacity.max(WAYS).next_power_of_two();
        SeenCache {
            slots: vec![Slot::default(); slots].into_boxed_slice(),
            bucket_mask: slots / WAYS - 1,
            ttl_ns,
            hasher: foldhash::quality::FixedState::with_seed(seed),
            stats: SeenStats::default(),
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Counters so far.
    pub fn stats(&self) -> SeenStats {
        self.stats
    }

    /// The seeded 64-bit key of a signature (never 0).
    #[inline]
    pub fn key(&self, signature: &[u8]) -> u64 {
        self.hasher.hash_one(signature).max(1)
    }

    #[inline]
    fn bucket(&self, key: u64) -> core::ops::Range<usize> {
        // High bits pick the bucket; the whole key is the tag.
        let b = ((key >> 32) as usize ^ key as usize) & self.bucket_mask;
        b * WAYS..b * WAYS + WAYS
    }

    /// Starts loading `key`'s bucket into the CPU cache. Probing a batch is
    /// faster when every key's bucket is prefetched first and probed after:
    /// the memory misses of a large cache then overlap instead of queueing.
    #[inline]
    pub fn prefetch(&self, key: u64) {
        let start = self.bucket(key).start;
        #[cfg(target_arch = "x86_64")]
        {
            let p = self.slots[start..].as_ptr().cast::<i8>();
            // SAFETY: `p` points into `slots` (start is a valid bucket
            // index); a prefetch never faults and changes no memory.
            unsafe {
                core::arch::x86_64::_mm_prefetch(p, core::arch::x86_64::_MM_HINT_T0);
                core::arch::x86_64::_mm_prefetch(p.add(64), core::arch::x86_64::_MM_HINT_T0);
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = start;
    }

    /// True when `key` was inserted and has not expired at `now_ns`.
    #[inline]
    pub fn contains(&mut self, key: u64, now_ns: u64) -> bool {
        let range = self.bucket(key);
        let hit = self.slots[range]
            .iter()
            .any(|s| s.tag == key && s.expires_ns > now_ns);
        if hit {
            self.stats.hits += 1;
        }
        hit
    }

    /// Records `key` as seen at `now_ns`.
    pub fn insert(&mut self, key: u64, now_ns: u64) {
        let expires_ns = now_ns.saturating_add(self.ttl_ns);
        let range = self.bucket(key);
        let bucket = &mut self.slots[range];
        self.stats.inserts += 1;
        let mut victim = 0;
        let mut victim_exp = u64::MAX;
        for (i, s) in bucket.iter_mut().enumerate() {
            if s.tag == key {
                s.expires_ns = expires_ns;
                return;
            }
            let exp = if s.tag == 0 || s.expires_ns <= now_ns {
                0
            } else {
                s.expires_ns
            };
            if exp < victim_exp {
                victim = i;
                victim_exp = exp;
            }
        }
        if victim_exp != 0 {
            self.stats.live_evictions += 1;
        }
        bucket[victim] = Slot {
            tag: key,
            expires_ns,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserted_key_is_seen_until_it_expires() {
        let mut c = SeenCache::new(64, 1_000, 7);
        let k = c.key(&[1u8; 64]);
        assert!(!c.contains(k, 0));
        c.insert(k, 0);
        assert!(c.contains(k, 999));
        assert!(!c.contains(k, 1_000));
    }

    #[test]
    fn different_seeds_give_different_keys() {
        let a = SeenCache::new(8, 1, 1);
        let b = SeenCache::new(8, 1, 2);
        assert_ne!(a.key(&[3u8; 64]), b.key(&[3u8; 64]));
    }

    #[test]
    fn memory_is_fixed_and_overflow_evicts_the_oldest_and_counts_it() {
        let mut c = SeenCache::new(8, 1_000_000, 1);
        assert_eq!(c.capacity(), 8);
        for i in 0..100u64 {
            c.insert(i + 1, i);
        }
        assert_eq!(c.capacity(), 8);
        assert_eq!(c.stats().live_evictions, 92);
        // The eight newest survive.
        for i in 92..100u64 {
            assert!(c.contains(i + 1, 100));
        }
        assert!(!c.contains(1, 100));
    }

    #[test]
    fn expired_slots_are_reused_without_counting_an_eviction() {
        let mut c = SeenCache::new(8, 10, 1);
        for i in 0..8u64 {
            c.insert(i + 1, 0);
        }
        for i in 0..8u64 {
            c.insert(i + 100, 20);
        }
        assert_eq!(c.stats().live_evictions, 0);
    }

    #[test]
    fn many_keys_in_a_large_cache_never_evict() {
        let mut c = SeenCache::new(1 << 16, u64::MAX / 2, 99);
        for i in 0..5_000u64 {
            let k = c.key(&i.to_le_bytes());
            c.insert(k, 0);
        }
        assert_eq!(c.stats().live_evictions, 0);
        for i in 0..5_000u64 {
            let k = c.key(&i.to_le_bytes());
            assert!(c.contains(k, 1));
        }
    }
}
