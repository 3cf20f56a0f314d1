//! Errors the gateway answers with itself. [`GatewayError`] is the one source of each
//! error's status, stable code and message; [`GatewayError::answer`] makes the documented
//! JSON body, and [`GatewayError::code`] is the `error` label of
//! `tollgate_gateway_errors_total` and the access log's `error` field.

use crate::target::TargetError;
use http::{header, HeaderValue, Method, StatusCode};
use pingora::{Error, ErrorSource, ErrorType};
use tollgate_plugins::Answer;

/// Something the gateway refuses or fails at, before or while proxying.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// The request head is larger than `server.max_header_bytes` (431).
    HeadersTooLarge,
    /// The request target cannot be made canonical (400).
    BadTarget(TargetError),
    /// The request cannot be handled as sent (malformed, a rewrite that gives no valid URI,
    /// a body larger than its `Content-Length`); the status is 4xx.
    Malformed(u16),
    /// A trusted proxy sent an `X-Forwarded-For` entry that is not an address (400).
    BadForwardedFor,
    /// `Content-Length` values that disagree or are not numbers (400).
    BadContentLength,
    /// No route matches (404).
    RouteNotFound,
    /// A route matches except for the method; these would have matched (405, `Allow`).
    MethodNotAllowed(Vec<Method>),
    /// The upstream's circuit breaker is open (503).
    CircuitOpen,
    /// No healthy backend is left to try (503).
    NoHealthyUpstream,
    /// Connecting failed on every backend tried, or the upstream broke the connection (502).
    UpstreamUnavailable,
    /// A connect, read or write to the upstream timed out, or the deadline passed (504).
    UpstreamTimeout,
    /// The upstream failed with this status.
    UpstreamStatus(u16),
    /// The client was too slow to send its request (408).
    RequestTimeout,
    /// The request body is over the route's `max_body_bytes` (413).
    BodyTooLarge,
    /// The upstream is at `max_concurrent_requests` and its queue is full (503).
    QueueFull,
    /// No slot of the upstream's `max_concurrent_requests` freed up within
    /// `queue_timeout_ms` (503).
    QueueTimeout,
    /// The client went away: nothing can be answered.
    ClientClosed,
    /// A bug in the gateway (500).
    Internal,
}

