//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (a config is loaded and the proxy listener accepts connections) and
//! `POST /cache/purge`. With `[server] admin_token`, `/metrics` and `/cache/purge` need
//! `Authorization: Bearer <token>` (compared in constant time); the probes stay open.

use crate::lifecycle::Lifecycle;
use crate::metrics::METRICS;
use crate::retained::Retained;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use subtle::ConstantTimeEq;
use tollgate_plugins::Answer;

/// The admin endpoints.
pub struct AdminApp {
    lifecycle: Arc<Lifecycle>,
    retained: Arc<Retained>,
    /// The running config, to find a route's cache (memory or Redis) for purges.
    config: Option<Arc<ArcSwap<Snapshot>>>,
    /// `Bearer <admin_token>`, when one is set.
    expected: Option<Vec<u8>>,
}

impl AdminApp {
    /// Endpoints reporting on `lifecycle` and acting on `retained` (the cache); `token`
    /// (empty: none) guards everything but the probes.
    pub fn new(lifecycle: Arc<Lifecycle>, retained: Arc<Retained>, token: &str) -> Self {
        AdminApp {
            lifecycle,
            retained,
            config: None,
            expected: (!token.is_empty()).then(|| format!("Bearer {token}").into_bytes()),
        }
    }

    /// Purge routes through the cache of `config`'s routes (a Redis-backed route's objects
    /// live in Redis, not in this process).
    pub fn with_config(mut self, config: Arc<ArcSwap<Snapshot>>) -> Self {
        self.config = Some(config);
        self
    }

    fn authorized(&self, req: &pingora::http::RequestHeader) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
        match (values.next(), values.next()) {
            (Some(v), None) => {
                v.as_bytes().len() == expected.len()
                    && bool::from(v.as_bytes().ct_eq(expected.as_slice()))
            }
            _ => false,
        }
    }
}

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, len)
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

/// The documented JSON error body, with an `X-Request-Id` like every gateway answer.
fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Vec<u8>> {
    let mut r = respond(
        status,
        "application/json",
        Answer::error(status, code, message).body.to_vec(),
    );
    if let Ok(id) = http::HeaderValue::from_str(tollgate_plugins::RequestId::generate().as_str()) {
        r.headers_mut().insert("x-request-id", id);
    }
    r
}

impl AdminApp {
    /// `POST /cache/purge?route=<name>[&path=<path>]`: drop a route's cached objects.
    async fn purge(&self, req: &pingora::http::RequestHeader) -> Response<Vec<u8>> {
        let query = req.uri.query().unwrap_or("");
        let param =
            |name: &str| tollgate_plugins::req::query_value(query, name).filter(|v| !v.is_empty());
        if req.method != http::Method::POST {
            return error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            );
        }
        let Some(route) = param("route") else {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "route=<name> is required",
            );
        };
        let policy = self.config.as_ref().and_then(|c| {
            c.load()
                .routes
                .iter()
                .find(|r| &*r.name == route)
                .and_then(|r| r.cache.clone())
        });
        let n = match policy {
            Some(p) => match p.purge_route(route, param("path")).await {
                Ok(n) => n,
                Err(_) => {
                    return error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cache_unavailable",
                        "the cache storage could not be reached; nothing was purged",
                    )
                }
            },
            // Not a cached route of the running config: whatever it left in memory.
            None => self
                .retained
                .cache()
                .map_or(0, |c| c.storage.purge_route(route, param("path"))),
        };
        respond(
            StatusCode::OK,
            "application/json",
            format!("{{\"purged\":{n}}}").into_bytes(),
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let guarded = matches!(req.uri.path(), "/metrics" | "/cache/purge");
        if guarded && !self.authorized(req) {
            let mut r = error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this admin endpoint needs Authorization: Bearer <admin_token>",
            );
            if let Ok(v) = http::HeaderValue::from_str("Bearer realm=\"tollgate-admin\"") {
                r.headers_mut().insert(http::header::WWW_AUTHENTICATE, v);
            }
            return r;
        }
        match req.uri.path() {
            "/cache/purge" => self.purge(req).await,
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                METRICS.render(self.retained.cache()),
            ),
            "/healthz" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/readyz" if self.lifecycle.is_draining() => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "draining",
                "shutting down: finishing the requests in flight",
            ),
            "/readyz" if self.lifecycle.is_ready() => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ready"}"#.to_vec(),
            ),
            "/readyz" => error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "the proxy listener is not accepting yet",
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                "admin endpoints: /metrics, /healthz, /readyz, POST /cache/purge",
            ),
        }
    }
}
