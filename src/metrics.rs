//! Prometheus metrics. Label values are route and upstream names from the config, never
//! paths or client data, so cardinality stays bounded.

use prometheus::{
    Counter, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::sync::{Arc, LazyLock, OnceLock};
use std::time::Duration;
use tollgate_plugins::cache::storage::CacheStore;

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    /// `tollgate_http_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `tollgate_http_request_duration_seconds{route,upstream,status_class}`.
    pub request_duration: HistogramVec,
    /// `tollgate_gateway_overhead_seconds{route}`: request time minus upstream time.
    pub overhead: HistogramVec,
    /// `tollgate_http_request_bytes_total{route}`: request body bytes received.
    pub request_bytes: IntCounterVec,
    /// `tollgate_http_response_bytes_total{route}`: response body bytes sent.
    pub response_bytes: IntCounterVec,
    /// `tollgate_http_requests_in_flight`: requests started and not yet finished.
    pub in_flight: IntGauge,
    /// `tollgate_build_info{version}`: always 1.
    pub build_info: IntGaugeVec,
    /// `tollgate_config_last_reload_timestamp_seconds`: when the running config was loaded.
    pub config_timestamp: Gauge,
    /// `tollgate_config_info{hash}`: 1 for the running config's hash.
    pub config_info: IntGaugeVec,
    /// `process_cpu_seconds_total`: user and system CPU time (read when scraped).
    pub process_cpu: Counter,
    /// `process_resident_memory_bytes` (read when scraped).
    pub process_rss: IntGauge,
    /// `process_open_fds` (read when scraped).
    pub process_fds: IntGauge,
    /// `tollgate_tracing_spans_exported_total`: spans the collector accepted.
    pub spans_exported: IntCounter,
    /// `tollgate_tracing_spans_dropped_total{reason}`: spans never exported (`queue_full`,
    /// `export_failed`).
    pub spans_dropped: IntCounterVec,
    /// `tollgate_upstream_attempt_duration_seconds{upstream,backend,outcome}`: each try at
    /// a backend, from choosing it to the end of its response (or its failure).
    pub attempt_duration: HistogramVec,
    /// Held while the process figures are read, so concurrent scrapes count CPU time once.
    process_lock: std::sync::Mutex<()>,
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

/// Buckets of the gateway's own time: finer, since it is usually well under a millisecond.
const OVERHEAD_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
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
            "Time from request start to the end of the response, by route, upstream and status class",
        )
        .buckets(BUCKETS.to_vec()),
        &["route", "upstream", "status_class"],
    )?;
    let overhead = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_gateway_overhead_seconds",
            "Time spent in the gateway: request duration minus the upstream's time",
        )
        .buckets(OVERHEAD_BUCKETS.to_vec()),
        &["route"],
    )?;
    let request_bytes = IntCounterVec::new(
        Opts::new(
            "tollgate_http_request_bytes_total",
            "Request body bytes received, by route",
        ),
        &["route"],
    )?;
    let response_bytes = IntCounterVec::new(
        Opts::new(
            "tollgate_http_response_bytes_total",
            "Response body bytes sent, by route",
        ),
        &["route"],
    )?;
    let in_flight = IntGauge::new(
        "tollgate_http_requests_in_flight",
        "Requests started and not yet finished",
    )?;
    let build_info = IntGaugeVec::new(
        Opts::new("tollgate_build_info", "Always 1; the version is the label"),
        &["version"],
    )?;
    let config_timestamp = Gauge::new(
        "tollgate_config_last_reload_timestamp_seconds",
        "Unix time the running config was loaded (start or last successful reload)",
    )?;
    let config_info = IntGaugeVec::new(
        Opts::new(
            "tollgate_config_info",
            "Always 1; the hash of the running config's text is the label",
        ),
        &["hash"],
    )?;
    let process_cpu = Counter::new(
        "process_cpu_seconds_total",
        "User and system CPU time spent, in seconds",
    )?;
    let process_rss = IntGauge::new(
        "process_resident_memory_bytes",
        "Resident memory size in bytes",
    )?;
    let process_fds = IntGauge::new("process_open_fds", "Open file descriptors")?;
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
    let spans_exported = IntCounter::new(
        "tollgate_tracing_spans_exported_total",
        "Trace spans the collector accepted",
    )?;
    let spans_dropped = IntCounterVec::new(
        Opts::new(
            "tollgate_tracing_spans_dropped_total",
            "Trace spans never exported, by reason (queue_full, export_failed)",
        ),
        &["reason"],
    )?;
    let attempt_duration = HistogramVec::new(
        HistogramOpts::new(
            "tollgate_upstream_attempt_duration_seconds",
            "Each try at a backend, from choosing it to the end of its response or its failure",
        )
        .buckets(BUCKETS.to_vec()),
        &["upstream", "backend", "outcome"],
    )?;
    let access_log_dropped = IntCounter::new(
        "tollgate_access_log_dropped_total",
        "Access log lines dropped because the writer could not keep up",
    )?;
    registry.register(Box::new(requests.clone()))?;
    registry.register(Box::new(request_duration.clone()))?;
    registry.register(Box::new(overhead.clone()))?;
    registry.register(Box::new(request_bytes.clone()))?;
    registry.register(Box::new(response_bytes.clone()))?;
    registry.register(Box::new(in_flight.clone()))?;
    registry.register(Box::new(build_info.clone()))?;
    registry.register(Box::new(config_timestamp.clone()))?;
    registry.register(Box::new(config_info.clone()))?;
    registry.register(Box::new(process_cpu.clone()))?;
    registry.register(Box::new(process_rss.clone()))?;
    registry.register(Box::new(process_fds.clone()))?;
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
    registry.register(Box::new(spans_exported.clone()))?;
    registry.register(Box::new(spans_dropped.clone()))?;
    registry.register(Box::new(attempt_duration.clone()))?;
    for c in tollgate_plugins::metrics::collectors() {
        registry.register(c)?;
    }
    // Both outcomes show from the start, so a dashboard can alert on failures going up.
    config_reloads.with_label_values(&["success"]);
    config_reloads.with_label_values(&["failure"]);
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    Ok(Metrics {
        registry,
        requests,
        request_duration,
        overhead,
        request_bytes,
        response_bytes,
        in_flight,
        build_info,
        config_timestamp,
        config_info,
        process_cpu,
        process_rss,
        process_fds,
        spans_exported,
        spans_dropped,
        attempt_duration,
        process_lock: std::sync::Mutex::new(()),
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
    /// Record that the config with this text is now running (start, successful reload).
    pub fn config_loaded(&self, text: &str) {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(text.as_bytes());
        let hash: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        self.config_info.reset();
        self.config_info.with_label_values(&[&hash]).set(1);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.config_timestamp.set(now);
    }

    /// Process figures from `/proc/self`, read when scraped.
    fn read_process(&self) {
        let _one_at_a_time = tollgate_plugins::sync::lock(&self.process_lock);
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            // Fields after the command (which is in parentheses and may hold spaces):
            // state is field 3, utime 14, stime 15.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            // SAFETY: sysconf only reads a system constant.
            let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
            if hz > 0 {
                let cpu = (ticks(11) + ticks(12)) as f64 / hz as f64;
                let counted = self.process_cpu.get();
                if cpu > counted {
                    self.process_cpu.inc_by(cpu - counted);
                }
            }
        }
        if let Ok(statm) = std::fs::read_to_string("/proc/self/statm") {
            // SAFETY: sysconf only reads a system constant.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0);
            let pages = statm
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<i64>().ok())
                .unwrap_or(0);
            self.process_rss.set(pages * page);
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            // Less the descriptor reading the directory.
            self.process_fds.set(fds.count() as i64 - 1);
        }
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
        self.read_process();
        let mut out = Vec::new();
        let mut families = self.registry.gather();
        families.extend(tollgate_plugins::metrics::gather_custom());
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            log::error!("could not encode metrics: {e}");
        }
        out
    }
}

