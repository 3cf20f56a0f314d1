//! Upstream pools: backends, load balancing, peers, and the cache that lets a pool (and its
//! health state) survive a config reload when its definition did not change.

pub mod dns;
pub mod health;
pub mod limit;
pub mod outlier;
pub mod timed;

use crate::config::schema::{Algorithm, BackendSpec, HealthCheckKind, UpstreamSection};
use futures::FutureExt;
use http::HeaderValue;
use pingora::lb::discovery::Static;
use pingora::lb::health_check::{HttpHealthCheck, TcpHealthCheck};
use pingora::lb::selection::consistent::KetamaHashing;
use pingora::lb::selection::{Random, RoundRobin};
use pingora::lb::{Backend, Backends, LoadBalancer};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::upstreams::peer::HttpPeer;
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tollgate_plugins::sync::lock;
use tollgate_plugins::ConfigError;

/// How many selector steps to take looking for a healthy, untried backend.
const MAX_SELECT_STEPS: usize = 256;

/// Where the consistent-hash key comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum HashOn {
    /// The client's IP address.
    ClientIp,
    /// The request path.
    Path,
    /// A request header's value.
    Header(http::HeaderName),
    /// A cookie's value.
    Cookie(String),
}

impl HashOn {
    fn parse(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            None if s == "client_ip" => Ok(HashOn::ClientIp),
            None if s == "path" => Ok(HashOn::Path),
            Some(("header", h)) => http::HeaderName::from_bytes(h.as_bytes())
                .map(HashOn::Header)
                .map_err(|_| format!("{h:?} is not a header name")),
            Some(("cookie", c)) if !c.is_empty() => Ok(HashOn::Cookie(c.to_string())),
            _ => Err(format!(
                "{s:?}: expected client_ip, path, header:<name> or cookie:<name>"
            )),
        }
    }
}

enum Balancer {
    RoundRobin(LoadBalancer<RoundRobin>),
    Random(LoadBalancer<Random>),
    Ketama(LoadBalancer<KetamaHashing>),
}

macro_rules! with_lb {
    ($b:expr, $lb:ident => $e:expr) => {
        match $b {
            Balancer::RoundRobin($lb) => $e,
            Balancer::Random($lb) => $e,
            Balancer::Ketama($lb) => $e,
        }
    };
}

/// Per-backend data computed at load, indexed like [`UpstreamPool::backends`], so the
/// request path only indexes a vector (no map lookups, no clones of `Backend` extensions).
struct Slot {
    peer: HttpPeer,
    host: HeaderValue,
    /// `tollgate_upstream_attempt_duration_seconds{outcome="response"}` of this backend,
    /// resolved at its first use (no series before a request).
    attempt_ok: std::sync::OnceLock<prometheus::Histogram>,
}

/// The largest weight a backend may have (Kong's limit).
const MAX_WEIGHT: usize = 65_535;

/// A compiled upstream: backends behind a load balancer, with the settings of their peers.
pub struct UpstreamPool {
    /// Upstream name (metrics label).
    pub name: Arc<str>,
    balancer: Balancer,
    /// Where the hash key comes from (consistent hashing only).
    pub hash_on: Option<HashOn>,
    /// Other backends to try after a failed connect.
    pub retries: usize,
    host: Option<HeaderValue>,
    /// `(label, backend)` for every backend, for health metrics.
    pub backends: Vec<(String, Backend)>,
    slots: Vec<Slot>,
    /// Backend indexes in smooth weighted round-robin order: round robin walks it, random
    /// samples it.
    wheel: Vec<u32>,
    /// Active-check health of each backend, copied from pingora-lb after every check so
    /// that picking a backend needs no hash lookup.
    healthy: Vec<AtomicBool>,
    algorithm: Algorithm,
    health_interval: Option<Duration>,
    /// Milliseconds since process start of the last health check run.
    last_check_ms: AtomicU64,
    definition: UpstreamSection,
    /// `(host, port)` of the backends given by name, re-resolved in the background.
    pub names: Vec<(String, u16)>,
    /// The addresses each backend spec resolved to when the pool was built.
    resolution: Vec<Vec<std::net::SocketAddr>>,
    /// How often `names` are resolved again.
    pub resolve_interval: Option<Duration>,
    /// Live counters per backend, in the order of `backends`.
    pub states: Vec<outlier::BackendState>,
    passive: Option<outlier::PassiveHealth>,
    /// The circuit breaker, when configured.
    pub breaker: Option<outlier::Breaker>,
    /// The clock of `states`' ejection times.
    pub clock: outlier::Clock,
    /// Round-robin position, or the seed of random picks.
    rng: AtomicU64,
    /// `tollgate_upstream_request_duration_seconds{upstream}`, resolved once.
    pub duration: prometheus::Histogram,
    /// `max_concurrent_requests` with its queue, when set.
    pub limit: Option<Arc<limit::ConcurrencyLimit>>,
}

