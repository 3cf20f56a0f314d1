//! Reading a small request body ahead of the upstream, for routes that choose an upstream
//! or a cache key by it. The bytes stay in Pingora's retry buffer and still go upstream.

use bytes::Bytes;
use pingora::http::RequestHeader;
use pingora::proxy::Session;
use pingora::{Error, ErrorType, Result};

/// The largest request body read before choosing an upstream or a cache key: Pingora's
/// retry buffer keeps exactly this much to replay upstream.
pub const MAX_SMALL_BODY: usize = tollgate_plugins::cache::MAX_KEY_BODY;

/// A request whose body can be read ahead: a `Content-Length` of at most
/// [`MAX_SMALL_BODY`].
pub fn has_small_body(req: &RequestHeader) -> bool {
    matches!(
        tollgate_plugins::req::content_length(req),
        Some(Ok(n)) if n > 0 && n <= MAX_SMALL_BODY as u64
    )
}

/// Read the whole (small, `Content-Length`-sized) request body. Retry buffering keeps the
/// bytes, so Pingora still sends them upstream.
pub async fn read_small_body(session: &mut Session) -> Result<Bytes> {
    session.as_mut().enable_retry_buffering();
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = session.read_request_body().await? {
        if body.len() + chunk.len() > MAX_SMALL_BODY {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                "body larger than its Content-Length",
            );
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// SHA-256 of a body (cache keys of body-keyed routes).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).into()
}
