//! `forward_auth`: ask an HTTP service whether a request may go on (Traefik ForwardAuth,
//! APISIX forward-auth, Envoy ext_authz over HTTP).
//!
//! For each request the gateway sends the service a request (`method`, default GET, to
//! `url`) carrying the chosen client headers (`request_headers`) and the original request in
//! `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto` and `-For`. A 2xx answer lets the request
//! go on, with the answer's `upstream_headers` copied onto it; any other answer is sent to the
//! client as it is (status, `Content-Type`, the `client_headers`, the body up to
//! [`MAX_DENIAL_BODY`]). When the service cannot be asked, `failure_mode` decides: `deny`
//! (503) or `allow`.
//!
//! The plugin runs in the authorization phase: authentication plugins are alternatives (one
//! success, or the anonymous consumer, is enough), authorization plugins all run, so a route
//! with `forward_auth` never reaches its upstream unless the service said 2xx (or the failure
//! mode `allow` applied). Whatever the client sent under an `upstream_headers` name is
//! removed, so only the service can set those headers.

use crate::answer::Answer;
use crate::config_error::ConfigError;
use crate::external::{
    check_timeout, header_names, is_reserved, Endpoint, Failure, FailureMode, Limits, Service,
};
use crate::metrics::METRICS;
use crate::ttl_cache::TtlCache;
use crate::{BuildCtx, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Registered name.
pub const NAME: &str = "forward_auth";
/// Largest denial body relayed to the client; a larger one is dropped (the status and
/// headers still are sent).
pub const MAX_DENIAL_BODY: usize = 64 * 1024;
/// Most cached decisions one plugin instance may be configured to keep.
pub const MAX_CACHE_ENTRIES: usize = 1_000_000;
/// Longest a decision may be cached.
pub const MAX_CACHE_TTL_SECONDS: u64 = 86_400;

const X_FORWARDED_METHOD: HeaderName = HeaderName::from_static("x-forwarded-method");
const X_FORWARDED_URI: HeaderName = HeaderName::from_static("x-forwarded-uri");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

fn default_method() -> String {
    "GET".to_string()
}
fn default_timeout_ms() -> u64 {
    1000
}
fn default_key() -> Vec<String> {
    vec!["method".into(), "host".into(), "uri".into()]
}
fn default_max_entries() -> usize {
    10_000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default = "default_method")]
    method: String,
    #[serde(default)]
    request_headers: Vec<String>,
    #[serde(default)]
    upstream_headers: Vec<String>,
    #[serde(default)]
    client_headers: Vec<String>,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    connect_timeout_ms: Option<u64>,
    #[serde(default)]
    failure_mode: FailureMode,
    cache: Option<CacheConfig>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CacheConfig {
    ttl_seconds: u64,
    #[serde(default = "default_key")]
    key: Vec<String>,
    #[serde(default = "default_max_entries")]
    max_entries: usize,
}

/// One part of a decision cache key.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeyPart {
    Header(HeaderName),
    Cookie(String),
    Query(String),
    Method,
    Host,
    Path,
    Uri,
    ClientIp,
}

impl KeyPart {
    fn parse(s: &str) -> Result<KeyPart, String> {
        let bad = || {
            format!(
                "{s:?} is not a key part (header:<name>, cookie:<name>, query:<name>, method, host, path, uri, client_ip)"
            )
        };
        Ok(match s.split_once(':') {
            Some(("header", n)) => {
                KeyPart::Header(HeaderName::from_bytes(n.as_bytes()).map_err(|_| bad())?)
            }
            Some(("cookie", n)) if !n.is_empty() => KeyPart::Cookie(n.to_string()),
            Some(("query", n)) if !n.is_empty() => KeyPart::Query(n.to_string()),
            Some(_) => return Err(bad()),
            None => match s {
                "method" => KeyPart::Method,
                "host" => KeyPart::Host,
                "path" => KeyPart::Path,
                "uri" => KeyPart::Uri,
                "client_ip" => KeyPart::ClientIp,
                _ => return Err(bad()),
            },
        })
    }
}