impl UpstreamPool {
    /// Build a pool from its section; errors are relative to the section.
    pub fn build(
        sec: &UpstreamSection,
        dns_cache: &dns::DnsCache,
    ) -> Result<Self, Vec<ConfigError>> {
        let mut errors = Vec::new();
        if sec.backends.is_empty() {
            errors.push(ConfigError::new(
                "backends",
                "an upstream needs at least one backend",
            ));
        }
        let hash_on = match sec.algorithm {
            Algorithm::ConsistentHash => match HashOn::parse(&sec.hash_on) {
                Ok(h) => Some(h),
                Err(e) => {
                    errors.push(ConfigError::new("hash_on", e));
                    None
                }
            },
            _ => None,
        };
        let host = match &sec.host {
            Some(h) => match HeaderValue::from_str(h) {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.push(ConfigError::new("host", "not a valid Host header value"));
                    None
                }
            },
            None => None,
        };
        let sni = sec
            .sni
            .clone()
            .or_else(|| sec.host.clone())
            .unwrap_or_default();
        let mut set = BTreeSet::new();
        let mut labels = Vec::new();
        let mut slots = Vec::new();
        let mut names = Vec::new();
        let mut resolution = Vec::new();
        for (i, b) in sec.backends.iter().enumerate() {
            let (addr, weight) = match b {
                BackendSpec::Addr(a) => (a.as_str(), 1),
                BackendSpec::Weighted { addr, weight } => (addr.as_str(), *weight),
            };
            if weight == 0 || weight > MAX_WEIGHT {
                errors.push(ConfigError::new(
                    format!("backends[{i}].weight"),
                    format!("weight must be between 1 and {MAX_WEIGHT}"),
                ));
                continue;
            }
            let Some((host, port)) = dns::split_host_port(addr) else {
                errors.push(ConfigError::new(
                    format!("backends[{i}]"),
                    format!("{addr:?} is not an address (\"ip:port\" or \"host:port\")"),
                ));
                continue;
            };
            // A name stands for every address it resolves to; the request path only sees
            // socket addresses, re-resolved in the background (`resolve_interval_seconds`).
            let named = dns::is_name(host);
            let addrs = match dns_cache.lookup(host, port) {
                Ok(a) => a,
                Err(e) => {
                    errors.push(ConfigError::new(
                        format!("backends[{i}]"),
                        format!("{addr:?}: {e}"),
                    ));
                    continue;
                }
            };
            if named {
                names.push((host.to_string(), port));
            }
            resolution.push(addrs.clone());
            for sa in addrs {
                // Without `sni`/`host`, a named backend is verified against its own name.
                let peer_sni = match (&sni, named) {
                    (s, true) if s.is_empty() => host.to_string(),
                    (s, _) => s.clone(),
                };
                let mut peer = HttpPeer::new(sa, sec.tls, peer_sni);
                peer.options.connection_timeout =
                    Some(Duration::from_millis(sec.connect_timeout_ms));
                peer.options.read_timeout = Some(Duration::from_millis(sec.read_timeout_ms));
                peer.options.write_timeout = Some(Duration::from_millis(sec.write_timeout_ms));
                // 0: no timer; the pooled connection stays until the backend closes it or
                // the bounded pool evicts it.
                peer.options.idle_timeout =
                    (sec.idle_timeout_ms > 0).then(|| Duration::from_millis(sec.idle_timeout_ms));
                peer.options.verify_cert = sec.verify_cert;
                peer.options.verify_hostname = sec.verify_cert;
                if sec.http2 {
                    // TLS negotiates by ALPN; plaintext needs prior knowledge (h2c).
                    peer.options.alpn = if sec.tls {
                        pingora::protocols::ALPN::H2H1
                    } else {
                        pingora::protocols::ALPN::H2
                    };
                    peer.options.max_h2_streams = sec.max_h2_streams.max(1);
                }
                // A name is the virtual host the backend expects (as nginx's proxy_pass).
                let host_text = if named {
                    addr.to_string()
                } else {
                    sa.to_string()
                };
                let Ok(host_value) = HeaderValue::from_str(&host_text) else {
                    continue;
                };
                let backend = Backend {
                    addr: SocketAddr::Inet(sa),
                    weight,
                    ext: Default::default(),
                };
                if labels
                    .iter()
                    .any(|(_, b): &(String, Backend)| b.addr == backend.addr)
                {
                    // Two names may share an address: that is not a configuration mistake.
                    if !named {
                        errors.push(ConfigError::new(
                            format!("backends[{i}]"),
                            format!("{sa} is listed twice (give it a weight instead)"),
                        ));
                    }
                    continue;
                }
                set.insert(backend.clone());
                slots.push(Slot {
                    peer,
                    host: host_value,
                    attempt_ok: std::sync::OnceLock::new(),
                });
                labels.push((sa.to_string(), backend));
            }
        }
        if let Some(hc) = &sec.health_check {
            if hc.interval_ms == 0 || hc.timeout_ms == 0 {
                errors.push(ConfigError::new(
                    "health_check",
                    "interval_ms and timeout_ms must be > 0",
                ));
            }
            if hc.healthy_threshold == 0 || hc.unhealthy_threshold == 0 {
                errors.push(ConfigError::new(
                    "health_check",
                    "thresholds must be at least 1",
                ));
            }
            if !hc.path.starts_with('/') {
                errors.push(ConfigError::new("health_check.path", "must start with '/'"));
            }
        }
        if sec.max_concurrent_requests > 0 && sec.queue_size > 0 && sec.queue_timeout_ms == 0 {
            errors.push(ConfigError::new(
                "queue_timeout_ms",
                "must be at least 1 when requests can queue (queue_size > 0)",
            ));
        }
        if sec.max_concurrent_requests == 0 && sec.queue_size > 0 {
            errors.push(ConfigError::new(
                "queue_size",
                "a queue needs max_concurrent_requests",
            ));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut backends = Backends::new(Static::new(set));
        if let Some(hc) = &sec.health_check {
            backends.set_health_check(health_check(sec, hc));
        }
        let balancer = match sec.algorithm {
            Algorithm::RoundRobin => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
            Algorithm::Random => Balancer::Random(LoadBalancer::from_backends(backends)),
            Algorithm::ConsistentHash => Balancer::Ketama(LoadBalancer::from_backends(backends)),
            // Health bookkeeping only: least-request picks among `labels` itself.
            Algorithm::LeastRequest => Balancer::RoundRobin(LoadBalancer::from_backends(backends)),
        };
        // Static discovery never waits, so the first update completes right here.
        with_lb!(&balancer, lb => {
            match lb.update().now_or_never() {
                Some(Ok(())) => {}
                _ => return Err(vec![ConfigError::new("backends", "could not build the backend set")]),
            }
        });
        let backend_count = labels.len();
        let weights: Vec<usize> = labels.iter().map(|(_, b)| b.weight).collect();
        let healthy = labels
            .iter()
            .map(|(_, b)| AtomicBool::new(with_lb!(&balancer, lb => lb.backends().ready(b))))
            .collect();
        Ok(UpstreamPool {
            name: Arc::from(sec.name.as_str()),
            balancer,
            hash_on,
            retries: sec.retries,
            host,
            backends: labels,
            slots,
            wheel: smooth_wheel(&weights),
            healthy,
            algorithm: sec.algorithm,
            health_interval: sec
                .health_check
                .as_ref()
                .map(|h| Duration::from_millis(h.interval_ms)),
            last_check_ms: AtomicU64::new(0),
            definition: sec.clone(),
            names,
            resolution,
            resolve_interval: (sec.resolve_interval_seconds > 0)
                .then(|| Duration::from_secs(sec.resolve_interval_seconds)),
            states: (0..backend_count)
                .map(|_| outlier::BackendState::default())
                .collect(),
            passive: sec
                .passive_health
                .as_ref()
                .map(outlier::PassiveHealth::from),
            breaker: sec.circuit_breaker.as_ref().map(outlier::Breaker::new),
            clock: outlier::Clock::new(),
            rng: AtomicU64::new(0),
            duration: crate::metrics::METRICS.upstream_histogram(&sec.name),
            limit: (sec.max_concurrent_requests > 0).then(|| {
                Arc::new(limit::ConcurrencyLimit::new(
                    sec.max_concurrent_requests,
                    sec.queue_size,
                    Duration::from_millis(sec.queue_timeout_ms),
                    &sec.name,
                ))
            }),
        })
    }

