//! How a route caches: what is cacheable, the key, freshness and purge rights, compiled from
//! the `cache` plugin's table. The gateway's cache phases call it; see docs/config.md for
//! the semantics.

use super::storage::{CacheScope, CacheStore, KeyOrigin, Origin};
use crate::build_ctx::BuildCtx;
use crate::config_error::{parse_config_all, ConfigError};
use crate::context::RequestCtx;
use http::{header, HeaderName, Method, StatusCode};
use pingora::cache::cache_control::{CacheControl, InterpretCacheControl};
use pingora::cache::filters::calculate_expires_header_time;
use pingora::cache::key::{hash_key, HashBinary};
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable, VarianceBuilder};
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

#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct CacheConfig {
    #[serde(default = "default_statuses")]
    statuses: Vec<u16>,
    #[serde(default)]
    default_ttl_seconds: u64,
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

fn default_statuses() -> Vec<u16> {
    vec![200, 203, 204, 300, 301, 308, 404, 410]
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
    route: String,
    statuses: Vec<u16>,
    default_ttl: Option<Duration>,
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
        for (i, s) in cfg.statuses.iter().enumerate() {
            if StatusCode::from_u16(*s).is_err() {
                errors.push(ConfigError::new(
                    format!("statuses[{i}]"),
                    format!("{s} is not a status"),
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
            route,
            statuses: cfg.statuses,
            default_ttl: (cfg.default_ttl_seconds > 0)
                .then(|| Duration::from_secs(cfg.default_ttl_seconds)),
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
            Method::POST | Method::PUT | Method::DELETE | Method::PATCH => RequestUse::Invalidate,
            _ => RequestUse::Bypass,
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

    /// The URL identity used for purges: route, host, path and query as the key sees it.
    pub fn url_hash(&self, req: &RequestHeader) -> HashBinary {
        let mut s = String::with_capacity(128);
        self.push_url(&mut s, req);
        hash_key(&s)
    }

    fn push_url(&self, s: &mut String, req: &RequestHeader) {
        s.push_str(&self.route);
        s.push('\0');
        s.push_str(crate::req::host(req));
        s.push('\0');
        s.push_str(req.uri.path());
        s.push('?');
        let query = req.uri.query().unwrap_or("");
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

    /// The cache key: route, method (HEAD shares GET's entry), host, path and query, plus the
    /// configured headers, and the consumer of an authenticated request unless the route's
    /// responses are `shared`.
    pub fn cache_key(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        body_hash: Option<&[u8; 32]>,
    ) -> CacheKey {
        let mut s = String::with_capacity(160);
        self.push_url(&mut s, req);
        let url = hash_key(&s);
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
        let mut key = CacheKey::new(s, self.route.clone());
        key.extensions.insert(KeyOrigin(Origin {
            route: self.route.clone(),
            url,
            path: req.uri.path().to_string(),
        }));
        key
    }

    /// Decide whether (and for how long) a response may be stored, as a shared cache.
    pub fn response_cacheable(&self, resp: &ResponseHeader, authorization: bool) -> RespCacheable {
        let no = RespCacheable::Uncacheable(NoCacheReason::OriginNotCache);
        if !self.statuses.contains(&resp.status.as_u16()) {
            return no;
        }
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
        if let Some(cc) = &cc {
            if cc.no_store() || cc.private() {
                return no;
            }
        }
        // A response to a request with Authorization is stored only when it says it may be.
        if authorization
            && !cc
                .as_ref()
                .is_some_and(|cc| cc.public() || has_s_maxage(cc) || cc.must_revalidate())
        {
            return no;
        }
        let now = SystemTime::now();
        let age = resp
            .headers
            .get(header::AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let explicit = cc.as_ref().and_then(|cc| match cc.s_maxage() {
            Ok(Some(s)) => Some(s),
            _ => cc.max_age().ok().flatten(),
        });
        let fresh_until = match explicit {
            Some(secs) => now + Duration::from_secs(secs as u64).saturating_sub(age),
            None => match calculate_expires_header_time(resp) {
                Some(t) => t,
                None => {
                    // No freshness given: only responses that explicitly allow caching
                    // (`public`, or `no-cache`, which must revalidate anyway) use the default.
                    let allows = cc.as_ref().is_some_and(|cc| cc.public() || cc.no_cache());
                    match (allows, self.default_ttl) {
                        (true, Some(ttl)) => now + ttl,
                        (true, None) if cc.as_ref().is_some_and(|cc| cc.no_cache()) => now,
                        _ => return no,
                    }
                }
            },
        };
        // `no-cache` (and `must-revalidate` once stale) means: store, but revalidate before use.
        let fresh_until = if cc.as_ref().is_some_and(|cc| cc.no_cache()) {
            now.checked_sub(Duration::from_secs(1)).unwrap_or(now)
        } else {
            fresh_until
        };
        let (swr, sie) = match &cc {
            Some(cc) if cc.must_revalidate() || cc.proxy_revalidate() => (0, 0),
            Some(cc) => (
                cc.stale_while_revalidate().ok().flatten().unwrap_or(0),
                cc.stale_if_error().ok().flatten().unwrap_or(0),
            ),
            None => (0, 0),
        };
        let mut header = resp.clone();
        if let Some(cc) = &cc {
            cc.strip_private_headers(&mut header);
        }
        RespCacheable::Cacheable(CacheMeta::new(fresh_until, now, swr, sie, header))
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

    /// The cache this route's objects live in.
    pub fn store(&self) -> &'static CacheStore {
        self.scope.store()
    }
}

fn has_s_maxage(cc: &CacheControl) -> bool {
    matches!(cc.s_maxage(), Ok(Some(_)))
}
