//! How a route caches: what is cacheable, the key, freshness and purge rights, compiled from
//! the `cache` plugin's table. The gateway's cache phases call it; see docs/config.md for
//! the semantics.

use super::freshness::{self, Lifetime};
use super::redis_storage::{RedisCacheConfig, RedisStorage};
use super::storage::{CacheScope, CacheStore, FreshCopy, KeyOrigin, Origin};
use crate::build_ctx::BuildCtx;
use crate::config_error::{parse_config_all, ConfigError};
use crate::context::RequestCtx;
use http::{header, HeaderName, Method, StatusCode};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::eviction::EvictionManager;
use pingora::cache::key::{hash_key, HashBinary};
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable, Storage, VarianceBuilder};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use subtle::ConstantTimeEq;

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default, Debug)]
#[serde(rename_all = "snake_case")]
enum QueryMode {
    /// The query string as sent.
    #[default]
    All,
    /// Parameters sorted, so `?a=1&b=2` and `?b=2&a=1` share an entry.
    Sorted,
    /// No query in the key.
    Ignore,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct KeyConfig {
    #[serde(default)]
    query: QueryMode,
    /// Only these query parameters (sorted) are part of the key.
    #[serde(default)]
    query_params: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
    /// `false` (with `shared = true`) leaves the consumer out; `true` is the default.
    #[serde(default)]
    consumer: Option<bool>,
    /// POST requests are cached, keyed by a SHA-256 of their body.
    #[serde(default)]
    body: bool,
}

#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct PurgeConfig {
    #[serde(default)]
    allow_ips: Vec<String>,
    #[serde(default)]
    token: Option<String>,
}

