//! The route's response-body hooks ([`Plugin::response_body`]): which responses they see,
//! the framing of a body they may change, and running them on a chunk or on a whole body.
//!
//! Only responses that have a body reach the hooks: never a `HEAD` response, a 1xx
//! (including 101 upgrades), a 204 or a 304, so a hook cannot invent a body there. A plugin
//! that changes the length removes `Content-Length` in its header hook; on HTTP/1.1 the
//! gateway then sends the body chunked (Pingora would otherwise end it by closing the
//! connection), on HTTP/2 the stream's end frames it.

use bytes::Bytes;
use http::{header, Method, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use std::sync::Arc;
use tollgate_plugins::{Plugin, RequestCtx};

/// Does the response to `req` with head `resp` carry a body (RFC 9110 §6.4.1)?
pub fn has_body(req: &RequestHeader, resp: &ResponseHeader) -> bool {
    let status = resp.status.as_u16();
    req.method != Method::HEAD && !resp.status.is_informational() && !matches!(status, 204 | 304)
}

/// After the header hooks of an HTTP/1.x response whose body the hooks may change: a head
/// without `Content-Length` nor `Transfer-Encoding` gets `Transfer-Encoding: chunked` (and
/// HTTP/1.1, the first version with chunked coding), so the connection stays reusable.
pub fn frame_h1(resp: &mut ResponseHeader) {
    if resp.headers.contains_key(header::CONTENT_LENGTH)
        || resp.headers.contains_key(header::TRANSFER_ENCODING)
    {
        return;
    }
    resp.set_version(Version::HTTP_11);
    // A static, valid name and value: this cannot fail.
    let _ = resp.insert_header(header::TRANSFER_ENCODING, "chunked");
}

/// Run the body hooks of `chain` (in chain order) on one chunk: each plugin sees what the
/// previous one left in `body` (`None` when it held the chunk back).
pub fn run(
    chain: &[Arc<dyn Plugin>],
    body: &mut Option<Bytes>,
    end_of_stream: bool,
    ctx: &mut RequestCtx,
) {
    for p in chain.iter().filter(|p| p.wants_response_body()) {
        p.response_body(body, end_of_stream, ctx);
    }
}

/// Run the body hooks on a body that is whole in memory (a gateway or plugin answer, a fresh
/// hit of the cache's fast path), as one last chunk, and frame the result with its length.
pub fn run_whole(
    chain: &[Arc<dyn Plugin>],
    resp: &mut ResponseHeader,
    body: Bytes,
    ctx: &mut RequestCtx,
) -> Bytes {
    let mut out = Some(body);
    run(chain, &mut out, true, ctx);
    let out = out.unwrap_or_default();
    resp.remove_header(&header::TRANSFER_ENCODING);
    // A number is always a valid header value.
    let _ = resp.insert_header(header::CONTENT_LENGTH, out.len());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodyless_responses() {
        let get = RequestHeader::build("GET", b"/", None).unwrap();
        let head = RequestHeader::build("HEAD", b"/", None).unwrap();
        let ok = ResponseHeader::build(200, None).unwrap();
        assert!(has_body(&get, &ok));
        assert!(!has_body(&head, &ok));
        for s in [101, 204, 304] {
            assert!(!has_body(&get, &ResponseHeader::build(s, None).unwrap()));
        }
    }

    #[test]
    fn chunked_only_without_framing() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.set_version(Version::HTTP_10);
        frame_h1(&mut r);
        assert_eq!(r.headers.get("transfer-encoding").unwrap(), "chunked");
        assert_eq!(r.version, Version::HTTP_11);
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-length", "3").unwrap();
        frame_h1(&mut r);
        assert!(r.headers.get("transfer-encoding").is_none());
    }
}
