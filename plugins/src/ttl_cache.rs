//! A bounded map whose entries expire: the one structure behind every per-key store that a
//! client can grow (the JWT verification cache, the basic-auth cache, the local rate-limit
//! counters).
//!
//! Entries live in shards, each a least-recently-used list with a fixed capacity, so memory
//! is bounded whatever keys clients choose and every operation is O(1): a full shard drops
//! its least recently used entry to make room. Shards are chosen by a hash seeded per map, so
//! a client cannot aim its keys at one shard. An expired entry is never returned and is
//! dropped when it is found.

use crate::sync::lock;
use lru::LruCache;
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash, RandomState};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

/// Most shards a map uses; small maps use fewer, so each shard keeps a useful capacity.
const MAX_SHARDS: usize = 16;
/// Entries per shard below which a map does not add another shard.
const MIN_PER_SHARD: usize = 64;

struct Slot<V> {
    expires: Instant,
    value: V,
}

/// One shard: a least-recently-used list of slots.
type Shard<K, V> = Mutex<LruCache<K, Slot<V>>>;

/// A sharded, bounded, expiring map (see the module documentation).
pub struct TtlCache<K, V> {
    shards: Box<[Shard<K, V>]>,
    hasher: RandomState,
    evictions: AtomicU64,
}

impl<K: Hash + Eq, V> TtlCache<K, V> {
    /// A map holding at most about `capacity` entries (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        let shards = (capacity / MIN_PER_SHARD).clamp(1, MAX_SHARDS);
        let per_shard = NonZeroUsize::new(capacity.div_ceil(shards)).unwrap_or(NonZeroUsize::MIN);
        TtlCache {
            shards: (0..shards)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: RandomState::new(),
            evictions: AtomicU64::new(0),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> MutexGuard<'_, LruCache<K, Slot<V>>> {
        let i = self.hasher.hash_one(key) as usize % self.shards.len();
        lock(&self.shards[i])
    }

    /// The value under `key` if it has not expired at `now` (and mark it recently used).
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
        V: Clone,
    {
        let mut shard = self.shard(key);
        match shard.get(key) {
            Some(slot) if slot.expires > now => Some(slot.value.clone()),
            Some(_) => {
                shard.pop(key);
                None
            }
            None => None,
        }
    }

    /// Store `value` under `key` until `expires`, replacing what was there.
    pub fn insert(&self, key: K, value: V, expires: Instant) {
        let mut shard = self.shard(&key);
        if let Some((old, _)) = shard.push(key, Slot { expires, value }) {
            // `push` returns the replaced entry too; only a different key is an eviction.
            if !shard.contains(&old) {
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Run `f` on the live value under `key`, first storing `init()` when there is none (or
    /// it expired); the entry then lives until `expires`. One lock is held throughout, so `f`
    /// is atomic with respect to every other operation on that key.
    pub fn update<Q, R>(
        &self,
        key: &Q,
        now: Instant,
        expires: Instant,
        init: impl FnOnce() -> (K, V),
        f: impl FnOnce(&mut V) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self.shard(key);
        match shard.get_mut(key) {
            Some(slot) if slot.expires > now => {
                slot.expires = expires;
                return f(&mut slot.value);
            }
            Some(_) => {
                shard.pop(key);
            }
            None => {}
        }
        let (k, value) = init();
        if shard.len() == shard.cap().get() {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        f(&mut shard.get_or_insert_mut(k, || Slot { expires, value }).value)
    }

    /// Remove `key`.
    pub fn remove<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shard(key).pop(key);
    }

    /// Entries held, expired ones not yet dropped included.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most entries the map holds.
    pub fn capacity(&self) -> usize {
        self.shards.iter().map(|s| lock(s).cap().get()).sum()
    }

    /// Live entries dropped to make room for new ones, since the map was made.
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expires_and_stays_bounded() {
        let c: TtlCache<String, u32> = TtlCache::new(100);
        let now = Instant::now();
        let later = now + Duration::from_secs(10);
        c.insert("a".into(), 1, later);
        assert_eq!(c.get("a", now), Some(1));
        assert_eq!(c.get("a", later), None, "expired at its deadline");
        assert_eq!(c.get("a", now), None, "and dropped");
        for i in 0..10_000 {
            c.insert(format!("k{i}"), i, later);
        }
        assert!(c.len() <= c.capacity(), "{} > {}", c.len(), c.capacity());
        assert!(c.capacity() <= 100 + MAX_SHARDS);
        assert!(c.evictions() >= 9_000);
        // The most recent keys are the ones kept.
        assert_eq!(c.get("k9999", now), Some(9999));
    }

    #[test]
    fn update_counts_in_place_and_restarts_after_expiry() {
        let c: TtlCache<String, u32> = TtlCache::new(10);
        let t0 = Instant::now();
        let ttl = Duration::from_secs(1);
        let bump = |now: Instant| {
            c.update(
                "k",
                now,
                now + ttl,
                || ("k".to_string(), 0),
                |v| {
                    *v += 1;
                    *v
                },
            )
        };
        assert_eq!(bump(t0), 1);
        assert_eq!(bump(t0), 2);
        assert_eq!(
            bump(t0 + Duration::from_millis(900)),
            3,
            "use extends the life"
        );
        assert_eq!(bump(t0 + Duration::from_millis(1800)), 4);
        assert_eq!(
            bump(t0 + Duration::from_secs(5)),
            1,
            "expired: starts again"
        );
        c.remove("k");
        assert!(c.is_empty());
    }
}
