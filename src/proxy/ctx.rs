//! The per-request state the phases share.

use super::attempt::Attempt;
use super::error::GatewayError;
use crate::snapshot::{Route, Snapshot};
use crate::trace::span::{Event, RequestTrace};
use crate::upstream::UpstreamPool;
use http::HeaderValue;
use pingora::protocols::l4::socket::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_plugins::cache::{CachePolicy, RequestUse};
use tollgate_plugins::chain::Plugins;
use tollgate_plugins::{Answer, Plugin, RequestCtx};

/// Per-request state: made in `new_ctx`, dropped after `logging`.
pub struct Ctx {
    /// The config this request runs on, loaded once when it starts.
    pub(super) snap: Arc<Snapshot>,
    /// The matched route.
    pub(super) route: Option<Arc<Route>>,
    /// What plugins see.
    pub req: RequestCtx,
    pub(super) start: Instant,
    /// The upstream this request goes to: the route's, or the one a split rule chose.
    pub(super) upstream: Option<Arc<UpstreamPool>>,
    /// The current try at a backend; it settles itself when replaced or dropped.
    pub(super) attempt: Option<Attempt>,
    /// Status of the upstream's response, if one came.
    pub(super) upstream_status: Option<u16>,
    /// Status/timeout retries used.
    pub(super) retries_used: u32,
    /// Tries at a backend so far, whatever ended them.
    pub(super) attempts: u32,
    /// Retries counted (`tollgate_upstream_retries_total`), for the access log.
    pub(super) retries: u32,
    /// Backends already tried, kept out of the next pick.
    pub(super) tried: Vec<SocketAddr>,
    pub(super) upstream_start: Option<Instant>,
    /// When the upstream's response body ended (for the gateway overhead metric).
    pub(super) upstream_end: Option<Instant>,
    /// Counts the request in `tollgate_http_requests_in_flight` while it lives.
    pub(super) _in_flight: crate::metrics::InFlight,
    pub(super) upstream_elapsed: Option<Duration>,
    /// Why the gateway refuses, when the decision was made before `fail_to_proxy`.
    pub(super) failure: Option<GatewayError>,
    /// Stable code of the error answered (the gateway's or a plugin's): the metric label and
    /// the access log's `error`.
    pub(super) error_code: Option<&'static str>,
    /// An answer a body hook made; sent by `fail_to_proxy`.
    pub(super) pending: Option<Answer>,
    /// What the request does with the route's cache, when it has one.
    pub(super) cache_use: Option<RequestUse>,
    /// The response was admitted to the cache.
    pub(super) cache_stored: bool,
    /// The origin's 304 to a revalidation, merged into the stored head when it is updated.
    pub(super) not_modified: Option<Box<pingora::http::ResponseHeader>>,
    /// A stale copy is served because the origin failed (the connection will not be reused).
    pub(super) stale_on_error: bool,
    /// SHA-256 of the request body, for routes whose cache key includes it.
    pub(super) body_hash: Option<[u8; 32]>,
    /// The whole request body, when it was read before choosing an upstream.
    pub(super) body: Option<bytes::Bytes>,
    /// When the body began streaming and how much of it came, for the minimum rate.
    pub(super) body_progress: Option<(Instant, u64)>,
    /// The request id as a header value, made once for the upstream request and the response.
    pub(super) request_id_value: Option<HeaderValue>,
    /// The URI sent upstream when the route rewrites the path.
    pub(super) upstream_uri: Option<http::Uri>,
    /// The authenticated consumer's chain, when its plugins change the route's.
    pub(super) consumer_chain: Option<Plugins>,
    /// The response has a body and the route has response-body hooks: they run on each
    /// chunk (decided in `response_filter`).
    pub(super) response_body_hooks: bool,
    /// The request may move along the route's `fallback` list (the route has one, its body
    /// is within `max_body_bytes`, no split rule sent it elsewhere).
    pub(super) fallback_live: bool,
    /// Index of the current target in the route's `fallback` list.
    pub(super) fallback_pos: usize,
    /// `upstream_response_filter` moved the request on: the error it returns is retried.
    pub(super) fell_back: bool,
    /// The body sent to the current target when its `model` differs from the client's.
    pub(super) body_override: Option<bytes::Bytes>,
    /// `body_override` went into this attempt's body already.
    pub(super) override_sent: bool,
    /// The request's trace, when `[tracing]` is on.
    pub(super) trace: Option<RequestTrace>,
}

/// The plugins a request runs: its consumer's chain once one was chosen, else the route's.
/// A function of the two fields (not a method) so callers can borrow `ctx.req` beside it.
pub(super) fn plugins<'a>(
    route: &'a Route,
    consumer_chain: &'a Option<Plugins>,
) -> &'a [Arc<dyn Plugin>] {
    consumer_chain.as_deref().unwrap_or(&route.chain.base)
}

