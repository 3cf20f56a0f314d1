//! Tracing (notes/tracing-spec.md): W3C trace context propagation to the upstream, the
//! server and upstream-attempt spans exported over OTLP/HTTP to a test collector, head
//! sampling, `sample_errors`, the export queue and its metrics, and the `[tracing]` config
//! checks. Everything is observed from outside: what the upstream received, what the
//! collector received, the access log and `/metrics`.

mod common;
#[path = "common/otlp.rs"]
mod otlp;

use common::*;
use otlp::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";
const TRACESTATE: &str = "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7";
/// How long an exported span may take to reach the collector (flush_interval_ms is 50).
const WAIT: Duration = Duration::from_secs(5);
const EXPORTED: &str = "tollgate_tracing_spans_exported_total";
const DROPPED: &str = "tollgate_tracing_spans_dropped_total";

/// A trace id of its own for each test request (valid: lowercase hex, not all zero).
fn tid(n: u64) -> String {
    format!("{:016x}{n:016x}", 0x5eed_0000_0000_0001u64)
}

/// A valid, sampled `traceparent` with parent [`PARENT_ID`].
fn sampled(trace: &str) -> String {
    format!("00-{trace}-{PARENT_ID}-01")
}

/// `[tracing]` to `endpoint` with a 50 ms flush, plus `keys` (more `key = value` lines).
fn tracing(endpoint: &str, keys: &str) -> String {
    format!("[tracing]\nendpoint = \"{endpoint}\"\nflush_interval_ms = 50\n{keys}\n\n")
}

/// `head` (usually a `[tracing]` table), then upstream `echo` (one backend) behind route
/// `api` (`/api`).
fn echo_config(head: &str, echo: &str) -> String {
    format!(
        r#"{head}
[[upstreams]]
name = "echo"
backends = ["{echo}"]

[[routes]]
name = "api"
paths = ["/api"]
upstream = "echo"
"#
    )
}

/// A parsed `traceparent` (panics unless it is `00-<32 hex>-<16 hex>-<2 hex>`, lowercase,
/// ids not all zero: what the gateway must send upstream).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Tp {
    trace: String,
    parent: String,
    flags: String,
}

fn parse_tp(v: &str) -> Tp {
    let parts: Vec<&str> = v.split('-').collect();
    let lower_hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    assert!(
        parts.len() == 4
            && parts[0] == "00"
            && lower_hex(parts[1], 32)
            && lower_hex(parts[2], 16)
            && lower_hex(parts[3], 2)
            && parts[1].bytes().any(|b| b != b'0')
            && parts[2].bytes().any(|b| b != b'0'),
        "not a valid version-00 traceparent: {v:?}"
    );
    Tp {
        trace: parts[1].to_string(),
        parent: parts[2].to_string(),
        flags: parts[3].to_string(),
    }
}

/// For echo-upstream answers: every value of header `name` the upstream received, one per
/// header line.
fn upstream_lines(r: &Response, name: &str) -> Vec<String> {
    r.json()["header_lines"]
        .as_array()
        .unwrap_or_else(|| panic!("not an echo answer: {} {}", r.status, r.text()))
        .iter()
        .filter(|l| l[0] == name)
        .map(|l| l[1].as_str().unwrap_or_default().to_string())
        .collect()
}

/// The one `traceparent` the echo upstream received (panics unless exactly one, valid).
fn upstream_tp(r: &Response) -> Tp {
    let tps = upstream_lines(r, "traceparent");
    assert_eq!(
        tps.len(),
        1,
        "the upstream must receive exactly one traceparent: {}",
        r.text()
    );
    parse_tp(&tps[0])
}

/// Wait for the access log line of request `id`.
fn line_of(gw: &Gateway, id: &str) -> Json {
    let mut found = None;
    wait_until(WAIT, || {
        found = gw.access_log().into_iter().find(|l| l["request_id"] == id);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no access log line for {id}; stdout:\n{}", gw.stdout()))
}

/// The trace id the access log gives request `id`.
fn logged_trace_id(gw: &Gateway, id: &str) -> String {
    let l = line_of(gw, id);
    l["trace_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no trace_id in the access log line of {id}: {l}"))
        .to_string()
}

/// The server span and the client spans (ordered by `tollgate.attempt`) of a trace; panics
/// unless there is exactly one server span.
fn split_trace(spans: &[ExportedSpan]) -> (ExportedSpan, Vec<ExportedSpan>) {
    let servers: Vec<&ExportedSpan> = spans.iter().filter(|s| s.is_server()).collect();
    assert_eq!(
        servers.len(),
        1,
        "one server span per request:\n{}",
        describe_spans(spans)
    );
    let mut clients: Vec<ExportedSpan> = spans.iter().filter(|s| s.is_client()).cloned().collect();
    clients.sort_by_key(|s| s.int_attr("tollgate.attempt").unwrap_or(i64::MAX));
    assert_eq!(
        servers.len() + clients.len(),
        spans.len(),
        "only SERVER and CLIENT spans:\n{}",
        describe_spans(spans)
    );
    (servers[0].clone(), clients)
}

/// Wait for trace `trace` to have `n` spans, then give the exporter one more flush to send
/// any extra span (so a count can be asserted exactly).
fn settled_trace(c: &Collector, trace: &str, n: usize) -> Vec<ExportedSpan> {
    c.wait_trace(trace, n, WAIT);
    thread::sleep(Duration::from_millis(200));
    let spans = c.spans_of_trace(trace);
    assert_eq!(
        spans.len(),
        n,
        "spans of trace {trace}:\n{}\nall spans:\n{}",
        describe_spans(&spans),
        describe_spans(&c.spans())
    );
    spans
}

fn event_attr<'a>(e: &'a SpanEvent, key: &str) -> Option<&'a str> {
    attr_str(&e.attributes, key)
}

/// `head` and routes `api` and `status` (`/status/<code>` answers that status) to the echo
/// upstream at `echo`, and `down` to the dead backend `dead`.
fn three_routes(head: &str, echo: &str, dead: &str) -> String {
    format!(
        r#"{head}
[[upstreams]]
name = "echo"
backends = ["{echo}"]

[[upstreams]]
name = "gone"
backends = ["{dead}"]
retries = 0

[[routes]]
name = "api"
paths = ["/api"]
upstream = "echo"

[[routes]]
name = "down"
paths = ["/down"]
upstream = "gone"

# The echo upstream answers `/status/<code>` with that status.
[[routes]]
name = "status"
paths = ["/status"]
upstream = "echo"
"#
    )
}

/// `n` GETs of `path`, each answered 200 (and `check`ed) without waiting on the collector:
/// the slowest stays under a second.
fn fast_requests(gw: &Gateway, path: &str, n: usize, check: impl Fn(&Response)) {
    let mut slowest = Duration::ZERO;
    for _ in 0..n {
        let t0 = Instant::now();
        let r = gw.get(path);
        slowest = slowest.max(t0.elapsed());
        assert_eq!(r.status, 200);
        check(&r);
    }
    assert!(
        slowest < Duration::from_secs(1),
        "slowest request {slowest:?}"
    );
}

/// Wait (up to `secs`) for `tollgate_tracing_spans_dropped_total{reason}` to count something.
fn assert_dropped(gw: &Gateway, reason: &str, secs: u64) {
    let mut dropped = None;
    wait_until(Duration::from_secs(secs), || {
        dropped = gw.metric(DROPPED, &[("reason", reason)]);
        dropped.is_some_and(|v| v > 0.0)
    });
    assert!(
        dropped.is_some_and(|v| v > 0.0),
        "{reason} = {dropped:?}; metrics:\n{}",
        gw.metrics()
    );
}

