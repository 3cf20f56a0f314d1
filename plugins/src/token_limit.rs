//! `token_limit`: a budget of inference tokens per key (`limit_by`, as `rate_limit`) over
//! sliding windows, in process or in Redis (`rate_limit`'s store and failure modes). A request
//! is admitted while the budget is not exhausted (with an estimate: while the estimate fits);
//! its real cost is charged when the answer's usage is known ([`crate::ai`], which this plugin
//! runs itself), correcting the estimate charged at admission.

use crate::ai::{self, Accounting, AiRequest};
use crate::limit_key::{LimitBySpec, LimitKey};
use crate::metrics::METRICS;
use crate::rate_limit::store::{
    Hit, OnStoreError, Policy, RedisConfig, Store, StoreKind, StoreSpec,
};
use crate::rate_limit::{windows, Decision, Window};
use crate::{parse_config_all, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde::Deserialize;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "token_limit";

/// The store of `token_limit`.
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

const KIND: StoreKind = StoreKind {
    name: NAME,
    what: "token-limit store",
    default_prefix: "tollgate:tl",
};

/// `estimate` as written: a number of tokens or `"max_tokens"`.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum EstimateSpec {
    Fixed(u64),
    Named(String),
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct TokenLimitConfig {
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
    estimate: Option<EstimateSpec>,
    #[serde(default)]
    default_estimate: u64,
    #[serde(default)]
    prompt_weight: Option<f64>,
    #[serde(default)]
    completion_weight: Option<f64>,
    #[serde(default = "default_headers")]
    headers: bool,
    #[serde(default)]
    policy: Policy,
    #[serde(default)]
    redis: Option<RedisConfig>,
    #[serde(default)]
    on_store_error: OnStoreError,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    // The accounting keys (`ai_usage`'s).
    #[serde(default)]
    models: Vec<String>,
    #[serde(default)]
    count_stream: bool,
    #[serde(default = "ai::default_max_response_bytes")]
    max_response_bytes: usize,
}

fn default_headers() -> bool {
    true
}
fn default_max_keys() -> usize {
    100_000
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Estimate {
    /// Nothing charged at admission.
    None,
    /// This many tokens.
    Fixed(u64),
    /// The request's `max_completion_tokens`/`max_tokens` (× the completion weight), or the
    /// default when it has none.
    MaxTokens { default: u64 },
}

/// The compiled `token_limit` plugin.
pub struct TokenLimit {
    key: LimitKey,
    windows: Arc<[Window]>,
    store: Arc<Store>,
    estimate: Estimate,
    /// `(prompt, completion)` weights; `None`: the cost is `total_tokens`.
    weights: Option<(f64, f64)>,
    headers: bool,
    accounting: Arc<Accounting>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: TokenLimitConfig = parse_config_all(value)?;
    let mut errors = Vec::new();
    let key = LimitKey::compile(&cfg.limit_by, "limit_by").map_err(|e| vec![e])?;
    let windows = windows(
        [cfg.second, cfg.minute, cfg.hour, cfg.day],
        // The local counters are 32-bit.
        u64::from(u32::MAX),
        &mut errors,
    );
    let estimate = match &cfg.estimate {
        None => Estimate::None,
        Some(EstimateSpec::Fixed(0)) => Estimate::None,
        Some(EstimateSpec::Fixed(n)) => Estimate::Fixed(*n),
        Some(EstimateSpec::Named(s)) if s == "max_tokens" => Estimate::MaxTokens {
            default: cfg.default_estimate,
        },
        Some(EstimateSpec::Named(s)) => {
            errors.push(ConfigError::new(
                "estimate",
                format!("{s:?}: expected a number of tokens or \"max_tokens\""),
            ));
            Estimate::None
        }
    };
    if cfg.default_estimate > 0 && !matches!(estimate, Estimate::MaxTokens { .. }) {
        errors.push(ConfigError::new(
            "default_estimate",
            "only used with estimate = \"max_tokens\"",
        ));
    }
    let weights = match (cfg.prompt_weight, cfg.completion_weight) {
        (None, None) => None,
        (p, c) => {
            for (name, w) in [("prompt_weight", p), ("completion_weight", c)] {
                if w.is_some_and(|w| !w.is_finite() || !(0.0..=1000.0).contains(&w)) {
                    errors.push(ConfigError::new(name, "must be between 0 and 1000"));
                }
            }
            Some((p.unwrap_or(1.0), c.unwrap_or(1.0)))
        }
    };
    let accounting = Accounting::new(
        ai::AccountingSpec {
            models: cfg.models,
            count_stream: cfg.count_stream,
            max_response_bytes: cfg.max_response_bytes,
        },
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
        &METRICS.token_limit_store_errors,
        ctx,
        &mut errors,
    );
    match store {
        Some(store) if errors.is_empty() => Ok(Arc::new(TokenLimit {
            key,
            windows: windows.into(),
            store: Arc::new(store),
            estimate,
            weights,
            headers: cfg.headers,
            accounting,
        })),
        _ => Err(errors),
    }
}

/// The admission decision, for the response headers.
#[derive(Clone, Copy)]
struct Decided(Decision);

/// An admitted request whose cost is not settled yet.
#[derive(Clone)]
struct Admitted {
    key: String,
    /// Tokens charged at admission (the estimate).
    charged: u64,
    /// The response's status, once known.
    status: u16,
}

fn secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

impl TokenLimit {
    fn estimate(&self, ctx: &RequestCtx) -> u64 {
        match self.estimate {
            Estimate::None => 0,
            Estimate::Fixed(n) => n,
            Estimate::MaxTokens { default } => {
                match ctx.extensions.get::<AiRequest>().and_then(|r| r.max_tokens) {
                    Some(m) => {
                        let w = self.weights.map_or(1.0, |w| w.1);
                        (m as f64 * w).ceil().min(u32::MAX as f64) as u64
                    }
                    None => default,
                }
            }
        }
    }

    /// The cost of an answer's usage.
    fn cost(&self, u: &ai::Usage) -> u64 {
        match self.weights {
            None if u.total_tokens > 0 => u.total_tokens,
            None => u.prompt_tokens.saturating_add(u.completion_tokens),
            Some((p, c)) => (u.prompt_tokens as f64 * p + u.completion_tokens as f64 * c)
                .ceil()
                .min(u32::MAX as f64) as u64,
        }
    }

    async fn admit(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let key = self.key.extract(req, ctx);
        let estimate = self.estimate(ctx);
        let hit = self
            .store
            .hit(&key, &self.windows, estimate, estimate.max(1), &ctx.route)
            .await;
        let decision = match hit {
            Hit::Decided(d) => d,
            Hit::Open => {
                self.count(ctx, "error");
                return Flow::Continue;
            }
            Hit::Closed => {
                self.count(ctx, "error");
                return Flow::Respond(
                    Answer::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "token_limit_unavailable",
                        "the token-limit store is unavailable",
                    )
                    .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1")),
                );
            }
        };
        ctx.extensions.insert(Decided(decision));
        if decision.allowed {
            self.count(ctx, "allowed");
            ctx.extensions.insert(Admitted {
                key,
                charged: estimate,
                status: 0,
            });
            Flow::Continue
        } else {
            self.count(ctx, "limited");
            Flow::Respond(
                Answer::error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "token_limit_exceeded",
                    "token budget exhausted",
                )
                .with_header(
                    http::header::RETRY_AFTER,
                    HeaderValue::from(secs(decision.retry_after_ms)),
                ),
            )
        }
    }

    fn count(&self, ctx: &RequestCtx, result: &str) {
        METRICS
            .token_limit_decisions
            .with_label_values(&[&*ctx.route, result])
            .inc();
    }

    /// Charge the real cost, once: the usage when known; else nothing more than the estimate
    /// for a 2xx answer or one that never came (status 0), and a refund of it for any other
    /// status (an error answer used no tokens).
    fn settle(&self, ctx: &mut RequestCtx, status: u16) {
        let Some(adm) = ctx.extensions.remove::<Admitted>() else {
            return;
        };
        let status = if adm.status != 0 { adm.status } else { status };
        let cost = match ai::finish(ctx) {
            Some(u) => self.cost(&u),
            None if status == 0 || (200..300).contains(&status) => adm.charged,
            None => 0,
        };
        let delta =
            i64::try_from(cost).unwrap_or(i64::MAX) - i64::try_from(adm.charged).unwrap_or(0);
        self.store.add(&adm.key, &self.windows, delta, &ctx.route);
    }
}

