//! Token accounting of OpenAI-compatible inference answers, shared by the `ai_usage` and
//! `token_limit` plugins: what the request asked ([`AiRequest`], from its small JSON body),
//! the usage of the answer ([`Usage`], read from the JSON body or the SSE stream as it passes),
//! and the `tollgate_ai_tokens_total` counter.
//!
//! A plugin with accounting calls, in its hooks: [`read_request`] (request phase),
//! [`Accounting::start`] (`response`), [`Accounting::feed`] (`response_body`) and [`finish`]
//! (`log`). Several such plugins on one chain account once: the first whose `response` hook
//! runs owns the parsing, and [`finish`] is idempotent. Once known, the [`Usage`] is in
//! `ctx.extensions` for every later hook and for the gateway (the access log).

pub mod parse;

use crate::answer::Answer;
use crate::body::{read_body, BodyError, ReadAhead, MAX_SMALL_BODY};
use crate::config_error::ConfigError;
use crate::context::RequestCtx;
use crate::metrics::METRICS;
use bytes::Bytes;
use http::StatusCode;
use parse::{JsonBody, SseParser, Tokens, MAX_MODEL_BYTES};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// The token usage of one answer, in `ctx.extensions` once known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The model: the request's `model` when its body was read, else the answer's `model`
    /// (at most 128 bytes; `None` when neither is known).
    pub model: Option<Arc<str>>,
    /// `usage.prompt_tokens` (0 when counted from the stream).
    pub prompt_tokens: u64,
    /// `usage.completion_tokens`, or the content events counted (see `counted`).
    pub completion_tokens: u64,
    /// `usage.total_tokens`, or prompt + completion.
    pub total_tokens: u64,
    /// `true`: no usage was reported and `count_stream` counted the stream's content events
    /// (one per event) as completion tokens, an estimate.
    pub counted: bool,
}

/// What a request asked, from its JSON body (read ahead when it has a `Content-Length` of at
/// most 64 KiB; otherwise every field is `None`). In `ctx.extensions` after [`read_request`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AiRequest {
    /// `model` (at most 128 bytes).
    pub model: Option<Arc<str>>,
    /// `max_completion_tokens`, else `max_tokens`.
    pub max_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct RequestJson {
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
}

impl AiRequest {
    /// Read the fields from a request body (anything that is not such a JSON object gives
    /// `None`s).
    pub fn parse(body: &[u8]) -> Self {
        match serde_json::from_slice::<RequestJson>(body) {
            Ok(r) => AiRequest {
                model: r
                    .model
                    .filter(|m| !m.is_empty() && m.len() <= MAX_MODEL_BYTES)
                    .map(Arc::from),
                max_tokens: r.max_completion_tokens.or(r.max_tokens),
            },
            Err(_) => AiRequest::default(),
        }
    }
}

/// How long reading a request body ahead may take.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// Read the request's small JSON body ahead (once per request, whichever plugin asks first;
/// the bytes stay in [`ReadAhead`] for the gateway and still go upstream) and keep what it
/// asked in `ctx.extensions` as [`AiRequest`]. A body with no `Content-Length`, or one over
/// 64 KiB, is not read. Err: the answer to send (the client was too slow, 408, or sent more
/// than its `Content-Length`, 413).
pub async fn read_request(session: &mut Session, ctx: &mut RequestCtx) -> Result<(), Answer> {
    if ctx.extensions.get::<AiRequest>().is_some() {
        return Ok(());
    }
    let fits = matches!(
        crate::req::content_length(session.req_header()),
        Some(Ok(n)) if n > 0 && n <= MAX_SMALL_BODY as u64
    );
    let body = match ctx.extensions.get::<ReadAhead>() {
        Some(ReadAhead(b)) => Some(b.clone()),
        None if fits => {
            match tokio::time::timeout(BODY_TIMEOUT, read_body(session, MAX_SMALL_BODY, 0)).await {
                Ok(Ok(b)) => {
                    ctx.extensions.insert(ReadAhead(b.clone()));
                    Some(b)
                }
                Ok(Err(BodyError::TooLarge)) => {
                    return Err(Answer::error(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "body_too_large",
                        "request body is larger than allowed",
                    ))
                }
                _ => {
                    return Err(Answer::error(
                        StatusCode::REQUEST_TIMEOUT,
                        "request_timeout",
                        "the request was not received in time",
                    ))
                }
            }
        }
        None => None,
    };
    let info = body.map(|b| AiRequest::parse(&b)).unwrap_or_default();
    ctx.extensions.insert(info);
    Ok(())
}