/// A valid incoming traceparent is joined: the upstream receives exactly one traceparent of
/// the same trace whose parent-id is the upstream attempt span's id, flags 01 (parent
/// sampled, although sample_ratio = 0), the tracestate unchanged; the server span's parent is
/// the incoming parent-id, the attempt span's parent is the server span, the child lies
/// within its parent; the access log's trace_id is the trace id and the exported counter
/// counts the two spans.
#[test]
fn incoming_traceparent_is_joined() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let gw = Gateway::start(&echo_config(
        &tracing(&collector.endpoint(), "sample_ratio = 0.0"),
        &echo.address(),
    ));
    let tp = sampled(TRACE_ID);
    let r = gw.request(
        "GET",
        "/api/join",
        &[
            ("x-request-id", "join-1"),
            ("traceparent", &tp),
            ("tracestate", TRACESTATE),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let up = upstream_tp(&r);
    assert_eq!(up.trace, TRACE_ID, "the upstream joins the incoming trace");
    assert_eq!(up.flags, "01", "sampled by the parent");
    assert_ne!(
        up.parent, PARENT_ID,
        "the upstream's parent is the gateway's attempt span, not the client's span"
    );
    assert_eq!(upstream_lines(&r, "tracestate"), [TRACESTATE]);

    let spans = settled_trace(&collector, TRACE_ID, 2);
    let (server, clients) = split_trace(&spans);
    assert_eq!(clients.len(), 1, "{}", describe_spans(&spans));
    let client = &clients[0];
    assert_eq!(server.parent_id(), PARENT_ID, "{}", server.describe());
    assert_eq!(server.name(), "GET api");
    assert_eq!(
        client.parent_id(),
        server.span_id(),
        "{}",
        client.describe()
    );
    assert_eq!(client.span_id(), up.parent, "traceparent sent upstream");
    assert_eq!(client.name(), "upstream echo");
    assert_ne!(server.span_id(), client.span_id());
    assert!(
        server.span.start_time_unix_nano > 0
            && server.span.end_time_unix_nano >= server.span.start_time_unix_nano,
        "{:?}",
        server.span
    );
    assert!(
        client.span.start_time_unix_nano >= server.span.start_time_unix_nano
            && client.span.end_time_unix_nano <= server.span.end_time_unix_nano
            && client.span.end_time_unix_nano >= client.span.start_time_unix_nano,
        "the attempt lies within the request:\n{}\n{:?}\n{:?}",
        describe_spans(&spans),
        (
            server.span.start_time_unix_nano,
            server.span.end_time_unix_nano
        ),
        (
            client.span.start_time_unix_nano,
            client.span.end_time_unix_nano
        )
    );
    assert_eq!(logged_trace_id(&gw, "join-1"), TRACE_ID);
    assert_eq!(gw.wait_metric(EXPORTED, &[], 2.0), Some(2.0));
    collector.assert_no_problems();
}

/// The server span's attributes (method, url.path without the query, scheme, server.address
/// without port, protocol version, client address, user agent, status code as an int, route,
/// upstream, consumer, request id, retries) and status UNSET for a 200; the attempt span's
/// (upstream, backend address and port, attempt 1, status code); the default resource
/// (service.name "tollgate", service.version) and scope "tollgate". The query's secret appears
/// nowhere in the exported bytes. An HTTP/1.0 request has network.protocol.version "1.0"; its
/// 401 from key_auth has an error.type, tollgate.answered_by "key_auth" and status UNSET.
#[test]
fn span_attributes() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let cfg = format!(
        r#"{}
[[upstreams]]
name = "echo"
backends = ["{}"]

[[consumers]]
username = "alice"
keys = ["alice-key-0123456789"]

[[routes]]
name = "api"
paths = ["/api"]
upstream = "echo"
plugins = ["key_auth"]
"#,
        tracing(&collector.endpoint(), "sample_ratio = 0.0"),
        echo.address()
    );
    let gw = Gateway::start(&cfg);
    let t1 = tid(1);
    let tp = sampled(&t1);
    let r = gw.request(
        "GET",
        "/api/items?api_key=secret-q-7731&page=2",
        &[
            ("host", "api.example.com:8080"),
            ("user-agent", "trace-test/1.0"),
            ("apikey", "alice-key-0123456789"),
            ("x-request-id", "attrs-1"),
            ("traceparent", &tp),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_path(), "/api/items?api_key=secret-q-7731&page=2");
    let spans = settled_trace(&collector, &t1, 2);
    let (server, clients) = split_trace(&spans);
    let d = server.describe();
    assert_eq!(server.name(), "GET api", "{d}");
    assert_eq!(server.str_attr("http.request.method"), Some("GET"), "{d}");
    assert_eq!(server.str_attr("url.path"), Some("/api/items"), "{d}");
    assert_eq!(server.str_attr("url.scheme"), Some("http"), "{d}");
    assert_eq!(
        server.str_attr("server.address"),
        Some("api.example.com"),
        "{d}"
    );
    assert_eq!(
        server.str_attr("network.protocol.version"),
        Some("1.1"),
        "{d}"
    );
    assert_eq!(server.str_attr("client.address"), Some("127.0.0.1"), "{d}");
    assert_eq!(
        server.str_attr("user_agent.original"),
        Some("trace-test/1.0"),
        "{d}"
    );
    assert_eq!(
        server.int_attr("http.response.status_code"),
        Some(200),
        "{d}"
    );
    assert_eq!(server.str_attr("tollgate.route"), Some("api"), "{d}");
    assert_eq!(server.str_attr("tollgate.upstream"), Some("echo"), "{d}");
    assert_eq!(server.str_attr("tollgate.consumer"), Some("alice"), "{d}");
    assert_eq!(
        server.str_attr("tollgate.request_id"),
        Some("attrs-1"),
        "{d}"
    );
    assert_eq!(server.int_attr("tollgate.retries"), Some(0), "{d}");
    assert_eq!(server.attr("error.type"), None, "{d}");
    assert_eq!(server.status_code(), STATUS_UNSET, "{d}");

    assert_eq!(clients.len(), 1);
    let c = &clients[0];
    let d = c.describe();
    assert_eq!(c.str_attr("tollgate.upstream"), Some("echo"), "{d}");
    assert_eq!(c.str_attr("server.address"), Some("127.0.0.1"), "{d}");
    assert_eq!(
        c.int_attr("server.port"),
        Some(i64::from(echo.addr.port())),
        "{d}"
    );
    assert_eq!(c.int_attr("tollgate.attempt"), Some(1), "{d}");
    assert_eq!(c.int_attr("http.response.status_code"), Some(200), "{d}");
    assert_eq!(c.attr("error.type"), None, "{d}");

    for s in &spans {
        assert_eq!(s.scope, "tollgate", "{}", s.describe());
        assert_eq!(s.resource_str("service.name"), Some("tollgate"));
        assert_eq!(
            s.resource_str("service.version"),
            Some(env!("CARGO_PKG_VERSION")),
            "{}",
            attrs_text(&s.resource)
        );
    }

    // HTTP/1.0, without a user agent or a consumer key: the route rejects it (401), which is
    // no server error.
    let t2 = tid(2);
    let raw = format!(
        "GET /api/old HTTP/1.0\r\nHost: api.example.com\r\ntraceparent: {}\r\n\r\n",
        sampled(&t2)
    );
    let r = send_raw(gw.addr, raw.as_bytes());
    assert_eq!(r.status, 401, "{}", r.text());
    let spans = settled_trace(&collector, &t2, 1);
    let s = &spans[0];
    let d = s.describe();
    assert!(s.is_server(), "{d}");
    assert_eq!(s.str_attr("network.protocol.version"), Some("1.0"), "{d}");
    assert_eq!(s.int_attr("http.response.status_code"), Some(401), "{d}");
    assert_eq!(s.str_attr("user_agent.original"), None, "{d}");
    assert_eq!(s.str_attr("tollgate.consumer"), None, "{d}");
    assert!(s.str_attr("error.type").is_some(), "a plugin answered: {d}");
    assert_eq!(s.str_attr("tollgate.answered_by"), Some("key_auth"), "{d}");
    assert_eq!(s.status_code(), STATUS_UNSET, "a 401 is not ERROR: {d}");

    let bytes = collector.all_bytes();
    assert!(!bytes.is_empty());
    assert!(
        !bytes.windows(13).any(|w| w == b"secret-q-7731"),
        "the query string was exported"
    );
    collector.assert_no_problems();
}

/// Status ERROR for 5xx: an upstream's 500 (status code 500 on both spans, no error.type on
/// the server span since the upstream answered, route "status"), a dead backend's 502 (error.type
/// "upstream_unavailable" on the server span, one attempt with error.type "connect" and no
/// status code); a 404 with no route is a server span named just "GET" with error.type
/// "route_not_found", status UNSET and no attempt span.
#[test]
fn errors_on_spans() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let dead = dead_addr();
    let cfg = three_routes(
        &tracing(&collector.endpoint(), "sample_ratio = 0.0"),
        &echo.address(),
        &dead,
    );
    let gw = Gateway::start(&cfg);

    let t500 = tid(500);
    let r = gw.request(
        "GET",
        "/status/500",
        &[("traceparent", &sampled(&t500))],
        b"",
    );
    assert_eq!(r.status, 500);
    let spans = settled_trace(&collector, &t500, 2);
    let (server, clients) = split_trace(&spans);
    let d = describe_spans(&spans);
    assert_eq!(server.name(), "GET status", "{d}");
    assert_eq!(server.status_code(), STATUS_ERROR, "{d}");
    assert_eq!(
        server.int_attr("http.response.status_code"),
        Some(500),
        "{d}"
    );
    assert_eq!(
        server.attr("error.type"),
        None,
        "the upstream answered: {d}"
    );
    assert_eq!(
        clients[0].int_attr("http.response.status_code"),
        Some(500),
        "{d}"
    );

    let t502 = tid(502);
    let r = gw.request("GET", "/down/x", &[("traceparent", &sampled(&t502))], b"");
    assert_eq!(r.status, 502, "{}", r.text());
    let spans = settled_trace(&collector, &t502, 2);
    let (server, clients) = split_trace(&spans);
    let d = describe_spans(&spans);
    assert_eq!(server.name(), "GET down", "{d}");
    assert_eq!(server.status_code(), STATUS_ERROR, "{d}");
    assert_eq!(
        server.int_attr("http.response.status_code"),
        Some(502),
        "{d}"
    );
    assert_eq!(
        server.str_attr("error.type"),
        Some("upstream_unavailable"),
        "{d}"
    );
    assert_eq!(server.str_attr("tollgate.upstream"), Some("gone"), "{d}");
    let c = &clients[0];
    assert_eq!(c.name(), "upstream gone", "{d}");
    assert_eq!(c.parent_id(), server.span_id(), "{d}");
    assert_eq!(c.str_attr("error.type"), Some("connect"), "{d}");
    assert_eq!(c.int_attr("http.response.status_code"), None, "{d}");
    let dead_port: i64 = dead.rsplit(':').next().unwrap().parse().unwrap();
    assert_eq!(c.int_attr("server.port"), Some(dead_port), "{d}");

    let t404 = tid(404);
    let r = gw.request("GET", "/nowhere", &[("traceparent", &sampled(&t404))], b"");
    assert_eq!(r.status, 404);
    let spans = settled_trace(&collector, &t404, 1);
    let s = &spans[0];
    let d = s.describe();
    assert!(s.is_server(), "{d}");
    assert_eq!(s.name(), "GET", "no route matched: {d}");
    assert_eq!(s.str_attr("error.type"), Some("route_not_found"), "{d}");
    assert_eq!(s.int_attr("http.response.status_code"), Some(404), "{d}");
    assert_eq!(s.status_code(), STATUS_UNSET, "{d}");
    collector.assert_no_problems();
}

