//! An early answer: the response a plugin (or the gateway) sends without asking an upstream.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};

/// A complete response made by the gateway: status, headers and body.
///
/// Every error the gateway makes uses [`Answer::error`], which gives the documented JSON body
/// `{"error": "<code>", "message": "<text>", "status": N}`.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Response status.
    pub status: StatusCode,
    /// Headers to send, in order; `Content-Length` is added by the gateway.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// The whole body.
    pub body: Bytes,
    /// The stable error code of an error answer (`None` for answers like `mock`'s).
    pub code: Option<&'static str>,
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

impl Answer {
    /// A JSON error answer with a stable machine-readable `code` and a human `message`.
    pub fn error(status: StatusCode, code: &'static str, message: &str) -> Self {
        let body = serde_json::json!({
            "error": code,
            "message": message,
            "status": status.as_u16(),
        });
        Answer {
            status,
            headers: vec![(http::header::CONTENT_TYPE, JSON)],
            body: Bytes::from(body.to_string()),
            code: Some(code),
        }
    }

    /// 401 `ambiguous_credentials`: more than one credential for one plugin (several keys,
    /// several `Authorization` headers, a token in two places). Which one the upstream
    /// would believe cannot be known, so none is.
    pub fn ambiguous_credentials(challenge: HeaderValue) -> Self {
        Answer::error(
            StatusCode::UNAUTHORIZED,
            "ambiguous_credentials",
            "more than one credential was presented",
        )
        .with_header(http::header::WWW_AUTHENTICATE, challenge)
    }

    /// The same answer with one more header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_is_documented_json() {
        let a = Answer::error(StatusCode::NOT_FOUND, "route_not_found", "no \"route\"");
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(v["error"], "route_not_found");
        assert_eq!(v["message"], "no \"route\"");
        assert_eq!(v["status"], 404);
        assert_eq!(a.headers[0].1, "application/json");
    }
}
