//! A test OTLP/HTTP collector: it receives `POST /v1/traces` (protobuf
//! `ExportTraceServiceRequest`), keeps every span with its resource, and answers 200 with an
//! empty protobuf body, or slowly, or never (see [`CollectorMode`]).
//!
//! Anything that is not a well-formed export (another path or method, a content type other
//! than `application/x-protobuf`, a body that does not decode) is answered 4xx and recorded in
//! [`Collector::problems`], so a test can check that the gateway spoke the protocol.
//!
//! Not part of `common/mod.rs`: that harness is also compiled by the tests of
//! examples/custom-plugin, which do not depend on `opentelemetry-proto`. A test binary that
//! wants the collector includes it next to the harness:
//!
//! ```ignore
//! mod common;
//! #[path = "common/otlp.rs"]
//! mod otlp;
//! ```

#![allow(dead_code)]

use crate::common::*;
use std::io::{BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

pub use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
pub use opentelemetry_proto::tonic::common::v1::any_value::Value as OtlpValue;
pub use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue};
pub use opentelemetry_proto::tonic::trace::v1::span::Event as SpanEvent;
pub use opentelemetry_proto::tonic::trace::v1::Span as OtlpSpan;
use prost::Message;

/// `Span.kind` values (opentelemetry.proto.trace.v1.Span.SpanKind).
pub const SPAN_KIND_SERVER: i32 = 2;
pub const SPAN_KIND_CLIENT: i32 = 3;
/// `Status.code` values.
pub const STATUS_UNSET: i32 = 0;
pub const STATUS_OK: i32 = 1;
pub const STATUS_ERROR: i32 = 2;

/// Lower-case hex of bytes (trace and span ids as written in `traceparent`).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A string, int, double or bool attribute value as text (for messages).
pub fn any_value_text(v: &AnyValue) -> String {
    match &v.value {
        Some(OtlpValue::StringValue(s)) => format!("{s:?}"),
        Some(OtlpValue::IntValue(i)) => format!("{i}i"),
        Some(OtlpValue::DoubleValue(d)) => format!("{d}f"),
        Some(OtlpValue::BoolValue(b)) => format!("{b}"),
        other => format!("{other:?}"),
    }
}

fn find_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
}

/// The string value of attribute `key` (None when absent or not a string).
pub fn attr_str<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match find_attr(attrs, key).and_then(|v| v.value.as_ref()) {
        Some(OtlpValue::StringValue(s)) => Some(s.as_str()),
        _ => None,
    }
}

