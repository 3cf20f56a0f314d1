//! What one request's trace holds while it runs ([`RequestTrace`]) and what is handed to
//! the exporter when it ends ([`Finished`]). Only ids, `Instant`s and shared names are kept
//! on the way; strings are copied once, at the end, and only for a trace that is exported.

use super::context::{new_span_id, SpanId, TraceId};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

/// One request's trace context and the spans' details gathered so far.
#[derive(Debug)]
pub struct RequestTrace {
    /// The trace: the caller's, or one started here.
    pub trace_id: TraceId,
    /// The gateway's server span.
    pub span_id: SpanId,
    /// The caller's span, when a valid `traceparent` came.
    pub parent: Option<SpanId>,
    /// Head sampling decided to record this trace (the flag sent upstream).
    pub sampled: bool,
    /// Details are gathered: the trace is sampled, or errors are always exported.
    pub record: bool,
    /// The span id of the current upstream attempt (the `traceparent` sent upstream names it).
    pub attempt_span: SpanId,
    /// The upstream attempts, in order (only when `record`).
    pub attempts: Vec<AttemptSpan>,
    /// Events on the server span (only when `record`).
    pub events: Vec<Event>,
    /// The plugin that answered the request itself, if one did.
    pub answered_by: Option<&'static str>,
}

/// One try at a backend.
#[derive(Debug)]
pub struct AttemptSpan {
    /// Its span id.
    pub span_id: SpanId,
    /// 1 for the request's first try, counted across fallback targets.
    pub number: u32,
    /// The upstream's name.
    pub upstream: Arc<str>,
    /// The backend tried.
    pub backend: Option<SocketAddr>,
    /// When the backend was chosen.
    pub start: Instant,
    /// When the attempt failed or was replaced; `None` while it runs.
    pub end: Option<Instant>,
    /// The status of the backend's response head, if one came.
    pub status: Option<u16>,
    /// Why the attempt failed: `connect`, `timeout`, `status`, `error`.
    pub error: Option<&'static str>,
}

/// An event on the server span.
#[derive(Debug)]
pub enum Event {
    /// A retry was decided.
    Retry {
        /// When.
        at: Instant,
        /// `connect`, `timeout`, `status`, `reused_connection`.
        cause: &'static str,
    },
    /// The request moved along its route's `fallback` list.
    Fallback {
        /// When.
        at: Instant,
        /// The upstream left.
        from: Arc<str>,
        /// The upstream tried next.
        to: Arc<str>,
        /// What moved it.
        cause: &'static str,
    },
}

impl RequestTrace {
    /// A trace of `trace_id` whose server span is a child of `parent`.
    pub fn new(trace_id: TraceId, parent: Option<SpanId>, sampled: bool, record: bool) -> Self {
        RequestTrace {
            trace_id,
            span_id: new_span_id(),
            parent,
            sampled,
            record,
            attempt_span: [0; 8],
            attempts: Vec::new(),
            events: Vec::new(),
            answered_by: None,
        }
    }

    /// A new attempt at `backend` of `upstream` begins; the one before, if still open, ends.
    pub fn begin_attempt(
        &mut self,
        upstream: &Arc<str>,
        backend: Option<SocketAddr>,
        now: Instant,
    ) {
        self.attempt_span = new_span_id();
        if !self.record {
            return;
        }
        self.end_attempt(now, "error");
        self.attempts.push(AttemptSpan {
            span_id: self.attempt_span,
            number: self.attempts.len() as u32 + 1,
            upstream: upstream.clone(),
            backend,
            start: now,
            end: None,
            status: None,
            error: None,
        });
    }

    /// The current attempt got a response head with `status`.
    pub fn attempt_status(&mut self, status: u16) {
        if let Some(a) = self.attempts.last_mut() {
            a.status = Some(status);
        }
    }

    /// The current attempt failed because of `error` (the first reason given stays).
    pub fn attempt_failed(&mut self, error: &'static str, now: Instant) {
        if let Some(a) = self.attempts.last_mut().filter(|a| a.end.is_none()) {
            a.error.get_or_insert(error);
            a.end = Some(now);
        }
    }

    /// End the current attempt at `now`; without a response head it failed with `error`.
    pub fn end_attempt(&mut self, now: Instant, error: &'static str) {
        if let Some(a) = self.attempts.last_mut().filter(|a| a.end.is_none()) {
            if a.status.is_none() {
                a.error.get_or_insert(error);
            }
            a.end = Some(now);
        }
    }

    /// Add an event to the server span (when details are gathered).
    pub fn event(&mut self, event: Event) {
        if self.record {
            self.events.push(event);
        }
    }

    /// Spans this trace exports: the server span and one per attempt.
    pub fn span_count(&self) -> u64 {
        1 + self.attempts.len() as u64
    }
}

/// A finished request's trace with what its server span says, handed to the exporter.
#[derive(Debug)]
pub struct Finished {
    /// The ids, attempts and events.
    pub trace: RequestTrace,
    /// When the request began.
    pub start: Instant,
    /// When it ended, on the monotonic clock ...
    pub end: Instant,
    /// ... and on the wall clock, in nanoseconds since the Unix epoch (the anchor every
    /// `Instant` of the trace is converted with).
    pub end_unix_nanos: u64,
    /// The request method.
    pub method: http::Method,
    /// The path, without the query.
    pub path: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The `Host` without its port.
    pub host: String,
    /// `1.0`, `1.1`, `2`.
    pub protocol: &'static str,
    /// The client's address (after `trusted_proxies`).
    pub client: Option<IpAddr>,
    /// The `User-Agent`, when sent.
    pub user_agent: Option<String>,
    /// The status answered (0: none).
    pub status: u16,
    /// The route matched.
    pub route: Option<Arc<str>>,
    /// The upstream last used.
    pub upstream: Option<Arc<str>>,
    /// The authenticated consumer.
    pub consumer: Option<String>,
    /// The request id.
    pub request_id: String,
    /// Retries made.
    pub retries: u32,
    /// The error code answered, if any.
    pub error: Option<&'static str>,
    /// Request and response body bytes.
    pub body_bytes: (u64, u64),
}

impl Finished {
    /// `at` on the wall clock, in nanoseconds since the Unix epoch.
    pub fn unix_nanos(&self, at: Instant) -> u64 {
        let before = self.end.saturating_duration_since(at).as_nanos() as u64;
        self.end_unix_nanos.saturating_sub(before)
    }

    /// The request failed (see [`is_error`]).
    pub fn is_error(&self) -> bool {
        is_error(self.status)
    }
}

/// A request that ended with `status` failed: answered 5xx, or not answered at all (0).
pub fn is_error(status: u16) -> bool {
    status == 0 || status >= 500
}