/// Where a route's objects live.
#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default, Debug)]
#[serde(rename_all = "snake_case")]
enum StorageKind {
    /// This process's memory store.
    #[default]
    Memory,
    /// A Redis server shared by every instance.
    Redis,
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct RedisSection {
    url: String,
    #[serde(default = "default_redis_timeout")]
    timeout_ms: u64,
    #[serde(default = "default_redis_prefix")]
    prefix: String,
    #[serde(default = "default_redis_max_bytes")]
    max_bytes: u64,
}

/// `true`, unless the environment says `TOLLGATE_CACHE_FAST_HITS=0` (the test suite runs
/// the cache tests both ways).
fn default_fast_hits() -> bool {
    std::env::var("TOLLGATE_CACHE_FAST_HITS").map_or(true, |v| v != "0")
}

fn default_redis_timeout() -> u64 {
    100
}
fn default_redis_prefix() -> String {
    "tollgate:cache".to_string()
}
fn default_redis_max_bytes() -> u64 {
    256 * 1024 * 1024
}

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CacheConfig {
    /// Serve fresh hits without Pingora's cache phases.
    #[serde(default = "default_fast_hits")]
    fast_hits: bool,
    #[serde(default)]
    storage: StorageKind,
    #[serde(default)]
    redis: Option<RedisSection>,
    /// `None`: the RFC's heuristically cacheable statuses, and any other final status with
    /// explicit freshness.
    #[serde(default)]
    statuses: Option<Vec<u16>>,
    #[serde(default)]
    default_ttl_seconds: u64,
    /// Kong-style: store every response with a listed status for this long.
    #[serde(default)]
    force_ttl_seconds: u64,
    #[serde(default)]
    heuristic: bool,
    #[serde(default = "default_heuristic_max")]
    heuristic_max_seconds: u64,
    #[serde(default = "default_max_object")]
    max_object_bytes: usize,
    #[serde(default)]
    cache_set_cookie: bool,
    #[serde(default = "default_lock_timeout")]
    lock_timeout_ms: u64,
    #[serde(default)]
    key: KeyConfig,
    #[serde(default)]
    purge: Option<PurgeConfig>,
    /// Responses are identical for every caller: authenticated requests share entries.
    #[serde(default)]
    shared: bool,
}

/// Statuses cacheable by default (RFC 9110 §15.1), without 206: ranges are not stored.
const DEFAULT_STATUSES: [u16; 11] = [200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501];

fn default_heuristic_max() -> u64 {
    86_400
}
fn default_max_object() -> usize {
    1024 * 1024
}
fn default_lock_timeout() -> u64 {
    3000
}

/// How a route caches. Built once per config; used by the gateway's cache hooks.
pub struct CachePolicy {
    /// The route's objects in the process's cache.
    scope: Arc<CacheScope>,
    /// `fast_hits`.
    fast_hits: bool,
    /// With `storage = "redis"`: the shared storage (the memory store then only lends its
    /// cache lock).
    redis: Option<&'static RedisStorage>,
    route: String,
    statuses: Vec<u16>,
    /// `statuses` was written: only those are stored, whatever the freshness.
    statuses_strict: bool,
    default_ttl: Option<Duration>,
    force_ttl: Option<Duration>,
    heuristic_max: Option<Duration>,
    /// Largest body stored.
    pub max_object_bytes: usize,
    cache_set_cookie: bool,
    /// How long a request waits for another one fetching the same object.
    pub lock_timeout: Duration,
    query: QueryMode,
    query_params: Vec<String>,
    key_headers: Vec<HeaderName>,
    key_consumer: bool,
    key_body: bool,
    purge_ips: Vec<ipnet::IpNet>,
    purge_token: Option<String>,
    purge_enabled: bool,
}

impl CachePolicy {
    /// Compile the `cache` plugin's table for the scope `ctx` names.
    pub fn from_config(value: &toml::Value, ctx: &BuildCtx) -> Result<Self, Vec<ConfigError>> {
        let cfg: CacheConfig = parse_config_all(value)?;
        let mut errors = Vec::new();
        let statuses_strict = cfg.statuses.is_some();
        let statuses = cfg.statuses.unwrap_or_else(|| DEFAULT_STATUSES.to_vec());
        for (i, s) in statuses.iter().enumerate() {
            if !(200..=599).contains(s) {
                errors.push(ConfigError::new(
                    format!("statuses[{i}]"),
                    format!("{s} is not a final status (200 to 599)"),
                ));
            }
        }
        let mut key_headers = Vec::new();
        for (i, h) in cfg.key.headers.iter().enumerate() {
            match HeaderName::from_bytes(h.as_bytes()) {
                Ok(n) => key_headers.push(n),
                Err(_) => errors.push(ConfigError::new(
                    format!("key.headers[{i}]"),
                    format!("{h:?} is not a header name"),
                )),
            }
        }
        let (purge_ips, purge_token, purge_enabled) = match &cfg.purge {
            Some(p) => {
                let ips = crate::net::parse_nets(&p.allow_ips, "purge.allow_ips", &mut errors);
                if p.allow_ips.is_empty() && p.token.is_none() {
                    errors.push(ConfigError::new("purge", "set allow_ips, token or both"));
                }
                if p.token.as_ref().is_some_and(|t| t.len() < 16) {
                    errors.push(ConfigError::new(
                        "purge.token",
                        "must be at least 16 characters",
                    ));
                }
                (ips, p.token.clone(), true)
            }
            None => (Vec::new(), None, false),
        };
        match (cfg.key.consumer, cfg.shared) {
            (Some(false), false) => errors.push(ConfigError::new(
                "key.consumer",
                "leaving the consumer out of the key serves one caller's cached answer to another; set shared = true if responses are identical for every caller",
            )),
            (Some(true), true) => errors.push(ConfigError::new(
                "shared",
                "shared = true leaves the consumer out of the key; remove key.consumer = true",
            )),
            _ => {}
        }
        let redis = match (cfg.storage, &cfg.redis) {
            (StorageKind::Memory, None) => None,
            (StorageKind::Memory, Some(_)) => {
                errors.push(ConfigError::new(
                    "redis",
                    "only used with storage = \"redis\"",
                ));
                None
            }
            (StorageKind::Redis, None) => {
                errors.push(ConfigError::new(
                    "redis",
                    "storage = \"redis\" needs redis = { url = \"redis://host:6379\" }",
                ));
                None
            }
            (StorageKind::Redis, Some(r)) => {
                if r.timeout_ms == 0 {
                    errors.push(ConfigError::new("redis.timeout_ms", "must be at least 1"));
                }
                if r.max_bytes == 0 {
                    errors.push(ConfigError::new("redis.max_bytes", "must be at least 1"));
                }
                if r.prefix.is_empty() {
                    errors.push(ConfigError::new("redis.prefix", "must not be empty"));
                }
                let rc = RedisCacheConfig {
                    url: r.url.clone(),
                    timeout: Duration::from_millis(r.timeout_ms.max(1)),
                    prefix: r.prefix.clone(),
                    max_bytes: r.max_bytes.max(1),
                };
                match RedisStorage::shared(&ctx.state, &rc) {
                    Ok(st) => Some(st),
                    Err(e) => {
                        errors.push(ConfigError::new("redis.url", e));
                        None
                    }
                }
            }
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut query_params = cfg.key.query_params.clone();
        query_params.sort();
        let route = ctx
            .scope
            .strip_prefix("route:")
            .unwrap_or(&ctx.scope)
            .to_string();
        Ok(CachePolicy {
            scope: CacheScope::of(&ctx.state, &route),
            fast_hits: cfg.fast_hits,
            redis,
            route,
            statuses,
            statuses_strict,
            default_ttl: (cfg.default_ttl_seconds > 0)
                .then(|| Duration::from_secs(cfg.default_ttl_seconds)),
            force_ttl: (cfg.force_ttl_seconds > 0)
                .then(|| Duration::from_secs(cfg.force_ttl_seconds)),
            heuristic_max: cfg
                .heuristic
                .then(|| Duration::from_secs(cfg.heuristic_max_seconds)),
            max_object_bytes: cfg.max_object_bytes,
            cache_set_cookie: cfg.cache_set_cookie,
            lock_timeout: Duration::from_millis(cfg.lock_timeout_ms.max(1)),
            query: cfg.key.query,
            query_params,
            key_headers,
            key_consumer: !cfg.shared,
            key_body: cfg.key.body,
            purge_ips,
            purge_token,
            purge_enabled,
        })
    }
}

/// What the cache decision needs to know about the request and the exchange with the origin.
#[derive(Debug, Clone, Copy, Default)]
pub struct Exchange {
    /// The request carried `Authorization`.
    pub authorization: bool,
    /// The gateway authenticated the request (a consumer is known).
    pub authenticated: bool,
    /// From sending the request upstream to the response head (`response_delay`, §4.2.3).
    pub response_delay: Duration,
}

/// Why a request does not use the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestUse {
    /// Look up and store.
    Cache,
    /// Neither look up nor store (`Cache-Control: no-store`, other methods).
    Bypass,
    /// An unsafe method: proxy it, then drop the stored URL.
    Invalidate,
    /// A POST on a route keyed by body: read the body (at most [`MAX_KEY_BODY`] bytes), then
    /// look up and store like a GET.
    CacheBody,
}

/// Registered safe methods beyond RFC 9110's (WebDAV's, RFC 4918 / 3253 / 5323).
const SAFE_EXTENSION_METHODS: [&str; 3] = ["PROPFIND", "REPORT", "SEARCH"];

/// Largest request body that can be part of a cache key: the body is read before the lookup
/// and replayed upstream on a miss from Pingora's 64 KiB retry buffer.
pub const MAX_KEY_BODY: usize = 64 * 1024;

/// A header value of `req` as text, if any.
fn header_str<'a>(req: &'a RequestHeader, name: &HeaderName) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