/// The standard methods whose 200 counters are kept per route.
const COUNTED_METHODS: [&str; 7] = ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH"];

/// `tollgate_http_requests_total` handles of one route for the usual answer (200) to each
/// method label, resolved on first use and then kept, so the common case skips the label
/// lookup (a hash and a lock) on every request, and no zero series is made for a method a
/// route never sees.
#[derive(Default)]
pub struct RouteCounters {
    ok: [OnceLock<IntCounter>; 7],
}

impl RouteCounters {
    /// Count one request.
    pub fn count(&self, route: &str, method: &'static str, status: &str) {
        if status == "200" {
            if let Some(i) = COUNTED_METHODS.iter().position(|m| *m == method) {
                self.ok[i]
                    .get_or_init(|| METRICS.requests.with_label_values(&[route, method, "200"]))
                    .inc();
                return;
            }
        }
        METRICS
            .requests
            .with_label_values(&[route, method, status])
            .inc();
    }
}

/// Status class labels, by the first digit of the status; `other` for 0 (the client went away
/// before an answer) and anything outside 100..=599.
const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "other"];

fn class_index(status: u16) -> usize {
    match status {
        100..=599 => usize::from(status / 100) - 1,
        _ => 5,
    }
}

/// Duration histograms of one (route, upstream) pair, one per status class, resolved on
/// first use.
struct ClassHistograms {
    upstream: Arc<str>,
    by_class: [OnceLock<Histogram>; 6],
}