    /// Do `sec`'s backends resolve (from the cache) to the addresses this pool was built
    /// with?
    fn resolves_the_same(&self, sec: &UpstreamSection, dns_cache: &dns::DnsCache) -> bool {
        let now: Vec<Vec<std::net::SocketAddr>> = sec
            .backends
            .iter()
            .filter_map(|b| {
                let addr = match b {
                    BackendSpec::Addr(a) => a.as_str(),
                    BackendSpec::Weighted { addr, .. } => addr.as_str(),
                };
                let (host, port) = dns::split_host_port(addr)?;
                dns_cache.lookup(host, port).ok()
            })
            .collect();
        now == self.resolution
    }

    /// Pick a healthy, not ejected backend not in `exclude`, using `key` for consistent
    /// hashing; returns its index in `backends`.
    pub fn select(&self, key: &[u8], exclude: &[SocketAddr]) -> Option<usize> {
        let now = self.clock.now_ms();
        let eligible = |i: usize| {
            self.healthy[i].load(Ordering::Relaxed)
                && !self.states[i].ejected(now)
                && !exclude.contains(&self.backends[i].1.addr)
        };
        match (&self.balancer, self.algorithm) {
            (_, Algorithm::LeastRequest) => self.least_request_pick(&eligible),
            (Balancer::Ketama(lb), _) => {
                let b = lb.select_with(key, MAX_SELECT_STEPS, |b, healthy| {
                    healthy && self.index_of(&b.addr).is_some_and(&eligible)
                })?;
                self.index_of(&b.addr)
            }
            _ => {
                let n = self.wheel.len();
                let turn = self.rng.fetch_add(1, Ordering::Relaxed);
                let turn = if self.algorithm == Algorithm::Random {
                    spread(turn)
                } else {
                    turn
                };
                let start = (turn % n.max(1) as u64) as usize;
                // Walk the wheel from this turn's position; a pool where most backends are
                // out falls back to a scan, so a pick never takes more than a bounded walk.
                (0..n.min(MAX_SELECT_STEPS))
                    .map(|step| self.wheel[(start + step) % n] as usize)
                    .find(|&i| eligible(i))
                    .or_else(|| (0..self.backends.len()).find(|&i| eligible(i)))
            }
        }
    }

