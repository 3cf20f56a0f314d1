//! Where a window limit keeps its counts, shared by `rate_limit` (requests) and `token_limit`
//! (tokens): in the process, or in Redis with a failure mode (`on_store_error`) for when Redis
//! fails or is slow. The config keys (`policy`, `redis`, `on_store_error`, `max_keys`) mean the
//! same in both plugins; each plugin declares them in its own config (serde cannot flatten
//! them into a table that refuses unknown keys) and hands them here as a [`StoreSpec`].

use super::local::LocalCounters;
use super::redis_store::RedisStore;
use super::window::{counter_scope, Decision, Window};
use crate::{BuildCtx, ConfigError};
use prometheus::IntCounterVec;
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// `policy`: where the counts live.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default, Debug)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// In this process.
    #[default]
    Local,
    /// In Redis, shared by every instance using it.
    Redis,
}

/// `on_store_error`: what to do when Redis fails or times out.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default, Debug)]
#[serde(rename_all = "snake_case")]
pub enum OnStoreError {
    /// Let the request through.
    Open,
    /// Refuse it (503).
    Closed,
    /// Count it in the process instead.
    #[default]
    Local,
}

impl OnStoreError {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            OnStoreError::Open => "open",
            OnStoreError::Closed => "closed",
            OnStoreError::Local => "local",
        }
    }
}

/// The `redis = { url, timeout_ms, prefix }` table.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://…`.
    pub url: String,
    /// Bound of every call, in milliseconds.
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Prefix of the keys (the plugin's default when absent).
    #[serde(default)]
    pub prefix: Option<String>,
}

fn default_timeout() -> u64 {
    50
}

/// Which plugin a store belongs to.
pub struct StoreKind {
    /// Names its local counters in the shared state (`rate_limit`).
    pub name: &'static str,
    /// Names a Redis failure in the log (`rate-limit store`).
    pub what: &'static str,
    /// The Redis key prefix when the config has none (`tollgate:rl`).
    pub default_prefix: &'static str,
}

/// The store keys of a plugin's config.
pub struct StoreSpec<'a> {
    /// `policy`.
    pub policy: Policy,
    /// `redis`.
    pub redis: Option<&'a RedisConfig>,
    /// `on_store_error`.
    pub on_store_error: OnStoreError,
    /// `max_keys`.
    pub max_keys: usize,
    /// What the limit counts by (the compiled `limit_by`'s spec).
    pub key_spec: &'a str,
    /// The limit's windows.
    pub windows: &'a [Window],
}

/// What a check found.
pub enum Hit {
    /// The store decided.
    Decided(Decision),
    /// The store failed and `on_store_error = "open"`: let the request through uncounted.
    Open,
    /// The store failed and `on_store_error = "closed"`: refuse with 503.
    Closed,
}

/// The counts of one limit definition: local, or Redis with the local counters as fallback.
pub struct Store {
    local: Arc<LocalCounters>,
    redis: Option<(Arc<RedisStore>, String)>,
    on_store_error: OnStoreError,
    /// How a Redis failure is named in the log (`rate-limit store`).
    what: &'static str,
    /// The store-error counter (`{route,on_store_error}`).
    errors: IntCounterVec,
}

