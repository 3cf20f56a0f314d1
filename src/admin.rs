//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive),
//! `/readyz` (a config is loaded and the proxy listener accepts connections) and
//! `POST /cache/purge`.

use crate::lifecycle::Lifecycle;
use crate::metrics::METRICS;
use crate::retained::Retained;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;
use tollgate_plugins::Answer;

/// The admin endpoints.
pub struct AdminApp {
    lifecycle: Arc<Lifecycle>,
    retained: Arc<Retained>,
}

impl AdminApp {
    /// Endpoints reporting on `lifecycle` and acting on `retained` (the cache).
    pub fn new(lifecycle: Arc<Lifecycle>, retained: Arc<Retained>) -> Self {
        AdminApp {
            lifecycle,
            retained,
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

/// The documented JSON error body.
fn error(status: StatusCode, code: &'static str, message: &str) -> Response<Vec<u8>> {
    respond(
        status,
        "application/json",
        Answer::error(status, code, message).body.to_vec(),
    )
}

impl AdminApp {
    /// `POST /cache/purge?route=<name>[&path=<path>]`: drop a route's cached objects.
    fn purge(&self, req: &pingora::http::RequestHeader) -> Response<Vec<u8>> {
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
        let n = self
            .retained
            .cache()
            .map_or(0, |c| c.storage.purge_route(route, param("path")));
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
        match req.uri.path() {
            "/cache/purge" => self.purge(req),
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
