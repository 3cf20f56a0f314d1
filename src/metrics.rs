//! Prometheus metrics. Label values are route and upstream names from the config, never
//! paths or client data, so cardinality stays bounded.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};
use std::sync::LazyLock;
use tollgate_plugins::cache::storage::CacheStore;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// `tollgate_http_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `tollgate_http_request_duration_seconds{route}`.
    pub request_duration: HistogramVec,
    /// `tollgate_upstream_request_duration_seconds{upstream}`: until the response header.
    pub upstream_duration: HistogramVec,
    /// `tollgate_upstream_health{upstream,backend}`: 1 healthy, 0 not.
    pub upstream_health: IntGaugeVec,
    /// `tollgate_config_reloads_total{result}`.
    pub config_reloads: IntCounterVec,
    /// `tollgate_gateway_errors_total{route,error}`: answers made by the gateway itself.
    pub gateway_errors: IntCounterVec,
    /// `tollgate_auth_failures_total{route,plugin,reason}`.
    pub auth_failures: IntCounterVec,
    /// `tollgate_requests_rejected_total{route,plugin,status}`: error answers from plugins.
    pub requests_rejected: IntCounterVec,
    /// `tollgate_access_log_dropped_total`: lines dropped because the writer fell behind.
    pub access_log_dropped: IntCounter,
    /// `tollgate_upstream_ejections_total{upstream,backend}`: passive-health ejections.
    pub upstream_ejections: IntCounterVec,
    /// `tollgate_upstream_circuit_state{upstream}`: 0 closed, 1 open, 2 half-open.
    pub circuit_state: IntGaugeVec,
    /// `tollgate_cache_requests_total{route,status,storage}`.
    pub cache_requests: IntCounterVec,
    /// `tollgate_cache_bytes`: bytes stored in the response cache.
    pub cache_bytes: prometheus::IntGauge,
    /// `tollgate_cache_objects`: objects stored in the response cache.
    pub cache_objects: prometheus::IntGauge,
    /// `tollgate_cache_evictions_total`: objects evicted to stay within the budget.
    pub cache_evictions: prometheus::IntCounter,
    /// `tollgate_downstream_connections`: client connections open.
    pub downstream_connections: prometheus::IntGauge,
    /// `tollgate_connections_refused_total{reason}`: over `max_connections` (`listener`) or
    /// `max_connections_per_ip` (`client_address`).
    pub connections_refused: IntCounterVec,
    /// `tollgate_request_heads_refused_total{reason}`: `header_timeout`, `header_too_large`.
    pub request_heads_refused: IntCounterVec,
    /// `tollgate_upstream_retries_total{upstream,cause}`: retries decided, by cause
    /// (`connect`, `reused_connection`, `status`, `timeout`).
    pub upstream_retries: IntCounterVec,
    /// `tollgate_upstream_dns_resolutions_total{upstream,result}`: background resolutions of
    /// backend names (`changed`, `unchanged`, `failed`).
    pub dns_resolutions: IntCounterVec,
    /// `tollgate_split_body_too_large_total{route}`: bodies a split could not read.
    pub split_body_too_large: IntCounterVec,
    /// `tollgate_log_lines_suppressed_total{target}`: log lines left out by the per-call-site
    /// rate limit.
    pub log_lines_suppressed: IntCounterVec,
    /// `tollgate_fallbacks_total{route,from,to,cause}`: requests moved to the next fallback
    /// target (`cause`: `connect`, `timeout`, `429`, `5xx`, `unavailable`, `queue`).
    pub fallbacks: IntCounterVec,
    /// `tollgate_body_over_limit_total{route,action}`: bodies over a route's
    /// `max_body_bytes` (`action`: `reject`, `default_target`).
    pub body_over_limit: IntCounterVec,
    /// `tollgate_upstream_stream_timeouts_total{route,kind}`: `first_byte` and `idle`
    /// timeouts of routes with `first_byte_timeout_ms` / `idle_timeout_ms`.
    pub stream_timeouts: IntCounterVec,
    /// `tollgate_upstream_queue_rejections_total{upstream,reason}`: requests refused by an
    /// upstream's `max_concurrent_requests` (`queue_full`, `queue_timeout`).
    pub queue_rejections: IntCounterVec,
    /// `tollgate_upstream_queued_requests{upstream}`: requests waiting for a slot.
    pub queued: IntGaugeVec,
}

const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

