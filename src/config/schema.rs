//! The TOML schema: what a config file may say. Every struct rejects unknown keys.
//!
//! Durations are integers in milliseconds (`*_ms`) or seconds (`*_seconds`), named so.

use serde::Deserialize;
use std::collections::BTreeMap;

/// The process log's line format (`[server] log_format`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `env_logger`'s text lines (the default).
    #[default]
    Text,
    /// One JSON object per line: `ts`, `level`, `target`, `message`.
    Json,
}

/// `[server]` as written: process-wide settings. Compiled into a [`ServerConfig`], which
/// sorts them into those a reload applies and those that need a restart.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerSection {
    /// Proxy listen addresses (`ip:port`).
    #[serde(default = "default_listen")]
    pub listen: Vec<String>,
    /// Admin listener for `/metrics`, `/healthz`, `/readyz`; empty string disables it.
    #[serde(default = "default_admin_listen")]
    pub admin_listen: String,
    /// Worker threads of the proxy service; 0 means one per CPU.
    #[serde(default)]
    pub threads: usize,
    /// Let idle worker threads steal tasks from busy ones.
    #[serde(default = "default_true")]
    pub work_stealing: bool,
    /// Log level (`error`, `warn`, `info`, `debug`, `trace`); `RUST_LOG` overrides it.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// How the process log (standard error) is written: `text` or `json` (one object a line).
    #[serde(default)]
    pub log_format: LogFormat,
    /// Seconds to keep serving after SIGTERM before draining starts (lets a load balancer notice).
    #[serde(default)]
    pub shutdown_grace_period_seconds: u64,
    /// Seconds that in-flight requests get to finish during a graceful shutdown or upgrade.
    #[serde(default = "default_shutdown_timeout")]
    pub shutdown_timeout_seconds: u64,
    /// TLS listeners (HTTPS, with HTTP/2 by ALPN).
    #[serde(default)]
    pub tls: Vec<TlsListenerSection>,
    /// Accept HTTP/2 without TLS (h2c, prior knowledge) on the plain listeners.
    #[serde(default)]
    pub h2c: bool,
    /// Close an idle HTTP/1.1 keep-alive connection after this long.
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout_seconds: u64,
    /// Close an HTTP/1.1 connection after this many requests (0 = no limit).
    #[serde(default = "default_keepalive_requests")]
    pub keepalive_requests: u32,
    /// Close an idle HTTP/2 connection after this long.
    #[serde(default = "default_h2_idle")]
    pub h2_idle_timeout_seconds: u64,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Size of the process-wide pool of idle upstream connections kept for reuse.
    #[serde(default = "default_pool")]
    pub upstream_keepalive_pool_size: usize,
    /// Peers (addresses or CIDR ranges) trusted to report the client address in
    /// `X-Forwarded-For`; the client is the last address in it that is not trusted.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Byte budget of the response cache (shared by every route with the `cache` plugin).
    #[serde(default = "default_cache_bytes")]
    pub cache_max_bytes: usize,
    /// The access log.
    #[serde(default)]
    pub access_log: AccessLogSection,
    /// Where the process id is written (used to signal the running process).
    #[serde(default = "default_pid_file")]
    pub pid_file: String,
    /// Unix socket over which listening sockets pass to a new process on upgrade.
    #[serde(default = "default_upgrade_sock")]
    pub upgrade_sock: String,
    /// The whole request head must arrive within this, counted from its first byte (the
    /// first request of a connection: from the accept); past it, 408 and the connection
    /// closes.
    #[serde(default = "default_header_timeout")]
    pub header_timeout_ms: u64,
    /// Open client connections per listener; past it, new ones get 503 and are closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open client connections per client address (0 = no limit); peers in
    /// `trusted_proxies` are exempt.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Bearer token the admin listener requires for `/metrics` and `POST /cache/purge`;
    /// required when `admin_listen` is not a loopback address.
    #[serde(default)]
    pub admin_token: String,
    /// How request paths are made canonical before routing.
    #[serde(default)]
    pub path_normalization: PathNormalizationSection,
    /// Reload when the config file changes (through symlinks), not only on SIGHUP.
    #[serde(default = "default_true")]
    pub watch_config: bool,
    /// DNS servers (`ip:port`) asked for backend host names; empty: the system resolver.
    #[serde(default)]
    pub resolvers: Vec<String>,
}

