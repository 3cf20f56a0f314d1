//! `auth_failure_limit`: refuse a client address that failed authentication too often,
//! before its credentials are even looked at. A brute-force attempt then costs the
//! attacker a request per failure and the gateway almost nothing once the limit is hit
//! (no password hash, no signature check), while other clients are unaffected.
//!
//! Failures are counted per client address in a fixed window that starts at the first
//! failure; the counts live in a bounded map (least recently used addresses are forgotten
//! past `max_keys`) kept across reloads.

use crate::chain::AuthFailed;
use crate::ttl_cache::TtlCache;
use crate::{parse_config_all, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use http::{HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Registered name.
pub const NAME: &str = "auth_failure_limit";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default = "default_max")]
    max_failures: u32,
    #[serde(default = "default_window")]
    window_seconds: u64,
    #[serde(default = "default_keys")]
    max_keys: usize,
}

fn default_max() -> u32 {
    10
}
fn default_window() -> u64 {
    60
}
fn default_keys() -> usize {
    100_000
}

/// Failures of one address in its current window.
#[derive(Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Failure counts by client address, shared by every instance with the same definition.
pub struct Failures(TtlCache<IpAddr, Window>);

/// The compiled `auth_failure_limit` plugin.
pub struct AuthFailureLimit {
    max: u32,
    window: Duration,
    failures: Arc<Failures>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: Config = parse_config_all(value)?;
    let mut errors = Vec::new();
    if cfg.max_failures == 0 {
        errors.push(ConfigError::new("max_failures", "must be at least 1"));
    }
    if cfg.window_seconds == 0 {
        errors.push(ConfigError::new("window_seconds", "must be at least 1"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let key = format!(
        "{NAME}:{}:{}:{}",
        ctx.scope, cfg.max_failures, cfg.window_seconds
    );
    let failures = ctx
        .state
        .get_or_insert(&key, || Failures(TtlCache::new(cfg.max_keys)));
    Ok(Arc::new(AuthFailureLimit {
        max: cfg.max_failures,
        window: Duration::from_secs(cfg.window_seconds),
        failures,
    }))
}

#[async_trait]
impl Plugin for AuthFailureLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        // Before authentication: a blocked address is refused before any credential check.
        Phase::AccessControl
    }

    async fn request(&self, _req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let Some(ip) = ctx.client_ip else {
            return Flow::Continue;
        };
        let now = Instant::now();
        let Some(w) = self.failures.0.get(&ip, now) else {
            return Flow::Continue;
        };
        if w.failures < self.max || now.duration_since(w.started) >= self.window {
            return Flow::Continue;
        }
        let left = (w.started + self.window).saturating_duration_since(now);
        log::warn!("authentication refused for {ip}: {} failures", w.failures);
        Flow::Respond(
            Answer::error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_auth_failures",
                "too many failed authentication attempts from this address",
            )
            .with_header(
                http::header::RETRY_AFTER,
                HeaderValue::from(left.as_secs().max(1)),
            ),
        )
    }

    fn log(&self, _status: u16, ctx: &mut RequestCtx) {
        let (Some(ip), Some(AuthFailed)) = (ctx.client_ip, ctx.extensions.get::<AuthFailed>())
        else {
            return;
        };
        let now = Instant::now();
        let window = self.window;
        self.failures.0.update(
            &ip,
            now,
            now + window,
            || {
                (
                    ip,
                    Window {
                        started: now,
                        failures: 0,
                    },
                )
            },
            |w| {
                if now.duration_since(w.started) >= window {
                    *w = Window {
                        started: now,
                        failures: 0,
                    };
                }
                w.failures += 1;
            },
        );
    }
}