impl CachePolicy {
    /// What this request does with the cache.
    pub fn request_use(&self, req: &RequestHeader) -> RequestUse {
        match req.method {
            Method::GET | Method::HEAD => {
                let no_store = CacheControl::from_req_headers(req).is_some_and(|cc| cc.no_store());
                if no_store {
                    RequestUse::Bypass
                } else {
                    RequestUse::Cache
                }
            }
            Method::POST if self.key_body => {
                let len = crate::req::content_length(req).and_then(Result::ok);
                let no_store = CacheControl::from_req_headers(req).is_some_and(|cc| cc.no_store());
                match len {
                    Some(n) if n <= MAX_KEY_BODY as u64 && !no_store => RequestUse::CacheBody,
                    _ => RequestUse::Bypass,
                }
            }
            // Known safe methods leave the cache alone; any other method, registered
            // (POST, PUT, DELETE, PATCH, PROPPATCH...) or not (M-SEARCH), may change the
            // resource: it invalidates (RFC 9111 §4.4).
            Method::OPTIONS | Method::TRACE | Method::CONNECT => RequestUse::Bypass,
            ref m if SAFE_EXTENSION_METHODS.contains(&m.as_str()) => RequestUse::Bypass,
            _ => RequestUse::Invalidate,
        }
    }

