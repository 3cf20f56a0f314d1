//! `ext_proc`: an external processor, in any language, sees each request (and, with
//! `response_headers = true`, each upstream response head) as JSON over HTTP/1.1 and answers
//! with header changes, a new upstream path, or an immediate response (the kgateway / Envoy
//! external-processing pattern, with a JSON protocol instead of gRPC).
//!
//! The protocol (also in the operator documentation):
//!
//! * Request phase: the gateway POSTs `{"phase": "request_headers", "route", "method",
//!   "path" (with query), "headers": [[name, value], ...], "client_ip", "request_id",
//!   "consumer"}` plus, when `max_body_bytes > 0` and the request's `Content-Length` is at
//!   most that, `"body"` (UTF-8 text) or `"body_base64"`; a body that is not sent is flagged
//!   `"body_omitted": true`. The processor answers `200` with `{}` (go on; an empty body or
//!   `204` means the same), `{"headers": {"set": {name: value}, "remove": [name]}, "path":
//!   "/new?q"}` (changes to the request sent upstream: remove, then set; `path` replaces the
//!   upstream path and query) or `{"immediate_response": {"status", "headers": {..}, "body"}}`
//!   (sent to the client; the upstream is not called).
//! * Response phase: `{"phase": "response_headers", "route", "method", "path", "request_id",
//!   "status", "headers"}`; the answer may only change headers (`{}` or `{"headers": ..}`).
//! * Any other status, a body that is not such JSON, a connection that fails or an answer
//!   later than `timeout_ms` is a failure: counted, logged (rate-limited) and handled by
//!   `failure_mode` (`deny`: 503; `allow`: the request or response goes on unchanged).