/// `[server.path_normalization]`: how a request path is made canonical before routing.
/// The canonical path is what routes match, plugins see, the cache keys and the upstream
/// receives.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PathNormalizationSection {
    /// Decode percent-encoded unreserved characters (`%61` → `a`, `%2E` → `.`).
    #[serde(default = "default_true")]
    pub decode_unreserved: bool,
    /// Collapse runs of `/`.
    #[serde(default = "default_true")]
    pub merge_slashes: bool,
    /// `.` and `..` segments: refused (400) or resolved (RFC 3986 §5.2.4).
    #[serde(default)]
    pub dot_segments: DotSegments,
    /// `%2F` and `%5C` in a path: refused (400) or kept encoded (not a separator).
    #[serde(default)]
    pub escaped_slashes: EscapedSlashes,
    /// `;` in a path (Java path parameters): refused (400) or kept.
    #[serde(default)]
    pub semicolons: Semicolons,
}

impl Default for PathNormalizationSection {
    fn default() -> Self {
        PathNormalizationSection {
            decode_unreserved: true,
            merge_slashes: true,
            dot_segments: DotSegments::default(),
            escaped_slashes: EscapedSlashes::default(),
            semicolons: Semicolons::default(),
        }
    }
}

/// What to do with `.` and `..` path segments.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum DotSegments {
    /// Answer 400.
    #[default]
    Reject,
    /// Remove them as RFC 3986 §5.2.4 says; `..` above the root is still 400.
    Resolve,
}

/// What to do with percent-encoded `/` and `\`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// Answer 400 (backends disagree on whether they separate segments).
    #[default]
    Reject,
    /// Keep them encoded: part of a segment for routing, forwarded as is.
    Keep,
}

/// What to do with `;` in a path.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Semicolons {
    /// Answer 400 (Java backends drop what follows as path parameters).
    #[default]
    Reject,
    /// Keep them as part of the segment.
    Keep,
}

/// `[server]` compiled, split by when a change takes effect. The split is made by
/// destructuring every field of [`ServerSection`] in [`ServerConfig::from`], so a new key
/// cannot be added without deciding which side it is on.
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    /// Bound when the process starts; a reload that changes them warns and keeps them.
    pub process: ProcessSettings,
    /// Applied by every reload.
    pub live: LiveSettings,
}

/// The `[server]` keys that need a restart (or an `--upgrade`) to change: listeners, the
/// Pingora server's own settings, and files opened at start.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessSettings {
    /// `listen`.
    pub listen: Vec<String>,
    /// `admin_listen`.
    pub admin_listen: String,
    /// `tls`.
    pub tls: Vec<TlsListenerSection>,
    /// `h2c`.
    pub h2c: bool,
    /// `threads`.
    pub threads: usize,
    /// `work_stealing`.
    pub work_stealing: bool,
    /// `log_format` (the logger is set up once, at start).
    pub log_format: LogFormat,
    /// `keepalive_requests`.
    pub keepalive_requests: u32,
    /// `h2_idle_timeout_seconds`.
    pub h2_idle_timeout_seconds: u64,
    /// `upstream_keepalive_pool_size`.
    pub upstream_keepalive_pool_size: usize,
    /// `shutdown_grace_period_seconds`.
    pub shutdown_grace_period_seconds: u64,
    /// `shutdown_timeout_seconds`.
    pub shutdown_timeout_seconds: u64,
    /// `access_log`.
    pub access_log: AccessLogSection,
    /// `pid_file`.
    pub pid_file: String,
    /// `upgrade_sock`.
    pub upgrade_sock: String,
    /// `max_connections`.
    pub max_connections: usize,
    /// `max_connections_per_ip`.
    pub max_connections_per_ip: usize,
    /// `admin_token`.
    pub admin_token: String,
    /// `watch_config`.
    pub watch_config: bool,
}

