//! `request_size`: refuse request bodies over a size, by `Content-Length` before reading, or
//! while a body without one (chunked) streams past the limit.

use crate::{parse_config_all, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use bytes::Bytes;
use http::StatusCode;
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "request_size";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SizeConfig {
    max_body_bytes: u64,
    #[serde(default)]
    require_content_length: bool,
}

/// The compiled `request_size` plugin.
pub struct RequestSize {
    max: u64,
    require_content_length: bool,
}

/// Bytes of body seen so far, per request.
#[derive(Clone, Copy)]
struct Seen(u64);

/// Constructor for the registry.
pub fn build(value: &toml::Value, _ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: SizeConfig = parse_config_all(value)?;
    Ok(Arc::new(RequestSize {
        max: cfg.max_body_bytes,
        require_content_length: cfg.require_content_length,
    }))
}

fn too_large() -> Answer {
    Answer::error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        "request body is larger than allowed",
    )
}

#[async_trait]
impl Plugin for RequestSize {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Limits
    }

    async fn request(&self, req: &RequestHeader, _ctx: &mut RequestCtx) -> Flow {
        match crate::req::content_length(req) {
            Some(Ok(n)) if n > self.max => Flow::Respond(too_large()),
            Some(Ok(_)) => Flow::Continue,
            Some(Err(())) => Flow::Respond(Answer::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid Content-Length",
            )),
            None if self.require_content_length
                && req.headers.contains_key(http::header::TRANSFER_ENCODING) =>
            {
                Flow::Respond(Answer::error(
                    StatusCode::LENGTH_REQUIRED,
                    "length_required",
                    "a request body needs a Content-Length",
                ))
            }
            None => Flow::Continue,
        }
    }

    fn wants_request_body(&self) -> bool {
        true
    }

    fn request_body(
        &self,
        chunk: Option<&Bytes>,
        _end: bool,
        ctx: &mut RequestCtx,
    ) -> Option<Answer> {
        let n = chunk.map_or(0, |c| c.len() as u64);
        let seen = ctx.extensions.get::<Seen>().map_or(0, |s| s.0) + n;
        ctx.extensions.insert(Seen(seen));
        (seen > self.max).then(too_large)
    }
}
