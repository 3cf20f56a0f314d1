//! Reading a small request body ahead of the upstream, for routes that choose an upstream
//! or a cache key by it. The bytes stay in Pingora's retry buffer and still go upstream; the
//! reader itself is `tollgate_plugins::body`'s, shared with plugins that read the body.

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

pub use tollgate_plugins::body::{read_body, too_slow, BodyError, ReadAhead, MAX_SMALL_BODY};

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
