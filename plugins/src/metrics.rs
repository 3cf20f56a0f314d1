//! Metrics owned by plugins. The gateway registers [`collectors`] in its registry, so they
//! appear on its `/metrics` with everything else; a custom plugin's metrics join them through
//! [`register`].

use prometheus::core::Collector;
use prometheus::{IntCounterVec, Opts, Registry};
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
}

fn counter(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    match IntCounterVec::new(Opts::new(name, help), labels) {
        Ok(c) => c,
        // Names and labels are constants: this only fails if the code here is wrong.
        Err(e) => panic!("invalid metric {name}: {e}"),
    }
}

/// The plugins' metrics.
pub static METRICS: LazyLock<PluginMetrics> = LazyLock::new(|| PluginMetrics {
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
});

/// Every plugin metric, for the gateway's registry.
pub fn collectors() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(METRICS.ratelimit_decisions.clone()),
        Box::new(METRICS.ratelimit_store_errors.clone()),
        Box::new(METRICS.cache_store_errors.clone()),
        Box::new(METRICS.response_transforms.clone()),
        Box::new(METRICS.compressed_responses.clone()),
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
