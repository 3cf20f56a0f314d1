//! In-process sliding-window counters, shared by every plugin instance of the process and
//! keyed by `(scope, key)`, so a reload that keeps a limit's definition keeps its counts.
//!
//! Each window keeps the count of the current and the previous fixed window; the estimate
//! is `previous × (unelapsed share of the current window) + current`. A request passes when
//! the estimate plus one fits every window's limit; the check and the increments happen
//! under one shard lock, so concurrent requests can never overshoot.

use super::{Decision, Window};
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

const SHARDS: usize = 64;
/// Past this many keys in a shard, idle keys are swept.
const SWEEP_AT: usize = 4096;

#[derive(Clone, Copy, Default)]
struct Counts {
    index: u64,
    current: u64,
    previous: u64,
}

struct Entry {
    windows: Vec<Counts>,
    last_ms: u64,
}

/// The process's local counters.
pub struct LocalStore {
    /// Per shard: scope → key → counts (nested so a lookup borrows the key, no allocation).
    shards: Vec<Mutex<HashMap<u64, HashMap<String, Entry>>>>,
}

/// The one local store of the process.
pub static STORE: LazyLock<LocalStore> = LazyLock::new(|| LocalStore {
    shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
});

impl LocalStore {
    /// Check and, when allowed, count one request of `key` in scope `scope`.
    pub fn hit(&self, scope: u64, key: &str, windows: &[Window], now_ms: u64) -> Decision {
        let shard = &self.shards[(scope as usize ^ fxhash(key)) % SHARDS];
        let Ok(mut map) = shard.lock() else {
            // A poisoned lock means a panic elsewhere; do not take the gateway down with it.
            return Decision::allow_all(windows);
        };
        let scoped = map.entry(scope).or_default();
        if scoped.len() >= SWEEP_AT {
            let horizon = windows.iter().map(|w| w.ms).max().unwrap_or(0) * 2;
            scoped.retain(|_, e| now_ms.saturating_sub(e.last_ms) < horizon);
        }
        if !scoped.contains_key(key) {
            scoped.insert(
                key.to_string(),
                Entry {
                    windows: vec![Counts::default(); windows.len()],
                    last_ms: now_ms,
                },
            );
        }
        let Some(entry) = scoped.get_mut(key) else {
            return Decision::allow_all(windows);
        };
        if entry.windows.len() != windows.len() {
            entry.windows = vec![Counts::default(); windows.len()];
        }
        entry.last_ms = now_ms;
        let mut states = Vec::with_capacity(windows.len());
        for (w, c) in windows.iter().zip(entry.windows.iter_mut()) {
            let index = now_ms / w.ms;
            if c.index != index {
                c.previous = if c.index + 1 == index { c.current } else { 0 };
                c.current = 0;
                c.index = index;
            }
            let into = now_ms % w.ms;
            let est = c.previous as f64 * (w.ms - into) as f64 / w.ms as f64 + c.current as f64;
            states.push((est, c.current, c.previous, into));
        }
        let decision = Decision::from_states(windows, &states);
        if decision.allowed {
            for c in entry.windows.iter_mut() {
                c.current += 1;
            }
        }
        decision
    }
}

/// A small, fast, deterministic string hash for shard selection.
fn fxhash(s: &str) -> usize {
    let mut h: u64 = 0;
    for b in s.bytes() {
        h = (h.rotate_left(5) ^ b as u64).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    h as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(ms: u64, max: u64) -> Window {
        Window { ms, max }
    }

    #[test]
    fn exact_within_a_window_then_slides() {
        let store = LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        };
        let wins = [w(1000, 3)];
        let t0 = 10_000;
        let passed = (0..10)
            .filter(|_| store.hit(1, "k", &wins, t0).allowed)
            .count();
        assert_eq!(passed, 3);
        let d = store.hit(1, "k", &wins, t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // The window ends in 1000 ms; then 3 × (1 − r/1000) + 1 ≤ 3 needs r ≥ 333.3 ms more.
        assert_eq!(d.retry_after_ms, 1334);
        // Half-way through the next window, half of the previous still counts: 1.5 → 1 more.
        assert!(store.hit(1, "k", &wins, t0 + 1500).allowed);
        assert!(!store.hit(1, "k", &wins, t0 + 1500).allowed);
        // Two windows later everything has slid out.
        assert_eq!(
            (0..5)
                .filter(|_| store.hit(1, "k", &wins, t0 + 3000).allowed)
                .count(),
            3
        );
        // Other keys and scopes are independent.
        assert!(store.hit(2, "k", &wins, t0).allowed);
        assert!(store.hit(1, "other", &wins, t0).allowed);
    }

    #[test]
    fn tightest_window_reported() {
        let store = LocalStore {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        };
        let wins = [w(1000, 10), w(60_000, 4)];
        let d = store.hit(1, "k", &wins, 60_000);
        assert!(d.allowed);
        assert_eq!((d.limit, d.remaining), (4, 3));
        for _ in 0..3 {
            assert!(store.hit(1, "k", &wins, 60_000).allowed);
        }
        let d = store.hit(1, "k", &wins, 60_500);
        assert!(!d.allowed);
        assert_eq!(d.limit, 4);
        assert_eq!(d.reset_ms, 59_500);
    }
}