    fn index_of(&self, addr: &SocketAddr) -> Option<usize> {
        self.backends.iter().position(|(_, b)| &b.addr == addr)
    }

    /// Power of two choices: two random eligible backends, the one with fewer requests in
    /// flight per unit of weight wins.
    fn least_request_pick(&self, eligible: &dyn Fn(usize) -> bool) -> Option<usize> {
        let candidates: Vec<usize> = (0..self.backends.len()).filter(|&i| eligible(i)).collect();
        // A scrambled shared counter: cheap, lock-free, good enough to spread picks.
        let pick =
            |n: usize| (spread(self.rng.fetch_add(1, Ordering::Relaxed)) % n as u64) as usize;
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            n => {
                let a = candidates[pick(n)];
                let mut b = candidates[pick(n - 1)];
                if b == a {
                    b = candidates[n - 1];
                }
                let load = |i: usize| {
                    (self.states[i].inflight.load(Ordering::Relaxed) as f64 + 1.0)
                        / self.backends[i].1.weight as f64
                };
                Some(if load(b) < load(a) { b } else { a })
            }
        }
    }

    /// A request to backend `index` started.
    pub fn begin(&self, index: usize) {
        if let Some(s) = self.states.get(index) {
            s.inflight.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A request to backend `index` ended.
    pub fn end(&self, index: usize) {
        if let Some(s) = self.states.get(index) {
            s.inflight.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Record one attempt's outcome for passive health; logs and counts an ejection.
    pub fn report(&self, index: usize, ok: bool) {
        let (Some(ph), Some(state)) = (&self.passive, self.states.get(index)) else {
            return;
        };
        if let Some(time) = ph.record(state, &self.states, ok, self.clock.now_ms()) {
            let label = &self.backends[index].0;
            log::warn!(
                "upstream {} backend {label} ejected for {time:?} after consecutive failures",
                self.name
            );
            crate::metrics::METRICS
                .upstream_ejections
                .with_label_values(&[&*self.name, label.as_str()])
                .inc();
        }
    }

    /// The peer to connect to for backend `index` (a clone of the one prepared at load).
    pub fn peer(&self, index: usize) -> Option<HttpPeer> {
        self.slots.get(index).map(|s| s.peer.clone())
    }

    /// `tollgate_upstream_attempt_duration_seconds` of backend `index` for `outcome`.
    pub fn attempt_duration(&self, index: usize, outcome: &str) -> prometheus::Histogram {
        let label = self.backends.get(index).map_or("", |(l, _)| l.as_str());
        let resolve = || {
            crate::metrics::METRICS
                .attempt_duration
                .with_label_values(&[&*self.name, label, outcome])
        };
        match self.slots.get(index) {
            Some(slot) if outcome == "response" => slot.attempt_ok.get_or_init(resolve).clone(),
            _ => resolve(),
        }
    }

    /// The address of backend `index`.
    pub fn addr(&self, index: usize) -> Option<&SocketAddr> {
        self.backends.get(index).map(|(_, b)| &b.addr)
    }

    /// The `Host` header for requests to backend `index` when the route does not preserve
    /// the client's: the upstream's `host`, else the backend address.
    pub fn host_header(&self, index: usize) -> Option<&HeaderValue> {
        self.host
            .as_ref()
            .or_else(|| self.slots.get(index).map(|s| &s.host))
    }

    /// Is `backend` currently healthy?
    pub fn is_healthy(&self, backend: &Backend) -> bool {
        with_lb!(&self.balancer, lb => lb.backends().ready(backend))
    }

    /// Run one health-check pass if one is due at `now_ms`; returns whether it ran.
    pub async fn health_check_if_due(&self, now_ms: u64) -> bool {
        let Some(interval) = self.health_interval else {
            return false;
        };
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < interval.as_millis() as u64 {
            return false;
        }
        self.last_check_ms.store(now_ms.max(1), Ordering::Relaxed);
        with_lb!(&self.balancer, lb => {
            lb.backends().run_health_check(true).await;
            for (i, (_, b)) in self.backends.iter().enumerate() {
                self.healthy[i].store(lb.backends().ready(b), Ordering::Relaxed);
            }
        });
        true
    }
}

fn health_check(
    sec: &UpstreamSection,
    hc: &crate::config::schema::HealthCheckSection,
) -> Box<dyn pingora::lb::health_check::HealthCheck + Send + Sync> {
    let timeout = Duration::from_millis(hc.timeout_ms);
    match hc.kind {
        HealthCheckKind::Tcp => {
            let mut c = TcpHealthCheck::new();
            c.consecutive_success = hc.healthy_threshold;
            c.consecutive_failure = hc.unhealthy_threshold;
            c.peer_template.options.connection_timeout = Some(timeout);
            c
        }
        HealthCheckKind::Http => {
            let host = hc.host.clone().unwrap_or_else(|| "localhost".to_string());
            let mut c = HttpHealthCheck::new(&host, sec.tls);
            c.consecutive_success = hc.healthy_threshold;
            c.consecutive_failure = hc.unhealthy_threshold;
            c.peer_template.options.connection_timeout = Some(timeout);
            c.peer_template.options.read_timeout = Some(timeout);
            c.peer_template.options.verify_cert = sec.verify_cert;
            if let Ok(uri) = hc.path.parse() {
                c.req.set_uri(uri);
            }
            let expected = hc.expected_statuses.clone();
            c.validator = Some(Box::new(move |resp| {
                if expected.contains(&resp.status.as_u16()) {
                    Ok(())
                } else {
                    pingora::Error::e_explain(
                        pingora::ErrorType::Custom("unexpected status"),
                        format!("health check got {}", resp.status),
                    )
                }
            }));
            Box::new(c)
        }
    }
}

/// Scramble a counter (splitmix64) so consecutive values spread evenly: used to choose among
/// backends without a lock or a random source.
fn spread(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Backend indexes in smooth weighted round-robin order (nginx's algorithm): each backend
/// appears `weight / gcd` times, spread out rather than in runs.
pub(crate) fn smooth_wheel(weights: &[usize]) -> Vec<u32> {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    /// Bounds the wheel (and its O(entries × backends) build) for extreme weights.
    const MAX_ENTRIES: i64 = 1 << 16;
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let mut w: Vec<i64> = weights.iter().map(|&x| (x / g) as i64).collect();
    let sum: i64 = w.iter().sum();
    if sum > MAX_ENTRIES {
        // Keep the proportions; every backend keeps at least one entry.
        for x in &mut w {
            *x = (*x * MAX_ENTRIES / sum).max(1);
        }
    }
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut wheel = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, x) in current.iter_mut().zip(&w) {
            *c += x;
        }
        let Some(best) = (0..w.len()).max_by_key(|&i| (current[i], std::cmp::Reverse(i))) else {
            break;
        };
        current[best] -= total;
        wheel.push(best as u32);
    }
    wheel
}

/// Keeps the pools of the running config so a reload reuses a pool whose definition did not
/// change: its health state, and the connections pooled for its peers, carry over.
#[derive(Default)]
pub struct UpstreamCache {
    pools: Mutex<HashMap<String, Arc<UpstreamPool>>>,
}

impl UpstreamCache {
    /// The pool for `sec`: the cached one if its definition is identical, else a new one.
    pub fn get_or_build(
        &self,
        sec: &UpstreamSection,
        dns_cache: &dns::DnsCache,
    ) -> Result<Arc<UpstreamPool>, Vec<ConfigError>> {
        if let Some(p) = lock(&self.pools).get(&sec.name).cloned() {
            if &p.definition == sec && p.resolves_the_same(sec, dns_cache) {
                return Ok(p);
            }
        }
        UpstreamPool::build(sec, dns_cache).map(Arc::new)
    }

    /// Remember exactly these pools (those of the config that was just activated).
    pub fn retain(&self, pools: &[Arc<UpstreamPool>]) {
        let mut map = lock(&self.pools);
        map.clear();
        for p in pools {
            map.insert(p.name.to_string(), p.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(src: &str) -> UpstreamSection {
        toml::from_str(src).unwrap()
    }

    fn no_dns() -> dns::DnsCache {
        dns::DnsCache::default()
    }

    #[test]
    fn weighted_round_robin_and_exclude() {
        let p = UpstreamPool::build(
            &section(
                "name = \"u\"\nbackends = [{ addr = \"127.0.0.1:1\", weight = 3 }, \"127.0.0.1:2\"]",
            ),
            &no_dns(),
        )
        .ok()
        .unwrap();
        let mut counts = HashMap::new();
        for _ in 0..400 {
            let i = p.select(b"", &[]).unwrap();
            *counts.entry(p.backends[i].0.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts["127.0.0.1:1"], 300);
        assert_eq!(counts["127.0.0.1:2"], 100);
        let first = p.backends[0].1.addr.clone();
        for _ in 0..10 {
            let i = p.select(b"", std::slice::from_ref(&first)).unwrap();
            assert_ne!(p.backends[i].1.addr, first);
        }
        let all: Vec<_> = p.backends.iter().map(|b| b.1.addr.clone()).collect();
        assert!(p.select(b"", &all).is_none());
    }

    #[test]
    fn a_named_backend_is_its_own_host_and_sni() {
        // `localhost` resolves through /etc/hosts on every machine the tests run on.
        let p = UpstreamPool::build(
            &section("name = \"u\"\nbackends = [\"localhost:9\", \"127.0.0.1:10\"]"),
            &no_dns(),
        )
        .ok()
        .unwrap();
        assert_eq!(p.names, [("localhost".to_string(), 9)]);
        let (named, literal): (Vec<_>, Vec<_>) = p
            .slots
            .iter()
            .partition(|s| s.peer._address.as_inet().map(|a| a.port()) == Some(9));
        assert!(!named.is_empty());
        for s in named {
            assert_eq!(s.host, "localhost:9");
            assert_eq!(s.peer.sni, "localhost");
        }
        assert_eq!(literal.len(), 1);
        assert_eq!(literal[0].host, "127.0.0.1:10");
        assert_eq!(literal[0].peer.sni, "");
    }

    #[test]
    fn wheel_is_smooth_and_proportional() {
        assert_eq!(smooth_wheel(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_wheel(&[2, 4]), [1, 0, 1]);
        let big = smooth_wheel(&[65_535, 65_535, 1]);
        assert!(big.len() <= (1 << 16) + 3);
        assert!(big.contains(&2));
    }

    #[test]
    fn errors_are_relative() {
        let errs = UpstreamPool::build(
            &section(
                "name = \"u\"\nbackends = [\"nope\", { addr = \"127.0.0.1:1\", weight = 0 }, \"127.0.0.1:2\", \"127.0.0.1:2\"]\nalgorithm = \"consistent_hash\"\nhash_on = \"ip\"",
            ),
            &no_dns(),
        )
        .err()
        .unwrap();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "hash_on",
                "backends[0]",
                "backends[1].weight",
                "backends[3]"
            ]
        );
    }

    #[test]
    fn cache_reuses_identical_definitions() {
        let cache = UpstreamCache::default();
        let dns = no_dns();
        let s = section("name = \"u\"\nbackends = [\"127.0.0.1:1\"]");
        let a = cache.get_or_build(&s, &dns).ok().unwrap();
        cache.retain(std::slice::from_ref(&a));
        let b = cache.get_or_build(&s, &dns).ok().unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        let s2 = section("name = \"u\"\nbackends = [\"127.0.0.1:2\"]");
        assert!(!Arc::ptr_eq(
            &a,
            &cache.get_or_build(&s2, &dns).ok().unwrap()
        ));
    }
}