/// The `[server]` keys every reload applies.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveSettings {
    /// `log_level` (unless `RUST_LOG` is set).
    pub log_level: String,
    /// `keepalive_timeout_seconds`.
    pub keepalive_timeout_seconds: u64,
    /// `max_header_bytes`.
    pub max_header_bytes: usize,
    /// `trusted_proxies`, as written (the snapshot holds them parsed).
    pub trusted_proxies: Vec<String>,
    /// `cache_max_bytes`.
    pub cache_max_bytes: usize,
    /// `header_timeout_ms`.
    pub header_timeout_ms: u64,
    /// `path_normalization`.
    pub path_normalization: PathNormalizationSection,
    /// `resolvers`, as written.
    pub resolvers: Vec<String>,
}

impl From<ServerSection> for ServerConfig {
    fn from(s: ServerSection) -> Self {
        let ServerSection {
            listen,
            admin_listen,
            threads,
            work_stealing,
            log_level,
            log_format,
            shutdown_grace_period_seconds,
            shutdown_timeout_seconds,
            tls,
            h2c,
            keepalive_timeout_seconds,
            keepalive_requests,
            h2_idle_timeout_seconds,
            max_header_bytes,
            upstream_keepalive_pool_size,
            trusted_proxies,
            cache_max_bytes,
            access_log,
            pid_file,
            upgrade_sock,
            header_timeout_ms,
            max_connections,
            max_connections_per_ip,
            admin_token,
            path_normalization,
            watch_config,
            resolvers,
        } = s;
        ServerConfig {
            process: ProcessSettings {
                listen,
                admin_listen,
                tls,
                h2c,
                threads,
                work_stealing,
                log_format,
                keepalive_requests,
                h2_idle_timeout_seconds,
                upstream_keepalive_pool_size,
                shutdown_grace_period_seconds,
                shutdown_timeout_seconds,
                access_log,
                pid_file,
                upgrade_sock,
                max_connections,
                max_connections_per_ip,
                admin_token,
                watch_config,
            },
            live: LiveSettings {
                log_level,
                keepalive_timeout_seconds,
                max_header_bytes,
                trusted_proxies,
                cache_max_bytes,
                header_timeout_ms,
                path_normalization,
                resolvers,
            },
        }
    }
}

/// `[[server.tls]]`: an HTTPS listener.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsListenerSection {
    /// `ip:port`.
    pub listen: String,
    /// PEM certificate chain file.
    pub cert: String,
    /// PEM private key file.
    pub key: String,
    /// Offer HTTP/2 by ALPN.
    #[serde(default = "default_true")]
    pub http2: bool,
    /// More certificates, chosen by the handshake's SNI; `cert`/`key` are the default.
    #[serde(default)]
    pub sni: Vec<SniCertSection>,
}

/// `[[server.tls.sni]]`: a certificate for some host names.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SniCertSection {
    /// `api.example.com` or `*.example.com`.
    pub hosts: Vec<String>,
    /// PEM certificate chain file.
    pub cert: String,
    /// PEM private key file.
    pub key: String,
}

/// `[server.access_log]`: one JSON line per request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AccessLogSection {
    /// Write access log lines at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Where: `-` for standard output, otherwise a file path (appended to).
    #[serde(default = "default_access_log_path")]
    pub path: String,
    /// The fields each line has (names from [`crate::access_log::FIELDS`]); all when unset.
    #[serde(default)]
    pub fields: Option<Vec<String>>,
}

impl Default for AccessLogSection {
    fn default() -> Self {
        AccessLogSection {
            enabled: true,
            path: default_access_log_path(),
            fields: None,
        }
    }
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: default_listen(),
            admin_listen: default_admin_listen(),
            threads: 0,
            work_stealing: true,
            log_level: default_log_level(),
            log_format: LogFormat::Text,
            shutdown_grace_period_seconds: 0,
            shutdown_timeout_seconds: default_shutdown_timeout(),
            upstream_keepalive_pool_size: default_pool(),
            trusted_proxies: Vec::new(),
            tls: Vec::new(),
            h2c: false,
            keepalive_timeout_seconds: default_keepalive_timeout(),
            keepalive_requests: default_keepalive_requests(),
            h2_idle_timeout_seconds: default_h2_idle(),
            max_header_bytes: default_max_header_bytes(),
            cache_max_bytes: default_cache_bytes(),
            access_log: AccessLogSection::default(),
            pid_file: default_pid_file(),
            upgrade_sock: default_upgrade_sock(),
            header_timeout_ms: default_header_timeout(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            admin_token: String::new(),
            path_normalization: PathNormalizationSection::default(),
            watch_config: true,
            resolvers: Vec::new(),
        }
    }
}

