//! In-process sliding-window counters of one limit definition (a scope). Every plugin
//! instance with that definition shares them through the [`SharedState`], so a reload that
//! keeps a limit's definition keeps its counts.
//!
//! Each window keeps the count of the current and the previous fixed window; the estimate
//! is `previous × (unelapsed share of the current window) + current`. A request passes when
//! the estimate plus one fits every window's limit; the check and the increments happen
//! under one shard lock, so concurrent requests can never overshoot.
//!
//! Keys are chosen by clients (addresses, header values), so the counters are a bounded
//! [`TtlCache`]: a key idle for two of its longest windows is forgotten, and past `max_keys`
//! the least recently used key is dropped (its next request starts from zero).
//!
//! [`SharedState`]: crate::state::SharedState

use super::window::{Decision, Window};
use crate::ttl_cache::TtlCache;
use std::hash::{BuildHasher, RandomState};
use std::time::{Duration, Instant};

/// The most windows a limit has (`second`, `minute`, `hour`, `day`).
const MAX_WINDOWS: usize = 4;

/// One window's counts, 12 bytes: limits are far below 2^32 a window, and the window
/// number (wall-clock milliseconds / window length) is compared only for equality and
/// succession, which wrapping keeps.
#[derive(Clone, Copy, Default)]
struct Counts {
    index: u32,
    current: u32,
    previous: u32,
}

impl Counts {
    /// Move to the period of `now_ms` (the current count becomes the previous one when the
    /// period just ended); returns the milliseconds into it.
    fn roll(&mut self, w: &Window, now_ms: u64) -> u64 {
        let index = (now_ms / w.ms) as u32;
        if self.index != index {
            self.previous = if self.index.wrapping_add(1) == index {
                self.current
            } else {
                0
            };
            self.current = 0;
            self.index = index;
        }
        now_ms % w.ms
    }
}

/// The counters of one limit definition.
///
/// A key is kept as a 128-bit keyed hash (two SipHash keys drawn at start), not as the
/// text a client sent: an entry costs the same whatever the key's length, and a client
/// cannot choose keys that collide.
pub struct LocalCounters {
    entries: TtlCache<u128, [Counts; MAX_WINDOWS]>,
    hashers: (RandomState, RandomState),
}

impl LocalCounters {
    /// Counters for at most about `max_keys` keys.
    pub fn new(max_keys: usize) -> Self {
        LocalCounters {
            entries: TtlCache::new(max_keys),
            hashers: (RandomState::new(), RandomState::new()),
        }
    }

    fn digest(&self, key: &str) -> u128 {
        let hi = self.hashers.0.hash_one(key);
        let lo = self.hashers.1.hash_one(key);
        (u128::from(hi) << 64) | u128::from(lo)
    }

    /// Check and, when allowed, count one request of `key` at `now_ms` (wall clock).
    pub fn hit(&self, key: &str, windows: &[Window], now_ms: u64) -> Decision {
        self.hit_n(key, windows, now_ms, 1, 1)
    }

    /// Check whether `need` units of `key` fit every window at `now_ms` and, when they do,
    /// count `cost` units (one step under the shard lock: concurrent checks never both take
    /// the last room).
    pub fn hit_n(
        &self,
        key: &str,
        windows: &[Window],
        now_ms: u64,
        cost: u64,
        need: u64,
    ) -> Decision {
        let windows = &windows[..windows.len().min(MAX_WINDOWS)];
        let cost = u32::try_from(cost).unwrap_or(u32::MAX);
        self.with_counts(key, windows, |counts| {
            let mut states = Vec::with_capacity(windows.len());
            for (w, c) in windows.iter().zip(counts.iter_mut()) {
                let into = c.roll(w, now_ms);
                let est = c.previous as f64 * (w.ms - into) as f64 / w.ms as f64 + c.current as f64;
                states.push((est, u64::from(c.current), u64::from(c.previous), into));
            }
            let decision = Decision::from_states(windows, &states, u64::from(cost), need);
            if decision.allowed {
                for c in counts.iter_mut().take(windows.len()) {
                    c.current = c.current.saturating_add(cost);
                }
            }
            decision
        })
    }

