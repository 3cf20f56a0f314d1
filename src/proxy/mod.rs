//! The one `ProxyHttp` implementation: Pingora's request phases, in the order Pingora calls
//! them, each dispatching to the module that does the work (docs/architecture.md draws the
//! whole path):
//!
//! | phase | runs | work |
//! |---|---|---|
//! | `new_ctx` | a request head has arrived | load the running [`Snapshot`] once |
//! | `early_request_filter` | before Pingora's downstream modules | keep-alive timeout |
//! | `request_filter` | once per request | trace context, head size, routing, the route's plugin chain, split, cache use |
//! | `request_cache_filter`, `cache_key_callback`, `cache_hit_filter` | routes with `cache` | `cache` and the route's `CachePolicy` |
//! | `upstream_peer` | before each attempt (again on retry) | breaker, backend pick, timeouts (`attempt`) |
//! | `fail_to_connect`, `error_while_proxy` | an attempt failed | retry decisions |
//! | `upstream_request_filter` | before the head goes upstream | [`forwarding`], plugins' upstream hooks, `traceparent` |
//! | `request_body_filter` | per request body chunk | plugins' body hooks |
//! | `upstream_response_filter` | the upstream's head arrived (before the cache stores it) | status retries, passive health, breaker |
//! | `response_cache_filter`, `cache_vary_filter`, `should_serve_stale` | routes with `cache` | the route's `CachePolicy` |
//! | `response_filter` | before the head goes to the client (hits too) | plugins' async response-head hooks (`ext_proc`), cache status, plugins' response hooks, request id, body framing (`response_body`) |
//! | `response_body_filter` | per response body chunk (hits too) | plugins' response-body hooks (`response_body`) |
//! | `fail_to_proxy` | the request failed | the [`GatewayError`] answer ([`error`]) |
//! | `logging` | always, last | metrics, plugins' log hooks, the access log, the trace; the attempt settles |

mod attempt;
pub mod body;
mod cache;
mod ctx;
pub mod error;
pub mod forwarding;
mod respond;
mod response_body;

use crate::access_log::{AccessLog, AccessRecord};
use crate::config::schema::BodyOverLimit;
use crate::fallback;
use crate::framing;
use crate::lifecycle::Lifecycle;
use crate::metrics::{method_label, Observed, METRICS};
use crate::origin_date::OriginDate;
use crate::router::{request_host, Match};
use crate::snapshot::Snapshot;
use crate::target;
use crate::trace::span::{Finished, RequestTrace};
use crate::trace::SharedTracer;
use crate::upstream::limit::Refusal;
use crate::upstream::timed::{stream_timeout, StreamTimeout, TimedConnect};
use crate::upstream::HashOn;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use attempt::{Attempt, BreakerTicket};
use body::{
    has_large_body, has_small_body, read_body, read_small_body, sha256, too_slow, BodyError,
    ReadAhead,
};
use ctx::plugins;
pub use ctx::Ctx;
use error::GatewayError;
use forwarding::{real_client_ip, BadForwardedFor, REQUEST_ID, REQUEST_ID_NAME};
use http::StatusCode;
use pingora::cache::RespCacheable;
use pingora::cache::{CacheKey, CacheMeta, ForcedFreshness, HitHandler, NoCacheReason};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tollgate_plugins::cache::policy::merge_not_modified;
use tollgate_plugins::cache::{Exchange, RequestUse};
use tollgate_plugins::net::contains;
use tollgate_plugins::req::content_length;
use tollgate_plugins::{chain, Phase, RequestCtx, RequestId};

/// The response header naming the upstream that served a route with `fallback`.
const UPSTREAM_HEADER: &str = "x-tollgate-upstream";

/// Bytes of the request line around the method and target: `" "` and `" HTTP/1.1\r\n"`.
const REQUEST_LINE_FRAMING: usize = 1 + 11;
/// Bytes of a header line around the name and value: `": "` and `"\r\n"`.
const HEADER_LINE_FRAMING: usize = 2 + 2;

/// The gateway's proxy logic. Cheap to share: it holds handles to the running config, the
/// access log and the process's lifecycle.
pub struct Gateway {
    config: Arc<ArcSwap<Snapshot>>,
    access_log: Option<AccessLog>,
    lifecycle: Arc<Lifecycle>,
    no_route: Arc<str>,
    origin_date: Arc<OriginDate>,
    tracer: Option<SharedTracer>,
}

impl Gateway {
    /// A gateway serving whatever snapshot `config` holds at each request's start.
    pub fn new(
        config: Arc<ArcSwap<Snapshot>>,
        access_log: Option<AccessLog>,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        Gateway {
            config,
            access_log,
            lifecycle,
            no_route: Arc::from(""),
            origin_date: Arc::new(OriginDate::new()),
            tracer: None,
        }
    }