/// A backend as written: `"ip:port"` or `{ addr = "ip:port", weight = 3 }`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum BackendSpec {
    /// Address with weight 1.
    Addr(String),
    /// Address and weight.
    Weighted {
        /// `ip:port` (or `host:port`, resolved once at load).
        addr: String,
        /// Relative share of traffic.
        #[serde(default = "default_weight")]
        weight: usize,
    },
}

/// How an upstream picks a backend.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Weighted round robin.
    #[default]
    RoundRobin,
    /// Weighted random.
    Random,
    /// Consistent hashing (Ketama) on `hash_on`.
    ConsistentHash,
    /// Power of two random choices on in-flight requests (weighted): slow backends, which
    /// hold requests longer, get fewer.
    LeastRequest,
}

/// `[[upstreams]]`: a named pool of backends.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    /// Name routes refer to.
    pub name: String,
    /// The backends.
    pub backends: Vec<BackendSpec>,
    /// Load-balancing algorithm.
    #[serde(default)]
    pub algorithm: Algorithm,
    /// Key for `consistent_hash`: `client_ip`, `path`, `header:<name>` or `cookie:<name>`.
    #[serde(default = "default_hash_on")]
    pub hash_on: String,
    /// Connect to backends with TLS.
    #[serde(default)]
    pub tls: bool,
    /// SNI for TLS; defaults to `host`, else empty.
    #[serde(default)]
    pub sni: Option<String>,
    /// Verify the backend's certificate (TLS only).
    #[serde(default = "default_true")]
    pub verify_cert: bool,
    /// `Host` header sent upstream when a route does not preserve the client's; defaults to
    /// the backend's `ip:port`.
    #[serde(default)]
    pub host: Option<String>,
    /// TCP (and TLS) connect timeout.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_ms: u64,
    /// Timeout for each read from the backend (first byte and between chunks).
    #[serde(default = "default_rw_timeout")]
    pub read_timeout_ms: u64,
    /// Timeout for each write to the backend.
    #[serde(default = "default_rw_timeout")]
    pub write_timeout_ms: u64,
    /// How long an idle pooled connection to a backend is kept.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// On a failed connect, how many other backends to try before answering 502.
    #[serde(default = "default_retries")]
    pub retries: usize,
    /// Active health check; none means every backend counts as healthy.
    #[serde(default)]
    pub health_check: Option<HealthCheckSection>,
    /// Speak HTTP/2 to the backends (by ALPN over TLS, or h2c with prior knowledge).
    #[serde(default)]
    pub http2: bool,
    /// Concurrent streams per HTTP/2 connection to a backend.
    #[serde(default = "default_h2_streams")]
    pub max_h2_streams: usize,
    /// Passive health (outlier detection) from real traffic.
    #[serde(default)]
    pub passive_health: Option<PassiveHealthSection>,
    /// Circuit breaker for the whole upstream.
    #[serde(default)]
    pub circuit_breaker: Option<CircuitBreakerSection>,
    /// How often backends given by host name are resolved again (0 = only at load).
    #[serde(default = "default_resolve_interval")]
    pub resolve_interval_seconds: u64,
    /// Requests in flight to this upstream at once, over all its backends (0 = no limit).
    /// Requests over it wait in a FIFO queue.
    #[serde(default)]
    pub max_concurrent_requests: usize,
    /// Requests that may wait for a slot (with `max_concurrent_requests`); a full queue
    /// refuses at once (0 = no queue).
    #[serde(default)]
    pub queue_size: usize,
    /// Longest wait in the queue; past it the request gets 503 (or its next fallback target).
    #[serde(default = "default_queue_timeout")]
    pub queue_timeout_ms: u64,
}