impl GatewayError {
    /// The status answered (0 when nothing can be answered).
    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            HeadersTooLarge => 431,
            BadTarget(_) | BadForwardedFor | BadContentLength => 400,
            Malformed(s) | UpstreamStatus(s) => *s,
            RouteNotFound => 404,
            MethodNotAllowed(_) => 405,
            CircuitOpen | NoHealthyUpstream | QueueFull | QueueTimeout => 503,
            BodyTooLarge => 413,
            UpstreamUnavailable => 502,
            UpstreamTimeout => 504,
            RequestTimeout => 408,
            ClientClosed => 0,
            Internal => 500,
        }
    }

    /// The stable code of the JSON body, the metric label and the access log.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            HeadersTooLarge => "headers_too_large",
            BadTarget(_) | BadForwardedFor | BadContentLength | Malformed(_) => "bad_request",
            RouteNotFound => "route_not_found",
            MethodNotAllowed(_) => "method_not_allowed",
            CircuitOpen | UpstreamUnavailable => "upstream_unavailable",
            NoHealthyUpstream => "no_healthy_upstream",
            UpstreamTimeout => "upstream_timeout",
            UpstreamStatus(_) => "upstream_error",
            RequestTimeout => "request_timeout",
            BodyTooLarge => "body_too_large",
            QueueFull | QueueTimeout => "upstream_busy",
            ClientClosed => "client_closed",
            Internal => "internal_error",
        }
    }

    /// The message for people.
    pub fn message(&self) -> &'static str {
        use GatewayError::*;
        match self {
            HeadersTooLarge => "the request headers are too large",
            BadTarget(e) => e.message(),
            BadForwardedFor => "X-Forwarded-For has an entry that is not an address",
            BadContentLength => "the Content-Length values disagree or are not numbers",
            Malformed(_) => "the request is malformed",
            RouteNotFound => "no route matches this request",
            MethodNotAllowed(_) => "the route does not accept this method",
            CircuitOpen => "the upstream is failing; its circuit breaker is open",
            NoHealthyUpstream => "no healthy backend is available",
            UpstreamUnavailable => "the upstream could not be reached or failed",
            UpstreamTimeout => "the upstream did not answer in time",
            UpstreamStatus(_) => "the upstream failed",
            RequestTimeout => "the request was not received in time",
            BodyTooLarge => "request body is larger than allowed",
            QueueFull => "the upstream is at its concurrency limit and its queue is full",
            QueueTimeout => "the upstream is at its concurrency limit; no slot freed up in time",
            ClientClosed => "",
            Internal => "the gateway failed",
        }
    }

    /// The answer to send: the JSON body, plus `Allow` for 405. `None` when the client is
    /// gone.
    pub fn answer(&self) -> Option<Answer> {
        let status = StatusCode::from_u16(self.status()).ok()?;
        let answer = Answer::error(status, self.code(), self.message());
        Some(match self {
            GatewayError::MethodNotAllowed(methods) => {
                let allow = methods
                    .iter()
                    .map(Method::as_str)
                    .collect::<Vec<_>>()
                    .join(", ");
                match HeaderValue::from_str(&allow) {
                    Ok(v) => answer.with_header(header::ALLOW, v),
                    Err(_) => answer,
                }
            }
            _ => answer,
        })
    }

    /// What a Pingora error that ended the request means for the client.
    pub fn from_proxy_error(e: &Error) -> Self {
        use ErrorType::*;
        let downstream = e.esource() == &ErrorSource::Downstream;
        match e.etype() {
            HTTPStatus(c) if (400..500).contains(c) => GatewayError::Malformed(*c),
            HTTPStatus(c) => GatewayError::UpstreamStatus(*c),
            // The client's body did not arrive in time: its fault, not the upstream's.
            ReadTimedout if downstream => GatewayError::RequestTimeout,
            ConnectTimedout | ReadTimedout | WriteTimedout => GatewayError::UpstreamTimeout,
            WriteError | ReadError | ConnectionClosed if downstream => GatewayError::ClientClosed,
            _ => match e.esource() {
                ErrorSource::Upstream => GatewayError::UpstreamUnavailable,
                ErrorSource::Downstream => GatewayError::Malformed(400),
                ErrorSource::Internal | ErrorSource::Unset => GatewayError::Internal,
            },
        }
    }

    /// A Pingora error standing for this one, to end a phase with (its type keeps the
    /// status, in case Pingora answers by itself).
    pub fn to_proxy_error(&self) -> Box<Error> {
        let etype = match self {
            GatewayError::UpstreamTimeout => ErrorType::ReadTimedout,
            GatewayError::UpstreamUnavailable => ErrorType::ConnectRefused,
            other => ErrorType::HTTPStatus(other.status()),
        };
        Error::explain(etype, self.message())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_the_documented_body() {
        let all = [
            GatewayError::HeadersTooLarge,
            GatewayError::BadTarget(TargetError::MissingHost),
            GatewayError::BadForwardedFor,
            GatewayError::BadContentLength,
            GatewayError::Malformed(413),
            GatewayError::RouteNotFound,
            GatewayError::MethodNotAllowed(vec![Method::GET, Method::POST]),
            GatewayError::CircuitOpen,
            GatewayError::NoHealthyUpstream,
            GatewayError::UpstreamUnavailable,
            GatewayError::UpstreamTimeout,
            GatewayError::UpstreamStatus(502),
            GatewayError::RequestTimeout,
            GatewayError::Internal,
        ];
        for e in all {
            let a = e.answer().unwrap();
            let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
            assert_eq!(v["status"], e.status(), "{e:?}");
            assert_eq!(v["error"], e.code());
            assert_eq!(a.code, Some(e.code()));
        }
        let allow = GatewayError::MethodNotAllowed(vec![Method::GET, Method::POST])
            .answer()
            .unwrap();
        assert!(allow
            .headers
            .iter()
            .any(|(n, v)| n == header::ALLOW && v == "GET, POST"));
        assert!(GatewayError::ClientClosed.answer().is_none());
    }

    #[test]
    fn proxy_errors_map_to_statuses() {
        let up = Error::new_up;
        let down = Error::new_down;
        use ErrorType::*;
        assert_eq!(
            GatewayError::from_proxy_error(&up(ConnectRefused)),
            GatewayError::UpstreamUnavailable
        );
        assert_eq!(
            GatewayError::from_proxy_error(&up(ReadTimedout)),
            GatewayError::UpstreamTimeout
        );
        assert_eq!(
            GatewayError::from_proxy_error(&down(ConnectionClosed)),
            GatewayError::ClientClosed
        );
        assert_eq!(
            GatewayError::from_proxy_error(&down(ReadTimedout)),
            GatewayError::RequestTimeout
        );
        assert_eq!(
            GatewayError::from_proxy_error(&down(InvalidHTTPHeader)),
            GatewayError::Malformed(400)
        );
        assert_eq!(
            GatewayError::from_proxy_error(&Error::new(HTTPStatus(413))),
            GatewayError::Malformed(413)
        );
        assert_eq!(
            GatewayError::from_proxy_error(&Error::new(InternalError)),
            GatewayError::Internal
        );
    }
}
