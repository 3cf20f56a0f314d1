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

/// `POST /cache/purge?route=<name>[&path=<path>]`: drop a route's cached objects.
fn purge(req: &pingora::http::RequestHeader) -> Response<Vec<u8>> {
    let query = req.uri.query().unwrap_or("");
    let param = |name: &str| {
        query.split('&').find_map(|p| {
            let (k, v) = p.split_once('=')?;
            (k == name && !v.is_empty()).then_some(v)
        })
    };
    let bad = |msg: &str| {
        respond(
            StatusCode::BAD_REQUEST,
            "application/json",
            crate::proxy::error_body(StatusCode::BAD_REQUEST, "bad_request", msg).to_vec(),
        )
    };
    if req.method != http::Method::POST {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "application/json",
            crate::proxy::error_body(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "use POST",
            )
            .to_vec(),
        );
    }
    let Some(route) = param("route") else {
        return bad("route=<name> is required");
    };
    let n = tollgate_plugins::cache::storage::STORAGE.purge_route(route, param("path"));
    respond(
        StatusCode::OK,
        "application/json",
        format!("{{\"purged\":{n}}}").into_bytes(),
    )
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        if req.uri.path() == "/cache/purge" {
            return purge(req);
        }
        match req.uri.path() {
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
                    "admin endpoints: /metrics, /healthz, /readyz, POST /cache/purge",
                )
                .to_vec(),
            ),
        }
    }
}
