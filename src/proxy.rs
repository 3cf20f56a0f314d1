//! The one `ProxyHttp` implementation: Pingora's request phases, dispatched to the matched
//! route's precompiled plugin chain. See DESIGN.md for the order of phases.

use crate::access_log::{self, AccessRecord};
use crate::metrics::{method_label, METRICS};
use crate::router::{has_dot_segment, request_host, Match};
use crate::snapshot::{rewrite_path, PathRewrite, Route, Snapshot};
use crate::upstream::outlier::{Admission, Circuit};
use crate::upstream::{HashOn, UpstreamPool};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, StatusCode};
use pingora::cache::{
    CacheKey, CacheMeta, CacheOptionOverrides, CachePhase, ForcedFreshness, HitHandler,
    NoCacheReason, RespCacheable,
};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::l4::socket::SocketAddr;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant, SystemTime};
use tollgate_plugins::cache::storage::{EVICTION, LOCK, STORAGE};
use tollgate_plugins::cache::{CachePolicy, RequestUse};
use tollgate_plugins::{chain, Answer, Phase, RequestCtx, RequestId};

/// Header carrying the request id upstream and back to the client.
pub const REQUEST_ID: &str = "x-request-id";

// Names looked up on every request, built once: a `&str` name is parsed on each lookup.
static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

static NO_ROUTE: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(""));

/// The gateway's proxy logic. Cheap to share: it only holds the handle to the current config.
pub struct Gateway {
    config: Arc<ArcSwap<Snapshot>>,
    access_log: bool,
}

impl Gateway {
    /// A gateway serving whatever snapshot `config` holds at each request's start.
    pub fn new(config: Arc<ArcSwap<Snapshot>>, access_log: bool) -> Self {
        Gateway { config, access_log }
    }
}

/// Per-request state.
pub struct Ctx {
    snap: Arc<Snapshot>,
    /// Index of the matched route and of the router entry that matched.
    matched: Option<(usize, usize)>,
    /// What plugins see.
    pub req: RequestCtx,
    start: Instant,
    /// Index (in its upstream) of the backend the latest attempt went to.
    backend: Option<usize>,
    /// The upstream this request goes to: the route's, or the one a split rule chose.
    upstream: Option<Arc<UpstreamPool>>,
    /// Index of the current backend in its pool, while a request to it is counted in flight.
    backend_index: Option<usize>,
    /// The current attempt's outcome was reported to passive health.
    attempt_reported: bool,
    /// The circuit breaker admitted this request as a half-open probe.
    breaker_probe: bool,
    /// The circuit breaker was consulted (the request counts for it).
    breaker_counted: bool,
    /// The request's outcome was given to the circuit breaker.
    breaker_recorded: bool,
    /// Status of the upstream's response, if one came.
    upstream_status: Option<u16>,
    /// Status/timeout retries used.
    retries_used: u32,
    tried: Vec<SocketAddr>,
    upstream_start: Option<Instant>,
    upstream_elapsed: Option<Duration>,
    error: Option<&'static str>,
    /// An answer a body hook made; sent by `fail_to_proxy`.
    pending: Option<Answer>,
    /// What the request does with the route's cache, when it has one.
    cache_use: Option<RequestUse>,
    /// The response was admitted to the cache.
    cache_stored: bool,
    /// SHA-256 of the request body, for routes whose cache key includes it.
    body_hash: Option<[u8; 32]>,
    /// The request id as a header value, made once for the upstream request and the response.
    request_id_value: Option<HeaderValue>,
}

impl Ctx {
    fn route(&self) -> Option<&Route> {
        self.matched.map(|(r, _)| &self.snap.routes[r])
    }

    fn cache_policy(&self) -> Option<Arc<CachePolicy>> {
        self.route().and_then(|r| r.cache.clone())
    }

    /// Address of the backend the latest attempt went to.
    fn backend_addr(&self) -> Option<&SocketAddr> {
        let (up, i) = self.upstream.as_ref().zip(self.backend)?;
        up.addr(i)
    }

    fn request_id_value(&mut self) -> Option<HeaderValue> {
        if self.request_id_value.is_none() {
            self.request_id_value = HeaderValue::from_str(self.req.request_id.as_str()).ok();
        }
        self.request_id_value.clone()
    }
}

fn gateway_error(code: &'static str, status: StatusCode, message: &str) -> (Answer, &'static str) {
    (Answer::error(status, code, message), code)
}

