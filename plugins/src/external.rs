//! Calls to a service outside the gateway over HTTP/1.1, shared by `forward_auth` and
//! `ext_proc`: one pooled connector per process (kept across reloads in the
//! [`SharedState`]), a connect timeout and an overall deadline per call, bounded answer
//! bodies, the failure mode, the call metrics and rate-limited failure logs.

use crate::config_error::ConfigError;
use crate::metrics::METRICS;
use crate::state::SharedState;
use bytes::Bytes;
use http::HeaderName;
use pingora::connectors::http::v1::Connector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::upstreams::peer::HttpPeer;
use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an idle pooled connection to a service is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Least time between two failure warnings of one plugin instance.
const WARNING_INTERVAL_MS: u64 = 1000;
/// Longest `timeout_ms` accepted.
pub const MAX_TIMEOUT_MS: u64 = 60_000;

/// What to do when the service cannot be asked or gives no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailureMode {
    /// Refuse the request (503).
    #[default]
    Deny,
    /// Go on as if the service had said nothing (counted).
    Allow,
}

impl FailureMode {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            FailureMode::Deny => "deny",
            FailureMode::Allow => "allow",
        }
    }
}

/// Why a call failed (the `reason` label of `tollgate_external_call_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// No connection could be made (refused, unresolvable, connect timeout).
    Connect,
    /// The whole call took longer than `timeout_ms`.
    Timeout,
    /// Writing the request or reading the answer failed.
    Io,
    /// The answer (or its body) was larger than allowed.
    TooLarge,
    /// The service answered with a status the protocol does not allow (`ext_proc`: not 200
    /// or 204).
    Status,
    /// The answer could not be understood (bad JSON, bad header, bad path).
    Malformed,
}

impl Failure {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Failure::Connect => "connect",
            Failure::Timeout => "timeout",
            Failure::Io => "io",
            Failure::TooLarge => "too_large",
            Failure::Status => "status",
            Failure::Malformed => "malformed",
        }
    }
}

/// The pooled HTTP/1.1 connector every external call uses (one per process).
pub struct Pool {
    connector: Connector,
}

impl Pool {
    /// The process's pool, from `state`.
    pub fn get(state: &SharedState) -> Arc<Pool> {
        state.get_or_insert("external:pool", || Pool {
            connector: Connector::new(None),
        })
    }
}

/// A service's address as configured: `http://host[:port]/path` (or `https://`).
#[derive(Debug, Clone)]
pub struct Endpoint {
    host: String,
    port: u16,
    tls: bool,
    /// The path and query every call goes to.
    pub path: String,
    /// `host[:port]` for the `Host` header.
    authority: String,
}

impl Endpoint {
    /// Parse `url`, or say why it cannot be used.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("{url:?} must be an http:// or https:// URL")),
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("{url:?} has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let host = authority.host().trim_matches(['[', ']']).to_string();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        Ok(Endpoint {
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            host,
            tls,
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
            authority: authority.as_str().to_string(),
        })
    }

    async fn resolve(&self) -> Result<SocketAddr, Failure> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map_err(|_| Failure::Connect)?
            .next()
            .ok_or(Failure::Connect)
    }
}

/// Timeouts and limits of one plugin instance's calls.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connecting (TCP, and TLS for https).
    pub connect: Duration,
    /// The whole call: connect, request, answer head and body.
    pub total: Duration,
    /// Largest answer body read.
    pub max_answer_bytes: usize,
}

/// What the service answered.
#[derive(Debug)]
pub struct Reply {
    /// Its status and headers.
    pub head: Box<ResponseHeader>,
    /// Its body, or `None` when it was larger than [`Limits::max_answer_bytes`] (the
    /// connection is then dropped, not reused).
    pub body: Option<Bytes>,
}

/// The service of one plugin instance: where it is, the pool, the limits, the failure mode,
/// and the labels and log throttle of its calls.
pub struct Service {
    /// The configured URL.
    pub endpoint: Endpoint,
    pool: Arc<Pool>,
    /// Timeouts and bounds.
    pub limits: Limits,
    /// What a failed call leads to.
    pub failure_mode: FailureMode,
    plugin: &'static str,
    born: Instant,
    last_warning_ms: AtomicU64,
}