#[async_trait]
impl Plugin for TokenLimit {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Limits
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        self.admit(req, ctx).await
    }

    async fn request_session(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        if let Err(answer) = ai::read_request(session, ctx).await {
            return Flow::Respond(answer);
        }
        self.admit(session.req_header(), ctx).await
    }

    fn upstream_request(&self, req: &mut RequestHeader, _ctx: &mut RequestCtx) {
        ai::upstream_request(req);
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        if let Some(adm) = ctx.extensions.get_mut::<Admitted>() {
            adm.status = resp.status.as_u16();
            self.accounting.start(resp, ctx);
        }
        if !self.headers {
            return;
        }
        let Some(Decided(d)) = ctx.extensions.get::<Decided>().copied() else {
            return;
        };
        // Names built once (a &str name is parsed on every insert).
        let _ = resp.insert_header(LIMIT_TOKENS, d.limit);
        let _ = resp.insert_header(REMAINING_TOKENS, d.remaining);
        let _ = resp.insert_header(RESET_TOKENS, secs(d.reset_ms));
    }

    fn wants_response_body(&self) -> bool {
        true
    }

    fn response_body(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        self.accounting.feed(body, end_of_stream, ctx);
        if end_of_stream {
            // Charged before the last bytes go to the client: its next request sees it.
            self.settle(ctx, 0);
        }
    }

    fn log(&self, status: u16, ctx: &mut RequestCtx) {
        self.settle(ctx, status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, Harness, Outcome};

    fn answer(h: &Harness, ctx: &mut RequestCtx, tokens: (u64, u64)) -> Vec<u8> {
        let mut resp = testing::response(200, &[("content-type", "application/json")]);
        h.response(&mut resp, ctx);
        let body = format!(
            r#"{{"usage":{{"prompt_tokens":{},"completion_tokens":{},"total_tokens":{}}}}}"#,
            tokens.0,
            tokens.1,
            tokens.0 + tokens.1
        );
        let out = h.response_body(&[body.as_bytes()], ctx);
        h.log(200, ctx);
        out
    }

    fn send(h: &Harness, max_tokens: Option<u64>) -> (Option<u16>, RequestCtx) {
        let mut ctx = testing::ctx();
        ctx.extensions.insert(AiRequest {
            model: None,
            max_tokens,
        });
        let mut req = testing::request("POST", "/v1/chat/completions", &[]);
        let status = match h.request(&mut req, &mut ctx) {
            Outcome::Upstream => None,
            Outcome::Answered(stop) => Some(stop.answer.status.as_u16()),
        };
        (status, ctx)
    }

    #[test]
    fn admitted_while_budget_left_charged_by_usage() {
        let h = Harness::new([testing::build(build, "minute = 100").unwrap()]);
        // 30 tokens each: 0, 30, 60, 90 used before requests 1-4 (all < 100), then 120.
        for i in 0..4 {
            let (status, mut ctx) = send(&h, None);
            assert_eq!(status, None, "request {i}");
            answer(&h, &mut ctx, (10, 20));
        }
        let (status, ctx) = send(&h, None);
        assert_eq!(status, Some(429));
        let d = ctx.extensions.get::<Decided>().unwrap().0;
        assert_eq!((d.limit, d.remaining), (100, 0));
    }

    #[test]
    fn estimate_reserved_then_corrected() {
        let h = Harness::new([testing::build(
            build,
            r#"minute = 100
estimate = "max_tokens"
default_estimate = 50"#,
        )
        .unwrap()]);
        // Two in flight with max_tokens 40: 80 reserved; a third (40) does not fit.
        let (s1, mut c1) = send(&h, Some(40));
        let (s2, mut c2) = send(&h, Some(40));
        let (s3, _) = send(&h, Some(40));
        assert_eq!((s1, s2, s3), (None, None, Some(429)));
        // The first used 15 tokens: 25 refunded, so 15 + 40 = 55 used; the fourth reserves
        // 40 more: 5 left.
        answer(&h, &mut c1, (5, 10));
        let (s4, c4) = send(&h, Some(40));
        assert_eq!(s4, None);
        assert_eq!(c4.extensions.get::<Decided>().unwrap().0.remaining, 5);
        // An error answer refunds its estimate.
        let mut resp = testing::response(503, &[("content-type", "application/json")]);
        h.response(&mut resp, &mut c2);
        h.response_body(&[b"{}"], &mut c2);
        h.log(503, &mut c2);
        // The error answer (503) refunded its 40: 15 + 40 used, 45 left. No max_tokens: the
        // default estimate (50) does not fit; 45 does.
        let (s5, _) = send(&h, None);
        assert_eq!(s5, Some(429));
        let (s6, _) = send(&h, Some(45));
        assert_eq!(s6, None);
    }

    #[test]
    fn headers_on_the_response() {
        let h = Harness::new([testing::build(build, "hour = 1000\nestimate = 100").unwrap()]);
        let (_, mut ctx) = send(&h, None);
        let mut resp = testing::response(200, &[]);
        h.response(&mut resp, &mut ctx);
        assert_eq!(resp.headers["x-ratelimit-limit-tokens"], "1000");
        assert_eq!(resp.headers["x-ratelimit-remaining-tokens"], "900");
        let reset: u64 = resp.headers["x-ratelimit-reset-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=3600).contains(&reset), "{reset}");
    }

    #[test]
    fn config_errors_have_paths() {
        let errors = testing::build(
            build,
            r#"second = 0
estimate = "lots"
default_estimate = 5
prompt_weight = -1.0
policy = "redis"
models = [""]"#,
        )
        .err()
        .unwrap();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "second",
                "estimate",
                "default_estimate",
                "prompt_weight",
                "models[0]",
                "redis"
            ]
        );
        let errors = testing::build(build, "minute = 10\nlimit = 5")
            .err()
            .unwrap();
        assert_eq!(errors[0].path, "limit");
        let errors = testing::build(build, "estimate = 10").err().unwrap();
        assert_eq!(errors[0].path, "");
        let errors = testing::build(build, "day = 5000000000").err().unwrap();
        assert_eq!(errors[0].path, "day");
    }
}