/// `[upstreams.passive_health]`: eject a backend after consecutive failures (connect
/// errors, timeouts, 5xx answers) for a time that grows with each ejection.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PassiveHealthSection {
    /// Failures in a row that eject a backend.
    #[serde(default = "default_consecutive")]
    pub consecutive_failures: u32,
    /// First ejection time; the n-th ejection lasts n times this.
    #[serde(default = "default_base_ejection")]
    pub base_ejection_ms: u64,
    /// Longest ejection.
    #[serde(default = "default_max_ejection")]
    pub max_ejection_ms: u64,
    /// At most this share of the backends is ejected at once (one always stays).
    #[serde(default = "default_max_ejected")]
    pub max_ejected_percent: u32,
}

/// `[upstreams.circuit_breaker]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreakerSection {
    /// Open when this share of the requests in the window failed (0 disables the ratio rule).
    #[serde(default = "default_failure_ratio")]
    pub failure_ratio: f64,
    /// Open after this many failures in a row (0 disables the rule).
    #[serde(default)]
    pub consecutive_failures: u32,
    /// The ratio rule needs at least this many requests in the window.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// Length of the counting window.
    #[serde(default = "default_window")]
    pub window_ms: u64,
    /// How long the circuit stays open before probing.
    #[serde(default = "default_open")]
    pub open_ms: u64,
    /// Probe requests allowed while half-open; all must succeed to close.
    #[serde(default = "default_half_open")]
    pub half_open_requests: u32,
}

/// Kind of active health check.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HealthCheckKind {
    /// A TCP connect succeeds.
    Tcp,
    /// An HTTP GET answers with one of `expected_statuses`.
    Http,
}

/// `[upstreams.health_check]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// `tcp` or `http`.
    #[serde(rename = "type")]
    pub kind: HealthCheckKind,
    /// Path requested by `http` checks.
    #[serde(default = "default_hc_path")]
    pub path: String,
    /// `Host` header of `http` checks (default: `localhost`).
    #[serde(default)]
    pub host: Option<String>,
    /// Statuses that count as healthy for `http` checks.
    #[serde(default = "default_expected")]
    pub expected_statuses: Vec<u16>,
    /// Time between checks.
    #[serde(default = "default_hc_interval")]
    pub interval_ms: u64,
    /// Connect and read timeout of one check.
    #[serde(default = "default_hc_timeout")]
    pub timeout_ms: u64,
    /// Consecutive successes that make an unhealthy backend healthy.
    #[serde(default = "default_one")]
    pub healthy_threshold: usize,
    /// Consecutive failures that make a healthy backend unhealthy.
    #[serde(default = "default_unhealthy")]
    pub unhealthy_threshold: usize,
}

/// `[[consumer_groups]]`: plugins every consumer in the group gets on routes that
/// authenticate it (a tier: `free`, `pro`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConsumerGroupSection {
    /// The group name consumers list in `groups`.
    pub name: String,
    /// Plugins, written like a route's.
    #[serde(default)]
    pub plugins: Vec<toml::Value>,
}