/// What the service decided, as cached.
#[derive(Debug, Clone)]
enum Decision {
    /// 2xx: go on, with these headers set on the upstream request.
    Allow(Arc<[(HeaderName, HeaderValue)]>),
    /// Anything else: send this.
    Deny(Answer),
}

struct DecisionCache {
    ttl: Duration,
    parts: Vec<KeyPart>,
    entries: TtlCache<[u8; 32], Decision>,
}

/// The headers a 2xx answer granted, for [`Plugin::upstream_request`].
#[derive(Clone)]
struct Granted(Arc<[(HeaderName, HeaderValue)]>);

/// The compiled `forward_auth` plugin.
pub struct ForwardAuth {
    service: Service,
    method: http::Method,
    request_headers: Vec<HeaderName>,
    upstream_headers: Vec<HeaderName>,
    client_headers: Vec<HeaderName>,
    cache: Option<Arc<DecisionCache>>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: Config = crate::parse_config_all(value)?;
    let mut errors = Vec::new();
    let endpoint = Endpoint::parse(&cfg.url).map_err(|e| errors.push(ConfigError::new("url", e)));
    let method = http::Method::from_bytes(cfg.method.as_bytes())
        .map_err(|_| {
            errors.push(ConfigError::new(
                "method",
                format!("{:?} is not an HTTP method", cfg.method),
            ))
        })
        .unwrap_or(http::Method::GET);
    let request_headers = header_names(&cfg.request_headers, "request_headers", &mut errors);
    let upstream_headers = header_names(&cfg.upstream_headers, "upstream_headers", &mut errors);
    let client_headers = header_names(&cfg.client_headers, "client_headers", &mut errors);
    for (list, path) in [
        (&upstream_headers, "upstream_headers"),
        (&client_headers, "client_headers"),
    ] {
        for (i, n) in list.iter().enumerate() {
            if is_reserved(n) {
                errors.push(ConfigError::new(
                    format!("{path}[{i}]"),
                    format!("{n} describes the connection or framing and cannot be copied"),
                ));
            }
        }
    }
    let total = check_timeout(cfg.timeout_ms, "timeout_ms", &mut errors);
    let connect = match cfg.connect_timeout_ms {
        Some(ms) => check_timeout(ms, "connect_timeout_ms", &mut errors),
        None => total,
    };
    let cache = cfg.cache.as_ref().map(|c| {
        if c.ttl_seconds == 0 || c.ttl_seconds > MAX_CACHE_TTL_SECONDS {
            errors.push(ConfigError::new(
                "cache.ttl_seconds",
                format!("must be between 1 and {MAX_CACHE_TTL_SECONDS}"),
            ));
        }
        if c.max_entries == 0 || c.max_entries > MAX_CACHE_ENTRIES {
            errors.push(ConfigError::new(
                "cache.max_entries",
                format!("must be between 1 and {MAX_CACHE_ENTRIES}"),
            ));
        }
        let mut parts = Vec::new();
        for (i, s) in c.key.iter().enumerate() {
            match KeyPart::parse(s) {
                Ok(p) if !parts.contains(&p) => parts.push(p),
                Ok(_) => {}
                Err(e) => errors.push(ConfigError::new(format!("cache.key[{i}]"), e)),
            }
        }
        // What the service is sent is what it decides by: every forwarded header is part
        // of the key, whatever `key` says, so one caller's decision never serves another.
        for n in &request_headers {
            let p = KeyPart::Header(n.clone());
            if !parts.contains(&p) {
                parts.push(p);
            }
        }
        (c.ttl_seconds, c.max_entries, parts)
    });
    let Ok(endpoint) = endpoint else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let cache = cache.map(|(ttl, max, parts)| {
        // Kept across reloads while the plugin's definition is the same.
        let key = format!("{NAME}:{}:{value}", ctx.scope);
        ctx.state.get_or_insert(&key, || DecisionCache {
            ttl: Duration::from_secs(ttl),
            parts,
            entries: TtlCache::new(max),
        })
    });
    let limits = Limits {
        connect,
        total,
        max_answer_bytes: MAX_DENIAL_BODY,
    };
    Ok(Arc::new(ForwardAuth {
        service: Service::new(NAME, endpoint, &ctx.state, limits, cfg.failure_mode),
        method,
        request_headers,
        upstream_headers,
        client_headers,
        cache,
    }))
}