/// One CLIENT span per attempt on a connect retry: upstream with a refused backend and a live
/// one (`retries = 1`), requests until one was retried. Per trace the attempts number
/// 1..=retries+1, all children of the server span; in a retried trace attempt 1 went to the
/// dead port with error.type "connect", the last one got the 200 from the live backend, the
/// server span has a "retry" event with cause "connect", and the upstream's traceparent names
/// the last attempt.
#[test]
fn connect_retry_has_a_span_per_attempt() {
    let collector = Collector::start();
    let live = Upstream::start("live");
    let dead = dead_addr();
    let dead_port: i64 = dead.rsplit(':').next().unwrap().parse().unwrap();
    let cfg = format!(
        r#"{}
[[upstreams]]
name = "pair"
backends = ["{dead}", "{}"]
algorithm = "round_robin"
retries = 1

[[routes]]
name = "api"
paths = ["/api"]
upstream = "pair"
"#,
        tracing(&collector.endpoint(), "sample_ratio = 0.0"),
        live.address()
    );
    let gw = Gateway::start(&cfg);
    let mut retried = 0;
    for n in 0..6u64 {
        let t = tid(100 + n);
        let r = gw.request("GET", "/api/r", &[("traceparent", &sampled(&t))], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        let up = upstream_tp(&r);
        assert_eq!(up.trace, t);
        collector.wait_trace(&t, 2, WAIT);
        thread::sleep(Duration::from_millis(150));
        let spans = collector.spans_of_trace(&t);
        let (server, clients) = split_trace(&spans);
        let d = describe_spans(&spans);
        let retries = server.int_attr("tollgate.retries").expect(&d);
        assert_eq!(clients.len() as i64, retries + 1, "{d}");
        for (i, c) in clients.iter().enumerate() {
            assert_eq!(c.parent_id(), server.span_id(), "{d}");
            assert_eq!(c.int_attr("tollgate.attempt"), Some(i as i64 + 1), "{d}");
            assert_eq!(c.name(), "upstream pair", "{d}");
        }
        let last = clients.last().unwrap();
        assert_eq!(
            last.span_id(),
            up.parent,
            "upstream got the last attempt: {d}"
        );
        assert_eq!(last.int_attr("http.response.status_code"), Some(200), "{d}");
        assert_eq!(
            last.int_attr("server.port"),
            Some(i64::from(live.addr.port())),
            "{d}"
        );
        let events = server.events("retry");
        assert_eq!(events.len() as i64, retries, "{d}");
        if retries == 1 {
            retried += 1;
            let first = &clients[0];
            assert_eq!(first.str_attr("error.type"), Some("connect"), "{d}");
            assert_eq!(first.int_attr("server.port"), Some(dead_port), "{d}");
            assert_eq!(first.int_attr("http.response.status_code"), None, "{d}");
            assert_eq!(
                event_attr(events[0], "tollgate.retry.cause"),
                Some("connect"),
                "{d}"
            );
            assert_eq!(server.status_code(), STATUS_UNSET, "{d}");
        }
    }
    assert!(retried >= 1, "no request went to the dead backend first");
    // The attempts are in tollgate_upstream_attempt_duration_seconds by backend and outcome.
    let attempts = |backend: &str, outcome: &str| {
        gw.metric(
            "tollgate_upstream_attempt_duration_seconds_count",
            &[
                ("upstream", "pair"),
                ("backend", backend),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(attempts(&dead, "connect_error"), Some(retried as f64));
    assert_eq!(attempts(&live.address(), "response"), Some(6.0));
    assert_eq!(attempts(&dead, "response"), None);
    collector.assert_no_problems();
}

/// A retry on status (`retry_on_status = [503]`): the first attempt's span has status code
/// 503 and error.type "status", the second 200; each backend received the traceparent of its
/// own attempt; the server span has retries 1, a "retry" event with cause "status" and a 200.
#[test]
fn status_retry_has_two_attempt_spans() {
    let seen = Arc::new(AtomicUsize::new(0));
    let make = |seen: Arc<AtomicUsize>| {
        RawUpstream::with(move |r| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::Bytes(http_reply(503, &[], b"busy"))
            } else {
                default_reply(r)
            }
        })
    };
    let (a, b) = (make(seen.clone()), make(seen));
    let collector = Collector::start();
    let cfg = format!(
        r#"{}
[[upstreams]]
name = "pair"
backends = ["{}", "{}"]

[[routes]]
name = "api"
paths = ["/api"]
upstream = "pair"
retry_on_status = [503]
max_retries = 1
"#,
        tracing(&collector.endpoint(), "sample_ratio = 0.0"),
        a.address(),
        b.address()
    );
    let gw = Gateway::start(&cfg);
    let t = tid(7);
    let r = gw.request("GET", "/api/s", &[("traceparent", &sampled(&t))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let spans = settled_trace(&collector, &t, 3);
    let (server, clients) = split_trace(&spans);
    let d = describe_spans(&spans);
    assert_eq!(clients.len(), 2, "{d}");
    assert_eq!(
        clients[0].int_attr("http.response.status_code"),
        Some(503),
        "{d}"
    );
    assert_eq!(clients[0].str_attr("error.type"), Some("status"), "{d}");
    assert_eq!(
        clients[1].int_attr("http.response.status_code"),
        Some(200),
        "{d}"
    );
    assert_eq!(clients[1].attr("error.type"), None, "{d}");
    assert_eq!(server.int_attr("tollgate.retries"), Some(1), "{d}");
    assert_eq!(
        server.int_attr("http.response.status_code"),
        Some(200),
        "{d}"
    );
    assert_eq!(server.status_code(), STATUS_UNSET, "{d}");
    let events = server.events("retry");
    assert_eq!(events.len(), 1, "{d}");
    assert_eq!(
        event_attr(events[0], "tollgate.retry.cause"),
        Some("status"),
        "{d}"
    );

    let mut got: Vec<Recorded> = a.requests().into_iter().chain(b.requests()).collect();
    got.sort_by_key(|r| r.first_byte_at);
    assert_eq!(got.len(), 2);
    for (rec, attempt) in got.iter().zip(&clients) {
        let tps = rec.header_all("traceparent");
        assert_eq!(tps.len(), 1, "{}", String::from_utf8_lossy(&rec.head));
        let tp = parse_tp(tps[0]);
        assert_eq!(tp.trace, t);
        assert_eq!(
            tp.parent,
            attempt.span_id(),
            "each attempt sends its own id"
        );
        assert_eq!(tp.flags, "01");
    }
    collector.assert_no_problems();
}

/// Head sampling of new traces: sample_ratio = 0.25 over 400 requests without traceparent
/// exports between 50 and 150 server spans, each request got its own trace id, and a request
/// was exported exactly when the traceparent sent upstream had flags 01.
#[test]
fn sample_ratio_samples_a_share_of_new_traces() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let gw = Gateway::start(&echo_config(
        &tracing(&collector.endpoint(), "sample_ratio = 0.25"),
        &echo.address(),
    ));
    let mut flagged = BTreeSet::new();
    let mut all = BTreeSet::new();
    for _ in 0..400 {
        let r = gw.get("/api/sample");
        assert_eq!(r.status, 200);
        let tp = upstream_tp(&r);
        assert!(tp.flags == "00" || tp.flags == "01", "{tp:?}");
        if tp.flags == "01" {
            flagged.insert(tp.trace.clone());
        }
        all.insert(tp.trace);
    }
    assert_eq!(all.len(), 400, "a new trace id per request");
    assert!(
        (50..=150).contains(&flagged.len()),
        "{} of 400 sampled at 0.25",
        flagged.len()
    );
    wait_until(Duration::from_secs(10), || {
        collector.server_spans().len() >= flagged.len()
    });
    thread::sleep(Duration::from_millis(300));
    let exported: BTreeSet<String> = collector
        .server_spans()
        .iter()
        .map(ExportedSpan::trace_id)
        .collect();
    assert_eq!(collector.server_spans().len(), exported.len());
    assert_eq!(
        exported, flagged,
        "exported traces = traces sent upstream with flags 01"
    );
    collector.assert_no_problems();
}

/// sample_ratio = 0: no span of a request without traceparent is exported, yet each upstream
/// request carries a traceparent (a new trace id, flags 00) and the access log has that
/// trace id; a sampled incoming request, sent last, is exported (the exporter works).
#[test]
fn sample_ratio_zero_exports_nothing_but_propagates() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let gw = Gateway::start(&echo_config(
        &tracing(&collector.endpoint(), "sample_ratio = 0.0"),
        &echo.address(),
    ));
    let mut ids = BTreeSet::new();
    for i in 0..30 {
        let rid = format!("zero-{i}");
        let r = gw.request("GET", "/api/z", &[("x-request-id", &rid)], b"");
        assert_eq!(r.status, 200);
        let tp = upstream_tp(&r);
        assert_eq!(tp.flags, "00", "not sampled");
        if i == 0 {
            assert_eq!(logged_trace_id(&gw, &rid), tp.trace, "access log trace_id");
        }
        ids.insert(tp.trace);
    }
    assert_eq!(ids.len(), 30);
    let marker = tid(9);
    let r = gw.request("GET", "/api/m", &[("traceparent", &sampled(&marker))], b"");
    assert_eq!(r.status, 200);
    settled_trace(&collector, &marker, 2);
    let others: Vec<ExportedSpan> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id() != marker)
        .collect();
    assert!(others.is_empty(), "{}", describe_spans(&others));
    assert_eq!(gw.wait_metric(EXPORTED, &[], 2.0), Some(2.0));
    collector.assert_no_problems();
}

/// The incoming flags decide (parent-based), whatever sample_ratio says: at ratio 1.0 flags 00
/// and 02 (bit 0 clear) are not exported and go upstream with flags 00; flags 03 is sampled
/// (flags 01 upstream) and exported; a request without traceparent is exported (ratio 1.0).
#[test]
fn incoming_flags_decide_sampling() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let gw = Gateway::start(&echo_config(
        &tracing(&collector.endpoint(), "sample_ratio = 1.0"),
        &echo.address(),
    ));
    let (t00, t02, t03) = (tid(0x100), tid(0x102), tid(0x103));
    for (t, flags, up_flags) in [(&t00, "00", "00"), (&t02, "02", "00"), (&t03, "03", "01")] {
        let r = gw.request(
            "GET",
            "/api/f",
            &[("traceparent", &format!("00-{t}-{PARENT_ID}-{flags}"))],
            b"",
        );
        assert_eq!(r.status, 200);
        let tp = upstream_tp(&r);
        assert_eq!(tp.trace, *t);
        assert_eq!(tp.flags, up_flags, "incoming flags {flags}");
    }
    let r = gw.get("/api/new");
    let fresh = upstream_tp(&r);
    assert_eq!(fresh.flags, "01", "ratio 1.0 samples every new trace");
    settled_trace(&collector, &fresh.trace, 2);
    let spans = settled_trace(&collector, &t03, 2);
    assert_eq!(split_trace(&spans).0.parent_id(), PARENT_ID);
    for t in [&t00, &t02] {
        let spans = collector.spans_of_trace(t);
        assert!(
            spans.is_empty(),
            "unsampled parent exported:\n{}",
            describe_spans(&spans)
        );
    }
    collector.assert_no_problems();
}