impl Gateway {
    /// Send an answer made by the gateway or a plugin; the matched route's response hooks
    /// run on its header first.
    async fn send_answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        answer: Answer,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
        for (n, v) in answer.headers {
            resp.append_header(n, v)?;
        }
        resp.insert_header(header::CONTENT_LENGTH, answer.body.len())?;
        self.finish_header(&mut resp, ctx);
        close_if_draining(session);
        let head = session.req_header().method == http::Method::HEAD;
        let no_body = head || answer.body.is_empty();
        session
            .write_response_header(Box::new(resp), no_body)
            .await?;
        if !no_body {
            session.write_response_body(Some(answer.body), true).await?;
        }
        Ok(())
    }

    /// Headers every response gets: the route's response hooks, then the request id.
    fn finish_header(&self, resp: &mut ResponseHeader, ctx: &mut Ctx) {
        let snap = ctx.snap.clone();
        let mut request_id = true;
        if let Some((r, _)) = ctx.matched {
            let route = &snap.routes[r];
            for p in route.chain.iter() {
                p.response(resp, &mut ctx.req);
            }
            request_id = route.request_id;
        }
        if let Some(v) = ctx.request_id_value().filter(|_| request_id) {
            let _ = resp.insert_header(REQUEST_ID, v);
        }
    }

    async fn answer_error(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        (answer, code): (Answer, &'static str),
    ) -> Result<bool> {
        ctx.error = Some(code);
        self.send_answer(session, ctx, answer).await?;
        Ok(true)
    }
}

