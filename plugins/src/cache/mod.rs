//! `cache`: a shared HTTP cache (RFC 9111) on Pingora's cache phases.
//!
//! The plugin only carries the route's [`CachePolicy`] ([`policy`]); the objects live in the
//! process's [`CacheStore`](storage::CacheStore) ([`storage`]). The gateway calls both from
//! its `ProxyHttp` cache hooks. See docs/config.md for the semantics.

pub mod freshness;
pub mod policy;
pub mod redis_storage;
pub mod storage;

pub use policy::{CachePolicy, Exchange, RequestUse, MAX_KEY_BODY};
pub use storage::{CACHE_STATUS, HIT_STATUS, X_CACHE_STATUS};

use crate::{BuildCtx, ConfigError, Phase, Plugin};
use async_trait::async_trait;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "cache";

/// The compiled `cache` plugin: a holder for its [`CachePolicy`].
pub struct Cache {
    policy: Arc<CachePolicy>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    Ok(Arc::new(Cache {
        policy: Arc::new(CachePolicy::from_config(value, ctx)?),
    }))
}

#[async_trait]
impl Plugin for Cache {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Transform
    }

    fn cache_policy(&self) -> Option<&Arc<CachePolicy>> {
        Some(&self.policy)
    }
}