/// sample_errors = true with sample_ratio = 0: a 502 (dead backend) and an upstream's 500 are
/// exported although not sampled, a 200 is not; the upstream still got flags 00.
#[test]
fn sample_errors_exports_failed_requests() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let cfg = three_routes(
        &tracing(
            &collector.endpoint(),
            "sample_ratio = 0.0\nsample_errors = true",
        ),
        &echo.address(),
        &dead_addr(),
    );
    let gw = Gateway::start(&cfg);
    let r = gw.request("GET", "/api/ok", &[("x-request-id", "se-200")], b"");
    assert_eq!(r.status, 200);
    let ok_trace = upstream_tp(&r);
    assert_eq!(ok_trace.flags, "00");
    let r = gw.request("GET", "/status/500", &[("x-request-id", "se-500")], b"");
    assert_eq!(r.status, 500);
    assert_eq!(upstream_tp(&r).flags, "00");
    let r = gw.request("GET", "/down/x", &[("x-request-id", "se-502")], b"");
    assert_eq!(r.status, 502);

    let t500 = logged_trace_id(&gw, "se-500");
    let t502 = logged_trace_id(&gw, "se-502");
    assert_eq!(logged_trace_id(&gw, "se-200"), ok_trace.trace);
    let spans = settled_trace(&collector, &t502, 2);
    let (server, _) = split_trace(&spans);
    assert_eq!(server.status_code(), STATUS_ERROR);
    assert_eq!(server.int_attr("http.response.status_code"), Some(502));
    let spans = settled_trace(&collector, &t500, 2);
    assert_eq!(
        split_trace(&spans).0.int_attr("http.response.status_code"),
        Some(500)
    );
    let spans = collector.spans_of_trace(&ok_trace.trace);
    assert!(
        spans.is_empty(),
        "a 200 exported:\n{}",
        describe_spans(&spans)
    );
    collector.assert_no_problems();
}