impl Service {
    /// A service for `plugin` (the metric label) at `endpoint`.
    pub fn new(
        plugin: &'static str,
        endpoint: Endpoint,
        state: &SharedState,
        limits: Limits,
        failure_mode: FailureMode,
    ) -> Service {
        Service {
            endpoint,
            pool: Pool::get(state),
            limits,
            failure_mode,
            plugin,
            born: Instant::now(),
            last_warning_ms: AtomicU64::new(0),
        }
    }

    /// Send `req` (its path and `Host` are set here) with `body`, within the limits; records
    /// nothing (see [`Service::record`]).
    pub async fn call(&self, mut req: RequestHeader, body: &[u8]) -> Result<Reply, Failure> {
        req.insert_header(http::header::HOST, self.endpoint.authority.as_str())
            .map_err(|_| Failure::Malformed)?;
        let needs_length =
            !body.is_empty() || !matches!(req.method, http::Method::GET | http::Method::HEAD);
        if needs_length {
            req.insert_header(http::header::CONTENT_LENGTH, body.len())
                .map_err(|_| Failure::Malformed)?;
        }
        match tokio::time::timeout(self.limits.total, self.exchange(req, body)).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout),
        }
    }

    async fn exchange(&self, req: RequestHeader, body: &[u8]) -> Result<Reply, Failure> {
        let addr = self.endpoint.resolve().await?;
        let mut peer = HttpPeer::new(addr, self.endpoint.tls, self.endpoint.host.clone());
        peer.options.connection_timeout = Some(self.limits.connect);
        peer.options.total_connection_timeout = Some(self.limits.connect);
        peer.options.read_timeout = Some(self.limits.total);
        peer.options.write_timeout = Some(self.limits.total);
        peer.options.idle_timeout = Some(IDLE_TIMEOUT);
        let connector = &self.pool.connector;
        let (mut session, _reused) = connector
            .get_http_session(&peer)
            .await
            .map_err(|_| Failure::Connect)?;
        session.read_timeout = Some(self.limits.total);
        session.write_timeout = Some(self.limits.total);
        session
            .write_request_header(Box::new(req))
            .await
            .map_err(|e| io_failure(&e))?;
        if !body.is_empty() {
            session.write_body(body).await.map_err(|e| io_failure(&e))?;
        }
        session.finish_body().await.map_err(|e| io_failure(&e))?;
        let head = session
            .read_resp_header_parts()
            .await
            .map_err(|e| io_failure(&e))?;
        if head.status.is_informational() {
            // Nothing here asks for an interim answer (no `Expect`, no upgrade).
            return Err(Failure::Malformed);
        }
        let mut buf = bytes::BytesMut::new();
        loop {
            match session.read_body_ref().await.map_err(|e| io_failure(&e))? {
                None => break,
                Some(chunk) if buf.len() + chunk.len() > self.limits.max_answer_bytes => {
                    // Not read to its end: the connection cannot be reused.
                    return Ok(Reply { head, body: None });
                }
                Some(chunk) => buf.extend_from_slice(chunk),
            }
        }
        connector
            .release_http_session(session, &peer, Some(IDLE_TIMEOUT))
            .await;
        Ok(Reply {
            head,
            body: Some(buf.freeze()),
        })
    }

    /// Record a call of `elapsed` that ended in `outcome` (`tollgate_external_call_duration_seconds`).
    pub fn record(&self, route: &str, outcome: &str, elapsed: Duration) {
        METRICS
            .external_call_duration
            .with_label_values(&[self.plugin, route, outcome])
            .observe(elapsed.as_secs_f64());
    }

    /// Count and log (at most once a second per instance) a failed call on `route`. The log
    /// names the service and the reason only: never a header value.
    pub fn failed(&self, route: &str, failure: Failure, phase: &str) {
        METRICS
            .external_call_failures
            .with_label_values(&[
                self.plugin,
                route,
                failure.label(),
                self.failure_mode.label(),
            ])
            .inc();
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= WARNING_INTERVAL_MS {
            self.last_warning_ms.store(now, Ordering::Relaxed);
            log::warn!(
                "{} on route {route}: {phase} call to {}:{}{} failed ({}), failure_mode = {}",
                self.plugin,
                self.endpoint.host,
                self.endpoint.port,
                self.endpoint.path.split('?').next().unwrap_or(""),
                failure.label(),
                self.failure_mode.label()
            );
        }
    }
}