    /// Trace requests with `tracer` (`[tracing]`).
    pub fn with_tracer(mut self, tracer: SharedTracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// The marker this gateway puts the origin's `Date` in; give it to the listeners'
    /// [`GuardedApp`](crate::connection::GuardedApp) so HTTP/1 clients get that `Date`.
    pub fn origin_date(&self) -> Arc<OriginDate> {
        self.origin_date.clone()
    }
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = Ctx;

    /// Once, when the service starts. Pingora's default adds its response compression
    /// module (disabled), which still builds a context and runs its filters on every
    /// request; tollgate does not compress responses, so it adds no module.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Ctx {
        let req = RequestCtx::new(self.no_route.clone(), None, RequestId::generate());
        Ctx::new(self.config.load_full(), req)
    }

    async fn early_request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<()> {
        // Idle time allowed before the next request on this connection.
        session.set_keepalive(Some(ctx.snap.server.live.keepalive_timeout_seconds));
        // Pipelined requests are answered in order (RFC 9112 §9.3.2), not dropped.
        session.as_mut().set_pipelining_enabled(true);
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let req = session.req_header();
        if let Some(t) = &self.tracer {
            ctx.trace = Some(t.begin(req));
        }
        if head_size(req) > ctx.snap.server.live.max_header_bytes {
            session.set_keepalive(None);
            return self
                .answer_error(session, ctx, GatewayError::HeadersTooLarge)
                .await;
        }
        if let Err(e) = target::canonicalize(
            session.req_header_mut(),
            &ctx.snap.server.live.path_normalization,
        ) {
            return self
                .answer_error(session, ctx, GatewayError::BadTarget(e))
                .await;
        }
        if framing::canonical_content_length(session.req_header_mut()).is_err() {
            session.set_keepalive(None);
            return self
                .answer_error(session, ctx, GatewayError::BadContentLength)
                .await;
        }
        let req = session.req_header();
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
        ctx.req.client_ip = match real_client_ip(peer, req, &ctx.snap.trusted_proxies) {
            Ok(ip) => ip,
            Err(BadForwardedFor) => {
                return self
                    .answer_error(session, ctx, GatewayError::BadForwardedFor)
                    .await
            }
        };

        let entry = match ctx.snap.router.find(request_host(req), req) {
            Match::Found(i) => ctx.snap.router.entry(i),
            Match::NotFound => {
                return self
                    .answer_error(session, ctx, GatewayError::RouteNotFound)
                    .await
            }
            Match::MethodNotAllowed(methods) => {
                // A CORS preflight is the cors plugin's to answer, whatever `methods` says.
                let preflight = is_preflight(req)
                    .then(|| ctx.snap.router.find_any_method(request_host(req), req))
                    .flatten()
                    .map(|i| ctx.snap.router.entry(i))
                    .filter(|e| ctx.snap.routes[e.route].cors);
                match preflight {
                    Some(e) => e,
                    None => {
                        return self
                            .answer_error(session, ctx, GatewayError::MethodNotAllowed(methods))
                            .await
                    }
                }
            }
        };
        let route = ctx.snap.routes[entry.route].clone();
        let rewritten = forwarding::rewritten_uri(&route, &entry.path, &req.uri);
        let peer_trusted = peer.is_some_and(|p| contains(&ctx.snap.trusted_proxies, p));
        forwarding::strip_client_headers(
            session.req_header_mut(),
            peer_trusted,
            route.allow_underscore_headers,
        );
        ctx.req.route = route.name.clone();
        ctx.route = Some(route.clone());

        let ran = chain::run_request(&route.chain, session, &mut ctx.req).await;
        ctx.consumer_chain = ran.chain;
        if let Some(stop) = ran.stop {
            if let Some(t) = &mut ctx.trace {
                t.answered_by = Some(stop.plugin);
            }
            if let Some(code) = stop.answer.code {
                ctx.error_code = Some(code);
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
        match rewritten {
            Some(Ok(uri)) => ctx.upstream_uri = Some(uri),
            Some(Err(())) => {
                return self
                    .answer_error(session, ctx, GatewayError::Malformed(400))
                    .await
            }
            None => {}
        }
        // A plugin (ext_proc) may have read the body already: it cannot be read twice.
        if let Some(ReadAhead(b)) = ctx.req.extensions.remove::<ReadAhead>() {
            ctx.body = Some(b);
        }
        if let Some(rb) = route.request_body {
            session
                .as_mut()
                .set_read_timeout(Some(Duration::from_millis(rb.read_timeout_ms)));
            if rb.buffer {
                if matches!(content_length(session.req_header()), Some(Ok(n)) if n > rb.max_bytes as u64)
                    || ctx.body.as_ref().is_some_and(|b| b.len() > rb.max_bytes)
                {
                    return self.refuse_body(session, ctx, BodyError::TooLarge).await;
                }
                if ctx.body.is_none() {
                    match read_body(session, rb.max_bytes, rb.min_rate_bytes_per_second).await {
                        Ok(b) => ctx.body = Some(b),
                        Err(e) => return self.refuse_body(session, ctx, e).await,
                    }
                }
            }
        }
        // Routes that read the JSON body (split on `body`, fallback) bound it first.
        let reads_body =
            route.fallback.is_some() || route.split.as_ref().is_some_and(|s| s.needs_body);
        let max = route.body_max_bytes;
        let over_limit = reads_body
            && (has_large_body(session.req_header(), max)
                || ctx.body.as_ref().is_some_and(|b| b.len() > max));
        if over_limit {
            let reject = route.on_body_over_limit == BodyOverLimit::Reject;
            METRICS
                .body_over_limit
                .with_label_values(&[
                    &*route.name,
                    if reject { "reject" } else { "default_target" },
                ])
                .inc();
            if route.split.as_ref().is_some_and(|s| s.needs_body) {
                METRICS
                    .split_body_too_large
                    .with_label_values(&[&*route.name])
                    .inc();
            }
            if reject {
                log::warn!(
                    "route {}: request body over max_body_bytes ({max}) or chunked: 413",
                    route.name
                );
                session.set_keepalive(None);
                return self
                    .answer_error(session, ctx, GatewayError::BodyTooLarge)
                    .await;
            }
            log::warn!(
                "route {}: request body over max_body_bytes ({max}) or chunked: default target, no fallback",
                route.name
            );
        }
        let small_body = reads_body && !over_limit && has_small_body(session.req_header(), max);
        if small_body && ctx.body.is_none() {
            ctx.body = Some(read_small_body(session).await?);
        }
        let mut split_chose = false;
        if let Some(split) = &route.split {
            let body = match &ctx.body {
                Some(bytes) if split.needs_body && small_body => {
                    ctx.body_hash = Some(sha256(bytes));
                    serde_json::from_slice::<serde_json::Value>(bytes).ok()
                }
                _ => None,
            };
            if let Some(up) = split.choose(session.req_header(), body.as_ref()) {
                ctx.upstream = Some(up);
                split_chose = true;
            }
        }
        if route.fallback.is_some() && !split_chose {
            // A request a split rule sent elsewhere, or whose body is over the bound, goes
            // to its first target only.
            ctx.fallback_live = !over_limit;
            ctx.body_override = ctx.target_body(&route, 0);
        }
        if let Some(policy) = &route.cache {
            let req = session.req_header();
            if req.method.as_str() == "PURGE" {
                let answer = cache::purge(policy, req, &ctx.req).await;
                ctx.error_code = answer.code;
                self.send_answer(session, ctx, answer).await?;
                return Ok(true);
            }
            let use_ = policy.request_use(req);
            ctx.cache_use = Some(use_);
            if use_ == RequestUse::Cache {
                let target = ctx.upstream.as_ref().map_or("", |u| &*u.name);
                if let Some(copy) = policy.fresh_hit(req, &ctx.req, target) {
                    let policy = policy.clone();
                    self.serve_fresh(session, ctx, &copy, &policy).await?;
                    return Ok(true);
                }
            }
            if use_ == RequestUse::CacheBody && ctx.body_hash.is_none() {
                let bytes = match ctx.body.clone() {
                    Some(b) => b,
                    None => read_small_body(session).await?,
                };
                ctx.body_hash = Some(sha256(&bytes));
            }
        }
        Ok(false)
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // A refusal at one target of a `fallback` list moves on to the next one.
        loop {
            match self.target_peer(session, ctx).await {
                Ok(peer) => return Ok(peer),
                Err(Refused::Gateway(e, cause)) => {
                    // A full or timed-out queue always moves on; the rest only on `connect`.
                    let may =
                        cause == "queue" || ctx.fallback_triggers().is_some_and(|t| t.connect);
                    if !(may && ctx.fall_back(cause)) {
                        return Err(self.refuse(ctx, e));
                    }
                }
                Err(Refused::Proxy(e, cause)) => {
                    if !(ctx.fallback_triggers().is_some_and(|t| t.connect) && ctx.fall_back(cause))
                    {
                        return Err(e);
                    }
                }
            }
        }
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
        let timed_out =
            matches!(e.etype(), ErrorType::ReadTimedout) || stream_timeout(&e).is_some();
        if let Some(a) = &mut ctx.attempt {
            if a.outcome != "response" {
                a.outcome = if timed_out { "timeout" } else { "error" };
            }
        }
        if let Some(t) = &mut ctx.trace {
            let status_retry = matches!(e.etype(), ErrorType::HTTPStatus(_));
            let why = match (status_retry, timed_out) {
                (true, _) => "status",
                (_, true) => "timeout",
                _ => "error",
            };
            t.attempt_failed(why, Instant::now());
        }
        if std::mem::take(&mut ctx.fell_back) {
            // `upstream_response_filter` moved the request to its next fallback target.
            e.set_retry(true);
            return e;
        }
        if ctx
            .route
            .as_ref()
            .is_some_and(|r| r.stream_timeouts.is_some())
            && self.stream_timed_out(session, ctx, &mut e).is_some()
        {
            return e;
        }
        let retry_timeout = ctx.route.as_ref().is_some_and(|r| {
            r.retry.on_timeout
                && ctx.retries_used < r.retry.max
                && r.retry.deadline.is_none_or(|d| ctx.start.elapsed() < d)
        });
        let replayable = session_idempotent(session) && !session.as_ref().retry_buffer_truncated();
        // Never once the client got response bytes: a retry would corrupt the response.
        if session.response_written().is_some() || !replayable {
            e.set_retry(false);
        } else if retry_timeout
            && ctx.retry_allowed()
            && matches!(e.etype(), ErrorType::ReadTimedout)
        {
            ctx.retries_used += 1;
            ctx.remember_tried();
            if let Some(a) = &mut ctx.attempt {
                a.report(false);
            }
            ctx.count_retry("timeout");
            e.set_retry(true);
        } else if !matches!(e.etype(), ErrorType::HTTPStatus(_)) {
            // Pingora retries a failure on a reused pooled connection (the backend may have
            // closed it while idle), but never past the request's attempt budget.
            e.retry.decide_reuse(client_reused);
            if e.retry() && !ctx.retry_allowed() {
                e.set_retry(false);
            }
            if e.retry() {
                // A pooled connection the backend had closed: not the backend's failure.
                if let Some(a) = &mut ctx.attempt {
                    a.forgive();
                }
                ctx.count_retry("reused_connection");
            }
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
        ctx.remember_tried();
        if let Some(a) = &mut ctx.attempt {
            a.report(false);
            a.outcome = "connect_error";
        }
        if let Some(t) = &mut ctx.trace {
            t.attempt_failed("connect", Instant::now());
        }
        // Bounded by the upstream's `retries`; a new backend is picked on each try.
        let retry = ctx.retry_allowed();
        if retry {
            ctx.count_retry("connect");
        }
        // Its own backends exhausted, the request moves to the next fallback target: a
        // connect failure is always safe to retry (nothing reached the upstream).
        let retry = retry
            || (ctx.fallback_triggers().is_some_and(|t| t.connect) && ctx.fall_back("connect"));
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let Some(route) = ctx.route.clone() else {
            return Ok(());
        };
        if let Some(uri) = &ctx.upstream_uri {
            upstream_request.set_uri(uri.clone());
        }
        if let Some(b) = &ctx.body_override {
            // The target's `model` rewrite changed the body's length.
            upstream_request.insert_header(http::header::CONTENT_LENGTH, b.len())?;
        }
        if !route.preserve_host {
            if let (Some(up), Some(a)) = (&ctx.upstream, &ctx.attempt) {
                forwarding::set_host(upstream_request, up, a.backend())?;
            }
        }
        // Each added header costs a name parse and two map inserts in Pingora (about a
        // tenth of the proxied path's CPU for these four): routes may opt out.
        if route.forwarded_headers {
            let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
            forwarding::set_forwarded_headers(
                upstream_request,
                session.req_header(),
                ctx.req.peer_ip,
                tls,
            )?;
        }
        if route.request_id {
            if let Some(v) = ctx.request_id_value() {
                upstream_request.insert_header(REQUEST_ID, v)?;
            }
        }
        forwarding::set_identity_headers(upstream_request, &ctx.req)?;
        for p in plugins(&route, &ctx.consumer_chain) {
            p.upstream_request(upstream_request, &mut ctx.req);
        }
        if let Some(t) = &ctx.trace {
            // This attempt's span is the upstream's parent. A `tracestate` belongs to the
            // caller's trace only: without a valid `traceparent` it is dropped.
            upstream_request.insert_header(
                "traceparent",
                crate::trace::context::traceparent(&t.trace_id, &t.attempt_span, t.sampled),
            )?;
            if t.parent.is_none() {
                upstream_request.remove_header("tracestate");
            }
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
        if let Some(policy) = ctx.cache_policy() {
            cache::enable(session, policy);
        }
        Ok(())
    }

    fn cache_key_callback(&self, session: &Session, ctx: &mut Ctx) -> Result<CacheKey> {
        match ctx.cache_policy() {
            Some(policy) => {
                let target = ctx.upstream.as_ref().map_or("", |u| &*u.name);
                Ok(policy.cache_key(
                    session.req_header(),
                    &ctx.req,
                    target,
                    ctx.body_hash.as_ref(),
                ))
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
        let not_modified = ctx.not_modified.take();
        let Some(policy) = ctx.cache_policy() else {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::NeverEnabled));
        };
        let exchange = Exchange {
            authorization: session
                .req_header()
                .headers
                .contains_key(http::header::AUTHORIZATION),
            authenticated: ctx.req.identity.is_some(),
            response_delay: ctx.upstream_start.map_or(Duration::ZERO, |t| t.elapsed()),
        };
        // After a 304 Pingora hands over the stored head with a few fields updated; every
        // field of the 304 counts (RFC 9111 §4.3.4).
        let decision = match not_modified {
            Some(not_modified) => {
                policy.response_cacheable(&merge_not_modified(resp, &not_modified), &exchange)
            }
            None => policy.response_cacheable(resp, &exchange),
        };
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
        ctx: &mut Ctx,
        error: Option<&Error>,
    ) -> bool {
        // Called only inside the stored response's stale-while-revalidate (no error) or
        // stale-if-error windows; both are the origin's explicit permission.
        let serve = error.is_none_or(|e| e.esource() == &ErrorSource::Upstream);
        // Pingora does not reuse a connection after serving stale on error.
        ctx.stale_on_error |= serve && error.is_some();
        serve
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(b) = &ctx.body_override {
            // The whole body was read ahead: it comes (from the retry buffer) in one piece.
            *body = Some(if ctx.override_sent {
                bytes::Bytes::new()
            } else {
                b.clone()
            });
            ctx.override_sent = true;
        }
        let Some(route) = ctx.route.clone().filter(|r| r.body_hooks) else {
            return Ok(());
        };
        if let Some(min_rate) = route
            .request_body
            .map(|b| b.min_rate_bytes_per_second)
            .filter(|r| *r > 0)
        {
            let n = body.as_ref().map_or(0, |b| b.len() as u64);
            let (start, seen) = ctx.body_progress.get_or_insert((Instant::now(), 0));
            *seen += n;
            if !end_of_stream && too_slow(*start, *seen, min_rate) {
                ctx.failure = Some(GatewayError::RequestTimeout);
                return Error::e_explain(ErrorType::ReadTimedout, "request body too slow");
            }
        }
        let chain = plugins(&route, &ctx.consumer_chain);
        for p in chain.iter().filter(|p| p.wants_request_body()) {
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
        if let Some(t) = &mut ctx.trace {
            t.attempt_status(status);
        }
        if let Some(a) = &mut ctx.attempt {
            a.outcome = "response";
        }
        // Before the cache may store it: hop-by-hop headers describe the upstream
        // connection, not the response (RFC 9110 §7.6.1).
        forwarding::strip_hop_by_hop(upstream_response);
        if status == 304 && ctx.cache_policy().is_some() {
            ctx.not_modified = Some(Box::new(upstream_response.clone()));
        }
        if let Some(route) = &ctx.route {
            let p = &route.retry;
            if p.on_status.contains(&status)
                && ctx.retries_used < p.max
                && session_idempotent(session)
                && p.deadline.is_none_or(|d| ctx.start.elapsed() < d)
                && ctx.retry_allowed()
            {
                ctx.count_retry("status");
                ctx.retries_used += 1;
                if let Some(a) = &mut ctx.attempt {
                    a.report(status < 500);
                }
                ctx.remember_tried();
                let mut e = Error::new_up(ErrorType::HTTPStatus(status));
                e.set_retry(true);
                return Err(e);
            }
        }
        let fallback_status = ctx.fallback_triggers().is_some_and(|t| t.status(status));
        if let Some(a) = &mut ctx.attempt {
            a.answered(status < 500);
        }
        if fallback_status && ctx.fall_back(fallback::status_cause(status)) {
            // Nothing of this answer reached the client: the next target gets the request.
            ctx.fell_back = true;
            ctx.upstream_status = None;
            let mut e = Error::new_up(ErrorType::HTTPStatus(status));
            e.set_retry(true);
            return Err(e);
        }
        if let (Some(up), Some(start)) = (&ctx.upstream, ctx.upstream_start) {
            let elapsed = start.elapsed();
            ctx.upstream_elapsed = Some(elapsed);
            up.duration.observe(elapsed.as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(route) = ctx.route.clone().filter(|r| r.upstream_response_hooks) {
            // Owned handles: the hooks are awaited while `ctx.req` is borrowed.
            let consumer_chain = ctx.consumer_chain.clone();
            let chain = plugins(&route, &consumer_chain);
            for p in chain.iter().filter(|p| p.wants_upstream_response()) {
                if let Some(answer) = p.upstream_response(upstream_response, &mut ctx.req).await {
                    // Sent by fail_to_proxy instead of this response.
                    ctx.pending = Some(answer);
                    return Error::e_explain(
                        ErrorType::HTTPStatus(502),
                        "response refused by a plugin",
                    );
                }
            }
        }
        if let Some(policy) = ctx.cache_policy().cloned() {
            let urls = cache::set_status(
                session,
                upstream_response,
                ctx.cache_use,
                ctx.cache_stored,
                &policy,
                &ctx.req.route,
            );
            cache::invalidate(&policy, urls).await;
        }
        self.finish_header(upstream_response, ctx);
        if ctx
            .route
            .as_ref()
            .is_some_and(|r| r.fallback.as_ref().is_some_and(|f| f.header))
        {
            if let Some(v) = ctx
                .upstream
                .as_ref()
                .and_then(|u| http::HeaderValue::from_str(&u.name).ok())
            {
                upstream_response.insert_header(UPSTREAM_HEADER, v)?;
            }
        }
        ctx.response_body_hooks = ctx.route.as_ref().is_some_and(|r| r.response_body_hooks)
            && response_body::has_body(session.req_header(), upstream_response);
        if ctx.response_body_hooks && !session.is_http2() {
            response_body::frame_h1(upstream_response);
        }
        if !session.is_http2() {
            self.origin_date.mark(upstream_response);
        }
        self.close_if_draining(session);
        if ctx.stale_on_error {
            session.set_keepalive(None);
        }
        Ok(())
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<Option<Duration>> {
        if end_of_stream && ctx.upstream_start.is_some() && ctx.upstream_end.is_none() {
            ctx.upstream_end = Some(Instant::now());
        }
        if ctx.response_body_hooks {
            if let Some(route) = &ctx.route {
                response_body::run(
                    plugins(route, &ctx.consumer_chain),
                    body,
                    end_of_stream,
                    &mut ctx.req,
                );
            }
        }
        Ok(None)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let (status, answer) = match ctx.pending.take() {
            // A body hook refused the request.
            Some(answer) => {
                ctx.error_code = answer.code;
                (answer.status.as_u16(), Some(answer))
            }
            None => {
                let error = ctx
                    .failure
                    .take()
                    .unwrap_or_else(|| GatewayError::from_proxy_error(e));
                ctx.error_code = Some(error.code());
                (error.status(), error.answer())
            }
        };
        if let Some(answer) = answer.filter(|_| session.response_written().is_none()) {
            // Pingora will not reuse this connection: say so, so the client does not send
            // its next request into a closing socket.
            session.set_keepalive(None);
            let _ = self.send_answer(session, ctx, answer).await;
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    fn request_summary(&self, session: &Session, _ctx: &Ctx) -> String {
        // Pingora's own summary has the query string, where API keys and tokens travel.
        let req = session.req_header();
        format!(
            "{} {}, Host: {}",
            req.method,
            req.uri.path(),
            request_host(req)
        )
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Ctx) {
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.start.elapsed();
        let route_name = ctx.route.as_ref().map_or("", |r| &*r.name);
        let req = session.req_header();
        let code = StatusCode::from_u16(status).ok();
        let status_label = code.as_ref().map_or("0", |s| s.as_str());
        match &ctx.route {
            Some(r) => r
                .counters
                .count(route_name, method_label(&req.method), status_label),
            None => METRICS
                .requests
                .with_label_values(&[route_name, method_label(&req.method), status_label])
                .inc(),
        }
        if let Some(code) = ctx.error_code {
            METRICS
                .gateway_errors
                .with_label_values(&[route_name, code])
                .inc();
        }
        // Formatting an address costs more than the rest of this phase: only for the log.
        let backend = self
            .access_log
            .as_ref()
            .and(ctx.attempt.as_ref())
            .and_then(|a| a.addr())
            .map(|a| a.to_string());
        // The last attempt settles here: in-flight count, passive health, breaker.
        drop(ctx.attempt.take());
        if let Some(r) = &ctx.route {
            let upstream_time = match (ctx.upstream_start, ctx.upstream_end) {
                (Some(start), Some(end)) => Some(end.saturating_duration_since(start)),
                _ => ctx.upstream_elapsed,
            };
            r.metrics.observe(&Observed {
                // Only when the request went upstream (a plugin may answer first).
                upstream: ctx
                    .upstream
                    .as_ref()
                    .filter(|_| ctx.upstream_start.is_some())
                    .map(|u| &*u.name),
                status,
                total: elapsed,
                upstream_time,
                request_bytes: session.body_bytes_read() as u64,
                response_bytes: session.body_bytes_sent() as u64,
            });
            for p in plugins(r, &ctx.consumer_chain) {
                p.log(status, &mut ctx.req);
            }
        }
        if let Some(log) = &self.access_log {
            // Derived from the monotonic start rather than read per request: only the
            // access log needs wall-clock time.
            let now = SystemTime::now();
            let started_at = now.checked_sub(elapsed).unwrap_or(now);
            let time = jiff::Timestamp::try_from(started_at)
                .map(|t| t.to_string())
                .unwrap_or_default();
            let usage = ctx.req.extensions.get::<tollgate_plugins::ai::Usage>();
            let header = |name: http::header::HeaderName| {
                req.headers
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
            };
            let trace_hex = match &ctx.trace {
                Some(t) => Some(crate::trace::context::trace_hex(&t.trace_id)),
                None => req
                    .headers
                    .get("traceparent")
                    .and_then(|v| crate::trace::context::parse(v.as_bytes()))
                    .map(|p| crate::trace::context::trace_hex(&p.trace_id)),
            };
            let trace_id = trace_hex.as_ref().and_then(|h| std::str::from_utf8(h).ok());
            log.write(&AccessRecord {
                time,
                request_id: ctx.req.request_id.as_str(),
                client_ip: ctx.req.client_ip.map(|i| i.to_string()).unwrap_or_default(),
                method: req.method.as_str(),
                host: request_host(req),
                path: req.uri.path(),
                protocol: protocol(req.version),
                user_agent: header(http::header::USER_AGENT),
                route: ctx.route.as_ref().map_or("", |r| &*r.name),
                consumer: ctx
                    .req
                    .identity
                    .as_ref()
                    .map_or("", |i| i.consumer.username.as_str()),
                upstream: ctx.upstream.as_ref().map_or("", |u| &*u.name),
                backend: backend.unwrap_or_default(),
                status,
                upstream_status: ctx.upstream_status,
                retries: ctx.retries,
                request_bytes: session.body_bytes_read(),
                bytes_sent: session.body_bytes_sent(),
                duration_ms: elapsed.as_secs_f64() * 1000.0,
                upstream_ms: ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
                error: ctx.error_code,
                trace_id,
                model: usage.and_then(|u| u.model.as_deref()),
                prompt_tokens: usage.map(|u| u.prompt_tokens),
                completion_tokens: usage.map(|u| u.completion_tokens),
            });
        }
        if let Some(trace) = ctx.trace.take() {
            self.finish_trace(session, ctx, trace, status);
        }
    }
}

impl Gateway {
    /// Hand the request's trace to the exporter if it is to be exported: the strings its
    /// server span needs are copied here, the rest happens in the exporter.
    fn finish_trace(&self, session: &Session, ctx: &Ctx, mut trace: RequestTrace, status: u16) {
        let Some(tracer) = &self.tracer else {
            return;
        };
        if !tracer.exports(&trace, status) {
            return;
        }
        let end = Instant::now();
        let end_unix_nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        // The last attempt ends with the response (or the request).
        let last_end = ctx.upstream_end.unwrap_or(end);
        trace.end_attempt(last_end, ctx.error_code.unwrap_or("error"));
        let req = session.req_header();
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        tracer.submit(Finished {
            trace,
            start: ctx.start,
            end,
            end_unix_nanos,
            method: req.method.clone(),
            path: req.uri.path().to_string(),
            scheme: if tls { "https" } else { "http" },
            // Without its port already.
            host: request_host(req).to_string(),
            // `1.1` of `HTTP/1.1`.
            protocol: protocol(req.version).strip_prefix("HTTP/").unwrap_or("1.1"),
            client: ctx.req.client_ip,
            user_agent: req
                .headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            status,
            route: ctx.route.as_ref().map(|r| r.name.clone()),
            upstream: ctx
                .upstream
                .as_ref()
                .filter(|_| ctx.upstream_start.is_some())
                .map(|u| u.name.clone()),
            consumer: ctx
                .req
                .identity
                .as_ref()
                .map(|i| i.consumer.username.clone()),
            request_id: ctx.req.request_id.as_str().to_string(),
            retries: ctx.retries,
            error: ctx.error_code,
            body_bytes: (
                session.body_bytes_read() as u64,
                session.body_bytes_sent() as u64,
            ),
        });
    }

    /// Answer a request whose body could not be read whole (413, 408), or fail with the
    /// read error.
    async fn refuse_body(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        e: BodyError,
    ) -> Result<bool> {
        session.set_keepalive(None);
        let answer = match e {
            BodyError::TooLarge => tollgate_plugins::Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "request body is larger than allowed",
            ),
            BodyError::TooSlow => {
                return self
                    .answer_error(session, ctx, GatewayError::RequestTimeout)
                    .await
            }
            BodyError::Read(e) if matches!(e.etype(), ErrorType::ReadTimedout) => {
                return self
                    .answer_error(session, ctx, GatewayError::RequestTimeout)
                    .await
            }
            BodyError::Read(e) => return Err(e),
        };
        ctx.error_code = answer.code;
        self.send_answer(session, ctx, answer).await?;
        Ok(true)
    }

    /// A peer at the request's current target (`ctx.upstream`): breaker, concurrency slot,
    /// backend pick, timeouts. A refusal says why, for the fallback list.
    async fn target_peer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> std::result::Result<Box<HttpPeer>, Refused> {
        let (Some(route), Some(upstream)) = (ctx.route.clone(), ctx.upstream.clone()) else {
            let e = Error::explain(ErrorType::InternalError, "no route or upstream");
            return Err(Refused::Proxy(e, "unavailable"));
        };
        // The breaker is asked once per request and target; a retry at the same target
        // inherits the first answer (and the concurrency slot).
        let (ticket, permit) = match ctx.attempt.take() {
            Some(previous) if Arc::ptr_eq(previous.pool(), &upstream) => previous.into_parts(),
            previous => {
                // Settles the previous target's attempt before this one is admitted.
                drop(previous);
                let ticket = match BreakerTicket::admit(&upstream) {
                    Ok(t) => t,
                    Err(e) => return Err(Refused::Gateway(e, "unavailable")),
                };
                (ticket, None)
            }
        };
        let permit = match (permit, &upstream.limit) {
            (Some(p), _) => Some(p),
            (None, Some(limit)) => match limit.acquire().await {
                Ok(p) => Some(p),
                Err(refusal) => {
                    METRICS
                        .queue_rejections
                        .with_label_values(&[&*upstream.name, refusal.label()])
                        .inc();
                    log::warn!(
                        "upstream {}: at max_concurrent_requests, {}",
                        upstream.name,
                        refusal.label()
                    );
                    let e = match refusal {
                        Refusal::QueueFull => GatewayError::QueueFull,
                        Refusal::QueueTimeout => GatewayError::QueueTimeout,
                    };
                    return Err(Refused::Gateway(e, "queue"));
                }
            },
            (None, None) => None,
        };
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
                return Err(Refused::Proxy(
                    e.more_context("every backend tried failed to connect"),
                    "connect",
                ));
            }
            return Err(Refused::Gateway(
                GatewayError::NoHealthyUpstream,
                "unavailable",
            ));
        };
        let Some(mut peer) = upstream.peer(index) else {
            let e = Error::explain(ErrorType::InternalError, "backend without a peer template");
            return Err(Refused::Proxy(e, "unavailable"));
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
                ctx.failure = Some(GatewayError::UpstreamTimeout);
                let e = GatewayError::UpstreamTimeout.to_proxy_error();
                return Err(Refused::Proxy(e, "timeout"));
            }
            for slot in [
                &mut peer.options.connection_timeout,
                &mut peer.options.read_timeout,
            ] {
                *slot = Some(slot.map_or(left, |t| t.min(left)));
            }
        }
        if let Some(st) = route.stream_timeouts {
            let connect = TimedConnect {
                connect: peer.options.connection_timeout,
                first_byte: st.first_byte,
                idle: st.idle,
            };
            peer.group_key = connect.group_key();
            peer.options.custom_l4 = Some(Arc::new(connect));
        }
        let now = Instant::now();
        if let Some(t) = &mut ctx.trace {
            let addr = upstream.addr(index).and_then(|a| a.as_inet()).copied();
            t.begin_attempt(&upstream.name, addr, now);
        }
        ctx.attempt = Some(Attempt::begin(upstream, index, ticket, permit, now));
        ctx.attempts += 1;
        ctx.override_sent = false;
        ctx.upstream_start.get_or_insert(now);
        Ok(Box::new(peer))
    }

    /// An attempt of a route with stream timeouts failed: count a timer's firing; before the
    /// response's first byte, a first-byte timeout moves the request to its next fallback
    /// target (the route asked for it; the upstream may have started work). `Some`: `e` is
    /// decided.
    fn stream_timed_out(&self, session: &Session, ctx: &mut Ctx, e: &mut Error) -> Option<()> {
        let kind = stream_timeout(e)?;
        if let Some(r) = &ctx.route {
            METRICS
                .stream_timeouts
                .with_label_values(&[&*r.name, kind.label()])
                .inc();
        }
        let before_first_byte =
            session.response_written().is_none() && ctx.upstream_status.is_none();
        ctx.failure = Some(GatewayError::UpstreamTimeout);
        let retry = kind == StreamTimeout::FirstByte
            && before_first_byte
            && ctx.fallback_triggers().is_some_and(|t| t.timeout)
            && ctx.fall_back("timeout");
        if retry {
            ctx.failure = None;
        } else if kind == StreamTimeout::Idle {
            log::warn!(
                "route {}: upstream stream idle past idle_timeout_ms: ended",
                ctx.route.as_ref().map_or("", |r| &*r.name)
            );
        }
        // Shown (and answered) as the timeout it is, not as a read error.
        e.etype = ErrorType::ReadTimedout;
        e.set_retry(retry);
        Some(())
    }

    /// Decide to refuse the request with `error` from a phase that can only fail: the
    /// error is kept for `fail_to_proxy`, which answers it.
    fn refuse(&self, ctx: &mut Ctx, error: GatewayError) -> Box<Error> {
        let e = error.to_proxy_error();
        ctx.failure = Some(error);
        e
    }
}

/// Why no peer could be had at a target, with the fallback cause label.
enum Refused {
    /// The gateway answers this (unless another target is tried).
    Gateway(GatewayError, &'static str),
    /// Pingora gets this error (unless another target is tried).
    Proxy(Box<Error>, &'static str),
}

/// `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
fn is_preflight(req: &RequestHeader) -> bool {
    req.method == http::Method::OPTIONS
        && req.headers.contains_key(http::header::ORIGIN)
        && req
            .headers
            .contains_key(http::header::ACCESS_CONTROL_REQUEST_METHOD)
}

fn session_idempotent(session: &Session) -> bool {
    session.req_header().method.is_idempotent()
}

/// Bytes of the request line and headers, as they were sent (near enough).
fn head_size(req: &RequestHeader) -> usize {
    let line = req.method.as_str().len() + req.raw_path().len() + REQUEST_LINE_FRAMING;
    req.headers.iter().fold(line, |n, (k, v)| {
        n + k.as_str().len() + v.len() + HEADER_LINE_FRAMING
    })
}

/// The consistent-hash key of a request, borrowed from it (or from `buf` for addresses).
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

/// The protocol of a request as the access log writes it (`HTTP/1.1`, `HTTP/2`).
fn protocol(version: http::Version) -> &'static str {
    match version {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