impl ForwardAuth {
    /// The request sent to the service for `req`.
    fn auth_request(
        &self,
        req: &RequestHeader,
        tls: bool,
        ctx: &RequestCtx,
    ) -> Result<RequestHeader, Failure> {
        let path = self.service.endpoint.path.as_bytes();
        let mut out = RequestHeader::build(self.method.clone(), path, Some(8))
            .map_err(|_| Failure::Malformed)?;
        let set = |out: &mut RequestHeader, n: HeaderName, v: &[u8]| -> Result<(), Failure> {
            let v = HeaderValue::from_bytes(v).map_err(|_| Failure::Malformed)?;
            out.insert_header(n, v).map_err(|_| Failure::Malformed)?;
            Ok(())
        };
        set(&mut out, X_FORWARDED_METHOD, req.method.as_str().as_bytes())?;
        let uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        set(&mut out, X_FORWARDED_URI, uri.as_bytes())?;
        let host = req
            .headers
            .get(http::header::HOST)
            .map(|h| h.as_bytes())
            .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
            .unwrap_or(b"");
        set(&mut out, X_FORWARDED_HOST, host)?;
        set(
            &mut out,
            X_FORWARDED_PROTO,
            if tls { b"https" } else { b"http" },
        )?;
        if let Some(ip) = ctx.client_ip {
            set(&mut out, X_FORWARDED_FOR, ip.to_string().as_bytes())?;
        }
        for n in &self.request_headers {
            for v in req.headers.get_all(n) {
                out.append_header(n.clone(), v.clone())
                    .map_err(|_| Failure::Malformed)?;
            }
        }
        Ok(out)
    }