/// A read or write error: Pingora's own timeouts (set to the same deadline) are timeouts too,
/// whichever of the two fires first.
fn io_failure(e: &pingora::Error) -> Failure {
    use pingora::ErrorType::{ReadTimedout, WriteTimedout};
    match e.etype() {
        ReadTimedout | WriteTimedout => Failure::Timeout,
        _ => Failure::Io,
    }
}

/// Check a `timeout_ms`-style value at `path` (1 ..= [`MAX_TIMEOUT_MS`]).
pub fn check_timeout(ms: u64, path: &str, errors: &mut Vec<ConfigError>) -> Duration {
    if ms == 0 || ms > MAX_TIMEOUT_MS {
        errors.push(ConfigError::new(
            path,
            format!("must be between 1 and {MAX_TIMEOUT_MS} milliseconds"),
        ));
    }
    Duration::from_millis(ms.clamp(1, MAX_TIMEOUT_MS))
}

/// Parse a list of header names at `path[i]`, lower-cased and without duplicates.
pub fn header_names(list: &[String], path: &str, errors: &mut Vec<ConfigError>) -> Vec<HeaderName> {
    let mut out: Vec<HeaderName> = Vec::new();
    for (i, n) in list.iter().enumerate() {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(n) if !out.contains(&n) => out.push(n),
            Ok(_) => {}
            Err(_) => errors.push(ConfigError::new(
                format!("{path}[{i}]"),
                format!("{n:?} is not a valid header name"),
            )),
        }
    }
    out
}

/// Headers that describe a connection or a message's framing: never copied from a service's
/// answer, never set by a processor (the gateway owns them).
pub fn is_reserved(name: &HeaderName) -> bool {
    use http::header::*;
    name == CONNECTION
        || name == CONTENT_LENGTH
        || name == TRANSFER_ENCODING
        || name == HOST
        || name == UPGRADE
        || name == TE
        || name == TRAILER
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        let e = Endpoint::parse("http://127.0.0.1:9000/auth?x=1").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("127.0.0.1", 9000, false));
        assert_eq!(e.path, "/auth?x=1");
        assert_eq!(e.authority, "127.0.0.1:9000");
        let e = Endpoint::parse("https://auth.internal").unwrap();
        assert_eq!((e.port, e.tls, e.path.as_str()), (443, true, "/"));
        let e = Endpoint::parse("http://[::1]:81/").unwrap();
        assert_eq!(e.host, "::1");
        assert!(Endpoint::parse("ftp://x/").is_err());
        assert!(Endpoint::parse("/relative").is_err());
        assert!(Endpoint::parse("http://user:pw@host/").is_err());
        assert!(Endpoint::parse("not a url").is_err());
    }

    #[test]
    fn timeouts_and_names() {
        let mut errors = Vec::new();
        check_timeout(0, "timeout_ms", &mut errors);
        check_timeout(MAX_TIMEOUT_MS + 1, "timeout_ms", &mut errors);
        assert_eq!(
            check_timeout(250, "timeout_ms", &mut errors),
            Duration::from_millis(250)
        );
        assert_eq!(errors.len(), 2);
        let names = header_names(
            &["Authorization".into(), "authorization".into(), "a b".into()],
            "request_headers",
            &mut errors,
        );
        assert_eq!(names, [http::header::AUTHORIZATION]);
        assert_eq!(errors[2].path, "request_headers[2]");
        assert!(is_reserved(&http::header::CONTENT_LENGTH));
        assert!(!is_reserved(&HeaderName::from_static("x-user-id")));
    }
}
