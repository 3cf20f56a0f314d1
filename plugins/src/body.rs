//! Reading a small request body before the upstream is chosen. The gateway does it for
//! routes that buffer a body or choose an upstream or cache key by it; a plugin that needs
//! the body in its request hook (`ext_proc`) does it through the same function and leaves
//! the bytes in [`ReadAhead`], so the gateway uses them instead of reading again. The bytes
//! stay in Pingora's retry buffer and still go upstream.

use bytes::Bytes;
use pingora::proxy::Session;
use pingora::Error;
use std::time::{Duration, Instant};

/// The largest request body read ahead: Pingora's retry buffer keeps exactly this much to
/// replay upstream.
pub const MAX_SMALL_BODY: usize = crate::cache::MAX_KEY_BODY;

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

/// The whole request body, read ahead by a plugin (in `RequestCtx::extensions`): the gateway
/// takes it instead of reading the (already consumed) body again.
#[derive(Debug, Clone)]
pub struct ReadAhead(pub Bytes);

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