    /// The decision cache key of `req`: SHA-256 over the configured parts, each
    /// length-prefixed and marked present or absent, so no two requests that differ in a
    /// part share a key (and no credential is kept in memory as it was sent).
    fn cache_key(&self, parts: &[KeyPart], req: &RequestHeader, ctx: &RequestCtx) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut put = |v: Option<&[u8]>| match v {
            Some(v) => {
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v);
            }
            None => h.update([0u8]),
        };
        for p in parts {
            match p {
                KeyPart::Header(n) => {
                    let mut any = false;
                    for v in req.headers.get_all(n) {
                        put(Some(v.as_bytes()));
                        any = true;
                    }
                    if !any {
                        put(None);
                    }
                }
                KeyPart::Cookie(n) => put(crate::req::cookie(req, n)),
                KeyPart::Query(n) => put(req
                    .uri
                    .query()
                    .and_then(|q| crate::req::query_value(q, n))
                    .map(str::as_bytes)),
                KeyPart::Method => put(Some(req.method.as_str().as_bytes())),
                KeyPart::Host => put(Some(crate::req::host(req).as_bytes())),
                KeyPart::Path => put(Some(req.uri.path().as_bytes())),
                KeyPart::Uri => put(Some(
                    req.uri
                        .path_and_query()
                        .map_or("/", |p| p.as_str())
                        .as_bytes(),
                )),
                KeyPart::ClientIp => put(ctx
                    .client_ip
                    .map(|ip| ip.to_string())
                    .as_deref()
                    .map(str::as_bytes)),
            }
        }
        h.finalize().into()
    }

    /// Turn the service's answer into a decision (and whether it may be cached).
    fn decision(&self, reply: crate::external::Reply) -> (Decision, bool) {
        let status = reply.head.status;
        if status.is_success() {
            let mut granted = Vec::new();
            for n in &self.upstream_headers {
                for v in reply.head.headers.get_all(n) {
                    granted.push((n.clone(), v.clone()));
                }
            }
            return (Decision::Allow(granted.into()), true);
        }
        let mut answer = Answer {
            status,
            headers: Vec::new(),
            body: Bytes::new(),
            code: Some("forward_auth_denied"),
        };
        if let Some(body) = reply.body {
            if let Some(ct) = reply.head.headers.get(http::header::CONTENT_TYPE) {
                answer
                    .headers
                    .push((http::header::CONTENT_TYPE, ct.clone()));
            }
            answer.body = body;
        }
        for n in &self.client_headers {
            if *n == http::header::CONTENT_TYPE {
                continue;
            }
            for v in reply.head.headers.get_all(n) {
                answer.headers.push((n.clone(), v.clone()));
            }
        }
        // The service's own trouble (5xx) is passed on but not remembered.
        let cacheable = !status.is_server_error();
        (Decision::Deny(answer), cacheable)
    }

    /// Decide `req`: from the cache, or by asking the service.
    async fn decide(&self, req: &RequestHeader, tls: bool, ctx: &mut RequestCtx) -> Flow {
        let cached = self.cache.as_ref().map(|c| {
            let key = self.cache_key(&c.parts, req, ctx);
            (c, key)
        });
        if let Some((c, key)) = &cached {
            let hit = c.entries.get(key, Instant::now());
            METRICS
                .forward_auth_cache
                .with_label_values(&[&*ctx.route, if hit.is_some() { "hit" } else { "miss" }])
                .inc();
            if let Some(d) = hit {
                return self.apply(d, ctx);
            }
        }
        let start = Instant::now();
        let result = match self.auth_request(req, tls, ctx) {
            Ok(r) => self.service.call(r, b"").await,
            Err(f) => Err(f),
        };
        let elapsed = start.elapsed();
        match result {
            Ok(reply) => {
                let too_large = reply.body.is_none() && !reply.head.status.is_success();
                let (decision, cacheable) = self.decision(reply);
                let outcome = match decision {
                    Decision::Allow(_) => "allowed",
                    Decision::Deny(_) => "denied",
                };
                self.service.record(&ctx.route, outcome, elapsed);
                if too_large {
                    // The denial stands; only its body is dropped.
                    self.service.failed(&ctx.route, Failure::TooLarge, "auth");
                }
                if let (Some((c, key)), true) = (cached, cacheable) {
                    c.entries
                        .insert(key, decision.clone(), Instant::now() + c.ttl);
                }
                self.apply(decision, ctx)
            }
            Err(f) => {
                self.service.record(&ctx.route, "failed", elapsed);
                self.service.failed(&ctx.route, f, "auth");
                match self.service.failure_mode {
                    FailureMode::Allow => Flow::Continue,
                    FailureMode::Deny => Flow::Respond(Answer::error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "auth_service_unavailable",
                        "the authorization service could not be asked",
                    )),
                }
            }
        }
    }

    fn apply(&self, decision: Decision, ctx: &mut RequestCtx) -> Flow {
        match decision {
            Decision::Allow(granted) => {
                ctx.extensions.insert(Granted(granted));
                Flow::Continue
            }
            Decision::Deny(answer) => Flow::Respond(answer),
        }
    }

    /// Remove the client's copies of the `upstream_headers`, then set what the service
    /// granted (nothing when `failure_mode = "allow"` applied).
    fn set_granted(&self, req: &mut RequestHeader, ctx: &RequestCtx) {
        for n in &self.upstream_headers {
            req.remove_header(n);
        }
        if let Some(Granted(granted)) = ctx.extensions.get::<Granted>() {
            for (n, v) in granted.iter() {
                // Names were checked at load and values came from a parsed header.
                let _ = req.append_header(n.clone(), v.clone());
            }
        }
    }
}

