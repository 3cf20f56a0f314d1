//! `concurrency`: at most `max` requests in flight per key; the rest get 503 at once.

use crate::limit_key::{LimitBySpec, LimitKey};
use crate::{parse_config_all, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use http::{HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use pingora_limits::inflight::{Guard, Inflight};
use serde::Deserialize;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "concurrency";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConcurrencyConfig {
    max: u32,
    #[serde(default = "default_by")]
    limit_by: LimitBySpec,
}

fn default_by() -> LimitBySpec {
    LimitBySpec::One("route".to_string())
}

/// The compiled `concurrency` plugin. Counts live in the instance: a reload starts from the
/// requests that arrive after it (in-flight ones release the old instance's counts).
pub struct Concurrency {
    max: isize,
    key: LimitKey,
    inflight: Inflight,
}

/// Held in the request context; dropping it (at the end of the request) releases the slot.
#[derive(Clone)]
struct Slot(#[allow(dead_code)] Arc<Guard>);

/// Constructor for the registry.
pub fn build(value: &toml::Value, _ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: ConcurrencyConfig = parse_config_all(value)?;
    if cfg.max == 0 {
        return Err(vec![ConfigError::new("max", "must be at least 1")]);
    }
    let key = LimitKey::compile(&cfg.limit_by, "limit_by").map_err(|e| vec![e])?;
    Ok(Arc::new(Concurrency {
        max: cfg.max as isize,
        key,
        inflight: Inflight::new(),
    }))
}

#[async_trait]
impl Plugin for Concurrency {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Limits
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let key = self.key.extract(req, ctx);
        let (guard, count) = self.inflight.incr(&key, 1);
        if count > self.max {
            drop(guard);
            return Flow::Respond(
                Answer::error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "overloaded",
                    "too many requests in flight, retry shortly",
                )
                .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
            );
        }
        ctx.extensions.insert(Slot(Arc::new(guard)));
        Flow::Continue
    }
}