impl Ctx {
    /// A context for a request on `snap`.
    pub(super) fn new(snap: Arc<Snapshot>, req: RequestCtx) -> Self {
        Ctx {
            snap,
            route: None,
            req,
            start: Instant::now(),
            upstream: None,
            attempt: None,
            upstream_status: None,
            retries_used: 0,
            attempts: 0,
            retries: 0,
            tried: Vec::new(),
            upstream_start: None,
            upstream_end: None,
            _in_flight: crate::metrics::InFlight::start(),
            upstream_elapsed: None,
            failure: None,
            error_code: None,
            pending: None,
            cache_use: None,
            cache_stored: false,
            not_modified: None,
            stale_on_error: false,
            body_hash: None,
            body: None,
            body_progress: None,
            request_id_value: None,
            upstream_uri: None,
            consumer_chain: None,
            response_body_hooks: false,
            fallback_live: false,
            fallback_pos: 0,
            fell_back: false,
            body_override: None,
            override_sent: false,
            trace: None,
        }
    }

    /// The matched route's cache policy, when it has one.
    pub(super) fn cache_policy(&self) -> Option<&Arc<CachePolicy>> {
        self.route.as_ref().and_then(|r| r.cache.as_ref())
    }

    /// The request id as a header value.
    pub(super) fn request_id_value(&mut self) -> Option<HeaderValue> {
        if self.request_id_value.is_none() {
            self.request_id_value = HeaderValue::from_str(self.req.request_id.as_str()).ok();
        }
        self.request_id_value.clone()
    }

    /// May another attempt be made? Every request reaches the upstream at most
    /// `1 + retries` times, whatever the cause.
    pub(super) fn retry_allowed(&self) -> bool {
        let retries = self.upstream.as_ref().map_or(0, |u| u.retries) as u32;
        self.attempts < 1 + retries
    }

    /// Count a retry that is about to happen.
    pub(super) fn count_retry(&mut self, cause: &'static str) {
        self.retries += 1;
        if let Some(t) = &mut self.trace {
            t.event(Event::Retry {
                at: Instant::now(),
                cause,
            });
        }
        if let Some(up) = &self.upstream {
            crate::metrics::METRICS
                .upstream_retries
                .with_label_values(&[&*up.name, cause])
                .inc();
        }
    }

    /// The body for the fallback target at `pos`: the client's with that target's `model`
    /// (`None`: the client's as it came).
    pub(super) fn target_body(&self, route: &Route, pos: usize) -> Option<bytes::Bytes> {
        let model = route.fallback.as_ref()?.targets.get(pos)?.model.as_ref()?;
        crate::fallback::rewrite_model(self.body.as_ref()?, model)
    }

    /// What moves this request along its route's `fallback` list, when it may move.
    pub(super) fn fallback_triggers(&self) -> Option<&crate::fallback::Triggers> {
        if !self.fallback_live {
            return None;
        }
        self.route.as_ref()?.fallback.as_ref().map(|f| &f.on)
    }

    /// Move to the next target of the route's `fallback` list because of `cause`, if there is
    /// one and the request may (no response byte sent, deadline not passed). Counts and logs
    /// the move. The current attempt settles when the next one begins.
    pub(super) fn fall_back(&mut self, cause: &'static str) -> bool {
        let Some(route) = self.route.clone().filter(|_| self.fallback_live) else {
            return false;
        };
        let Some(next) = route
            .fallback
            .as_ref()
            .and_then(|f| f.targets.get(self.fallback_pos + 1))
        else {
            return false;
        };
        if route
            .retry
            .deadline
            .is_some_and(|d| self.start.elapsed() >= d)
        {
            return false;
        }
        let from = self.upstream.as_ref().map_or("", |u| &*u.name);
        crate::metrics::METRICS
            .fallbacks
            .with_label_values(&[&*route.name, from, &*next.upstream.name, cause])
            .inc();
        if let (Some(t), Some(up)) = (&mut self.trace, &self.upstream) {
            t.event(Event::Fallback {
                at: Instant::now(),
                from: up.name.clone(),
                to: next.upstream.name.clone(),
                cause,
            });
        }
        log::debug!(
            "route {}: {cause} on upstream {from}, falling back to {}",
            route.name,
            next.upstream.name
        );
        self.upstream = Some(next.upstream.clone());
        self.fallback_pos += 1;
        self.body_override = self.target_body(&route, self.fallback_pos);
        // Each target gets its own connect retries among its own backends.
        self.attempts = 0;
        self.tried.clear();
        true
    }

    /// Keep the current attempt's backend out of the next pick.
    pub(super) fn remember_tried(&mut self) {
        if let Some(addr) = self.attempt.as_ref().and_then(|a| a.addr()).cloned() {
            self.tried.push(addr);
        }
    }
}