use crate::answer::Answer;
use crate::body::{read_body, BodyError, ReadAhead, MAX_SMALL_BODY};
use crate::config_error::ConfigError;
use crate::external::{
    check_timeout, is_reserved, Endpoint, Failure, FailureMode, Limits, Service,
};
use crate::{BuildCtx, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Registered name.
pub const NAME: &str = "ext_proc";
/// Largest processor answer read.
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;

fn default_timeout_ms() -> u64 {
    1000
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    url: String,
    #[serde(default = "default_timeout_ms")]
    timeout_ms: u64,
    connect_timeout_ms: Option<u64>,
    #[serde(default)]
    failure_mode: FailureMode,
    #[serde(default)]
    response_headers: bool,
    #[serde(default)]
    max_body_bytes: usize,
}

/// A processor's answer as sent (unknown fields are ignored).
#[derive(Deserialize, Default)]
struct Reply {
    headers: Option<HeaderOps>,
    path: Option<String>,
    immediate_response: Option<Immediate>,
}

#[derive(Deserialize, Default)]
struct HeaderOps {
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
struct Immediate {
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: String,
}

/// Header changes, checked.
#[derive(Debug, Default, PartialEq)]
struct Changes {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
}

impl Changes {
    fn parse(ops: HeaderOps) -> Result<Changes, Failure> {
        let name = |n: &str| {
            HeaderName::from_bytes(n.as_bytes())
                .ok()
                .filter(|n| !is_reserved(n))
                .ok_or(Failure::Malformed)
        };
        let mut out = Changes::default();
        for n in &ops.remove {
            out.remove.push(name(n)?);
        }
        for (n, v) in &ops.set {
            let v = HeaderValue::from_str(v).map_err(|_| Failure::Malformed)?;
            out.set.push((name(n)?, v));
        }
        Ok(out)
    }

    fn apply_request(&self, req: &mut RequestHeader) {
        for n in &self.remove {
            req.remove_header(n);
        }
        for (n, v) in &self.set {
            // Names and values were checked when the answer was parsed.
            let _ = req.insert_header(n.clone(), v.clone());
        }
    }

    fn apply_response(&self, resp: &mut ResponseHeader) {
        for n in &self.remove {
            resp.remove_header(n);
        }
        for (n, v) in &self.set {
            let _ = resp.insert_header(n.clone(), v.clone());
        }
    }
}

/// What a request-phase answer asks for.
#[derive(Debug)]
enum Verdict {
    Continue,
    Mutate(Changes, Option<PathAndQuery>),
    Respond(Answer),
}

/// Parse a processor's answer (`status`, `body`) for the request phase.
fn parse_request_answer(status: StatusCode, body: &[u8]) -> Result<Verdict, Failure> {
    let Some(reply) = parse_reply(status, body)? else {
        return Ok(Verdict::Continue);
    };
    if let Some(i) = reply.immediate_response {
        if reply.headers.is_some() || reply.path.is_some() {
            return Err(Failure::Malformed);
        }
        let status = StatusCode::from_u16(i.status)
            .ok()
            .filter(|s| s.as_u16() >= 200)
            .ok_or(Failure::Malformed)?;
        let changes = Changes::parse(HeaderOps {
            set: i.headers,
            remove: Vec::new(),
        })?;
        return Ok(Verdict::Respond(Answer {
            status,
            headers: changes.set,
            body: Bytes::from(i.body),
            // Counted as a refusal only when it is one.
            code: (status.as_u16() >= 400).then_some("ext_proc_response"),
        }));
    }
    let path = match reply.path {
        Some(p) if p.starts_with('/') => {
            Some(PathAndQuery::try_from(p.as_str()).map_err(|_| Failure::Malformed)?)
        }
        Some(_) => return Err(Failure::Malformed),
        None => None,
    };
    let changes = Changes::parse(reply.headers.unwrap_or_default())?;
    if path.is_none() && changes == Changes::default() {
        return Ok(Verdict::Continue);
    }
    Ok(Verdict::Mutate(changes, path))
}

/// Parse a processor's answer for the response phase: header changes only.
fn parse_response_answer(status: StatusCode, body: &[u8]) -> Result<Changes, Failure> {
    let Some(reply) = parse_reply(status, body)? else {
        return Ok(Changes::default());
    };
    if reply.immediate_response.is_some() || reply.path.is_some() {
        return Err(Failure::Malformed);
    }
    Changes::parse(reply.headers.unwrap_or_default())
}

/// The answer's JSON, `None` for "nothing to do" (`204`, or `200` with an empty body).
fn parse_reply(status: StatusCode, body: &[u8]) -> Result<Option<Reply>, Failure> {
    match status.as_u16() {
        204 => return Ok(None),
        200 => {}
        _ => return Err(Failure::Status),
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let v: Value = serde_json::from_slice(body).map_err(|_| Failure::Malformed)?;
    if !v.is_object() {
        return Err(Failure::Malformed);
    }
    serde_json::from_value(v)
        .map(Some)
        .map_err(|_| Failure::Malformed)
}

fn header_pairs(headers: &http::HeaderMap) -> Value {
    Value::Array(
        headers
            .iter()
            .map(|(n, v)| json!([n.as_str(), String::from_utf8_lossy(v.as_bytes())]))
            .collect(),
    )
}

/// The request-phase changes of one instance, for [`Plugin::upstream_request`].
#[derive(Clone)]
struct Pending {
    owner: usize,
    changes: Arc<Changes>,
    path: Option<PathAndQuery>,
}

#[derive(Default, Clone)]
struct PendingAll(Vec<Pending>);

/// The request's method and path as the processor saw them, for the response phase.
#[derive(Clone)]
struct SeenRequest {
    method: String,
    path: String,
}

/// The compiled `ext_proc` plugin.
pub struct ExtProc {
    service: Service,
    response_headers: bool,
    max_body_bytes: usize,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: Config = crate::parse_config_all(value)?;
    let mut errors = Vec::new();
    let endpoint = Endpoint::parse(&cfg.url).map_err(|e| errors.push(ConfigError::new("url", e)));
    let total = check_timeout(cfg.timeout_ms, "timeout_ms", &mut errors);
    let connect = match cfg.connect_timeout_ms {
        Some(ms) => check_timeout(ms, "connect_timeout_ms", &mut errors),
        None => total,
    };
    if cfg.max_body_bytes > MAX_SMALL_BODY {
        errors.push(ConfigError::new(
            "max_body_bytes",
            format!(
                "must be at most {MAX_SMALL_BODY} (the body is held in memory to replay upstream)"
            ),
        ));
    }
    let Ok(endpoint) = endpoint else {
        return Err(errors);
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let limits = Limits {
        connect,
        total,
        max_answer_bytes: MAX_ANSWER_BYTES,
    };
    Ok(Arc::new(ExtProc {
        service: Service::new(NAME, endpoint, &ctx.state, limits, cfg.failure_mode),
        response_headers: cfg.response_headers,
        max_body_bytes: cfg.max_body_bytes,
    }))
}

impl ExtProc {
    fn owner(&self) -> usize {
        self as *const Self as usize
    }

    fn request_message(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        body: Option<&Bytes>,
    ) -> Value {
        let mut m = json!({
            "phase": "request_headers",
            "route": &*ctx.route,
            "method": req.method.as_str(),
            "path": req.uri.path_and_query().map_or("/", |p| p.as_str()),
            "headers": header_pairs(&req.headers),
            "client_ip": ctx.client_ip.map(|ip| ip.to_string()),
            "request_id": ctx.request_id.as_str(),
            "consumer": ctx.identity.as_ref().map(|i| i.consumer.username.clone()),
        });
        match body {
            Some(b) => match std::str::from_utf8(b) {
                Ok(text) => m["body"] = json!(text),
                Err(_) => {
                    m["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(b))
                }
            },
            None if has_body(req) => m["body_omitted"] = json!(true),
            None => {}
        }
        m
    }

    /// Send `message` and give the answer's status and body.
    async fn ask(&self, message: &Value) -> Result<(StatusCode, Bytes), Failure> {
        let mut req = RequestHeader::build(
            http::Method::POST,
            self.service.endpoint.path.as_bytes(),
            Some(3),
        )
        .map_err(|_| Failure::Malformed)?;
        req.insert_header(http::header::CONTENT_TYPE, "application/json")
            .map_err(|_| Failure::Malformed)?;
        let body = serde_json::to_vec(message).map_err(|_| Failure::Malformed)?;
        let reply = self.service.call(req, &body).await?;
        match reply.body {
            Some(b) => Ok((reply.head.status, b)),
            None => Err(Failure::TooLarge),
        }
    }

    fn unavailable() -> Answer {
        Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ext_proc_unavailable",
            "the external processor could not be asked",
        )
    }

    /// The request phase, with the body when one was read.
    async fn process_request(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        body: Option<&Bytes>,
    ) -> Flow {
        let message = self.request_message(req, ctx, body);
        if self.response_headers {
            ctx.extensions.insert(SeenRequest {
                method: req.method.as_str().to_string(),
                path: req
                    .uri
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string(),
            });
        }
        let start = Instant::now();
        let verdict = match self.ask(&message).await {
            Ok((status, b)) => parse_request_answer(status, &b),
            Err(f) => Err(f),
        };
        let elapsed = start.elapsed();
        match verdict {
            Ok(Verdict::Continue) => {
                self.service.record(&ctx.route, "continued", elapsed);
                Flow::Continue
            }
            Ok(Verdict::Mutate(changes, path)) => {
                self.service.record(&ctx.route, "mutated", elapsed);
                if ctx.extensions.get::<PendingAll>().is_none() {
                    ctx.extensions.insert(PendingAll::default());
                }
                if let Some(all) = ctx.extensions.get_mut::<PendingAll>() {
                    all.0.push(Pending {
                        owner: self.owner(),
                        changes: Arc::new(changes),
                        path,
                    });
                }
                Flow::Continue
            }
            Ok(Verdict::Respond(answer)) => {
                self.service.record(&ctx.route, "immediate", elapsed);
                Flow::Respond(answer)
            }
            Err(f) => {
                self.service.record(&ctx.route, "failed", elapsed);
                self.service.failed(&ctx.route, f, "request_headers");
                match self.service.failure_mode {
                    FailureMode::Allow => Flow::Continue,
                    FailureMode::Deny => Flow::Respond(Self::unavailable()),
                }
            }
        }
    }
}

/// Does the request announce a body (a non-zero `Content-Length`, or chunked)?
fn has_body(req: &RequestHeader) -> bool {
    match crate::req::content_length(req) {
        Some(Ok(n)) => n > 0,
        Some(Err(())) => true,
        None => req.headers.contains_key(http::header::TRANSFER_ENCODING),
    }
}

#[async_trait]
impl Plugin for ExtProc {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Transform
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        self.process_request(req, ctx, None).await
    }

    async fn request_session(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        let fits = self.max_body_bytes > 0
            && matches!(
                crate::req::content_length(session.req_header()),
                Some(Ok(n)) if n > 0 && n <= self.max_body_bytes as u64
            );
        let body = match ctx.extensions.get::<ReadAhead>() {
            Some(ReadAhead(b)) => Some(b.clone()),
            None if fits => {
                let read = tokio::time::timeout(
                    self.service.limits.total,
                    read_body(session, self.max_body_bytes, 0),
                )
                .await;
                match read {
                    Ok(Ok(b)) => {
                        ctx.extensions.insert(ReadAhead(b.clone()));
                        Some(b)
                    }
                    Ok(Err(BodyError::TooLarge)) => {
                        return Flow::Respond(Answer::error(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "body_too_large",
                            "request body is larger than allowed",
                        ))
                    }
                    // The client is too slow or gone: not the processor's failure.
                    _ => {
                        return Flow::Respond(Answer::error(
                            StatusCode::REQUEST_TIMEOUT,
                            "request_timeout",
                            "the request was not received in time",
                        ))
                    }
                }
            }
            None => None,
        };
        self.process_request(session.req_header(), ctx, body.as_ref())
            .await
    }

    fn upstream_request(&self, req: &mut RequestHeader, ctx: &mut RequestCtx) {
        let Some(all) = ctx.extensions.get::<PendingAll>() else {
            return;
        };
        for p in all.0.iter().filter(|p| p.owner == self.owner()) {
            p.changes.apply_request(req);
            if let Some(path) = &p.path {
                let mut parts = req.uri.clone().into_parts();
                parts.path_and_query = Some(path.clone());
                if let Ok(uri) = http::Uri::from_parts(parts) {
                    req.set_uri(uri);
                }
            }
        }
    }

    fn wants_upstream_response(&self) -> bool {
        self.response_headers
    }

    async fn upstream_response(
        &self,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Option<Answer> {
        let seen = ctx.extensions.get::<SeenRequest>();
        let message = json!({
            "phase": "response_headers",
            "route": &*ctx.route,
            "method": seen.map(|s| s.method.as_str()),
            "path": seen.map(|s| s.path.as_str()),
            "request_id": ctx.request_id.as_str(),
            "status": resp.status.as_u16(),
            "headers": header_pairs(&resp.headers),
        });
        let start = Instant::now();
        let changes = match self.ask(&message).await {
            Ok((status, b)) => parse_response_answer(status, &b),
            Err(f) => Err(f),
        };
        let elapsed = start.elapsed();
        match changes {
            Ok(c) => {
                let outcome = if c == Changes::default() {
                    "continued"
                } else {
                    "mutated"
                };
                self.service.record(&ctx.route, outcome, elapsed);
                c.apply_response(resp);
                None
            }
            Err(f) => {
                self.service.record(&ctx.route, "failed", elapsed);
                self.service.failed(&ctx.route, f, "response_headers");
                match self.service.failure_mode {
                    FailureMode::Allow => None,
                    FailureMode::Deny => Some(Self::unavailable()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: StatusCode = StatusCode::OK;

    #[test]
    fn config_validation() {
        let b = |t: &str| build(&toml::from_str(t).unwrap(), &BuildCtx::default());
        assert!(b("url = \"http://127.0.0.1:9/p\"\nresponse_headers = true").is_ok());
        let errs = b("url = \"tcp://x\"\ntimeout_ms = 0\nmax_body_bytes = 100000000")
            .err()
            .unwrap();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["url", "timeout_ms", "max_body_bytes"]);
        assert_eq!(
            b("url = \"http://x/\"\nfailure_mode = \"maybe\"")
                .err()
                .unwrap()[0]
                .path,
            "failure_mode"
        );
        assert_eq!(
            b("url = \"http://x/\"\nextra = 1").err().unwrap()[0].path,
            "extra"
        );
    }

    #[test]
    fn request_answers() {
        assert!(matches!(
            parse_request_answer(OK, b"{}"),
            Ok(Verdict::Continue)
        ));
        assert!(matches!(
            parse_request_answer(OK, b""),
            Ok(Verdict::Continue)
        ));
        assert!(matches!(
            parse_request_answer(StatusCode::NO_CONTENT, b""),
            Ok(Verdict::Continue)
        ));
        assert!(matches!(
            parse_request_answer(OK, br#"{"unknown": 1}"#),
            Ok(Verdict::Continue)
        ));
        let v = parse_request_answer(
            OK,
            br#"{"headers": {"set": {"X-A": "1"}, "remove": ["x-b"]}, "path": "/new?q=1"}"#,
        )
        .unwrap();
        match v {
            Verdict::Mutate(c, Some(p)) => {
                assert_eq!(c.remove, [HeaderName::from_static("x-b")]);
                assert_eq!(c.set[0].0, "x-a");
                assert_eq!(p.as_str(), "/new?q=1");
            }
            other => panic!("{other:?}"),
        }
        let v = parse_request_answer(
            OK,
            br#"{"immediate_response": {"status": 403, "headers": {"x-why": "no"}, "body": "blocked"}}"#,
        )
        .unwrap();
        match v {
            Verdict::Respond(a) => {
                assert_eq!(a.status, 403);
                assert_eq!(a.body, "blocked");
                assert_eq!(a.headers[0].1, "no");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_answers_are_failures() {
        let bad: [&[u8]; 11] = [
            b"not json",
            b"[]",
            b"\"x\"",
            br#"{"headers": {"set": {"bad name": "1"}}}"#,
            br#"{"headers": {"set": {"x": "a\nb"}}}"#,
            br#"{"headers": {"set": {"content-length": "1"}}}"#,
            br#"{"headers": {"remove": "x"}}"#,
            br#"{"path": "relative"}"#,
            br#"{"immediate_response": {"status": 99}}"#,
            br#"{"immediate_response": {"body": "x"}}"#,
            br#"{"immediate_response": {"status": 200}, "path": "/x"}"#,
        ];
        for b in bad {
            assert_eq!(
                parse_request_answer(OK, b).err(),
                Some(Failure::Malformed),
                "{}",
                String::from_utf8_lossy(b)
            );
        }
        assert_eq!(
            parse_request_answer(StatusCode::INTERNAL_SERVER_ERROR, b"{}").err(),
            Some(Failure::Status)
        );
    }

    #[test]
    fn response_answers() {
        let c = parse_response_answer(OK, br#"{"headers": {"set": {"x-r": "1"}}}"#).unwrap();
        assert_eq!(c.set.len(), 1);
        assert_eq!(parse_response_answer(OK, b"{}"), Ok(Changes::default()));
        assert_eq!(
            parse_response_answer(OK, br#"{"immediate_response": {"status": 200}}"#),
            Err(Failure::Malformed)
        );
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("x-r", "0").unwrap();
        resp.insert_header("server", "up").unwrap();
        Changes {
            remove: vec![HeaderName::from_static("server")],
            set: c.set,
        }
        .apply_response(&mut resp);
        assert_eq!(resp.headers.get("x-r").unwrap(), "1");
        assert!(resp.headers.get("server").is_none());
    }

    #[test]
    fn request_messages() {
        let p = build(
            &toml::from_str("url = \"http://127.0.0.1:9/\"").unwrap(),
            &BuildCtx::default(),
        )
        .ok()
        .unwrap();
        let _ = p;
        let ctx = RequestCtx::new(
            "r1".into(),
            Some("10.1.2.3".parse().unwrap()),
            crate::RequestId::generate(),
        );
        let ext = ExtProc {
            service: Service::new(
                NAME,
                Endpoint::parse("http://127.0.0.1:9/").unwrap(),
                &BuildCtx::default().state,
                Limits {
                    connect: std::time::Duration::from_secs(1),
                    total: std::time::Duration::from_secs(1),
                    max_answer_bytes: 10,
                },
                FailureMode::Deny,
            ),
            response_headers: false,
            max_body_bytes: 10,
        };
        let mut req = RequestHeader::build("POST", b"/a?b=1", None).unwrap();
        req.insert_header("x-a", "1").unwrap();
        req.insert_header("content-length", "3").unwrap();
        let m = ext.request_message(&req, &ctx, Some(&Bytes::from_static(b"abc")));
        assert_eq!(m["phase"], "request_headers");
        assert_eq!(m["route"], "r1");
        assert_eq!(m["method"], "POST");
        assert_eq!(m["path"], "/a?b=1");
        assert_eq!(m["headers"][0], json!(["x-a", "1"]));
        assert_eq!(m["client_ip"], "10.1.2.3");
        assert_eq!(m["body"], "abc");
        let m = ext.request_message(&req, &ctx, Some(&Bytes::from_static(b"\xff\x00")));
        assert_eq!(m["body_base64"], "/wA=");
        let m = ext.request_message(&req, &ctx, None);
        assert_eq!(m["body_omitted"], true);
    }
}