    /// Add `delta` units (negative: a refund) to the current period of every window of `key`,
    /// without a check; a count never goes below zero.
    pub fn add(&self, key: &str, windows: &[Window], now_ms: u64, delta: i64) {
        let windows = &windows[..windows.len().min(MAX_WINDOWS)];
        self.with_counts(key, windows, |counts| {
            for (w, c) in windows.iter().zip(counts.iter_mut()) {
                c.roll(w, now_ms);
                let v = (i64::from(c.current) + delta).clamp(0, i64::from(u32::MAX));
                c.current = v as u32;
            }
        })
    }

    fn with_counts<R>(
        &self,
        key: &str,
        windows: &[Window],
        f: impl FnOnce(&mut [Counts; MAX_WINDOWS]) -> R,
    ) -> R {
        let horizon = windows.iter().map(|w| w.ms).max().unwrap_or(0) * 2;
        let now = Instant::now();
        let digest = self.digest(key);
        self.entries.update(
            &digest,
            now,
            now + Duration::from_millis(horizon),
            || (digest, [Counts::default(); MAX_WINDOWS]),
            f,
        )
    }

    /// Keys currently counted.
    #[cfg(test)]
    pub fn keys(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ms: u64, max: u64) -> Window {
        Window { ms, max }
    }

    #[test]
    fn exact_within_a_window_then_slides() {
        let store = LocalCounters::new(1000);
        let wins = [w(1000, 3)];
        let t0 = 10_000;
        let passed = (0..10)
            .filter(|_| store.hit("k", &wins, t0).allowed)
            .count();
        assert_eq!(passed, 3);
        let d = store.hit("k", &wins, t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // The window ends in 1000 ms; then 3 × (1 − r/1000) + 1 ≤ 3 needs r ≥ 333.3 ms more.
        assert_eq!(d.retry_after_ms, 1334);
        // Half-way through the next window, half of the previous still counts: 1.5 → 1 more.
        assert!(store.hit("k", &wins, t0 + 1500).allowed);
        assert!(!store.hit("k", &wins, t0 + 1500).allowed);
        // Two windows later everything has slid out.
        assert_eq!(
            (0..5)
                .filter(|_| store.hit("k", &wins, t0 + 3000).allowed)
                .count(),
            3
        );
        // Other keys are independent.
        assert!(store.hit("other", &wins, t0).allowed);
    }

    #[test]
    fn tightest_window_reported() {
        let store = LocalCounters::new(1000);
        let wins = [w(1000, 10), w(60_000, 4)];
        let d = store.hit("k", &wins, 60_000);
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (4, 3));
        for _ in 0..3 {
            assert!(store.hit("k", &wins, 60_000).allowed);
        }
        let d = store.hit("k", &wins, 60_500);
        assert!(!d.allowed);
        assert_eq!(d.limit, 4);
        assert_eq!(d.reset_ms, 59_500);
    }

    #[test]
    fn weighted_checks_and_corrections() {
        let store = LocalCounters::new(1000);
        let wins = [w(60_000, 100)];
        let t0 = 60_000;
        // Ask for 40, count 40: twice; the third does not fit (80 + 40 > 100).
        assert_eq!(store.hit_n("k", &wins, t0, 40, 40).remaining, 60);
        assert_eq!(store.hit_n("k", &wins, t0, 40, 40).remaining, 20);
        let d = store.hit_n("k", &wins, t0, 40, 40);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 20);
        // A refund of 30 makes room for it.
        store.add("k", &wins, t0, -30);
        let d = store.hit_n("k", &wins, t0, 40, 40);
        assert!(d.allowed);
        assert_eq!(d.remaining, 10);
        // Need one, count nothing: passes while anything is left, counts nothing.
        assert_eq!(store.hit_n("k", &wins, t0, 0, 1).remaining, 10);
        store.add("k", &wins, t0, 15);
        let d = store.hit_n("k", &wins, t0, 0, 1);
        assert!(!d.allowed, "105 used of 100");
        // Counts never go below zero.
        store.add("k", &wins, t0, -1_000);
        assert_eq!(store.hit_n("k", &wins, t0, 0, 1).remaining, 100);
        // A need over the limit never fits: one window to wait.
        let d = store.hit_n("k", &wins, t0, 500, 500);
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ms, 60_000);
    }

    #[test]
    fn bounded_by_max_keys() {
        let store = LocalCounters::new(1000);
        let wins = [w(60_000, 5)];
        for i in 0..50_000 {
            store.hit(&format!("10.0.{}.{}", i / 256, i % 256), &wins, 1_000);
        }
        assert!(store.keys() <= 1016, "{} keys kept", store.keys());
    }
}
