//! `rate_limit`: count requests per key over one or more sliding windows, in process
//! (`policy = "local"`) or in Redis shared by every instance (`policy = "redis"`).

pub mod local;
pub mod redis_store;
pub mod store;
pub mod window;

use crate::limit_key::{LimitBySpec, LimitKey};
use crate::metrics::METRICS;
use crate::{parse_config_all, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use http::{HeaderValue, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::sync::Arc;
use store::{Hit, OnStoreError, Policy, RedisConfig, Store, StoreKind, StoreSpec};
pub use window::{windows, Decision, Window};

/// Registered name.
pub const NAME: &str = "rate_limit";

/// Keys counted in the process per limit definition; past it the least recently used key
/// is forgotten (see [`local`]).
const DEFAULT_MAX_KEYS: usize = 100_000;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default, Debug)]
#[serde(rename_all = "snake_case")]
enum HeaderMode {
    #[default]
    XRatelimit,
    Ietf,
    None,
}

/// The store of `rate_limit`.
const KIND: StoreKind = StoreKind {
    name: NAME,
    what: "rate-limit store",
    default_prefix: "tollgate:rl",
};

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RateLimitConfig {
    #[serde(default)]
    limit_by: LimitBySpec,
    #[serde(default)]
    second: Option<u64>,
    #[serde(default)]
    minute: Option<u64>,
    #[serde(default)]
    hour: Option<u64>,
    #[serde(default)]
    day: Option<u64>,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    redis: Option<RedisConfig>,
    #[serde(default)]
    on_store_error: OnStoreError,
    #[serde(default)]
    headers: HeaderMode,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
}

fn default_max_keys() -> usize {
    DEFAULT_MAX_KEYS
}

/// The compiled `rate_limit` plugin.
pub struct RateLimit {
    key: LimitKey,
    windows: Vec<Window>,
    /// This definition's counters: in the process, or Redis with the process as fallback.
    store: Store,
    headers: HeaderMode,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: RateLimitConfig = parse_config_all(value)?;
    let mut errors = Vec::new();
    let key = LimitKey::compile(&cfg.limit_by, "limit_by").map_err(|e| vec![e])?;
    let windows = windows(
        [cfg.second, cfg.minute, cfg.hour, cfg.day],
        u64::MAX,
        &mut errors,
    );
    let store = Store::build(
        &KIND,
        &StoreSpec {
            policy: cfg.policy,
            redis: cfg.redis.as_ref(),
            on_store_error: cfg.on_store_error,
            max_keys: cfg.max_keys,
            key_spec: &key.spec,
            windows: &windows,
        },
        &METRICS.ratelimit_store_errors,
        ctx,
        &mut errors,
    );
    match store {
        Some(store) if errors.is_empty() => Ok(Arc::new(RateLimit {
            key,
            windows,
            store,
            headers: cfg.headers,
        })),
        _ => Err(errors),
    }
}

/// The decision, kept for the response hook.
#[derive(Clone, Copy)]
struct Decided(Decision);

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[async_trait]
impl Plugin for RateLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Limits
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let key = self.key.extract(req, ctx);
        let decision = match self.store.hit(&key, &self.windows, 1, 1, &ctx.route).await {
            Hit::Decided(d) => d,
            Hit::Open => {
                METRICS
                    .ratelimit_decisions
                    .with_label_values(&[&*ctx.route, "error"])
                    .inc();
                return Flow::Continue;
            }
            Hit::Closed => {
                METRICS
                    .ratelimit_decisions
                    .with_label_values(&[&*ctx.route, "error"])
                    .inc();
                return Flow::Respond(
                    Answer::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "rate_limit_unavailable",
                        "the rate-limit store is unavailable",
                    )
                    .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                );
            }
        };
        METRICS
            .ratelimit_decisions
            .with_label_values(&[
                &*ctx.route,
                if decision.allowed {
                    "allowed"
                } else {
                    "limited"
                },
            ])
            .inc();
        ctx.extensions.insert(Decided(decision));
        if decision.allowed {
            Flow::Continue
        } else {
            Flow::Respond(
                Answer::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "API rate limit exceeded",
                )
                .with_header(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(secs(decision.retry_after_ms)),
                ),
            )
        }
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        let Some(Decided(d)) = ctx.extensions.get::<Decided>().copied() else {
            return;
        };
        match self.headers {
            HeaderMode::None => {}
            HeaderMode::XRatelimit => {
                let _ = resp.insert_header("x-ratelimit-limit", d.limit);
                let _ = resp.insert_header("x-ratelimit-remaining", d.remaining);
                let _ = resp.insert_header("x-ratelimit-reset", secs(d.reset_ms));
            }
            HeaderMode::Ietf => {
                let _ = resp.insert_header(
                    "ratelimit-policy",
                    format!("\"default\";q={};w={}", d.limit, d.window_ms / 1000),
                );
                let _ = resp.insert_header(
                    "ratelimit",
                    format!("\"default\";r={};t={}", d.remaining, secs(d.reset_ms)),
                );
            }
        }
    }
}