/// An invalid incoming traceparent (bad hex, version ff, all-zero trace id, all-zero
/// parent-id, uppercase hex, a short flags field, an extra field, two traceparent headers)
/// starts a new trace: the upstream gets exactly one valid traceparent of another trace id,
/// no tracestate; the exported server span has no parent; the access log has the new id.
#[test]
fn invalid_traceparent_starts_a_new_trace() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let gw = Gateway::start(&echo_config(
        &tracing(&collector.endpoint(), "sample_ratio = 1.0"),
        &echo.address(),
    ));
    let zero_trace = "0".repeat(32);
    let cases = [
        (
            "bad hex",
            "00-4bf92f3577b34da6a3ce929d0e0e47zz-00f067aa0ba902b7-01".to_string(),
        ),
        ("version ff", format!("ff-{TRACE_ID}-{PARENT_ID}-01")),
        ("zero trace id", format!("00-{zero_trace}-{PARENT_ID}-01")),
        (
            "zero parent id",
            format!("00-{TRACE_ID}-0000000000000000-01"),
        ),
        (
            "uppercase",
            format!(
                "00-{}-{}-01",
                TRACE_ID.to_uppercase(),
                PARENT_ID.to_uppercase()
            ),
        ),
        ("short flags", format!("00-{TRACE_ID}-{PARENT_ID}-1")),
        ("extra field", format!("00-{TRACE_ID}-{PARENT_ID}-01-00")),
    ];
    let mut seen = BTreeSet::new();
    for (i, (what, tp)) in cases.iter().enumerate() {
        let rid = format!("inv-{i}");
        let r = gw.request(
            "GET",
            "/api/inv",
            &[
                ("x-request-id", &rid),
                ("traceparent", tp),
                ("tracestate", TRACESTATE),
            ],
            b"",
        );
        assert_eq!(r.status, 200, "{what}");
        let up = upstream_tp(&r);
        assert_ne!(up.trace, TRACE_ID, "{what}: {tp} was joined");
        assert_ne!(up.trace, zero_trace);
        assert_eq!(up.flags, "01", "{what}: ratio 1.0");
        assert!(
            upstream_lines(&r, "tracestate").is_empty(),
            "{what}: tracestate kept with an invalid traceparent: {}",
            r.text()
        );
        assert_eq!(logged_trace_id(&gw, &rid), up.trace, "{what}");
        let spans = settled_trace(&collector, &up.trace, 2);
        let (server, _) = split_trace(&spans);
        assert_eq!(server.parent_id(), "", "{what}: a new trace is a root");
        seen.insert(up.trace);
    }
    assert_eq!(seen.len(), cases.len());

    // Two (each valid) traceparent headers.
    let (ta, tb) = (tid(0xa), tid(0xb));
    let raw = format!(
        "GET /api/dup HTTP/1.1\r\nHost: t\r\ntraceparent: {}\r\ntraceparent: {}\r\ntracestate: {TRACESTATE}\r\nConnection: close\r\n\r\n",
        sampled(&ta),
        sampled(&tb)
    );
    let r = send_raw(gw.addr, raw.as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let up = upstream_tp(&r);
    assert!(
        up.trace != ta && up.trace != tb,
        "two traceparents: one was joined: {up:?}"
    );
    assert!(upstream_lines(&r, "tracestate").is_empty(), "{}", r.text());
    let spans = settled_trace(&collector, &up.trace, 2);
    assert_eq!(split_trace(&spans).0.parent_id(), "");
    collector.assert_no_problems();
}

/// A collector that refuses connections: requests are all 200 and fast (under 1 s each),
/// the gateway keeps running, and `tollgate_tracing_spans_dropped_total{reason="export_failed"}`
/// grows while nothing counts as exported.
#[test]
fn collector_down_drops_spans_not_requests() {
    let echo = Upstream::start("echo");
    let endpoint = format!("http://{}/v1/traces", dead_addr());
    let gw = Gateway::start(&echo_config(
        &tracing(&endpoint, "sample_ratio = 1.0\ntimeout_ms = 500"),
        &echo.address(),
    ));
    fast_requests(&gw, "/api/down", 30, |r| {
        assert_eq!(upstream_tp(r).flags, "01")
    });
    assert_dropped(&gw, "export_failed", 10);
    assert!(
        gw.metric(EXPORTED, &[]).unwrap_or(0.0) == 0.0,
        "{}",
        gw.metrics()
    );
    assert!(gw.is_running());
}

/// A collector slower than timeout_ms (answers after 3 s, timeout 200 ms): exports are tried
/// and counted as failed (`reason="export_failed"`), requests stay fast.
#[test]
fn slow_collector_exports_time_out() {
    let collector = Collector::with_mode(CollectorMode::Delay(Duration::from_secs(3)));
    let echo = Upstream::start("echo");
    let gw = Gateway::start(&echo_config(
        &tracing(
            &collector.endpoint(),
            "sample_ratio = 1.0\ntimeout_ms = 200",
        ),
        &echo.address(),
    ));
    fast_requests(&gw, "/api/slow-collector", 10, |_| {});
    assert_dropped(&gw, "export_failed", 5);
    assert!(collector.export_count() >= 1, "no export was tried");
    collector.assert_no_problems();
}

/// A collector that never answers, with queue_size = 4: 60 requests are all answered 200
/// quickly (the request path does not wait on the export), and
/// `tollgate_tracing_spans_dropped_total{reason="queue_full"}` grows.
#[test]
fn stuck_collector_fills_the_queue_not_the_requests() {
    let collector = Collector::with_mode(CollectorMode::Never);
    let echo = Upstream::start("echo");
    let gw = Gateway::start(&echo_config(
        &tracing(
            &collector.endpoint(),
            "sample_ratio = 1.0\nqueue_size = 4\nbatch_size = 2\ntimeout_ms = 30000",
        ),
        &echo.address(),
    ));
    fast_requests(&gw, "/api/stuck", 60, |_| {});
    assert_dropped(&gw, "queue_full", 5);
    assert!(collector.export_count() >= 1, "the exporter never tried");
    assert!(gw.is_running());
}