/// One request's figures, for [`RouteMetrics::observe`].
pub struct Observed<'a> {
    /// The upstream that answered (or was tried last), if any.
    pub upstream: Option<&'a str>,
    /// Status sent, 0 when none.
    pub status: u16,
    /// From the request's start to its end.
    pub total: Duration,
    /// Time spent waiting on the upstream (all attempts, to the end of its body).
    pub upstream_time: Option<Duration>,
    /// Request body bytes received.
    pub request_bytes: u64,
    /// Response body bytes sent.
    pub response_bytes: u64,
}

/// The per-route metric handles, made when the config is compiled: the route's own series
/// (overhead, bytes) directly, the duration histograms per upstream and status class on
/// first use (no zero series for pairs that never happen).
pub struct RouteMetrics {
    route: Arc<str>,
    /// The upstreams the route may use (its own, split and fallback targets), and the
    /// no-upstream case (`""`) first.
    durations: Vec<ClassHistograms>,
    overhead: Histogram,
    request_bytes: IntCounter,
    response_bytes: IntCounter,
}

impl RouteMetrics {
    /// Handles for `route`, whose requests may go to `upstreams`.
    pub fn new<'a>(route: &str, upstreams: impl IntoIterator<Item = &'a str>) -> Self {
        let mut durations: Vec<ClassHistograms> = Vec::new();
        for u in std::iter::once("").chain(upstreams) {
            if !durations.iter().any(|d| &*d.upstream == u) {
                durations.push(ClassHistograms {
                    upstream: Arc::from(u),
                    by_class: Default::default(),
                });
            }
        }
        RouteMetrics {
            route: Arc::from(route),
            durations,
            overhead: METRICS.overhead.with_label_values(&[route]),
            request_bytes: METRICS.request_bytes.with_label_values(&[route]),
            response_bytes: METRICS.response_bytes.with_label_values(&[route]),
        }
    }

    /// Record one finished request.
    pub fn observe(&self, o: &Observed<'_>) {
        let upstream = o.upstream.unwrap_or("");
        let class = class_index(o.status);
        let total = o.total.as_secs_f64();
        match self.durations.iter().find(|d| &*d.upstream == upstream) {
            Some(d) => d.by_class[class]
                .get_or_init(|| {
                    METRICS.request_duration.with_label_values(&[
                        &self.route,
                        upstream,
                        STATUS_CLASSES[class],
                    ])
                })
                .observe(total),
            // An upstream the route did not name when compiled: looked up by label.
            None => METRICS
                .request_duration
                .with_label_values(&[&self.route, upstream, STATUS_CLASSES[class]])
                .observe(total),
        }
        let own = o.total.saturating_sub(o.upstream_time.unwrap_or_default());
        self.overhead.observe(own.as_secs_f64());
        if o.request_bytes > 0 {
            self.request_bytes.inc_by(o.request_bytes);
        }
        if o.response_bytes > 0 {
            self.response_bytes.inc_by(o.response_bytes);
        }
    }
}

/// Counts a request in `tollgate_http_requests_in_flight` while it lives.
pub struct InFlight(());

impl InFlight {
    /// A request started.
    pub fn start() -> Self {
        METRICS.in_flight.inc();
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.in_flight.dec();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes() {
        let label = |s: u16| STATUS_CLASSES[class_index(s)];
        assert_eq!(
            [0, 99, 100, 204, 304, 429, 599, 600].map(label),
            ["other", "other", "1xx", "2xx", "3xx", "4xx", "5xx", "other"]
        );
    }

    #[test]
    fn route_metrics_make_series_on_first_use() {
        let m = RouteMetrics::new("unit-route", ["unit-up", "unit-up"]);
        assert_eq!(m.durations.len(), 2, "\"\" and unit-up, once");
        let count = |up: &str, class: &str| {
            METRICS
                .request_duration
                .get_metric_with_label_values(&["unit-route", up, class])
                .map(|h| h.get_sample_count())
                .unwrap_or(0)
        };
        m.observe(&Observed {
            upstream: Some("unit-up"),
            status: 503,
            total: Duration::from_millis(3),
            upstream_time: Some(Duration::from_millis(2)),
            request_bytes: 10,
            response_bytes: 20,
        });
        assert_eq!(count("unit-up", "5xx"), 1);
        assert_eq!(m.request_bytes.get(), 10);
        assert_eq!(m.response_bytes.get(), 20);
        assert_eq!(m.overhead.get_sample_count(), 1);
        assert!(m.overhead.get_sample_sum() < 0.0015);
        let text = String::from_utf8_lossy(&METRICS.render(None)).into_owned();
        assert!(!text.contains("route=\"unit-route\",status_class=\"2xx\""));
    }
}