/// The accounting keys of a plugin's table (`ai_usage`'s, `token_limit`'s).
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct AccountingSpec {
    /// Models that get their own `model` label in the metric; others are `other`.
    #[serde(default)]
    pub models: Vec<String>,
    /// Count a stream's content events as completion tokens when it reports no usage.
    #[serde(default)]
    pub count_stream: bool,
    /// The largest JSON answer parsed for its usage.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
}

/// Default of `max_response_bytes`: 1 MiB.
pub fn default_max_response_bytes() -> usize {
    1024 * 1024
}

/// The largest `max_response_bytes` allowed.
const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The compiled accounting settings of one plugin instance.
#[derive(Debug)]
pub struct Accounting {
    models: Box<[Arc<str>]>,
    count_stream: bool,
    max_response_bytes: usize,
}

impl Accounting {
    /// Compile the keys; problems are pushed to `errors` (paths relative to the table).
    pub fn new(spec: AccountingSpec, errors: &mut Vec<ConfigError>) -> Arc<Self> {
        let mut models: Vec<Arc<str>> = Vec::new();
        for (i, m) in spec.models.iter().enumerate() {
            if m.is_empty() || m.len() > MAX_MODEL_BYTES || m == "other" {
                errors.push(ConfigError::new(
                    format!("models[{i}]"),
                    "a model name is 1 to 128 bytes and not \"other\"",
                ));
            } else if models.iter().any(|x| **x == **m) {
                errors.push(ConfigError::new(format!("models[{i}]"), "listed twice"));
            } else {
                models.push(Arc::from(m.as_str()));
            }
        }
        if spec.max_response_bytes == 0 || spec.max_response_bytes > MAX_RESPONSE_BYTES {
            errors.push(ConfigError::new(
                "max_response_bytes",
                "must be between 1 and 16777216",
            ));
        }
        Arc::new(Accounting {
            models: models.into(),
            count_stream: spec.count_stream,
            max_response_bytes: spec.max_response_bytes,
        })
    }

    /// The metric label of `model`: itself when listed in `models`, else `other`.
    fn label(&self, model: Option<&str>) -> &str {
        model
            .and_then(|m| self.models.iter().find(|x| ***x == *m))
            .map_or("other", |m| m)
    }

    /// The response head: decide how to read this answer, unless another plugin of the chain
    /// already does. Only 2xx answers are read, as JSON (`application/json`, `+json`) or SSE
    /// (`text/event-stream`), and only when not content-encoded.
    pub fn start(self: &Arc<Self>, resp: &ResponseHeader, ctx: &mut RequestCtx) {
        if ctx.extensions.get::<Tracking>().is_some() || ctx.extensions.get::<Usage>().is_some() {
            return;
        }
        if !resp.status.is_success() {
            return;
        }
        let header = |name: http::header::HeaderName| {
            resp.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.trim().to_ascii_lowercase())
        };
        let reader = match header(http::header::CONTENT_ENCODING) {
            Some(e) if !e.is_empty() && e != "identity" => Reader::Skipped,
            _ => match header(http::header::CONTENT_TYPE) {
                Some(t) if t.starts_with("text/event-stream") => {
                    Reader::Sse(Box::new(SseParser::new(self.count_stream)))
                }
                Some(t) if t.starts_with("application/json") || t.contains("+json") => {
                    Reader::Json(JsonBody::new(self.max_response_bytes))
                }
                _ => return,
            },
        };
        ctx.extensions.insert(Tracking {
            owner: self.clone(),
            reader,
        });
    }

    /// A response-body chunk: parse it if this instance owns the parsing; at the end of the
    /// body the usage is known ([`finish`]).
    pub fn feed(self: &Arc<Self>, body: &Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        let Some(t) = ctx.extensions.get_mut::<Tracking>() else {
            return;
        };
        if !Arc::ptr_eq(&t.owner, self) {
            return;
        }
        if let Some(b) = body {
            match &mut t.reader {
                Reader::Json(j) => j.feed(b),
                Reader::Sse(p) => p.feed(b),
                Reader::Skipped => {}
            }
        }
        if end_of_stream {
            settle(ctx, true);
        }
    }
}