/// `headers` of the config arrive on each export request (with content-type
/// application/x-protobuf) and are never logged (even at debug); the resource has
/// `service_name` as service.name, service.version and the `resource` entries.
#[test]
fn export_headers_and_resource() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let keys = r#"sample_ratio = 1.0
service_name = "edge-gw"
headers = { "x-api-key" = "collector-secret-5521", "x-tenant" = "t-1" }
resource = { "deployment.environment" = "test", "region" = "eu-1" }"#;
    let gw = Gateway::builder(&echo_config(
        &tracing(&collector.endpoint(), keys),
        &echo.address(),
    ))
    .rust_log("debug")
    .start();
    let r = gw.get("/api/h");
    assert_eq!(r.status, 200);
    let t = upstream_tp(&r).trace;
    let spans = settled_trace(&collector, &t, 2);
    let headers: BTreeMap<String, String> = collector.received_headers().into_iter().collect();
    assert_eq!(
        headers.get("x-api-key").map(String::as_str),
        Some("collector-secret-5521"),
        "{headers:?}"
    );
    assert_eq!(
        headers.get("x-tenant").map(String::as_str),
        Some("t-1"),
        "{headers:?}"
    );
    assert!(
        headers
            .get("content-type")
            .is_some_and(|v| v.starts_with("application/x-protobuf")),
        "{headers:?}"
    );
    for s in &spans {
        let d = attrs_text(&s.resource);
        assert_eq!(s.resource_str("service.name"), Some("edge-gw"), "{d}");
        assert_eq!(
            s.resource_str("service.version"),
            Some(env!("CARGO_PKG_VERSION")),
            "{d}"
        );
        assert_eq!(
            s.resource_str("deployment.environment"),
            Some("test"),
            "{d}"
        );
        assert_eq!(s.resource_str("region"), Some("eu-1"), "{d}");
        assert_eq!(s.scope, "tollgate");
    }
    let logs = format!("{}{}", gw.stderr(), gw.stdout());
    assert!(
        !logs.contains("collector-secret-5521"),
        "an export header was logged"
    );
    collector.assert_no_problems();
}

/// batch_size bounds the spans of each export request: 10 sampled requests (20 spans) with
/// batch_size = 3 and a 500 ms flush arrive in exports of at most 3 spans, all 20 of them,
/// and `tollgate_tracing_spans_exported_total` counts 20.
#[test]
fn batch_size_bounds_each_export() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    let head = format!(
        "[tracing]\nendpoint = \"{}\"\nflush_interval_ms = 500\nbatch_size = 3\nsample_ratio = 1.0\n\n",
        collector.endpoint()
    );
    let gw = Gateway::start(&echo_config(&head, &echo.address()));
    for _ in 0..10 {
        assert_eq!(gw.get("/api/b").status, 200);
    }
    let spans = collector.wait_spans(20, WAIT);
    thread::sleep(Duration::from_millis(700));
    assert_eq!(collector.spans().len(), 20, "{}", describe_spans(&spans));
    let sizes: Vec<usize> = collector.exports().iter().map(|e| e.spans).collect();
    assert!(sizes.iter().all(|n| (1..=3).contains(n)), "{sizes:?}");
    assert_eq!(gw.wait_metric(EXPORTED, &[], 20.0), Some(20.0));
    collector.assert_no_problems();
}

/// Reloading is restart-only for `[tracing]`: a reload that points it at another collector
/// (and adds a route) applies the route, warns, and keeps exporting to the first collector.
#[test]
fn reload_keeps_the_tracing_config() {
    let first = Collector::start();
    let second = Collector::start();
    let echo = Upstream::start("echo");
    let before = echo_config(
        &tracing(&first.endpoint(), "sample_ratio = 1.0"),
        &echo.address(),
    );
    let gw = Gateway::start(&before);
    let t = upstream_tp(&gw.get("/api/one")).trace;
    settled_trace(&first, &t, 2);

    let after = format!(
        "{}\n[[routes]]\nname = \"more\"\npaths = [\"/more\"]\nupstream = \"echo\"\n",
        echo_config(
            &tracing(&second.endpoint(), "sample_ratio = 1.0"),
            &echo.address()
        )
    );
    gw.rewrite_config(&after);
    gw.reload();
    assert!(
        wait_until(WAIT, || gw.get("/more").status == 200),
        "the reload did not apply; stderr:\n{}",
        gw.stderr()
    );
    let r = gw.get("/more");
    let t2 = upstream_tp(&r).trace;
    settled_trace(&first, &t2, 2);
    assert!(
        second.spans().is_empty(),
        "{}",
        describe_spans(&second.spans())
    );
    let err = gw.stderr();
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.to_ascii_lowercase().contains("tracing")),
        "no warning about the unchanged [tracing]; stderr:\n{err}"
    );
}

/// `tollgate check` accepts a complete `[tracing]` and rejects sample_ratio = 1.5 and -0.1, an
/// endpoint that is not an http(s) URL, a missing endpoint and queue_size = 0, naming the key.
#[test]
fn check_rejects_bad_tracing_values() {
    let dir = TempDir::new("trace-check");
    let route = "\n[[routes]]\nname = \"m\"\npaths = [\"/\"]\nplugins = [\"mock\"]\n";
    let check = |tracing: &str| {
        let path = dir.path().join("t.toml");
        std::fs::write(&path, format!("{tracing}\n{route}")).unwrap();
        let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &[]);
        (code, format!("{out}{err}"))
    };
    let good = r#"[tracing]
endpoint = "http://127.0.0.1:4318/v1/traces"
service_name = "tollgate"
sample_ratio = 0.5
sample_errors = true
queue_size = 16
batch_size = 8
flush_interval_ms = 100
timeout_ms = 1000
headers = { "x-api-key" = "k" }
resource = { "deployment.environment" = "test" }
"#;
    let (code, text) = check(good);
    assert_eq!(code, 0, "a valid [tracing] is rejected: {text}");
    let ep = "endpoint = \"http://127.0.0.1:4318/v1/traces\"\n";
    let cases = [
        (
            format!("[tracing]\n{ep}sample_ratio = 1.5\n"),
            "tracing.sample_ratio",
        ),
        (
            format!("[tracing]\n{ep}sample_ratio = -0.1\n"),
            "tracing.sample_ratio",
        ),
        (
            "[tracing]\nendpoint = \"not a url\"\n".to_string(),
            "tracing.endpoint",
        ),
        (
            "[tracing]\nendpoint = \"ftp://127.0.0.1/v1/traces\"\n".to_string(),
            "tracing.endpoint",
        ),
        (
            format!("[tracing]\n{ep}queue_size = 0\n"),
            "tracing.queue_size",
        ),
        ("[tracing]\nsample_ratio = 0.5\n".to_string(), "endpoint"),
    ];
    for (cfg, key) in cases {
        let (code, text) = check(&cfg);
        assert_ne!(code, 0, "accepted:\n{cfg}\n{text}");
        assert!(text.contains(key), "{key} not named for:\n{cfg}\n{text}");
    }
}

/// Without `[tracing]` nothing changes: a traceparent (valid or not) and a tracestate reach
/// the upstream byte for byte, once each, and none is added to a request that had none.
#[test]
fn without_tracing_headers_pass_untouched() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nname = \"raw\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npaths = [\"/api\"]\nupstream = \"raw\"\n",
        up.address()
    ));
    let valid = sampled(TRACE_ID);
    let invalid = format!("00-{}-{PARENT_ID}-01", TRACE_ID.to_uppercase());
    for tp in [valid.as_str(), invalid.as_str()] {
        let r = gw.request(
            "GET",
            "/api/p",
            &[("traceparent", tp), ("tracestate", TRACESTATE)],
            b"",
        );
        assert_eq!(r.status, 200);
        let rec = up.requests().pop().expect("the upstream got the request");
        assert_eq!(rec.header_all("traceparent"), [tp]);
        assert_eq!(rec.header_all("tracestate"), [TRACESTATE]);
        let head = rec.head.clone();
        for want in [format!("{tp}\r\n"), format!("{TRACESTATE}\r\n")] {
            assert!(
                head.windows(want.len()).any(|w| w == want.as_bytes()),
                "{want:?} not in {}",
                escape_bytes(&head)
            );
        }
    }
    assert_eq!(gw.get("/api/none").status, 200);
    let rec = up.requests().pop().unwrap();
    assert!(
        rec.header_all("traceparent").is_empty(),
        "{}",
        escape_bytes(&rec.head)
    );
    assert!(rec.header_all("tracestate").is_empty());
}