fn hash_key<'a>(
    on: &HashOn,
    req: &'a RequestHeader,
    ip: Option<IpAddr>,
    buf: &'a mut [u8; 16],
) -> &'a [u8] {
    match on {
        HashOn::ClientIp => match ip {
            Some(IpAddr::V4(v4)) => {
                buf[..4].copy_from_slice(&v4.octets());
                &buf[..4]
            }
            Some(IpAddr::V6(v6)) => {
                *buf = v6.octets();
                &buf[..]
            }
            None => &[],
        },
        HashOn::Path => req.uri.path().as_bytes(),
        HashOn::Header(name) => req.headers.get(name).map_or(&[], |v| v.as_bytes()),
        HashOn::Cookie(name) => tollgate_plugins::req::cookie(req, name).unwrap_or(&[]),
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            snap: self.config.load_full(),
            matched: None,
            req: RequestCtx::new(NO_ROUTE.clone(), None, RequestId::generate()),
            start: Instant::now(),
            backend: None,
            upstream: None,
            backend_index: None,
            attempt_reported: false,
            breaker_probe: false,
            breaker_counted: false,
            breaker_recorded: false,
            upstream_status: None,
            retries_used: 0,
            tried: Vec::new(),
            upstream_start: None,
            upstream_elapsed: None,
            error: None,
            pending: None,
            cache_use: None,
            cache_stored: false,
            body_hash: None,
            request_id_value: None,
        }
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // Idle time allowed before the next request on this connection.
        session.set_keepalive(Some(ctx.snap.server.keepalive_timeout_seconds));
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        if head_size(req) > ctx.snap.server.max_header_bytes {
            let e = gateway_error(
                "headers_too_large",
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "the request headers are too large",
            );
            session.set_keepalive(None);
            return self.answer_error(session, ctx, e).await;
        }
        if let Some(id) = req
            .headers
            .get(&REQUEST_ID_NAME)
            .and_then(|v| RequestId::from_client(v.as_bytes()))
        {
            ctx.req.request_id = id;
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.req.peer_ip = peer;
        ctx.req.client_ip = real_client_ip(peer, req, &ctx.snap.trusted_proxies);

        if has_dot_segment(req.uri.path()) {
            let e = gateway_error(
                "bad_request",
                StatusCode::BAD_REQUEST,
                "path contains a '.' or '..' segment",
            );
            return self.answer_error(session, ctx, e).await;
        }
        let snap = ctx.snap.clone();
        let found = match snap.router.find(request_host(req), req) {
            Match::Found(i) => i,
            Match::NotFound => {
                let e = gateway_error(
                    "route_not_found",
                    StatusCode::NOT_FOUND,
                    "no route matches this request",
                );
                return self.answer_error(session, ctx, e).await;
            }
            Match::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(|m| m.as_str())
                    .collect::<Vec<_>>()
                    .join(", ");
                let (answer, code) = gateway_error(
                    "method_not_allowed",
                    StatusCode::METHOD_NOT_ALLOWED,
                    "the route does not accept this method",
                );
                let answer = match HeaderValue::from_str(&allow) {
                    Ok(v) => answer.with_header(header::ALLOW, v),
                    Err(_) => answer,
                };
                return self.answer_error(session, ctx, (answer, code)).await;
            }
        };
        let route_idx = snap.router.entry(found).route;
        ctx.matched = Some((route_idx, found));
        let route = &snap.routes[route_idx];
        ctx.req.route = route.name.clone();
        if let Some(stop) = chain::run_request(&route.chain, session, &mut ctx.req).await {
            if let Some(code) = stop.answer.code {
                ctx.error = Some(code);
                let status = stop.answer.status;
                METRICS
                    .requests_rejected
                    .with_label_values(&[&*route.name, stop.plugin, status.as_str()])
                    .inc();
                if matches!(stop.phase, Phase::Authentication | Phase::Authorization) {
                    METRICS
                        .auth_failures
                        .with_label_values(&[&*route.name, stop.plugin, code])
                        .inc();
                }
            }
            self.send_answer(session, ctx, stop.answer).await?;
            return Ok(true);
        }
        ctx.upstream = route.upstream.clone();
        if let Some(split) = &route.split {
            let body = if split.needs_body && has_small_body(session.req_header()) {
                let bytes = read_small_body(session).await?;
                ctx.body_hash = Some(sha256(&bytes));
                serde_json::from_slice::<serde_json::Value>(&bytes).ok()
            } else {
                None
            };
            if let Some(up) = split.choose(session.req_header(), body.as_ref()) {
                ctx.upstream = Some(up);
            }
        }
        if let Some(policy) = &route.cache {
            let req = session.req_header();
            if req.method.as_str() == "PURGE" {
                let answer = purge(policy, req, &ctx.req);
                if answer.code.is_some() {
                    ctx.error = answer.code;
                }
                self.send_answer(session, ctx, answer).await?;
                return Ok(true);
            }
            let use_ = policy.request_use(req);
            ctx.cache_use = Some(use_);
            if use_ == RequestUse::CacheBody && ctx.body_hash.is_none() {
                let bytes = read_small_body(session).await?;
                ctx.body_hash = Some(sha256(&bytes));
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let snap = ctx.snap.clone();
        let Some(route) = ctx.matched.map(|(r, _)| &snap.routes[r]) else {
            return Error::e_explain(ErrorType::InternalError, "no route matched");
        };
        let Some(upstream) = ctx.upstream.clone() else {
            return Error::e_explain(ErrorType::InternalError, "route has no upstream");
        };
        if !ctx.breaker_counted {
            if let Some(breaker) = &upstream.breaker {
                match breaker.admit() {
                    Admission::Refused => {
                        ctx.error = Some("circuit_open");
                        return Error::e_explain(ErrorType::HTTPStatus(503), "circuit open");
                    }
                    Admission::Probe => ctx.breaker_probe = true,
                    Admission::Allowed => {}
                }
                ctx.breaker_counted = true;
            }
        }
        let mut buf = [0u8; 16];
        let key = match &upstream.hash_on {
            Some(on) => hash_key(on, session.req_header(), ctx.req.client_ip, &mut buf),
            None => &[],
        };
        let Some(index) = upstream.select(key, &ctx.tried) else {
            if !ctx.tried.is_empty() {
                // Every backend left was tried and refused: that is the upstream failing.
                let mut e = Error::new_up(ErrorType::ConnectRefused);
                e.set_retry(false);
                return Err(e.more_context("every backend tried failed to connect"));
            }
            ctx.error = Some("no_healthy_upstream");
            return Error::e_explain(ErrorType::HTTPStatus(503), "no healthy backend left to try");
        };
        let Some(mut peer) = upstream.peer(index) else {
            return Error::e_explain(ErrorType::InternalError, "backend without a peer template");
        };
        let t = &route.timeouts;
        if t.connect.is_some() {
            peer.options.connection_timeout = t.connect;
        }
        if t.read.is_some() {
            peer.options.read_timeout = t.read;
        }
        if t.write.is_some() {
            peer.options.write_timeout = t.write;
        }
        if let Some(deadline) = route.retry.deadline {
            // Every attempt gets at most what is left of the request's deadline.
            let left = deadline.saturating_sub(ctx.start.elapsed());
            if left.is_zero() {
                ctx.error = Some("upstream_timeout");
                return Error::e_explain(ErrorType::ReadTimedout, "request deadline passed");
            }
            for slot in [
                &mut peer.options.connection_timeout,
                &mut peer.options.read_timeout,
            ] {
                *slot = Some(slot.map_or(left, |t| t.min(left)));
            }
        }
        ctx.backend = Some(index);
        if let Some(previous) = ctx.backend_index.replace(index) {
            upstream.end(previous);
        }
        upstream.begin(index);
        ctx.attempt_reported = false;
        ctx.upstream_start.get_or_insert_with(Instant::now);
        Ok(Box::new(peer))
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let retry_timeout = ctx.route().is_some_and(|r| {
            r.retry.on_timeout
                && ctx.retries_used < r.retry.max
                && r.retry.deadline.is_none_or(|d| ctx.start.elapsed() < d)
        });
        let replayable = session_idempotent(session) && !session.as_ref().retry_buffer_truncated();
        // Never once the client got response bytes: a retry would corrupt the response.
        if session.response_written().is_some() || !replayable {
            e.set_retry(false);
        } else if retry_timeout && matches!(e.etype(), ErrorType::ReadTimedout) {
            ctx.retries_used += 1;
            remember_tried(ctx);
            if let (Some(up), Some(i)) = (&ctx.upstream, ctx.backend_index) {
                up.report(i, false);
                ctx.attempt_reported = true;
            }
            e.set_retry(true);
        } else if !matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            e.retry.decide_reuse(client_reused);
        }
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        remember_tried(ctx);
        if let (Some(up), Some(i)) = (&ctx.upstream, ctx.backend_index) {
            up.report(i, false);
            ctx.attempt_reported = true;
        }
        let retries = ctx.upstream.as_ref().map_or(0, |u| u.retries);
        // Bounded by the upstream's `retries`; a new backend is picked on each try.
        e.set_retry(ctx.tried.len() <= retries);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let snap = ctx.snap.clone();
        let Some((route_idx, entry_idx)) = ctx.matched else {
            return Ok(());
        };
        let route = &snap.routes[route_idx];
        if route.rewrite != PathRewrite::Keep {
            let entry = snap.router.entry(entry_idx);
            let uri = &session.req_header().uri;
            if let Some(new_path) = rewrite_path(&route.rewrite, &entry.path, uri.path()) {
                let new_uri = match uri.query() {
                    Some(q) => format!("{new_path}?{q}"),
                    None => new_path.into_owned(),
                };
                match new_uri.parse::<http::Uri>() {
                    Ok(u) => upstream_request.set_uri(u),
                    Err(_) => {
                        return Error::e_explain(
                            ErrorType::HTTPStatus(400),
                            "rewritten path is not a valid URI",
                        )
                    }
                }
            }
        }
        if !route.preserve_host {
            if let (Some(up), Some(b)) = (&ctx.upstream, ctx.backend) {
                if let Some(h) = up.host_header(b) {
                    upstream_request.insert_header(header::HOST, h.clone())?;
                }
            }
        }
        // Each added header costs a name parse and two map inserts in Pingora (about a
        // tenth of the proxied path's CPU for these four): routes may opt out.
        if route.forwarded_headers {
            if let Some(ip) = ctx.req.peer_ip {
                let prev = upstream_request.headers.get(&X_FORWARDED_FOR);
                if let Some(xff) = forwarded_for(prev.map(|v| v.as_bytes()), ip) {
                    upstream_request.insert_header("x-forwarded-for", xff)?;
                }
            }
            let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
            let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
            upstream_request.insert_header("x-forwarded-proto", proto)?;
            // The client's Host: the downstream header, which the Host rewrite above leaves as is.
            if let Some(h) = session.req_header().headers.get(header::HOST) {
                upstream_request.insert_header("x-forwarded-host", h.clone())?;
            }
        }
        if route.request_id {
            if let Some(v) = ctx.request_id_value() {
                upstream_request.insert_header(REQUEST_ID, v)?;
            }
        }
        set_identity_headers(upstream_request, &ctx.req)?;
        for p in route.chain.iter() {
            p.upstream_request(upstream_request, &mut ctx.req);
        }
        Ok(())
    }

    fn request_cache_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        if !matches!(
            ctx.cache_use,
            Some(RequestUse::Cache | RequestUse::CacheBody)
        ) {
            return Ok(());
        }
        let Some(policy) = ctx.cache_policy() else {
            return Ok(());
        };
        let mut overrides = CacheOptionOverrides::default();
        overrides.wait_timeout = Some(policy.lock_timeout);
        overrides.max_lock_retries = Some(2);
        session.cache.enable(
            &*STORAGE,
            Some(&*EVICTION),
            None,
            Some(LOCK.as_ref()),
            Some(overrides),
        );
        session
            .cache
            .set_max_file_size_bytes(policy.max_object_bytes);
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        match ctx.cache_policy() {
            Some(policy) => {
                Ok(policy.cache_key(session.req_header(), &ctx.req, ctx.body_hash.as_ref()))
            }
            None => Error::e_explain(ErrorType::InternalError, "cache enabled without a policy"),
        }
    }

    async fn cache_hit_filter(
        &self,
        session: &mut Session,
        _meta: &CacheMeta,
        _hit_handler: &mut HitHandler,
        is_fresh: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<ForcedFreshness>> {
        let revalidate = ctx
            .cache_policy()
            .is_some_and(|p| p.request_wants_revalidation(session.req_header()));
        Ok((revalidate && is_fresh).then_some(ForcedFreshness::ForceExpired))
    }

    fn response_cache_filter(
        &self,
        session: &Session,
        resp: &ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<RespCacheable> {
        let Some(policy) = ctx.cache_policy() else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let authorization = session
            .req_header()
            .headers
            .contains_key(header::AUTHORIZATION);
        let decision = policy.response_cacheable(resp, authorization);
        ctx.cache_stored = decision.is_cacheable();
        Ok(decision)
    }

    fn cache_vary_filter(
        &self,
        meta: &CacheMeta,
        ctx: &mut Ctx,
        req: &RequestHeader,
    ) -> Option<[u8; 16]> {
        ctx.cache_policy().and_then(|p| p.variance(meta, req))
    }

    fn should_serve_stale(
        &self,
        _session: &mut Session,
        _ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        // Called only inside the stored response's stale-while-revalidate (no error) or
        // stale-if-error windows; both are the origin's explicit permission.
        error.is_none_or(|e| e.esource() == &ErrorSource::Upstream)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some((r, _)) = ctx.matched else {
            return Ok(());
        };
        let snap = ctx.snap.clone();
        let route = &snap.routes[r];
        if !route.body_hooks {
            return Ok(());
        }
        for p in route.chain.iter().filter(|p| p.wants_request_body()) {
            if let Some(answer) = p.request_body(body.as_ref(), end_of_stream, &mut ctx.req) {
                let status = answer.status.as_u16();
                METRICS
                    .requests_rejected
                    .with_label_values(&[&*route.name, p.name(), answer.status.as_str()])
                    .inc();
                ctx.pending = Some(answer);
                return Error::e_explain(
                    ErrorType::HTTPStatus(status),
                    "request body refused by a plugin",
                );
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let status = upstream_response.status.as_u16();
        ctx.upstream_status = Some(status);
        if let Some(route) = ctx.route() {
            let p = &route.retry;
            if p.on_status.contains(&status)
                && ctx.retries_used < p.max
                && session_idempotent(session)
                && p.deadline.is_none_or(|d| ctx.start.elapsed() < d)
            {
                ctx.retries_used += 1;
                if let (Some(up), Some(i)) = (&ctx.upstream, ctx.backend_index) {
                    up.report(i, status < 500);
                }
                ctx.attempt_reported = true;
                remember_tried(ctx);
                let mut e = Error::new_up(ErrorType::HTTPStatus(status));
                e.set_retry(true);
                return Err(e);
            }
        }
        if let Some(up) = ctx.upstream.clone() {
            if let Some(i) = ctx.backend_index {
                up.report(i, status < 500);
                ctx.attempt_reported = true;
            }
            record_breaker(&up, ctx, status < 500);
            if let Some(start) = ctx.upstream_start {
                let elapsed = start.elapsed();
                ctx.upstream_elapsed = Some(elapsed);
                up.duration.observe(elapsed.as_secs_f64());
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(policy) = ctx.cache_policy() {
            cache_status(session, upstream_response, ctx, &policy);
        }
        self.finish_header(upstream_response, ctx);
        close_if_draining(session);
        Ok(())
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        use ErrorType::*;
        if let Some(answer) = ctx.pending.take() {
            let status = answer.status.as_u16();
            ctx.error = answer.code;
            if session.response_written().is_none() {
                let _ = self.send_answer(session, ctx, answer).await;
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let (status, code, message): (u16, &'static str, &str) = match e.etype() {
            HTTPStatus(503) if ctx.error == Some("circuit_open") => (
                503,
                "upstream_unavailable",
                "the upstream is failing; its circuit breaker is open",
            ),
            HTTPStatus(503) if ctx.error == Some("no_healthy_upstream") => (
                503,
                "no_healthy_upstream",
                "no healthy backend is available",
            ),
            HTTPStatus(c) if (400..500).contains(c) => {
                (*c, "bad_request", "the request is malformed")
            }
            HTTPStatus(c) => (*c, "upstream_error", "the upstream failed"),
            ConnectTimedout | ReadTimedout | WriteTimedout => (
                504,
                "upstream_timeout",
                "the upstream did not answer in time",
            ),
            _ => match e.esource() {
                ErrorSource::Upstream => (
                    502,
                    "upstream_unavailable",
                    "the upstream could not be reached or failed",
                ),
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => (0, "client_closed", ""),
                    ReadTimedout => (
                        408,
                        "request_timeout",
                        "the request was not received in time",
                    ),
                    _ => (400, "bad_request", "the request is malformed"),
                },
                ErrorSource::Internal | ErrorSource::Unset => {
                    (500, "internal_error", "the gateway failed")
                }
            },
        };
        ctx.error = Some(code);
        if status > 0 && session.response_written().is_none() {
            if let Ok(s) = StatusCode::from_u16(status) {
                let _ = self
                    .send_answer(session, ctx, Answer::error(s, code, message))
                    .await;
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        let snap = ctx.snap.clone();
        let route = ctx.matched.map(|(r, _)| &snap.routes[r]);
        let route_name = route.map_or("", |r| &*r.name);
        let req = session.req_header();
        let code = StatusCode::from_u16(status).ok();
        let status_label = code.as_ref().map_or("0", |s| s.as_str());
        match route {
            Some(r) => r
                .counters
                .count(route_name, method_label(&req.method), status_label),
            None => METRICS
                .requests
                .with_label_values(&[route_name, method_label(&req.method), status_label])
                .inc(),
        }
        if let Some(code) = ctx.error {
            METRICS
                .gateway_errors
                .with_label_values(&[route_name, code])
                .inc();
        }
        if let Some(up) = ctx.upstream.clone() {
            settle_upstream(&up, ctx);
        }
        if let Some(r) = route {
            r.duration.observe(elapsed.as_secs_f64());
            for p in r.chain.iter() {
                p.log(status, &mut ctx.req);
            }
        }
        if self.access_log {
            // Derived from the monotonic start rather than read per request: only the
            // access log needs wall-clock time.
            let now = SystemTime::now();
            let started_at = now.checked_sub(elapsed).unwrap_or(now);
            let time = jiff::Timestamp::try_from(started_at)
                .map(|t| t.to_string())
                .unwrap_or_default();
            access_log::write(&AccessRecord {
                time,
                request_id: ctx.req.request_id.as_str(),
                client_ip: ctx.req.client_ip.map(|i| i.to_string()).unwrap_or_default(),
                method: req.method.as_str(),
                path: req.uri.path(),
                route: route_name,
                upstream: ctx.upstream.as_ref().map_or("", |u| &*u.name),
                backend: ctx
                    .backend_addr()
                    .map(|a| a.to_string())
                    .unwrap_or_default(),
                status,
                bytes_sent: session.body_bytes_sent(),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
                error: ctx.error,
            });
        }
    }
}

/// After SIGQUIT/SIGTERM every response closes its connection, so keep-alive clients
/// reconnect (to the new process, during an upgrade) instead of being cut off later.
fn close_if_draining(session: &mut Session) {
    if crate::server::DRAINING.load(std::sync::atomic::Ordering::Relaxed) {
        session.set_keepalive(None);
    }
}

/// Keep the current attempt's backend out of the next pick.
fn remember_tried(ctx: &mut Ctx) {
    if let Some(addr) = ctx.backend_addr().cloned() {
        ctx.tried.push(addr);
    }
}

fn session_idempotent(session: &Session) -> bool {
    session.req_header().method.is_idempotent()
}

/// Bytes of the request line and headers, as they were sent (near enough).
fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + 12;
    req.headers
        .iter()
        .fold(line, |n, (k, v)| n + k.as_str().len() + v.len() + 4)
}

/// The largest request body read before choosing an upstream or a cache key: Pingora's
/// retry buffer keeps exactly this much to replay upstream.
const MAX_SMALL_BODY: usize = tollgate_plugins::cache::MAX_KEY_BODY;

/// A request whose body can be read ahead: a `Content-Length` of at most [`MAX_SMALL_BODY`].
fn has_small_body(req: &RequestHeader) -> bool {
    req.headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .is_some_and(|n| n > 0 && n <= MAX_SMALL_BODY)
}

/// Read the whole (small, `Content-Length`-sized) request body. Retry buffering keeps the
/// bytes, so Pingora still sends them upstream.
async fn read_small_body(session: &mut Session) -> Result<Bytes> {
    session.as_mut().enable_retry_buffering();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > MAX_SMALL_BODY {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "body larger than its Content-Length",
            );
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}

/// End-of-request bookkeeping for the upstream: in-flight count, passive health for an
/// attempt that ended without a response (timeout, reset), and the circuit breaker.
fn settle_upstream(up: &UpstreamPool, ctx: &mut Ctx) {
    let ok = ctx.upstream_status.is_some_and(|s| s < 500);
    if let Some(i) = ctx.backend_index.take() {
        up.end(i);
        if !ctx.attempt_reported {
            up.report(i, ok);
        }
    }
    record_breaker(up, ctx, ok);
}

/// Tell the circuit breaker how the request went, once per request. Called as soon as the
/// upstream's response header arrives (so the next request already sees the new state), or
/// at the end of a request that got no response.
fn record_breaker(up: &UpstreamPool, ctx: &mut Ctx, ok: bool) {
    if !ctx.breaker_counted || ctx.breaker_recorded || ctx.backend.is_none() {
        return;
    }
    ctx.breaker_recorded = true;
    let Some(breaker) = &up.breaker else {
        return;
    };
    if let Some(circuit) = breaker.record(ctx.breaker_probe, ok) {
        log::warn!("upstream {} circuit is now {circuit:?}", up.name);
        let value = match circuit {
            Circuit::Closed => 0,
            Circuit::Open => 1,
            Circuit::HalfOpen => 2,
        };
        METRICS
            .circuit_state
            .with_label_values(&[&*up.name])
            .set(value);
    }
}

/// `PURGE` on a cached route: drop every stored variant of the URL.
fn purge(policy: &CachePolicy, req: &RequestHeader, ctx: &RequestCtx) -> Answer {
    if !policy.purge_enabled() {
        return Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "PURGE is not enabled on this route",
        );
    }
    if !policy.purge_allowed(req, ctx) {
        return Answer::error(
            StatusCode::FORBIDDEN,
            "purge_forbidden",
            "not allowed to purge",
        );
    }
    let n = STORAGE.purge_url(&policy.url_hash(req));
    let status = if n > 0 {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Answer {
        status,
        headers: vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from(format!("{{\"purged\":{n}}}")),
        code: None,
    }
}

/// `X-Cache-Status` (Kong/APISIX style) and RFC 9211 `Cache-Status` on responses of cached
/// routes; counts the status; drops the stored URL after a successful unsafe request.
fn cache_status(session: &Session, resp: &mut ResponseHeader, ctx: &Ctx, policy: &CachePolicy) {
    let (x, rfc) = match (ctx.cache_use, session.cache.phase()) {
        (Some(RequestUse::Invalidate), _) => {
            if resp.status.is_success() || resp.status.is_redirection() {
                STORAGE.purge_url(&policy.url_hash(session.req_header()));
            }
            ("BYPASS", "tollgate; fwd=method")
        }
        (_, CachePhase::Hit) => ("HIT", "tollgate; hit"),
        (_, CachePhase::Stale) | (_, CachePhase::StaleUpdating) => {
            ("STALE", "tollgate; hit; fwd=stale")
        }
        (_, CachePhase::Revalidated) | (_, CachePhase::RevalidatedNoCache(_)) => {
            ("REVALIDATED", "tollgate; fwd=stale; fwd-status=304")
        }
        (_, CachePhase::Expired) if ctx.cache_stored => ("EXPIRED", "tollgate; fwd=stale; stored"),
        (_, CachePhase::Expired) => ("EXPIRED", "tollgate; fwd=stale"),
        (_, CachePhase::Miss) if ctx.cache_stored => ("MISS", "tollgate; fwd=uri-miss; stored"),
        (_, CachePhase::Miss) => ("MISS", "tollgate; fwd=uri-miss"),
        // Looked up, then the response turned out not to be storable (Kong calls it Bypass).
        (Some(RequestUse::Cache), CachePhase::Disabled(NoCacheReason::OriginNotCache))
        | (Some(RequestUse::Cache), CachePhase::Disabled(NoCacheReason::ResponseTooLarge)) => {
            ("BYPASS", "tollgate; fwd=uri-miss")
        }
        _ => ("BYPASS", "tollgate; fwd=bypass"),
    };
    let _ = resp.insert_header("x-cache-status", x);
    let _ = resp.insert_header("cache-status", rfc);
    METRICS
        .cache_requests
        .with_label_values(&[policy.route(), &x.to_ascii_lowercase()])
        .inc();
}

/// The client's address: the socket peer unless it is a trusted proxy, in which case the
/// last `X-Forwarded-For` entry that is not a trusted proxy (the leftmost if all are).
fn real_client_ip(
    peer: Option<IpAddr>,
    req: &RequestHeader,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    use tollgate_plugins::ip_restriction::contains;
    let peer = peer?;
    if trusted.is_empty() || !contains(trusted, peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in req.headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return Some(client);
        };
        for part in text.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                // A garbled entry: trust nothing further left.
                return Some(client);
            };
            client = ip;
            if !contains(trusted, ip) {
                return Some(ip);
            }
        }
    }
    Some(client)
}

/// Identity headers the upstream may trust: whatever the client sent under these names is
/// removed on every request, then set from the authenticated identity, if any.
pub const IDENTITY_HEADERS: [&str; 6] = [
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-consumer-groups",
    "x-credential-identifier",
    "x-anonymous-consumer",
];

fn set_identity_headers(req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    // Usually none is present: one pass over the names the client sent is cheaper than a
    // lookup per identity header (each parses and hashes a name).
    let spoofed = req
        .headers
        .keys()
        .any(|k| IDENTITY_HEADERS.contains(&k.as_str()));
    if spoofed {
        for h in IDENTITY_HEADERS {
            req.remove_header(h);
        }
    }
    let Some(id) = &ctx.identity else {
        return Ok(());
    };
    let h = &id.consumer.headers;
    req.insert_header("x-consumer-id", h.id.clone())?;
    req.insert_header("x-consumer-username", h.username.clone())?;
    if let Some(c) = &h.custom_id {
        req.insert_header("x-consumer-custom-id", c.clone())?;
    }
    if let Some(g) = &h.groups {
        req.insert_header("x-consumer-groups", g.clone())?;
    }
    if let Some(c) = &id.credential {
        req.insert_header("x-credential-identifier", c.clone())?;
    }
    if id.anonymous {
        req.insert_header("x-anonymous-consumer", "true")?;
    }
    Ok(())
}

/// `X-Forwarded-For` with `ip` appended to what the client (or a proxy before us) sent.
/// IPv4 is formatted by hand: `Display` for addresses costs more than the rest of this.
fn forwarded_for(prev: Option<&[u8]>, ip: IpAddr) -> Option<HeaderValue> {
    let prev = prev.filter(|p| !p.is_empty());
    let mut out = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 40);
    if let Some(p) = prev {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

/// Body of the JSON answer for `status` and `code` (used by the admin listener too).
pub fn error_body(status: StatusCode, code: &'static str, message: &str) -> Bytes {
    Answer::error(status, code, message).body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_appends_the_peer() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for v4 in ["1.2.3.4", "10.0.100.255", "0.0.0.0", "192.168.9.99"] {
            assert_eq!(forwarded_for(None, ip(v4)).unwrap(), v4);
        }
        assert_eq!(
            forwarded_for(Some(b"203.0.113.7"), ip("127.0.0.1")).unwrap(),
            "203.0.113.7, 127.0.0.1"
        );
        assert_eq!(forwarded_for(Some(b""), ip("::1")).unwrap(), "::1");
        assert_eq!(
            forwarded_for(Some(b"a"), ip("2001:db8::1")).unwrap(),
            "a, 2001:db8::1"
        );
    }
}