    /// The client asked for a revalidated answer (`no-cache`, `max-age=0`, `Pragma: no-cache`).
    pub fn request_wants_revalidation(&self, req: &RequestHeader) -> bool {
        let cc = CacheControl::from_req_headers(req);
        let pragma = req
            .headers
            .get(header::PRAGMA)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"no-cache"));
        pragma || cc.is_some_and(|cc| cc.no_cache() || matches!(cc.max_age(), Ok(Some(0))))
    }

    /// The URL identity used for invalidation and purges: host, path and query as the key
    /// sees it. Not the route: a URL's stored answers go together, whichever route made them.
    pub fn url_hash(&self, req: &RequestHeader) -> HashBinary {
        let mut s = String::with_capacity(128);
        self.push_url(
            &mut s,
            crate::req::host(req),
            req.uri.path(),
            req.uri.query(),
        );
        hash_key(&s)
    }

    /// The URLs a successful unsafe request invalidates (RFC 9111 §4.4): its own, and those
    /// its response's `Location` and `Content-Location` name on the same host.
    pub fn invalidated_urls(&self, req: &RequestHeader, resp: &ResponseHeader) -> Vec<HashBinary> {
        let host = crate::req::host(req);
        let mut urls = vec![self.url_hash(req)];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            let Some(v) = resp.headers.get(&name).and_then(|v| v.to_str().ok()) else {
                continue;
            };
            let Ok(uri) = v.parse::<http::Uri>() else {
                continue;
            };
            // A reference to another host is not this cache's to invalidate (§4.4).
            // The key's host has no port, so neither does the comparison.
            let same_host = match uri.host() {
                Some(h) => h
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .eq_ignore_ascii_case(host),
                None => v.starts_with('/') && !v.starts_with("//"),
            };
            if same_host {
                let mut s = String::with_capacity(128);
                self.push_url(&mut s, host, uri.path(), uri.query());
                urls.push(hash_key(&s));
            }
        }
        urls
    }

    fn push_url(&self, s: &mut String, host: &str, path: &str, query: Option<&str>) {
        s.push_str(host);
        s.push('\0');
        s.push_str(path);
        s.push('?');
        let query = query.unwrap_or("");
        match (self.query_params.is_empty(), self.query) {
            (true, QueryMode::All) => s.push_str(query),
            (true, QueryMode::Ignore) => {}
            // Sorted, or only the listed parameters (sorted too).
            _ => {
                let mut pairs: Vec<&str> = query
                    .split('&')
                    .filter(|p| {
                        let k = p.split_once('=').map_or(*p, |(k, _)| k);
                        !p.is_empty()
                            && (self.query_params.is_empty()
                                || self.query_params.iter().any(|q| q == k))
                    })
                    .collect();
                pairs.sort_unstable();
                s.push_str(&pairs.join("&"));
            }
        }
    }

    /// The cache key: the route that serves the request and the upstream it goes to (so a
    /// global cache never serves one route's or one split target's answer on another), method
    /// (HEAD shares GET's entry), host, path and query, plus the configured headers, and the
    /// consumer of an authenticated request unless the route's responses are `shared`.
    pub fn cache_key(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        target: &str,
        body_hash: Option<&[u8; 32]>,
    ) -> CacheKey {
        let (s, url_len) = self.key_text(req, ctx, target, body_hash);
        let url = hash_key(&s[..url_len]);
        let mut key = CacheKey::new(s, ctx.route.to_string());
        key.extensions.insert(KeyOrigin(Origin {
            route: ctx.route.to_string(),
            url,
            path: req.uri.path().to_string(),
        }));
        key
    }

    /// The primary key's text, and the length of its URL part (what purges go by).
    fn key_text(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        target: &str,
        body_hash: Option<&[u8; 32]>,
    ) -> (String, usize) {
        let mut s = String::with_capacity(160);
        self.push_url(
            &mut s,
            crate::req::host(req),
            req.uri.path(),
            req.uri.query(),
        );
        let url_len = s.len();
        s.push('\0');
        s.push_str(&ctx.route);
        s.push('\0');
        s.push_str(target);
        s.push('\0');
        s.push_str(if req.method == Method::HEAD {
            "GET"
        } else {
            req.method.as_str()
        });
        for h in &self.key_headers {
            s.push('\0');
            s.push_str(h.as_str());
            s.push('=');
            s.push_str(header_str(req, h).unwrap_or(""));
        }
        if self.key_consumer {
            s.push_str("\0consumer=");
            if let Some(id) = &ctx.identity {
                s.push_str(&id.consumer.username);
            }
        }
        if let Some(h) = body_hash {
            s.push_str("\0body=");
            for b in h {
                s.push_str(&format!("{b:02x}"));
            }
        }
        (s, url_len)
    }

    /// A fresh stored answer this request can be served from at once, without Pingora's
    /// cache phases: memory storage, a plain `GET`/`HEAD` (no range, no condition, no
    /// request cache directives, which the full path handles) and an object without
    /// variants that is fresh now. Everything else (misses, stale objects, revalidation,
    /// ranges, `Vary`) takes the full RFC 9111 path.
    pub fn fresh_hit(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        target: &str,
    ) -> Option<Arc<FreshCopy>> {
        if !self.fast_hits
            || self.redis.is_some()
            || self.key_body
            || !matches!(req.method, Method::GET | Method::HEAD)
        {
            return None;
        }
        const FULL_PATH: [HeaderName; 8] = [
            header::RANGE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
            header::CACHE_CONTROL,
            header::PRAGMA,
        ];
        if FULL_PATH.iter().any(|h| req.headers.contains_key(h)) {
            return None;
        }
        let (s, _) = self.key_text(req, ctx, target, None);
        self.store()
            .storage
            .fresh_copy(&hash_key(&s), SystemTime::now())
    }

    /// Decide whether (and for how long) a response may be stored, as a shared cache
    /// (RFC 9111 §3), and its age and freshness (§4.2).
    pub fn response_cacheable(&self, resp: &ResponseHeader, ex: &Exchange) -> RespCacheable {
        let no = RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        let listed = self.statuses.contains(&resp.status.as_u16());
        if !self.cache_set_cookie && resp.headers.contains_key(header::SET_COOKIE) {
            return no;
        }
        if resp.headers.get_all(header::VARY).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|p| p.trim() == "*"))
        }) {
            return no;
        }
        let cc = CacheControl::from_resp_headers(resp);
        if cc.as_ref().is_some_and(|cc| cc.no_store() || cc.private()) {
            return no;
        }
        let says_public = cc
            .as_ref()
            .is_some_and(|cc| cc.public() || has_s_maxage(cc) || cc.must_revalidate());
        let now = SystemTime::now();
        let initial_age = freshness::initial_age(resp, now, ex.response_delay);
        let explicit = freshness::explicit_lifetime(resp, cc.as_ref(), now);

        let (lifetime, swr, sie) = if let Some(ttl) = self.force_ttl {
            // The operator's lifetime replaces the origin's; its storage bans still hold.
            // A request with Authorization is the origin's business unless the gateway
            // authenticated it and keys the entry by consumer.
            let keyed_by_caller = ex.authenticated && self.key_consumer;
            if !listed || (ex.authorization && !keyed_by_caller && !says_public) {
                return no;
            }
            (ttl, 0, 0)
        } else {
            // Beyond the list, a response says it may be stored by giving explicit
            // freshness; server errors only when listed (a transient 500 is not kept).
            let final_status = (200..=499).contains(&resp.status.as_u16());
            let explicit_ok = !self.statuses_strict
                && final_status
                && resp.status != StatusCode::PARTIAL_CONTENT
                && matches!(explicit, Lifetime::Explicit(_));
            if !listed && !explicit_ok {
                return no;
            }
            // A response to a request with Authorization is stored only when it says it may be.
            if ex.authorization && !says_public {
                return no;
            }
            let no_cache = cc.as_ref().is_some_and(|cc| cc.no_cache());
            let lifetime = match explicit {
                Lifetime::Explicit(d) => d,
                Lifetime::None => {
                    // No freshness given: the default applies to responses that explicitly
                    // allow caching (`public`, or `no-cache`, which revalidates anyway).
                    let allows = cc.as_ref().is_some_and(|cc| cc.public() || cc.no_cache());
                    match (allows, self.default_ttl, self.heuristic_max) {
                        (true, Some(ttl), _) => ttl,
                        _ if no_cache => Duration::ZERO,
                        (_, _, Some(cap)) => match freshness::heuristic_lifetime(resp, now, cap) {
                            Some(h) => h,
                            None => return no,
                        },
                        _ => return no,
                    }
                }
            };
            let (swr, sie) = match &cc {
                Some(cc) if cc.must_revalidate() || cc.proxy_revalidate() => (0, 0),
                Some(cc) => (
                    cc.stale_while_revalidate().ok().flatten().unwrap_or(0),
                    cc.stale_if_error().ok().flatten().unwrap_or(0),
                ),
                None => (0, 0),
            };
            // `no-cache`: store, but revalidate before every use.
            let lifetime = if no_cache { Duration::ZERO } else { lifetime };
            (lifetime, swr, sie)
        };

        // The response was `initial_age` old when it arrived: its clock started then.
        let epoch = now
            .checked_sub(initial_age)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        // Fresh while its age is below the lifetime (§4.2): a lifetime of 0, or an age past
        // it, is stale on arrival.
        let fresh_until = (epoch + lifetime)
            .checked_sub(Duration::from_millis(1))
            .unwrap_or(epoch);
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        // Age is computed at every use; a stored copy would be stale.
        header.remove_header(&header::AGE);
        // A response without Date is dated when it was received (RFC 9110 §6.6.1), so hits
        // say how old the stored copy is.
        if !header.headers.contains_key(header::DATE) {
            let _ = header.insert_header(header::DATE, httpdate::fmt_http_date(now));
        }
        let mut meta = CacheMeta::new(fresh_until, now, swr, sie, header);
        meta.set_epoch_override(epoch);
        RespCacheable::Cacheable(meta)
    }

    /// The variance of a stored response for this request: the values of the headers its
    /// `Vary` names.
    pub fn variance(&self, meta: &CacheMeta, req: &RequestHeader) -> Option<HashBinary> {
        let mut names: Vec<String> = Vec::new();
        for v in meta.headers().get_all(header::VARY) {
            if let Ok(v) = v.to_str() {
                names.extend(
                    v.split(',')
                        .map(|n| n.trim().to_ascii_lowercase())
                        .filter(|n| !n.is_empty()),
                );
            }
        }
        if names.is_empty() {
            return None;
        }
        names.sort();
        names.dedup();
        let mut b = VarianceBuilder::new();
        for n in names {
            let value = req
                .headers
                .get(n.as_str())
                .map(|v| v.as_bytes().to_vec())
                .unwrap_or_default();
            b.add_owned_name_value(n, value);
        }
        b.finalize()
    }

    /// May this `PURGE` request purge? (Client IP allowed, or the right token, compared in
    /// constant time.)
    pub fn purge_allowed(&self, req: &RequestHeader, ctx: &RequestCtx) -> bool {
        if !self.purge_enabled {
            return false;
        }
        let ip_ok = ctx
            .client_ip
            .is_some_and(|ip| crate::net::contains(&self.purge_ips, ip));
        let token_ok = match (&self.purge_token, req.headers.get("x-purge-token")) {
            (Some(t), Some(v)) => {
                t.len() == v.len() && bool::from(t.as_bytes().ct_eq(v.as_bytes()))
            }
            _ => false,
        };
        ip_ok || token_ok
    }

    /// Is `PURGE` configured for this route?
    pub fn purge_enabled(&self) -> bool {
        self.purge_enabled
    }

    /// The route this policy belongs to.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Where the objects live, as the metrics' `storage` label says.
    pub fn storage_name(&self) -> &'static str {
        if self.redis.is_some() {
            "redis"
        } else {
            "memory"
        }
    }

    /// The process's memory store (its lock coalesces misses for both storages).
    pub fn store(&self) -> &'static CacheStore {
        self.scope.store()
    }

    /// The storage Pingora reads and writes this route's objects in.
    pub fn storage(&self) -> &'static (dyn Storage + Sync) {
        match self.redis {
            Some(r) => r,
            None => &self.store().storage,
        }
    }

    /// The memory store's LRU budget; none for Redis, whose writes keep their own budget
    /// (an eviction here would delete the object for every instance).
    pub fn eviction(&self) -> Option<&'static (dyn EvictionManager + Sync)> {
        match self.redis {
            Some(_) => None,
            None => Some(self.store().eviction()),
        }
    }

    /// Drop every stored variant of these URLs; `Err` when the storage could not be reached.
    pub async fn purge_urls(&self, urls: &[HashBinary]) -> Result<usize, String> {
        match self.redis {
            Some(r) => {
                let mut n = 0;
                for u in urls {
                    n += r.purge_url(u).await?;
                }
                Ok(n)
            }
            None => Ok(urls.iter().map(|u| self.store().storage.purge_url(u)).sum()),
        }
    }

    /// Drop the objects `route` stored (only those of `path`, when given).
    pub async fn purge_route(&self, route: &str, path: Option<&str>) -> Result<usize, String> {
        match self.redis {
            Some(r) => r.purge_route(route, path).await,
            None => Ok(self.store().storage.purge_route(route, path)),
        }
    }
}