/// The harness's collector itself: an encoded export is answered 200 with an empty protobuf
/// body and its span (with resource and scope) is kept; a wrong content type is answered 415
/// and recorded as a problem. (So a failure above is not the collector's.)
#[test]
fn the_test_collector_decodes_exports() {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
    use prost::Message;
    let collector = Collector::start();
    let kv = |k: &str, v: &str| KeyValue {
        key: k.to_string(),
        value: Some(AnyValue {
            value: Some(OtlpValue::StringValue(v.to_string())),
        }),
        ..Default::default()
    };
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "self-test")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tollgate".into(),
                    ..Default::default()
                }),
                spans: vec![OtlpSpan {
                    trace_id: vec![0x4b; 16],
                    span_id: vec![1; 8],
                    name: "GET api".into(),
                    kind: SPAN_KIND_SERVER,
                    attributes: vec![kv("url.path", "/x")],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let body = req.encode_to_vec();
    let r = request(
        collector.addr,
        "POST",
        "/v1/traces",
        &[("content-type", "application/x-protobuf")],
        &body,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/x-protobuf"));
    assert!(r.body.is_empty());
    let spans = collector.wait_spans(1, WAIT);
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].trace_id(), "4b".repeat(16));
    assert_eq!(spans[0].resource_str("service.name"), Some("self-test"));
    assert_eq!(spans[0].str_attr("url.path"), Some("/x"));
    assert_eq!(spans[0].scope, "tollgate");
    assert!(spans[0].is_server());
    collector.assert_no_problems();

    let r = request(
        collector.addr,
        "POST",
        "/v1/traces",
        &[("content-type", "application/json")],
        b"{}",
    );
    assert_eq!(r.status, 415);
    assert_eq!(collector.problems().len(), 1);
    assert_eq!(collector.export_count(), 2);
}

/// Model fallback: a route whose first target (`primary`) refuses connections falls back to
/// `backup`; the server span has a "fallback" event (from primary, to backup, cause connect),
/// one attempt span per target in order ("upstream primary" with error.type "connect", then
/// "upstream backup" with the 200, ordered by start time), and the upstream's traceparent
/// names the backup attempt.
#[test]
fn fallback_has_an_event_and_a_span_per_target() {
    let collector = Collector::start();
    let backup = Upstream::start("backup");
    let cfg = format!(
        r#"{}
[[upstreams]]
name = "primary"
backends = ["{}"]
retries = 0

[[upstreams]]
name = "backup"
backends = ["{}"]

[[routes]]
name = "chat"
paths = ["=/v1/chat/completions"]
fallback = [{{ upstream = "primary" }}, {{ upstream = "backup" }}]
"#,
        tracing(&collector.endpoint(), "sample_ratio = 0.0"),
        dead_addr(),
        backup.address()
    );
    let gw = Gateway::start(&cfg);
    let t = tid(0xfb);
    let r = gw.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            ("traceparent", &sampled(&t)),
        ],
        br#"{"model":"m","messages":[]}"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_id(), "backup");
    let up = upstream_tp(&r);
    let spans = settled_trace(&collector, &t, 3);
    let (server, mut clients) = split_trace(&spans);
    clients.sort_by_key(|c| c.span.start_time_unix_nano);
    let d = describe_spans(&spans);
    assert_eq!(clients[0].name(), "upstream primary", "{d}");
    assert_eq!(clients[0].str_attr("error.type"), Some("connect"), "{d}");
    assert_eq!(clients[1].name(), "upstream backup", "{d}");
    assert_eq!(
        clients[1].str_attr("tollgate.upstream"),
        Some("backup"),
        "{d}"
    );
    assert_eq!(
        clients[1].int_attr("http.response.status_code"),
        Some(200),
        "{d}"
    );
    // Attempts are numbered per request, across the fallback targets (docs/operations.md).
    let numbers: Vec<Option<i64>> = clients
        .iter()
        .map(|c| c.int_attr("tollgate.attempt"))
        .collect();
    assert_eq!(numbers, [Some(1), Some(2)], "{d}");
    for c in &clients {
        assert_eq!(c.parent_id(), server.span_id(), "{d}");
    }
    assert_eq!(clients[1].span_id(), up.parent, "{d}");
    let events = server.events("fallback");
    assert_eq!(events.len(), 1, "{d}");
    assert_eq!(
        event_attr(events[0], "tollgate.fallback.from"),
        Some("primary"),
        "{d}"
    );
    assert_eq!(
        event_attr(events[0], "tollgate.fallback.to"),
        Some("backup"),
        "{d}"
    );
    assert_eq!(
        event_attr(events[0], "tollgate.fallback.cause"),
        Some("connect"),
        "{d}"
    );
    assert!(
        server.events("retry").is_empty(),
        "a fallback is no retry: {d}"
    );
    assert_eq!(server.status_code(), STATUS_UNSET, "{d}");
    collector.assert_no_problems();
}

