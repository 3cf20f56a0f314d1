//! Reading a small request body ahead of the upstream, for routes that choose an upstream
//! or a cache key by it. The bytes stay in Pingora's retry buffer and still go upstream.

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};
use std::time::{Duration, Instant};

/// The largest request body read before choosing an upstream or a cache key: Pingora's
/// retry buffer keeps exactly this much to replay upstream.
pub const MAX_SMALL_BODY: usize = tollgate_plugins::cache::MAX_KEY_BODY;

/// A request whose body can be read ahead: a `Content-Length` of at most `max`.
pub fn has_small_body(req: &RequestHeader, max: usize) -> bool {
    matches!(
        tollgate_plugins::req::content_length(req),
        Some(Ok(n)) if n > 0 && n <= max as u64
    )
}

/// A request with a body that cannot be read ahead within `max` (longer, or chunked).
pub fn has_large_body(req: &RequestHeader, max: usize) -> bool {
    match tollgate_plugins::req::content_length(req) {
        Some(Ok(n)) => n > max as u64,
        Some(Err(())) => false,
        None => req.headers.contains_key(http::header::TRANSFER_ENCODING),
    }
}

/// Why a body could not be read whole.
#[derive(Debug)]
pub enum BodyError {
    /// Larger than allowed.
    TooLarge,
    /// Slower than the route's minimum rate.
    TooSlow,
    /// A read failed or timed out.
    Read(Box<Error>),
}

/// Read the whole request body (at most `max` bytes, at least `min_rate` bytes per second
/// after the first second). Retry buffering keeps the bytes, so Pingora still sends them
/// upstream (which is why `max` is at most [`MAX_SMALL_BODY`]).
pub async fn read_body(
    session: &mut Session,
    max: usize,
    min_rate: u64,
) -> std::result::Result<Bytes, BodyError> {
    session.as_mut().enable_retry_buffering();
    let start = Instant::now();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = session.read_request_body().await.map_err(BodyError::Read)? {
        if body.len() + chunk.len() > max.min(MAX_SMALL_BODY) {
            return Err(BodyError::TooLarge);
        }
        body.extend_from_slice(&chunk);
        if too_slow(start, body.len() as u64, min_rate) {
            return Err(BodyError::TooSlow);
        }
    }
    Ok(body.freeze())
}

/// Has a body that began at `start` and brought `bytes` so far fallen under `min_rate`
/// bytes per second (judged after its first second; 0 = no minimum)?
pub fn too_slow(start: Instant, bytes: u64, min_rate: u64) -> bool {
    let elapsed = start.elapsed();
    min_rate > 0
        && elapsed > Duration::from_secs(1)
        && (bytes as f64) < min_rate as f64 * elapsed.as_secs_f64()
}

/// Read the whole (small, `Content-Length`-sized) request body.
pub async fn read_small_body(session: &mut Session) -> Result<Bytes> {
    match read_body(session, MAX_SMALL_BODY, 0).await {
        Ok(b) => Ok(b),
        Err(BodyError::Read(e)) => Err(e),
        Err(_) => Error::e_explain(
            ErrorType::HTTPStatus(413),
            "body larger than its Content-Length",
        ),
    }
}

/// SHA-256 of a body (cache keys of body-keyed routes).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}