impl Store {
    /// The store of a limit definition of `kind`, found again after a reload (or on another
    /// instance) while the definition (`ctx.scope`, `spec.key_spec`, `spec.windows`: see
    /// [`counter_scope`]) is unchanged; `errors_metric` the store-error counter. Problems are
    /// pushed to `errors` (paths relative to the plugin's table).
    pub fn build(
        kind: &StoreKind,
        spec: &StoreSpec<'_>,
        errors_metric: &IntCounterVec,
        ctx: &BuildCtx,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Store> {
        let scope = counter_scope(&ctx.scope, spec.key_spec, spec.windows);
        if spec.max_keys == 0 {
            errors.push(ConfigError::new("max_keys", "must be at least 1"));
        }
        let redis = match (spec.policy, spec.redis) {
            (Policy::Redis, None) => {
                errors.push(ConfigError::new(
                    "redis",
                    "policy = \"redis\" needs a [redis] table with `url`",
                ));
                None
            }
            (Policy::Redis, Some(r)) => {
                if r.timeout_ms == 0 {
                    errors.push(ConfigError::new("redis.timeout_ms", "must be at least 1"));
                }
                match RedisStore::get(
                    &ctx.state,
                    &r.url,
                    Duration::from_millis(r.timeout_ms.max(1)),
                ) {
                    Ok(s) => {
                        let prefix = r.prefix.as_deref().unwrap_or(kind.default_prefix);
                        Some((s, format!("{prefix}:{scope:016x}:")))
                    }
                    Err(e) => {
                        errors.push(ConfigError::new("redis.url", e));
                        None
                    }
                }
            }
            (Policy::Local, Some(_)) => {
                errors.push(ConfigError::new(
                    "redis",
                    "only used with policy = \"redis\"",
                ));
                None
            }
            (Policy::Local, None) => None,
        };
        if !errors.is_empty() {
            return None;
        }
        let max_keys = spec.max_keys;
        let local = ctx
            .state
            .get_or_insert(&format!("{}:{scope:016x}:{max_keys}", kind.name), || {
                LocalCounters::new(max_keys)
            });
        Some(Store {
            local,
            redis,
            on_store_error: spec.on_store_error,
            what: kind.what,
            errors: errors_metric.clone(),
        })
    }

    /// Check whether `need` units of `key` fit every window and, when they do, count `cost`
    /// (see [`LocalCounters::hit_n`]). A Redis failure is counted and follows
    /// `on_store_error`.
    pub async fn hit(
        &self,
        key: &str,
        windows: &[Window],
        cost: u64,
        need: u64,
        route: &str,
    ) -> Hit {
        let Some((redis, prefix)) = &self.redis else {
            return Hit::Decided(self.local.hit_n(key, windows, now_ms(), cost, need));
        };
        match redis
            .hit_n(&format!("{prefix}{key}"), windows, cost, need, self.what)
            .await
        {
            Ok(d) => Hit::Decided(d),
            Err(_) => {
                self.errors
                    .with_label_values(&[route, self.on_store_error.label()])
                    .inc();
                match self.on_store_error {
                    OnStoreError::Open => Hit::Open,
                    OnStoreError::Closed => Hit::Closed,
                    OnStoreError::Local => {
                        Hit::Decided(self.local.hit_n(key, windows, now_ms(), cost, need))
                    }
                }
            }
        }
    }

    /// Add `delta` units (negative: a refund) to `key`'s current periods, without a check.
    /// Locally this happens at once; with Redis it is a background task bounded by the
    /// timeout (the hooks that settle a cost are synchronous), and a failure is counted and,
    /// with `on_store_error = "local"`, applied to the local counters instead (where the
    /// requests are counted while Redis is down). Outside a runtime (unit tests) only the
    /// local counters can be changed.
    pub fn add(self: &Arc<Self>, key: &str, windows: &Arc<[Window]>, delta: i64, route: &Arc<str>) {
        if delta == 0 {
            return;
        }
        let Some((redis, prefix)) = &self.redis else {
            self.local.add(key, windows, now_ms(), delta);
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, redis) = (self.clone(), redis.clone());
        let (full, key, windows, route) = (
            format!("{prefix}{key}"),
            key.to_string(),
            windows.clone(),
            route.clone(),
        );
        rt.spawn(async move {
            if redis.add(&full, &windows, delta, store.what).await.is_err() {
                store
                    .errors
                    .with_label_values(&[&*route, store.on_store_error.label()])
                    .inc();
                if store.on_store_error == OnStoreError::Local {
                    store.local.add(&key, &windows, now_ms(), delta);
                }
            }
        });
    }
}

/// Wall-clock milliseconds (the local counters' clock; Redis uses its own).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