/// How the answer is being read.
#[derive(Clone)]
enum Reader {
    Json(JsonBody),
    Sse(Box<SseParser>),
    /// Content-encoded: not readable.
    Skipped,
}

/// The parsing of this request's answer, owned by one plugin instance.
#[derive(Clone)]
struct Tracking {
    owner: Arc<Accounting>,
    reader: Reader,
}

/// The usage of this request's answer, once the answer is over (or failed): idempotent, so
/// every plugin's `log` hook may call it. The first call after the answer ended computes it,
/// counts `tollgate_ai_tokens_total` (or `tollgate_ai_usage_missing_total`) and keeps it in
/// `ctx.extensions`.
pub fn finish(ctx: &mut RequestCtx) -> Option<Usage> {
    if let Some(u) = ctx.extensions.get::<Usage>() {
        return Some(u.clone());
    }
    settle(ctx, false)
}

/// Compute the usage from the tracking state; `complete`: the body ended normally.
fn settle(ctx: &mut RequestCtx, complete: bool) -> Option<Usage> {
    let mut t = ctx.extensions.remove::<Tracking>()?;
    let (tokens, model, counted, missing) = match &mut t.reader {
        Reader::Skipped => (None, None, false, "encoded"),
        Reader::Json(j) => {
            let too_large = j.too_large;
            let (tokens, model) = if complete { j.finish() } else { (None, None) };
            let why = if too_large {
                "too_large"
            } else if complete {
                "no_usage"
            } else {
                "incomplete"
            };
            (tokens, model, false, why)
        }
        Reader::Sse(p) => {
            p.finish();
            let why = if complete && p.done {
                "no_usage"
            } else {
                "incomplete"
            };
            match p.usage {
                Some(tokens) => (Some(tokens), p.model.take(), false, why),
                None if t.owner.count_stream => (
                    Some(Tokens {
                        prompt: 0,
                        completion: p.content_events,
                        total: p.content_events,
                    }),
                    p.model.take(),
                    true,
                    why,
                ),
                None => (None, None, false, why),
            }
        }
    };
    let Some(tokens) = tokens else {
        METRICS
            .ai_usage_missing
            .with_label_values(&[&*ctx.route, missing])
            .inc();
        return None;
    };
    let model = ctx
        .extensions
        .get::<AiRequest>()
        .and_then(|r| r.model.clone())
        .or_else(|| model.map(Arc::from));
    let label = t.owner.label(model.as_deref());
    for (kind, n) in [("prompt", tokens.prompt), ("completion", tokens.completion)] {
        METRICS
            .ai_tokens
            .with_label_values(&[&*ctx.route, label, kind])
            .inc_by(n);
    }
    let usage = Usage {
        model,
        prompt_tokens: tokens.prompt,
        completion_tokens: tokens.completion,
        total_tokens: tokens.total,
        counted,
    };
    ctx.extensions.insert(usage.clone());
    Some(usage)
}

