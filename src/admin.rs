//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (a config is loaded and the proxy listener accepts connections).

use crate::metrics::METRICS;
use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set once the proxy listener is known to accept connections.
pub static READY: AtomicBool = AtomicBool::new(false);

/// The admin endpoints.
pub struct AdminApp;

fn respond(status: StatusCode, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    let len = body.len();
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .header(http::header::CONTENT_LENGTH, len)
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        match session.req_header().uri.path() {
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                METRICS.render(),
            ),
            "/healthz" => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ok"}"#.to_vec(),
            ),
            "/readyz" if READY.load(Ordering::Relaxed) => respond(
                StatusCode::OK,
                "application/json",
                br#"{"status":"ready"}"#.to_vec(),
            ),
            "/readyz" => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "application/json",
                crate::proxy::error_body(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "not_ready",
                    "the proxy listener is not accepting yet",
                )
                .to_vec(),
            ),
            _ => respond(
                StatusCode::NOT_FOUND,
                "application/json",
                crate::proxy::error_body(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "admin endpoints: /metrics, /healthz, /readyz",
                )
                .to_vec(),
            ),
        }
    }
}