#[async_trait]
impl Plugin for ForwardAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Authorization
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        self.decide(req, false, ctx).await
    }

    async fn request_session(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let flow = self.decide(session.req_header(), tls, ctx).await;
        if matches!(flow, Flow::Continue) {
            // The plugins after this one see what the upstream will see.
            self.set_granted(session.req_header_mut(), ctx);
        }
        flow
    }

    fn upstream_request(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) {
        self.set_granted(req, ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;

    fn build_toml(text: &str) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
        let v: toml::Value = toml::from_str(text).unwrap();
        build(&v, &BuildCtx::default())
    }

    fn plugin(text: &str) -> ForwardAuth {
        let v: toml::Value = toml::from_str(text).unwrap();
        let cfg: Config = crate::parse_config_all(&v).unwrap();
        let ctx = BuildCtx::default();
        let mut errors = Vec::new();
        let request_headers = header_names(&cfg.request_headers, "r", &mut errors);
        ForwardAuth {
            service: Service::new(
                NAME,
                Endpoint::parse(&cfg.url).unwrap(),
                &ctx.state,
                Limits {
                    connect: Duration::from_secs(1),
                    total: Duration::from_secs(1),
                    max_answer_bytes: MAX_DENIAL_BODY,
                },
                cfg.failure_mode,
            ),
            method: http::Method::GET,
            request_headers,
            upstream_headers: header_names(&cfg.upstream_headers, "u", &mut errors),
            client_headers: header_names(&cfg.client_headers, "c", &mut errors),
            cache: None,
        }
    }

    #[test]
    fn config_errors_have_paths() {
        let errs = build_toml(
            r#"url = "ftp://x/"
method = "BAD METHOD"
request_headers = ["ok", "bad name"]
upstream_headers = ["content-length"]
timeout_ms = 0
cache = { ttl_seconds = 0, key = ["header:authorization", "nope"], max_entries = 0 }"#,
        )
        .err()
        .unwrap();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "url",
                "method",
                "request_headers[1]",
                "upstream_headers[0]",
                "timeout_ms",
                "cache.ttl_seconds",
                "cache.max_entries",
                "cache.key[1]"
            ]
        );
        assert!(build_toml("url = \"http://127.0.0.1:1/auth\"").is_ok());
        let unknown = build_toml("url = \"http://127.0.0.1:1/\"\nfailure_mode = \"open\"");
        assert_eq!(unknown.err().unwrap()[0].path, "failure_mode");
        assert!(build_toml("method = \"GET\"").is_err(), "url is required");
    }

    #[test]
    fn auth_request_carries_the_original_request() {
        let p = plugin(
            r#"url = "http://127.0.0.1:9/check?x=1"
request_headers = ["authorization"]"#,
        );
        let mut req = RequestHeader::build("POST", b"/api/items?q=1", None).unwrap();
        req.insert_header("host", "api.example.com").unwrap();
        req.insert_header("authorization", "Bearer t").unwrap();
        req.insert_header("cookie", "s=1").unwrap();
        let mut ctx = RequestCtx::new(
            "r".into(),
            Some("10.0.0.7".parse().unwrap()),
            RequestId::generate(),
        );
        ctx.peer_ip = ctx.client_ip;
        let out = p.auth_request(&req, true, &ctx).unwrap();
        assert_eq!(out.method, http::Method::GET);
        assert_eq!(out.uri.path_and_query().unwrap().as_str(), "/check?x=1");
        let h = |n: &str| out.headers.get(n).unwrap().to_str().unwrap().to_string();
        assert_eq!(h("x-forwarded-method"), "POST");
        assert_eq!(h("x-forwarded-uri"), "/api/items?q=1");
        assert_eq!(h("x-forwarded-host"), "api.example.com");
        assert_eq!(h("x-forwarded-proto"), "https");
        assert_eq!(h("x-forwarded-for"), "10.0.0.7");
        assert_eq!(h("authorization"), "Bearer t");
        assert!(out.headers.get("cookie").is_none(), "only request_headers");
    }

    #[test]
    fn cache_keys_differ_by_part_and_presence() {
        let p = plugin("url = \"http://127.0.0.1:9/\"");
        let parts = vec![KeyPart::Header(http::header::AUTHORIZATION), KeyPart::Path];
        let ctx = RequestCtx::new("r".into(), None, RequestId::generate());
        let key = |auth: Option<&str>, path: &str| {
            let mut r = RequestHeader::build("GET", path.as_bytes(), None).unwrap();
            if let Some(a) = auth {
                r.insert_header("authorization", a).unwrap();
            }
            p.cache_key(&parts, &r, &ctx)
        };
        assert_eq!(key(Some("a"), "/x"), key(Some("a"), "/x"));
        assert_ne!(key(Some("a"), "/x"), key(Some("b"), "/x"));
        assert_ne!(key(Some("a"), "/x"), key(Some("a"), "/y"));
        assert_ne!(key(None, "/x"), key(Some(""), "/x"), "absent is not empty");
        assert_eq!(
            KeyPart::parse("cookie:sid"),
            Ok(KeyPart::Cookie("sid".into()))
        );
        assert!(KeyPart::parse("cookie:").is_err());
        assert!(KeyPart::parse("header:bad name").is_err());
    }

    #[test]
    fn answers_become_decisions() {
        let p = plugin(
            r#"url = "http://127.0.0.1:9/"
upstream_headers = ["x-user-id"]
client_headers = ["www-authenticate"]"#,
        );
        let mut head = pingora::http::ResponseHeader::build(200, None).unwrap();
        head.insert_header("x-user-id", "42").unwrap();
        head.insert_header("x-other", "no").unwrap();
        let reply = crate::external::Reply {
            head: Box::new(head),
            body: Some(Bytes::new()),
        };
        match p.decision(reply) {
            (Decision::Allow(h), true) => {
                assert_eq!(h.len(), 1);
                assert_eq!(h[0].1, "42");
            }
            other => panic!("{other:?}"),
        }
        let mut head = pingora::http::ResponseHeader::build(401, None).unwrap();
        head.insert_header("www-authenticate", "Bearer").unwrap();
        head.insert_header("content-type", "text/plain").unwrap();
        head.insert_header("x-user-id", "42").unwrap();
        let reply = crate::external::Reply {
            head: Box::new(head),
            body: Some(Bytes::from_static(b"no")),
        };
        match p.decision(reply) {
            (Decision::Deny(a), true) => {
                assert_eq!(a.status, 401);
                assert_eq!(a.body, "no");
                let names: Vec<&str> = a.headers.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names, ["content-type", "www-authenticate"]);
            }
            other => panic!("{other:?}"),
        }
        let reply = crate::external::Reply {
            head: Box::new(pingora::http::ResponseHeader::build(503, None).unwrap()),
            body: None,
        };
        assert!(matches!(p.decision(reply), (Decision::Deny(a), false) if a.body.is_empty()));
    }

    #[test]
    fn forged_identity_headers_are_removed() {
        let p = plugin("url = \"http://127.0.0.1:9/\"\nupstream_headers = [\"x-user-id\"]");
        let mut ctx = RequestCtx::new("r".into(), None, RequestId::generate());
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        req.insert_header("x-user-id", "admin").unwrap();
        p.set_granted(&mut req, &ctx);
        assert!(req.headers.get("x-user-id").is_none());
        ctx.extensions.insert(Granted(
            vec![(
                HeaderName::from_static("x-user-id"),
                HeaderValue::from_static("7"),
            )]
            .into(),
        ));
        req.insert_header("X-User-Id", "admin").unwrap();
        p.set_granted(&mut req, &ctx);
        let all: Vec<_> = req.headers.get_all("x-user-id").iter().collect();
        assert_eq!(all, ["7"]);
    }
}