/// Accounting routes read the answer as the upstream sends it: the client's `Accept-Encoding`
/// is not forwarded (an encoded answer could not be read; `compress` can encode for the
/// client).
pub fn upstream_request(req: &mut RequestHeader) {
    req.remove_header(&http::header::ACCEPT_ENCODING);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing;

    fn acct(models: &[&str], count_stream: bool) -> Arc<Accounting> {
        let mut errors = Vec::new();
        let a = Accounting::new(
            AccountingSpec {
                models: models.iter().map(|s| s.to_string()).collect(),
                count_stream,
                max_response_bytes: 1024,
            },
            &mut errors,
        );
        assert!(errors.is_empty(), "{errors:?}");
        a
    }

    #[test]
    fn request_fields() {
        let r = AiRequest::parse(br#"{"model":"gpt-4o","max_tokens":7,"messages":[]}"#);
        assert_eq!(r.model.as_deref(), Some("gpt-4o"));
        assert_eq!(r.max_tokens, Some(7));
        let r = AiRequest::parse(br#"{"max_tokens":7,"max_completion_tokens":9}"#);
        assert_eq!((r.model, r.max_tokens), (None, Some(9)));
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(129));
        assert_eq!(AiRequest::parse(long.as_bytes()), AiRequest::default());
        assert_eq!(AiRequest::parse(b"[1]"), AiRequest::default());
    }

    #[test]
    fn two_accounting_plugins_count_once_and_finish_is_idempotent() {
        let (a, b) = (acct(&["gpt-4o"], false), acct(&[], false));
        let mut ctx = testing::ctx();
        ctx.extensions.insert(AiRequest {
            model: Some(Arc::from("gpt-4o")),
            max_tokens: None,
        });
        let resp = testing::response(200, &[("content-type", "application/json")]);
        a.start(&resp, &mut ctx);
        b.start(&resp, &mut ctx);
        let body = Some(Bytes::from_static(
            br#"{"model":"gpt-4o-2024","usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        ));
        b.feed(&body, true, &mut ctx);
        assert!(ctx.extensions.get::<Usage>().is_none(), "b does not own it");
        a.feed(&body, true, &mut ctx);
        let want = Usage {
            model: Some(Arc::from("gpt-4o")),
            prompt_tokens: 3,
            completion_tokens: 4,
            total_tokens: 7,
            counted: false,
        };
        assert_eq!(finish(&mut ctx), Some(want.clone()));
        assert_eq!(finish(&mut ctx), Some(want));
        assert_eq!(a.label(Some("gpt-4o")), "gpt-4o");
        assert_eq!(a.label(Some("gpt-5")), "other");
        assert_eq!(a.label(None), "other");
    }

    #[test]
    fn cut_stream_counts_content_only_when_asked() {
        for count in [false, true] {
            let a = acct(&[], count);
            let mut ctx = testing::ctx();
            let resp = testing::response(200, &[("content-type", "text/event-stream")]);
            a.start(&resp, &mut ctx);
            let chunk = Some(Bytes::from_static(
                b"data: {\"model\":\"m\",\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: {\"choices\":[{\"delta\":{\"content\":\"b\"}}]}\n\n",
            ));
            a.feed(&chunk, false, &mut ctx);
            let u = finish(&mut ctx);
            if count {
                let u = u.unwrap();
                assert_eq!(
                    (u.prompt_tokens, u.completion_tokens, u.total_tokens),
                    (0, 2, 2)
                );
                assert!(u.counted);
                assert_eq!(u.model.as_deref(), Some("m"));
            } else {
                assert_eq!(u, None);
            }
        }
    }

    #[test]
    fn unreadable_answers_are_not_parsed() {
        let a = acct(&[], true);
        for (status, headers) in [
            (200, vec![("content-type", "text/html")]),
            (500, vec![("content-type", "application/json")]),
        ] {
            let mut ctx = testing::ctx();
            a.start(&testing::response(status, &headers), &mut ctx);
            assert!(ctx.extensions.get::<Tracking>().is_none());
        }
        let mut ctx = testing::ctx();
        let resp = testing::response(
            200,
            &[
                ("content-type", "application/json"),
                ("content-encoding", "gzip"),
            ],
        );
        a.start(&resp, &mut ctx);
        a.feed(&Some(Bytes::from_static(b"\x1f\x8b")), true, &mut ctx);
        assert_eq!(finish(&mut ctx), None);
    }

    #[test]
    fn config_errors() {
        let mut errors = Vec::new();
        Accounting::new(
            AccountingSpec {
                models: vec!["a".into(), "".into(), "a".into(), "other".into()],
                count_stream: false,
                max_response_bytes: 0,
            },
            &mut errors,
        );
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            ["models[1]", "models[2]", "models[3]", "max_response_bytes"]
        );
    }
}