/// Read timeouts: with `retry_on_timeout` the first backend (which never answers) gives an
/// attempt span with error.type "timeout" and no status, the retry on the second backend the
/// 200, and the server span a "retry" event with cause "timeout"; without it, a lone hanging
/// backend ends in 504 with error.type "upstream_timeout" on the server span (status ERROR)
/// and "timeout" on its one attempt.
#[test]
fn timeouts_on_spans() {
    let seen = Arc::new(AtomicUsize::new(0));
    let make = |seen: Arc<AtomicUsize>| {
        RawUpstream::with(move |r| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::Hang
            } else {
                default_reply(r)
            }
        })
    };
    let (a, b) = (make(seen.clone()), make(seen));
    let hang = RawUpstream::with(|_| Reply::Hang);
    let collector = Collector::start();
    let cfg = format!(
        r#"{}
[[upstreams]]
name = "pair"
backends = ["{}", "{}"]

[[upstreams]]
name = "hang"
backends = ["{}"]
retries = 0

[[routes]]
name = "retrying"
paths = ["/retrying"]
upstream = "pair"
read_timeout_ms = 300
retry_on_timeout = true

[[routes]]
name = "hanging"
paths = ["/hanging"]
upstream = "hang"
read_timeout_ms = 300
"#,
        tracing(&collector.endpoint(), "sample_ratio = 0.0"),
        a.address(),
        b.address(),
        hang.address()
    );
    let gw = Gateway::start(&cfg);

    let t = tid(0x70);
    let r = gw.request("GET", "/retrying", &[("traceparent", &sampled(&t))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let spans = settled_trace(&collector, &t, 3);
    let (server, clients) = split_trace(&spans);
    let d = describe_spans(&spans);
    assert_eq!(clients[0].str_attr("error.type"), Some("timeout"), "{d}");
    assert_eq!(
        clients[0].int_attr("http.response.status_code"),
        None,
        "{d}"
    );
    assert_eq!(
        clients[1].int_attr("http.response.status_code"),
        Some(200),
        "{d}"
    );
    assert_eq!(server.int_attr("tollgate.retries"), Some(1), "{d}");
    let events = server.events("retry");
    assert_eq!(events.len(), 1, "{d}");
    assert_eq!(
        event_attr(events[0], "tollgate.retry.cause"),
        Some("timeout"),
        "{d}"
    );

    let t = tid(0x504);
    let r = gw.request("GET", "/hanging", &[("traceparent", &sampled(&t))], b"");
    assert_eq!(r.status, 504, "{}", r.text());
    let spans = settled_trace(&collector, &t, 2);
    let (server, clients) = split_trace(&spans);
    let d = describe_spans(&spans);
    assert_eq!(server.status_code(), STATUS_ERROR, "{d}");
    assert_eq!(
        server.str_attr("error.type"),
        Some("upstream_timeout"),
        "{d}"
    );
    assert_eq!(
        server.int_attr("http.response.status_code"),
        Some(504),
        "{d}"
    );
    assert_eq!(clients[0].str_attr("error.type"), Some("timeout"), "{d}");
    collector.assert_no_problems();
}

/// Adding `[tracing]` by a reload does not turn tracing on (restart-only): the reload's new
/// route applies, an invalid traceparent still reaches the upstream untouched (tracing would
/// have replaced it), nothing is exported, and the gateway warns.
#[test]
fn reload_does_not_turn_tracing_on() {
    let collector = Collector::start();
    let up = RawUpstream::start();
    let base = format!(
        "[[upstreams]]\nname = \"raw\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npaths = [\"/api\"]\nupstream = \"raw\"\n",
        up.address()
    );
    let gw = Gateway::start(&base);
    let after = format!(
        "{}{base}\n[[routes]]\nname = \"more\"\npaths = [\"/more\"]\nupstream = \"raw\"\n",
        tracing(&collector.endpoint(), "sample_ratio = 1.0")
    );
    gw.rewrite_config(&after);
    gw.reload();
    assert!(
        wait_until(WAIT, || gw.get("/more").status == 200),
        "the reload did not apply; stderr:\n{}",
        gw.stderr()
    );
    let invalid = format!("00-{}-{PARENT_ID}-01", TRACE_ID.to_uppercase());
    let r = gw.request("GET", "/more", &[("traceparent", &invalid)], b"");
    assert_eq!(r.status, 200);
    let rec = up.requests().pop().unwrap();
    assert_eq!(rec.header_all("traceparent"), [invalid.as_str()]);
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        collector.export_count(),
        0,
        "{}",
        describe_spans(&collector.spans())
    );
    let err = gw.stderr();
    assert!(
        err.lines()
            .any(|l| l.contains("WARN") && l.to_ascii_lowercase().contains("tracing")),
        "no warning about the ignored [tracing]; stderr:\n{err}"
    );
}

/// A request never answered (the client goes away while the upstream hangs) counts as an
/// error for sample_errors: with sample_ratio = 0 its server span is exported with status
/// ERROR and no response status code.
#[test]
fn sample_errors_exports_unanswered_requests() {
    let collector = Collector::start();
    let hang = RawUpstream::with(|_| Reply::Hang);
    let gw = Gateway::start(&format!(
        "{}[[upstreams]]\nname = \"hang\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"api\"\npaths = [\"/api\"]\nupstream = \"hang\"\n",
        tracing(
            &collector.endpoint(),
            "sample_ratio = 0.0\nsample_errors = true"
        ),
        hang.address()
    ));
    let mut c = RawConn::connect(gw.addr);
    c.send(b"GET /api/gone HTTP/1.1\r\nHost: t\r\nx-request-id: unanswered-1\r\n\r\n")
        .unwrap();
    assert!(
        hang.wait_count(1, WAIT),
        "the upstream never got the request"
    );
    drop(c);
    let t = logged_trace_id(&gw, "unanswered-1");
    let spans = collector.wait_trace(&t, 1, Duration::from_secs(10));
    let server = spans.iter().find(|s| s.is_server()).unwrap_or_else(|| {
        panic!(
            "not exported; all spans:\n{}",
            describe_spans(&collector.spans())
        )
    });
    let d = describe_spans(&spans);
    assert_eq!(server.status_code(), STATUS_ERROR, "{d}");
    assert_eq!(server.int_attr("http.response.status_code"), None, "{d}");
    collector.assert_no_problems();
}

/// An HTTP/2 (h2c) request joins its traceparent like HTTP/1.1 does: its server span has
/// network.protocol.version "2", server.address from `:authority` without the port and
/// url.path without the query, and the upstream (HTTP/1.1) gets the attempt's traceparent.
#[test]
fn http2_request_spans() {
    let collector = Collector::start();
    let echo = Upstream::start("echo");
    // `h2c = true` continues the harness's [server] table.
    let head = format!(
        "h2c = true\n\n{}",
        tracing(&collector.endpoint(), "sample_ratio = 0.0")
    );
    let gw = Gateway::start(&echo_config(&head, &echo.address()));
    let t = tid(0x2);
    let tp = sampled(&t);
    let mut h2 = H2Conn::connect(gw.addr).expect("h2c connection");
    let end = h2.request(
        &[
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/api/h2?token=secret-h2-991"),
            (b":authority", b"h2.example.com:8443"),
            (b"traceparent", tp.as_bytes()),
        ],
        None,
        Duration::from_secs(5),
    );
    let H2End::Response(r) = end else {
        panic!("no h2 response: {end:?}");
    };
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body: Json = serde_json::from_slice(&r.body).unwrap();
    let tps: Vec<&str> = body["header_lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l[0] == "traceparent")
        .filter_map(|l| l[1].as_str())
        .collect();
    assert_eq!(tps.len(), 1, "{body}");
    let up = parse_tp(tps[0]);
    assert_eq!(up.trace, t);
    let spans = settled_trace(&collector, &t, 2);
    let (server, clients) = split_trace(&spans);
    let d = describe_spans(&spans);
    assert_eq!(
        server.str_attr("network.protocol.version"),
        Some("2"),
        "{d}"
    );
    assert_eq!(
        server.str_attr("server.address"),
        Some("h2.example.com"),
        "{d}"
    );
    assert_eq!(server.str_attr("url.path"), Some("/api/h2"), "{d}");
    assert_eq!(server.parent_id(), PARENT_ID, "{d}");
    assert_eq!(clients[0].span_id(), up.parent, "{d}");
    let bytes = collector.all_bytes();
    assert!(
        !bytes.windows(13).any(|w| w == b"secret-h2-991"),
        "the query string was exported"
    );
    collector.assert_no_problems();
}

/// A collector answering 500 (then 429): each export is counted as failed
/// (`reason="export_failed"`, one per span of the export), none as exported, none sent again;
/// requests are unaffected.
#[test]
fn collector_error_status_counts_export_failed() {
    let collector = Collector::with_mode(CollectorMode::Status(500));
    let echo = Upstream::start("echo");
    let gw = Gateway::start(&echo_config(
        &tracing(&collector.endpoint(), "sample_ratio = 1.0"),
        &echo.address(),
    ));
    for _ in 0..3 {
        assert_eq!(gw.get("/api/e").status, 200);
    }
    collector.wait_spans(6, WAIT);
    assert_eq!(
        gw.wait_metric(DROPPED, &[("reason", "export_failed")], 6.0),
        Some(6.0),
        "{}",
        gw.metrics()
    );
    collector.set_mode(CollectorMode::Status(429));
    assert_eq!(gw.get("/api/e").status, 200);
    collector.wait_spans(8, WAIT);
    assert_eq!(
        gw.wait_metric(DROPPED, &[("reason", "export_failed")], 8.0),
        Some(8.0),
        "{}",
        gw.metrics()
    );
    assert_eq!(
        gw.metric(EXPORTED, &[]).unwrap_or(0.0),
        0.0,
        "{}",
        gw.metrics()
    );
    // docs/operations.md: a failed export is not retried (the collector would see spans twice).
    thread::sleep(Duration::from_millis(300));
    assert_eq!(
        collector.spans().len(),
        8,
        "{}",
        describe_spans(&collector.spans())
    );
    collector.assert_no_problems();
}