/// `[[routes]]`: which requests go where, through which plugins.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Unique name, used in metrics and logs.
    pub name: String,
    /// Hosts: `api.example.com` or `*.example.com`; empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Paths: `=/exact`, `/prefix` (segment-aware) or `~regex`; empty matches any path.
    #[serde(default)]
    pub paths: Vec<String>,
    /// Methods; empty matches any.
    #[serde(default)]
    pub methods: Vec<String>,
    /// Header predicates: exact value, `*` (present) or `~regex`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query predicates: exact value, `*` (present) or `~regex`.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Higher wins; ties broken by specificity.
    #[serde(default)]
    pub priority: i32,
    /// Upstream name; a route without one must answer with a plugin such as `mock`.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Remove the matched prefix before proxying.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Replace the matched path: the prefix or exact path, or for regex paths the whole path
    /// with `$1` / `${name}` captures.
    #[serde(default)]
    pub rewrite: Option<String>,
    /// Send the client's `Host` upstream instead of the upstream's.
    #[serde(default)]
    pub preserve_host: bool,
    /// Add `X-Forwarded-For`, `-Proto` and `-Host` to proxied requests.
    #[serde(default = "default_true")]
    pub forwarded_headers: bool,
    /// Keep request headers whose name has an `_` (dropped by default, as nginx does:
    /// CGI-style backends read `X_Foo` and `X-Foo` as the same variable).
    #[serde(default)]
    pub allow_underscore_headers: bool,
    /// Send `X-Request-Id` upstream and return it on the response.
    #[serde(default = "default_true")]
    pub request_id: bool,
    /// Overrides the upstream's connect timeout.
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
    /// Overrides the upstream's read timeout.
    #[serde(default)]
    pub read_timeout_ms: Option<u64>,
    /// Overrides the upstream's write timeout.
    #[serde(default)]
    pub write_timeout_ms: Option<u64>,
    /// Plugins: a name (`"headers"`) or a table with `name`, optional `enabled`, and the
    /// plugin's own keys.
    #[serde(default)]
    pub plugins: Vec<toml::Value>,
    /// Retry idempotent requests answered with one of these statuses on another backend
    /// (opt-in; e.g. `[502, 503, 504]`).
    #[serde(default)]
    pub retry_on_status: Vec<u16>,
    /// Retry idempotent requests whose upstream read timed out (opt-in).
    #[serde(default)]
    pub retry_on_timeout: bool,
    /// At most this many status/timeout retries per request.
    #[serde(default = "default_route_retries")]
    pub max_retries: u32,
    /// Overall time limit for the request including its retries (0 = none); past it the
    /// answer is 504.
    #[serde(default)]
    pub deadline_ms: u64,
    /// Traffic split: rules tried in order, the first whose `match` fits picks an upstream
    /// among its weighted targets; no rule fits → `upstream`.
    #[serde(default)]
    pub split: Vec<SplitRuleSection>,
    /// How the request body is received.
    #[serde(default)]
    pub request_body: Option<RequestBodySection>,
    /// Largest request body read to match split rules on JSON body fields; a longer (or
    /// chunked) body goes to the default target, counted and logged.
    #[serde(default = "default_body_max")]
    pub split_body_max_bytes: usize,
    /// Model fallback: the route's targets in order (instead of `upstream`); the next is
    /// tried when one fails for a cause in `fallback_on`, before any response byte.
    #[serde(default)]
    pub fallback: Vec<FallbackTargetSection>,
    /// What makes a request move to the next fallback target: `connect`, `timeout`, `429`,
    /// `5xx` or one 5xx status (`"503"`).
    #[serde(default = "default_fallback_on")]
    pub fallback_on: Vec<String>,
    /// Largest JSON request body read for body-based routing (split on `body`) and for
    /// fallback (replay, `model` rewrite); default `split_body_max_bytes`.
    #[serde(default)]
    pub max_body_bytes: Option<usize>,
    /// What a body over `max_body_bytes` (or chunked) gets on a route that reads it.
    #[serde(default)]
    pub on_body_over_limit: BodyOverLimit,
    /// Longest wait from sending the request to the first byte of the response (time to
    /// first token); a fallback trigger (`timeout`).
    #[serde(default)]
    pub first_byte_timeout_ms: Option<u64>,
    /// Longest silence between two pieces of the response body (between SSE events) once it
    /// began; past it the stream ends.
    #[serde(default)]
    pub idle_timeout_ms: Option<u64>,
    /// Send `X-Tollgate-Upstream: <upstream name>` on responses of a route with `fallback`.
    #[serde(default = "default_true")]
    pub upstream_header: bool,
}

/// `on_body_over_limit`: a request body over a route's `max_body_bytes`.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum BodyOverLimit {
    /// Skip body routing and fallback: the first (default) target only, counted.
    #[default]
    DefaultTarget,
    /// Answer 413 `body_too_large`.
    Reject,
}

/// One target of a route's `fallback` list.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FallbackTargetSection {
    /// Upstream name.
    pub upstream: String,
    /// Replace the JSON body's top-level `model` with this for this target.
    #[serde(default)]
    pub model: Option<String>,
}