fn build() -> Result<Metrics, prometheus::Error> {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new(
            "tollgate_http_requests_total",
            "Requests by route, method and status",
        ),
        &["route", "method", "status"],
    )?;
    let request_duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_http_request_duration_seconds",
            "Time from request start to the end of the response",
        )
        .buckets(BUCKETS.to_vec()),
        &["route"],
    )?;
    let upstream_duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_upstream_request_duration_seconds",
            "Time from choosing a backend to its response header",
        )
        .buckets(BUCKETS.to_vec()),
        &["upstream"],
    )?;
    let upstream_health = IntGaugeVec::new(
        Opts::new(
            "tollgate_upstream_health",
            "1 when the backend passes health checks",
        ),
        &["upstream", "backend"],
    )?;
    let config_reloads = IntCounterVec::new(
        Opts::new("tollgate_config_reloads_total", "Config reloads by result"),
        &["result"],
    )?;
    let gateway_errors = IntCounterVec::new(
        Opts::new(
            "tollgate_gateway_errors_total",
            "Error answers made by the gateway, by route and error code",
        ),
        &["route", "error"],
    )?;
    let auth_failures = IntCounterVec::new(
        Opts::new(
            "tollgate_auth_failures_total",
            "Requests refused by an authentication or authorization plugin, by reason",
        ),
        &["route", "plugin", "reason"],
    )?;
    let requests_rejected = IntCounterVec::new(
        Opts::new(
            "tollgate_requests_rejected_total",
            "Requests refused by a plugin, by route, plugin and status",
        ),
        &["route", "plugin", "status"],
    )?;
    let upstream_ejections = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_ejections_total",
            "Backends ejected by passive health checks",
        ),
        &["upstream", "backend"],
    )?;
    let circuit_state = IntGaugeVec::new(
        Opts::new(
            "tollgate_upstream_circuit_state",
            "Circuit breaker: 0 closed, 1 open, 2 half-open",
        ),
        &["upstream"],
    )?;
    let cache_requests = IntCounterVec::new(
        Opts::new(
            "tollgate_cache_requests_total",
            "Requests on cached routes by cache status and storage",
        ),
        &["route", "status", "storage"],
    )?;
    let cache_bytes =
        prometheus::IntGauge::new("tollgate_cache_bytes", "Bytes stored in the response cache")?;
    let cache_objects = prometheus::IntGauge::new(
        "tollgate_cache_objects",
        "Objects stored in the response cache",
    )?;
    let cache_evictions = IntCounter::new(
        "tollgate_cache_evictions_total",
        "Cache objects evicted to stay within cache_max_bytes",
    )?;
    let downstream_connections =
        prometheus::IntGauge::new("tollgate_downstream_connections", "Client connections open")?;
    let connections_refused = IntCounterVec::new(
        Opts::new(
            "tollgate_connections_refused_total",
            "Client connections refused by max_connections or max_connections_per_ip",
        ),
        &["reason"],
    )?;
    let request_heads_refused = IntCounterVec::new(
        Opts::new(
            "tollgate_request_heads_refused_total",
            "Request heads refused before parsing: too slow or too large",
        ),
        &["reason"],
    )?;
    let upstream_retries = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_retries_total",
            "Retries of upstream attempts, by upstream and cause",
        ),
        &["upstream", "cause"],
    )?;
    let dns_resolutions = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_dns_resolutions_total",
            "Background resolutions of backend host names, by upstream and result",
        ),
        &["upstream", "result"],
    )?;
    let split_body_too_large = IntCounterVec::new(
        Opts::new(
            "tollgate_split_body_too_large_total",
            "Requests whose body was too large (or chunked) to match split rules on, by route",
        ),
        &["route"],
    )?;
    let log_lines_suppressed = IntCounterVec::new(
        Opts::new(
            "tollgate_log_lines_suppressed_total",
            "Log lines left out by the once-a-second-per-call-site limit",
        ),
        &["target"],
    )?;
    let fallbacks = IntCounterVec::new(
        Opts::new(
            "tollgate_fallbacks_total",
            "Requests moved to a route's next fallback target, by route, targets and cause",
        ),
        &["route", "from", "to", "cause"],
    )?;
    let body_over_limit = IntCounterVec::new(
        Opts::new(
            "tollgate_body_over_limit_total",
            "Request bodies over a route's max_body_bytes (or chunked), by route and action",
        ),
        &["route", "action"],
    )?;
    let stream_timeouts = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_stream_timeouts_total",
            "First-byte and idle timeouts of upstream responses, by route and kind",
        ),
        &["route", "kind"],
    )?;
    let queue_rejections = IntCounterVec::new(
        Opts::new(
            "tollgate_upstream_queue_rejections_total",
            "Requests refused by an upstream's concurrency limit, by upstream and reason",
        ),
        &["upstream", "reason"],
    )?;
    let queued = IntGaugeVec::new(
        Opts::new(
            "tollgate_upstream_queued_requests",
            "Requests waiting for a slot of an upstream's max_concurrent_requests",
        ),
        &["upstream"],
    )?;
    let access_log_dropped = IntCounter::new(
        "tollgate_access_log_dropped_total",
        "Access log lines dropped because the writer could not keep up",
    )?;
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(request_duration.clone()))?;
    registry.register(Box::new(upstream_duration.clone()))?;
    registry.register(Box::new(upstream_health.clone()))?;
    registry.register(Box::new(config_reloads.clone()))?;
    registry.register(Box::new(gateway_errors.clone()))?;
    registry.register(Box::new(access_log_dropped.clone()))?;
    registry.register(Box::new(auth_failures.clone()))?;
    registry.register(Box::new(requests_rejected.clone()))?;
    registry.register(Box::new(cache_requests.clone()))?;
    registry.register(Box::new(upstream_ejections.clone()))?;
    registry.register(Box::new(circuit_state.clone()))?;
    registry.register(Box::new(cache_bytes.clone()))?;
    registry.register(Box::new(cache_objects.clone()))?;
    registry.register(Box::new(cache_evictions.clone()))?;
    registry.register(Box::new(downstream_connections.clone()))?;
    registry.register(Box::new(connections_refused.clone()))?;
    registry.register(Box::new(request_heads_refused.clone()))?;
    registry.register(Box::new(log_lines_suppressed.clone()))?;
    registry.register(Box::new(upstream_retries.clone()))?;
    registry.register(Box::new(split_body_too_large.clone()))?;
    registry.register(Box::new(dns_resolutions.clone()))?;
    registry.register(Box::new(fallbacks.clone()))?;
    registry.register(Box::new(body_over_limit.clone()))?;
    registry.register(Box::new(stream_timeouts.clone()))?;
    registry.register(Box::new(queue_rejections.clone()))?;
    registry.register(Box::new(queued.clone()))?;
    for c in tollgate_plugins::metrics::collectors() {
        registry.register(c)?;
    }
    // Both outcomes show from the start, so a dashboard can alert on failures going up.
    config_reloads.with_label_values(&["success"]);
    config_reloads.with_label_values(&["failure"]);
    Ok(Metrics {
        registry,
        requests,
        request_duration,
        upstream_duration,
        upstream_health,
        config_reloads,
        gateway_errors,
        auth_failures,
        requests_rejected,
        access_log_dropped,
        upstream_ejections,
        circuit_state,
        cache_requests,
        cache_bytes,
        cache_objects,
        cache_evictions,
        downstream_connections,
        connections_refused,
        request_heads_refused,
        log_lines_suppressed,
        upstream_retries,
        split_body_too_large,
        dns_resolutions,
        fallbacks,
        body_over_limit,
        stream_timeouts,
        queue_rejections,
        queued,
    })
}