/// The int value of attribute `key` (None when absent or not an int).
pub fn attr_int(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match find_attr(attrs, key).and_then(|v| v.value.as_ref()) {
        Some(OtlpValue::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// `key=value` of every attribute (for messages).
pub fn attrs_text(attrs: &[KeyValue]) -> String {
    attrs
        .iter()
        .map(|kv| {
            format!(
                "{}={}",
                kv.key,
                kv.value.as_ref().map(any_value_text).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One span as exported, with where it came from.
#[derive(Clone, Debug)]
pub struct ExportedSpan {
    pub span: OtlpSpan,
    /// Attributes of the resource of its `ResourceSpans`.
    pub resource: Vec<KeyValue>,
    /// Name of its instrumentation scope.
    pub scope: String,
    /// Index of the export request that carried it (0-based).
    pub export: usize,
}

impl ExportedSpan {
    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    /// Hex of the parent span id; empty for a root span.
    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    pub fn name(&self) -> &str {
        &self.span.name
    }

    pub fn kind(&self) -> i32 {
        self.span.kind
    }

    pub fn is_server(&self) -> bool {
        self.span.kind == SPAN_KIND_SERVER
    }

    pub fn is_client(&self) -> bool {
        self.span.kind == SPAN_KIND_CLIENT
    }

    /// `Status.code` (0 = UNSET when no status).
    pub fn status_code(&self) -> i32 {
        self.span.status.as_ref().map_or(STATUS_UNSET, |s| s.code)
    }

    pub fn attr(&self, key: &str) -> Option<&AnyValue> {
        find_attr(&self.span.attributes, key)
    }

    pub fn str_attr(&self, key: &str) -> Option<&str> {
        attr_str(&self.span.attributes, key)
    }

    pub fn int_attr(&self, key: &str) -> Option<i64> {
        attr_int(&self.span.attributes, key)
    }

    pub fn resource_str(&self, key: &str) -> Option<&str> {
        attr_str(&self.resource, key)
    }

    /// Events named `name`.
    pub fn events(&self, name: &str) -> Vec<&SpanEvent> {
        self.span.events.iter().filter(|e| e.name == name).collect()
    }

    /// A one-line description (for assertion messages).
    pub fn describe(&self) -> String {
        let events: Vec<String> = self
            .span
            .events
            .iter()
            .map(|e| format!("{}({})", e.name, attrs_text(&e.attributes)))
            .collect();
        format!(
            "[{} kind={} trace={} span={} parent={} status={} attrs: {} events: {}]",
            self.span.name,
            self.span.kind,
            self.trace_id(),
            self.span_id(),
            self.parent_id(),
            self.status_code(),
            attrs_text(&self.span.attributes),
            events.join(" ")
        )
    }
}

/// Describe a list of spans, one per line.
pub fn describe_spans(spans: &[ExportedSpan]) -> String {
    spans
        .iter()
        .map(ExportedSpan::describe)
        .collect::<Vec<_>>()
        .join("\n")
}

/// One export request as received.
#[derive(Clone, Debug)]
pub struct Export {
    pub method: String,
    pub target: String,
    /// Header names lower-cased, one entry per header line.
    pub headers: Vec<(String, String)>,
    /// The body as sent (before any content-encoding is undone).
    pub body: Vec<u8>,
    /// How many spans it carried.
    pub spans: usize,
    pub at: Instant,
}

impl Export {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, &name.to_ascii_lowercase())
    }
}

/// How the collector answers an export.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CollectorMode {
    /// 200 at once.
    Answer,
    /// 200 after this long.
    Delay(Duration),
    /// Answer this status (e.g. 500 or 429) at once, empty body.
    Status(u16),
    /// Read the request, record it, and never answer (the connection stays open until the
    /// collector is dropped).
    Never,
}

#[derive(Default)]
struct CollectorState {
    spans: Vec<ExportedSpan>,
    exports: Vec<Export>,
    problems: Vec<String>,
}

struct CollectorShared {
    state: Mutex<CollectorState>,
    mode: Mutex<CollectorMode>,
    stop: AtomicBool,
    connections: AtomicUsize,
}

/// The OTLP/HTTP receiver on 127.0.0.1 (std threads, HTTP/1.1 keep-alive).
pub struct Collector {
    pub addr: SocketAddr,
    shared: Arc<CollectorShared>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

impl Collector {
    /// A collector answering every export 200 at once.
    pub fn start() -> Collector {
        Collector::with_mode(CollectorMode::Answer)
    }

    pub fn with_mode(mode: CollectorMode) -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind collector");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(CollectorShared {
            state: Mutex::new(CollectorState::default()),
            mode: Mutex::new(mode),
            stop: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
        });
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (stopping, serving) = (shared.clone(), shared.clone());
        let accept = accept_loop(
            listener,
            "otlp-collector".to_string(),
            conns.clone(),
            move || stopping.stop.load(Ordering::SeqCst),
            move |stream| {
                serving.connections.fetch_add(1, Ordering::SeqCst);
                serve_collector_connection(stream, &serving)
            },
        );
        Collector {
            addr,
            shared,
            conns,
            accept: Some(accept),
        }
    }

    /// Change how later exports are answered.
    pub fn set_mode(&self, mode: CollectorMode) {
        *self.shared.mode.lock().unwrap() = mode;
    }

    /// `http://127.0.0.1:<port>/v1/traces`, for the config's `tracing.endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ExportedSpan> {
        self.shared.state.lock().unwrap().spans.clone()
    }

    /// Every export request received so far (also those that were not well-formed).
    pub fn exports(&self) -> Vec<Export> {
        self.shared.state.lock().unwrap().exports.clone()
    }

    /// How many export requests arrived.
    pub fn export_count(&self) -> usize {
        self.shared.state.lock().unwrap().exports.len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// What was wrong with requests that were not well-formed exports.
    pub fn problems(&self) -> Vec<String> {
        self.shared.state.lock().unwrap().problems.clone()
    }

    /// Panic if any request was not a well-formed export.
    pub fn assert_no_problems(&self) {
        let p = self.problems();
        assert!(p.is_empty(), "malformed exports at the collector: {p:#?}");
    }

    /// Headers of the last export request (empty if none came).
    pub fn received_headers(&self) -> Vec<(String, String)> {
        self.shared
            .state
            .lock()
            .unwrap()
            .exports
            .last()
            .map(|e| e.headers.clone())
            .unwrap_or_default()
    }

    /// Every export body, concatenated (to look for bytes that must never be exported).
    pub fn all_bytes(&self) -> Vec<u8> {
        let st = self.shared.state.lock().unwrap();
        st.exports.iter().flat_map(|e| e.body.clone()).collect()
    }

    /// Wait until at least `n` spans arrived (or `timeout` passed); the spans then.
    pub fn wait_spans(&self, n: usize, timeout: Duration) -> Vec<ExportedSpan> {
        let mut spans = Vec::new();
        wait_until(timeout, || {
            spans = self.spans();
            spans.len() >= n
        });
        spans
    }

    /// Spans of trace `trace_hex` received so far.
    pub fn spans_of_trace(&self, trace_hex: &str) -> Vec<ExportedSpan> {
        self.spans()
            .into_iter()
            .filter(|s| s.trace_id() == trace_hex)
            .collect()
    }

    /// Wait until at least `n` spans of trace `trace_hex` arrived (or `timeout` passed).
    pub fn wait_trace(&self, trace_hex: &str, n: usize, timeout: Duration) -> Vec<ExportedSpan> {
        let mut spans = Vec::new();
        wait_until(timeout, || {
            spans = self.spans_of_trace(trace_hex);
            spans.len() >= n
        });
        spans
    }

    /// Server spans received so far.
    pub fn server_spans(&self) -> Vec<ExportedSpan> {
        self.spans().into_iter().filter(|s| s.is_server()).collect()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Ok(list) = self.conns.lock() {
            for s in list.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

fn write_answer(w: &mut TcpStream, status: u16, content_type: &str, close: bool) -> bool {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Whatever",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: 0\r\n"
    );
    if close {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes()).and_then(|_| w.flush()).is_ok()
}

/// Decode an export body: undo a gzip content-encoding, then protobuf.
fn decode_export(
    headers: &[(String, String)],
    body: &[u8],
) -> Result<ExportTraceServiceRequest, String> {
    let plain = match find_header(headers, "content-encoding").map(str::to_ascii_lowercase) {
        None => body.to_vec(),
        Some(e) if e == "identity" => body.to_vec(),
        Some(e) if e == "gzip" => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(body)
                .read_to_end(&mut out)
                .map_err(|e| format!("bad gzip body: {e}"))?;
            out
        }
        Some(e) => return Err(format!("unsupported content-encoding {e:?}")),
    };
    ExportTraceServiceRequest::decode(plain.as_slice())
        .map_err(|e| format!("body is not an ExportTraceServiceRequest: {e}"))
}

fn serve_collector_connection(stream: TcpStream, shared: &CollectorShared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let line = loop {
            match read_line_crlf(&mut reader) {
                Ok(Some(l)) if l.is_empty() => continue,
                Ok(Some(l)) => break l,
                _ => return,
            }
        };
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let Ok(headers) = read_headers(&mut reader) else {
            return;
        };
        if find_header(&headers, "expect").is_some_and(|v| v.eq_ignore_ascii_case("100-continue")) {
            let _ = writer.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let Ok(body) = read_body(&mut reader, &headers, false) else {
            return;
        };
        let close =
            find_header(&headers, "connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut problem = None;
        let mut status = 200;
        let mut decoded = None;
        if method != "POST" {
            problem = Some(format!("{method} {target}: not a POST"));
            status = 405;
        } else if target.split('?').next() != Some("/v1/traces") {
            problem = Some(format!("POST {target}: not /v1/traces"));
            status = 404;
        } else if !find_header(&headers, "content-type").is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-protobuf"))
        }) {
            problem = Some(format!(
                "content-type {:?}, not application/x-protobuf",
                find_header(&headers, "content-type")
            ));
            status = 415;
        } else if find_header(&headers, "content-length").is_none() {
            problem = Some("no content-length".to_string());
            // Still decodable (chunked): keep it, but say so.
            match decode_export(&headers, &body) {
                Ok(req) => decoded = Some(req),
                Err(e) => {
                    problem = Some(format!("no content-length, and {e}"));
                    status = 400;
                }
            }
        } else {
            match decode_export(&headers, &body) {
                Ok(req) => decoded = Some(req),
                Err(e) => {
                    problem = Some(e);
                    status = 400;
                }
            }
        }
        {
            let mut st = shared.state.lock().unwrap();
            let index = st.exports.len();
            let mut count = 0;
            if let Some(req) = &decoded {
                for rs in &req.resource_spans {
                    let resource = rs
                        .resource
                        .as_ref()
                        .map(|r| r.attributes.clone())
                        .unwrap_or_default();
                    for ss in &rs.scope_spans {
                        let scope = ss
                            .scope
                            .as_ref()
                            .map(|s| s.name.clone())
                            .unwrap_or_default();
                        for span in &ss.spans {
                            count += 1;
                            st.spans.push(ExportedSpan {
                                span: span.clone(),
                                resource: resource.clone(),
                                scope: scope.clone(),
                                export: index,
                            });
                        }
                    }
                }
            }
            st.exports.push(Export {
                method,
                target,
                headers,
                body,
                spans: count,
                at: Instant::now(),
            });
            if let Some(p) = problem {
                st.problems.push(p);
            }
        }
        let mode = *shared.mode.lock().unwrap();
        match mode {
            CollectorMode::Answer => {}
            CollectorMode::Status(code) => {
                if status == 200 {
                    status = code;
                }
            }
            CollectorMode::Delay(d) => {
                let until = Instant::now() + d;
                while Instant::now() < until {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    thread::sleep(Duration::from_millis(10));
                }
            }
            CollectorMode::Never => loop {
                if shared.stop.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(Duration::from_millis(20));
            },
        }
        let ct = if status == 200 {
            "application/x-protobuf"
        } else {
            "text/plain"
        };
        if !write_answer(&mut writer, status, ct, close) || close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}