/// `[routes.request_body]`: buffering and pace of request bodies.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RequestBodySection {
    /// Read the whole body before choosing a backend, so a slow upload never holds an
    /// upstream connection.
    #[serde(default)]
    pub buffer: bool,
    /// Largest buffered body (Pingora replays at most 64 KiB to the upstream).
    #[serde(default = "default_body_max")]
    pub max_bytes: usize,
    /// Longest wait for the next piece of the body.
    #[serde(default = "default_body_read_timeout")]
    pub read_timeout_ms: u64,
    /// After the first second, a body arriving slower than this is refused (0 = no minimum).
    #[serde(default)]
    pub min_rate_bytes_per_second: u64,
}

/// `[[routes.split]]`: one traffic-split rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitRuleSection {
    /// Conditions, all of which must hold; none = always.
    #[serde(default, rename = "match")]
    pub when: Option<SplitMatchSection>,
    /// Weighted upstreams.
    pub targets: Vec<SplitTargetSection>,
}

/// Conditions of a split rule (values: exact, `*` present, `~regex`).
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct SplitMatchSection {
    /// Request headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Cookies.
    #[serde(default)]
    pub cookies: BTreeMap<String, String>,
    /// Query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// JSON body fields (`model`, or dotted `options.tier`); the body must have a
    /// `Content-Length` of at most 64 KiB.
    #[serde(default)]
    pub body: BTreeMap<String, String>,
}

/// One weighted target of a split rule.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SplitTargetSection {
    /// Upstream name.
    pub upstream: String,
    /// Relative share.
    #[serde(default = "default_split_weight")]
    pub weight: u32,
}

fn default_listen() -> Vec<String> {
    vec!["0.0.0.0:8080".to_string()]
}
fn default_admin_listen() -> String {
    "127.0.0.1:9090".to_string()
}
fn default_true() -> bool {
    true
}
fn default_log_level() -> String {
    "info".to_string()
}
fn default_shutdown_timeout() -> u64 {
    10
}
fn default_pool() -> usize {
    256
}
fn default_access_log_path() -> String {
    "-".to_string()
}
fn default_keepalive_timeout() -> u64 {
    60
}
fn default_keepalive_requests() -> u32 {
    10_000
}
fn default_h2_idle() -> u64 {
    300
}
fn default_max_header_bytes() -> usize {
    32 * 1024
}
fn default_cache_bytes() -> usize {
    tollgate_plugins::cache::storage::DEFAULT_MAX_BYTES
}
fn default_pid_file() -> String {
    "/tmp/tollgate.pid".to_string()
}
fn default_body_max() -> usize {
    64 * 1024
}
fn default_body_read_timeout() -> u64 {
    60_000
}
fn default_queue_timeout() -> u64 {
    5_000
}
fn default_fallback_on() -> Vec<String> {
    ["connect", "timeout", "429", "5xx"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}
fn default_resolve_interval() -> u64 {
    30
}
fn default_header_timeout() -> u64 {
    10_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_connections_per_ip() -> usize {
    1_000
}
fn default_upgrade_sock() -> String {
    "/tmp/tollgate_upgrade.sock".to_string()
}
fn default_h2_streams() -> usize {
    100
}
fn default_route_retries() -> u32 {
    1
}
fn default_split_weight() -> u32 {
    1
}
fn default_consecutive() -> u32 {
    5
}
fn default_base_ejection() -> u64 {
    30_000
}
fn default_max_ejection() -> u64 {
    300_000
}
fn default_max_ejected() -> u32 {
    50
}
fn default_failure_ratio() -> f64 {
    0.5
}
fn default_min_requests() -> u32 {
    20
}
fn default_window() -> u64 {
    10_000
}
fn default_open() -> u64 {
    5_000
}
fn default_half_open() -> u32 {
    3
}
fn default_weight() -> usize {
    1
}
fn default_hash_on() -> String {
    "client_ip".to_string()
}
fn default_connect_timeout() -> u64 {
    5_000
}
fn default_rw_timeout() -> u64 {
    60_000
}
fn default_idle_timeout() -> u64 {
    60_000
}
fn default_retries() -> usize {
    2
}
fn default_hc_path() -> String {
    "/".to_string()
}
fn default_expected() -> Vec<u16> {
    vec![200]
}
fn default_hc_interval() -> u64 {
    5_000
}
fn default_hc_timeout() -> u64 {
    1_000
}
fn default_one() -> usize {
    1
}
fn default_unhealthy() -> usize {
    3
}