/// The process's metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| match build() {
    Ok(m) => m,
    // Names and labels are constants: this only fails if the code above is wrong.
    Err(e) => panic!("metric definitions are invalid: {e}"),
});

impl Metrics {
    /// The route's duration histogram, resolved once per compiled route.
    pub fn route_duration(&self, route: &str) -> Histogram {
        self.request_duration.with_label_values(&[route])
    }

    /// The upstream's duration histogram, resolved once per compiled route.
    pub fn upstream_histogram(&self, upstream: &str) -> Histogram {
        self.upstream_duration.with_label_values(&[upstream])
    }

    /// Prometheus text exposition of every metric; `cache` is the response cache, if the
    /// config has one.
    pub fn render(&self, cache: Option<&CacheStore>) -> Vec<u8> {
        // Storage figures are read when scraped, not kept up to date per request.
        if let Some(cache) = cache {
            let storage = &cache.storage;
            self.cache_bytes.set(storage.bytes() as i64);
            self.cache_objects.set(storage.objects() as i64);
            let evicted = storage.evictions();
            let counted = self.cache_evictions.get();
            if evicted > counted {
                self.cache_evictions.inc_by(evicted - counted);
            }
        }
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(tollgate_plugins::metrics::gather_custom());
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("could not encode metrics: {e}");
        }
        out
    }
}

/// `tollgate_http_requests_total` handles of one route for the usual answer (200) to each
/// method label, resolved when the config is compiled so the common case skips the label
/// lookup (a hash and a lock) on every request.
pub struct RouteCounters {
    ok: Vec<(&'static str, prometheus::IntCounter)>,
}

impl RouteCounters {
    /// Handles for `route`.
    pub fn new(route: &str) -> Self {
        RouteCounters {
            ok: ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"]
                .into_iter()
                .map(|m| (m, METRICS.requests.with_label_values(&[route, m, "200"])))
                .collect(),
        }
    }

    /// Count one request.
    pub fn count(&self, route: &str, method: &'static str, status: &str) {
        if status == "200" {
            if let Some((_, c)) = self.ok.iter().find(|(m, _)| *m == method) {
                c.inc();
                return;
            }
        }
        METRICS
            .requests
            .with_label_values(&[route, method, status])
            .inc();
    }
}

/// Method label: the standard methods by name, anything else as `OTHER` (bounded labels).
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        http::Method::CONNECT => "CONNECT",
        http::Method::TRACE => "TRACE",
        _ => "OTHER",
    }
}