/// The stored response's head updated by a `304 Not Modified` (RFC 9111 §4.3.4): every
/// field the 304 carries replaces the stored one, except those describing the stored body's
/// framing and encoding (`Content-Length`, `Transfer-Encoding`, `Content-Encoding`,
/// `Content-Range`) and `Vary` (the stored variant stays the one it was). `Date` and `Age`
/// are the 304's: they date the validation.
pub fn merge_not_modified(
    stored: &ResponseHeader,
    not_modified: &ResponseHeader,
) -> ResponseHeader {
    const KEEP: [HeaderName; 5] = [
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::CONTENT_ENCODING,
        header::CONTENT_RANGE,
        header::VARY,
    ];
    let mut merged = stored.clone();
    merged.remove_header(&header::DATE);
    merged.remove_header(&header::AGE);
    for name in not_modified.headers.keys() {
        if KEEP.contains(name) {
            continue;
        }
        merged.remove_header(name);
        for v in not_modified.headers.get_all(name) {
            let _ = merged.append_header(name.clone(), v.clone());
        }
    }
    if !merged.headers.contains_key(header::DATE) {
        // A 304 without Date: it was received now (RFC 9110 §6.6.1).
        let _ = merged.insert_header(header::DATE, httpdate::fmt_http_date(SystemTime::now()));
    }
    merged
}

