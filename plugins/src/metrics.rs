//! Metrics owned by plugins. The gateway registers [`collectors`] in its registry, so they
//! appear on its `/metrics` with everything else; a custom plugin's metrics join them through
//! [`register`].

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use std::sync::LazyLock;

/// Plugin metrics.
pub struct PluginMetrics {
    /// `tollgate_ratelimit_decisions_total{route,result}`: `allowed`, `limited`, `error`.
    pub ratelimit_decisions: IntCounterVec,
    /// `tollgate_ratelimit_store_errors_total{route,on_store_error}`: the shared store failed
    /// or timed out, and what was done about it.
    pub ratelimit_store_errors: IntCounterVec,
    /// `tollgate_cache_store_errors_total{storage,op}`: a shared cache storage failed or timed
    /// out (`op`: `lookup`, `write`, `update`, `purge`); lookups became misses, writes were
    /// dropped, purges reported the error.
    pub cache_store_errors: IntCounterVec,
    /// `tollgate_response_transforms_total{route,result}`: responses the `response_transform`
    /// plugin buffered, by what became of them: `transformed`, `too_large` (over
    /// `max_body_bytes`: passed through unchanged), `invalid` (not JSON: unchanged).
    pub response_transforms: IntCounterVec,
    /// `tollgate_compressed_responses_total{route,encoding}`: responses the `compress` plugin
    /// encoded, by content coding (`br`, `gzip`, `zstd`).
    pub compressed_responses: IntCounterVec,
    /// `tollgate_external_call_duration_seconds{plugin,route,outcome}`: calls of
    /// `forward_auth` and `ext_proc` to their service; `outcome` is `allowed`, `denied`,
    /// `continued`, `mutated`, `immediate` or `failed`.
    pub external_call_duration: HistogramVec,
    /// `tollgate_external_call_failures_total{plugin,route,reason,failure_mode}`: calls that
    /// failed (`reason`: `connect`, `timeout`, `io`, `too_large`, `status`, `malformed`) and the
    /// failure mode that was applied (`deny`, `allow`).
    pub external_call_failures: IntCounterVec,
    /// `tollgate_forward_auth_cache_total{route,result}`: decision cache lookups of
    /// `forward_auth` (`hit`, `miss`).
    pub forward_auth_cache: IntCounterVec,
    /// `tollgate_ai_tokens_total{route,model,kind}`: tokens of inference answers (`kind`:
    /// `prompt`, `completion`); `model` is one listed in the plugin's `models`, else `other`.
    pub ai_tokens: IntCounterVec,
    /// `tollgate_ai_usage_missing_total{route,reason}`: readable 2xx answers whose usage could
    /// not be known: `no_usage`, `incomplete` (cut short), `too_large` (JSON over
    /// `max_response_bytes`), `encoded` (content-encoded).
    pub ai_usage_missing: IntCounterVec,
    /// `tollgate_token_limit_decisions_total{route,result}`: `allowed`, `limited`, `error`.
    pub token_limit_decisions: IntCounterVec,
    /// `tollgate_token_limit_store_errors_total{route,on_store_error}`: the shared store of
    /// `token_limit` failed or timed out (admission or charge), and the fallback applied.
    pub token_limit_store_errors: IntCounterVec,
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    match IntCounterVec::new(Opts::new(name, help), labels) {
        Ok(c) => c,
        // Names and labels are constants: this only fails if the code here is wrong.
        Err(e) => panic!("invalid metric {name}: {e}"),
    }
}

fn histogram(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    match HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    ) {
        Ok(h) => h,
        // Names, labels and buckets are constants: this only fails if the code here is wrong.
        Err(e) => panic!("invalid metric {name}: {e}"),
    }
}

/// Buckets of external call durations: a service on the request path answers in
/// milliseconds; the largest buckets show timeouts.
const CALL_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// The plugins' metrics.
pub static METRICS: LazyLock<PluginMetrics> = LazyLock::new(|| {
    PluginMetrics {
    ratelimit_decisions: counter(
        "tollgate_ratelimit_decisions_total",
        "Rate-limit decisions by route and result",
        &["route", "result"],
    ),
    ratelimit_store_errors: counter(
        "tollgate_ratelimit_store_errors_total",
        "Shared rate-limit store failures by route and the configured fallback",
        &["route", "on_store_error"],
    ),
    cache_store_errors: counter(
        "tollgate_cache_store_errors_total",
        "Shared response-cache storage failures by storage and operation",
        &["storage", "op"],
    ),
    response_transforms: counter(
        "tollgate_response_transforms_total",
        "Responses buffered by response_transform, by route and result",
        &["route", "result"],
    ),
    compressed_responses: counter(
        "tollgate_compressed_responses_total",
        "Responses compressed by the compress plugin, by route and content coding",
        &["route", "encoding"],
    ),
    external_call_duration: histogram(
        "tollgate_external_call_duration_seconds",
        "Calls of forward_auth and ext_proc to their service, by plugin, route and outcome",
        &["plugin", "route", "outcome"],
        &CALL_BUCKETS,
    ),
    external_call_failures: counter(
        "tollgate_external_call_failures_total",
        "Failed calls of forward_auth and ext_proc by plugin, route, reason and the failure mode applied",
        &["plugin", "route", "reason", "failure_mode"],
    ),
    forward_auth_cache: counter(
        "tollgate_forward_auth_cache_total",
        "forward_auth decision cache lookups by route and result",
        &["route", "result"],
    ),
    ai_tokens: counter(
        "tollgate_ai_tokens_total",
        "Tokens of inference answers by route, model and kind",
        &["route", "model", "kind"],
    ),
    ai_usage_missing: counter(
        "tollgate_ai_usage_missing_total",
        "Inference answers whose token usage could not be read, by route and reason",
        &["route", "reason"],
    ),
    token_limit_decisions: counter(
        "tollgate_token_limit_decisions_total",
        "Token-limit decisions by route and result",
        &["route", "result"],
    ),
    token_limit_store_errors: counter(
        "tollgate_token_limit_store_errors_total",
        "Shared token-limit store failures by route and the configured fallback",
        &["route", "on_store_error"],
    ),
}
});

/// Every plugin metric, for the gateway's registry.
pub fn collectors() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(METRICS.ratelimit_decisions.clone()),
        Box::new(METRICS.ratelimit_store_errors.clone()),
        Box::new(METRICS.cache_store_errors.clone()),
        Box::new(METRICS.response_transforms.clone()),
        Box::new(METRICS.compressed_responses.clone()),
        Box::new(METRICS.external_call_duration.clone()),
        Box::new(METRICS.external_call_failures.clone()),
        Box::new(METRICS.forward_auth_cache.clone()),
        Box::new(METRICS.ai_tokens.clone()),
        Box::new(METRICS.ai_usage_missing.clone()),
        Box::new(METRICS.token_limit_decisions.clone()),
        Box::new(METRICS.token_limit_store_errors.clone()),
    ]
}

/// Metrics registered by plugins outside this crate.
static CUSTOM: LazyLock<Registry> = LazyLock::new(Registry::new);

/// Add a custom plugin's metric to the gateway's `/metrics`. Call it once, when the metric is
/// made (a `LazyLock` in the plugin's own `metrics` module, say), not per plugin instance:
/// a reload builds plugins again. Fails if a metric of that name is already registered.
pub fn register(collector: Box<dyn Collector>) -> prometheus::Result<()> {
    CUSTOM.register(collector)
}

/// The custom plugins' metrics, for the gateway's `/metrics`.
pub fn gather_custom() -> Vec<prometheus::proto::MetricFamily> {
    CUSTOM.gather()
}
