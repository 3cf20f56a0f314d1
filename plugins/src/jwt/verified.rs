//! Tokens verified recently, by SHA-256 of the token: signature checks (RSA above all) are
//! far more expensive than the rest of a request, and clients send the same token many
//! times. An entry lives until the token expires or `cache_ttl_seconds`, whichever is first;
//! a reload starts a new, empty cache.

use crate::consumer::Identity;
use crate::ttl_cache::TtlCache;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The verified-token cache of one `jwt` plugin instance.
pub(super) struct VerifiedCache {
    ttl: Duration,
    entries: TtlCache<[u8; 32], Identity>,
}

impl VerifiedCache {
    /// A cache keeping up to `size` tokens for at most `ttl` (0: remember nothing).
    pub(super) fn new(ttl: Duration, size: usize) -> Self {
        VerifiedCache {
            ttl,
            entries: TtlCache::new(size),
        }
    }

    /// The key a token is remembered by.
    pub(super) fn key(token: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(token.as_bytes()).into()
    }

    /// Who a remembered, unexpired token authenticates.
    pub(super) fn get(&self, key: &[u8; 32]) -> Option<Identity> {
        self.entries.get(key, Instant::now())
    }

    /// Remember a verified token whose `exp` claim (seconds since the epoch) is `exp`.
    pub(super) fn put(&self, key: [u8; 32], identity: &Identity, exp: Option<u64>, leeway: u64) {
        if self.ttl.is_zero() {
            return;
        }
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let life = match exp {
            Some(exp) => self
                .ttl
                .min(Duration::from_secs((exp + leeway).saturating_sub(now_unix))),
            None => self.ttl,
        };
        self.entries
            .insert(key, identity.clone(), Instant::now() + life);
    }
}