fn has_s_maxage(cc: &CacheControl) -> bool {
    matches!(cc.s_maxage(), Ok(Some(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_304_replaces_every_field_but_the_body_framing_and_vary() {
        let mut stored = ResponseHeader::build(200, None).unwrap();
        for (k, v) in [
            ("content-length", "5"),
            ("content-type", "text/plain"),
            ("x-frame-options", "deny"),
            ("vary", "accept"),
            ("date", "Sun, 06 Nov 1994 08:49:37 GMT"),
            ("age", "10"),
            ("x-kept", "1"),
        ] {
            stored.append_header(k, v).unwrap();
        }
        let mut nm = ResponseHeader::build(304, None).unwrap();
        for (k, v) in [
            ("content-length", "0"),
            ("content-type", "text/html"),
            ("x-frame-options", "sameorigin"),
            ("vary", "accept-language"),
            ("x-new", "a"),
            ("x-new", "b"),
        ] {
            nm.append_header(k, v).unwrap();
        }
        let m = merge_not_modified(&stored, &nm);
        let get = |n: &str| -> Vec<&str> {
            m.headers
                .get_all(n)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect()
        };
        assert_eq!(get("content-length"), ["5"]);
        assert_eq!(get("content-type"), ["text/html"]);
        assert_eq!(get("x-frame-options"), ["sameorigin"]);
        assert_eq!(get("vary"), ["accept"]);
        assert_eq!(get("x-new"), ["a", "b"]);
        assert_eq!(get("x-kept"), ["1"]);
        assert!(get("age").is_empty());
        // The 304 had no Date: it is dated now, not 1994.
        let date = httpdate::parse_http_date(get("date")[0]).unwrap();
        assert!(date > SystemTime::now() - Duration::from_secs(60));
    }
}
