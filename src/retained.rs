//! What outlives a config reload, owned in one place: the upstream pools (with their health
//! state and the settings their pooled connections are keyed by) and the plugins'
//! [`SharedState`] (rate-limit counters, Redis connections, JWKS fetchers, the response
//! cache). A compile takes from it what the new config can reuse; [`Retained::settle`]
//! prunes it once a config is running.

use crate::snapshot::Snapshot;
use crate::upstream::UpstreamCache;
use std::sync::Arc;
use tollgate_plugins::cache::storage::CacheStore;
use tollgate_plugins::{Registry, SharedState};

/// The reload-surviving state of one gateway process.
#[derive(Default)]
pub struct Retained {
    /// The plugins this binary can build, by name (the built-in ones and a custom binary's).
    pub registry: Registry,
    /// Pools of the running config, reused when their definition is unchanged.
    pub upstreams: UpstreamCache,
    /// State plugins keep across reloads.
    pub plugins: Arc<SharedState>,
    /// The last good DNS answer for every backend host name.
    pub dns: crate::upstream::dns::DnsCache,
}

impl Retained {
    /// Nothing retained yet; the built-in plugins.
    pub fn new() -> Self {
        Retained::default()
    }

    /// Nothing retained yet; the plugins of `registry` (a custom binary's).
    pub fn with_registry(registry: Registry) -> Self {
        Retained {
            registry,
            ..Retained::default()
        }
    }

    /// `snap` is now the running config: keep only its pools, drop plugin state that no
    /// compiled plugin holds any more, apply its cache budget.
    pub fn settle(&self, snap: &Snapshot) {
        self.upstreams.retain(&snap.upstreams);
        let dropped = self.plugins.prune();
        if dropped > 0 {
            log::debug!("dropped {dropped} piece(s) of plugin state no route uses any more");
        }
        if let Some(cache) = self.cache() {
            cache.set_budget(snap.server.live.cache_max_bytes);
        }
    }

    /// The response cache, once a route with the `cache` plugin made it.
    pub fn cache(&self) -> Option<&'static CacheStore> {
        self.plugins.process_wide_if_made::<CacheStore>()
    }
}
