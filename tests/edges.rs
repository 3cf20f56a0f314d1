//! Edge cases of a gateway in production: bounded retries, honest connection reuse,
//! hop-by-hop headers, zero-loss SIGTERM, Kubernetes ConfigMap reloads, TLS with SNI and
//! certificate rotation, DNS re-resolution, a circuit breaker that cannot wedge, bounded
//! per-key state, and smaller contract points (`keepalive_requests`, exact split weights,
//! CORS preflight on method-restricted routes, split body size limit, `check` reporting
//! every type error).
//!
//! Each test names the contract point it checks (`pN_...`). Everything runs against the real
//! `tollgate run` binary with std-only backends from `tests/common/` (a DNS server, an
//! SSE/WebSocket origin, switchable backends, `openssl` for TLS).

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

fn one_upstream(name: &str, addr: &str, extra: &str) -> String {
    format!("\n[[upstreams]]\nname = \"{name}\"\nbackends = [\"{addr}\"]\n{extra}\n")
}

fn route(name: &str, lines: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\n{lines}\n")
}

fn mock_route(name: &str, path: &str, body: &str) -> String {
    route(
        name,
        &format!("paths = [\"{path}\"]\nplugins = [{{ name = \"mock\", body = \"{body}\" }}]"),
    )
}

/// Does this response tell the client the connection ends (`Connection: close`)?
fn says_close(r: &Response) -> bool {
    r.header_all("connection").iter().any(|v| {
        v.to_ascii_lowercase()
            .split(',')
            .any(|t| t.trim() == "close")
    })
}

/// `n` concurrent `GET path` through the gateway, each answered 200; the backend holds each
/// a moment, so the gateway opens about `n` upstream connections and pools them.
fn warm_pool(addr: SocketAddr, path: &str, n: usize) {
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let b = barrier.clone();
            let p = format!("{path}/{i}");
            thread::spawn(move || {
                b.wait();
                try_request(addr, "GET", &p, &[], b"").map(|r| r.status)
            })
        })
        .collect();
    for h in handles {
        let st = h.join().unwrap();
        assert!(
            matches!(st, Ok(200)),
            "warming the upstream pool: a request got {st:?}, want 200"
        );
    }
}

/// The retries counted for `upstream`, by cause.
fn retries_by_cause(text: &str, upstream: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, v) in metric_series(text, "tollgate_upstream_retries_total") {
        let get = |k: &str| {
            labels
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        if get("upstream") == upstream {
            *out.entry(get("cause")).or_insert(0.0) += v;
        }
    }
    out
}

const RETRY_CAUSES: [&str; 4] = ["connect", "reused_connection", "status", "timeout"];

/// Check `tollgate_upstream_retries_total{upstream}`: its causes are known ones and the sum
/// is `want`.
fn assert_retries(gw: &Gateway, upstream: &str, want: usize, what: &str) {
    let text = gw.metrics();
    let by_cause = retries_by_cause(&text, upstream);
    for cause in by_cause.keys() {
        assert!(
            RETRY_CAUSES.contains(&cause.as_str()),
            "{what}: tollgate_upstream_retries_total has cause={cause:?}; causes are {RETRY_CAUSES:?}"
        );
    }
    let total: f64 = by_cause.values().sum();
    assert_eq!(
        total, want as f64,
        "{what}: tollgate_upstream_retries_total{{upstream=\"{upstream}\"}} sums to {total} \
         (by cause {by_cause:?}), want {want} (attempts - 1)"
    );
}

// ---------------------------------------------------------------------------------------
// 1. At most 1 + retries attempts
// ---------------------------------------------------------------------------------------

/// A backend that answers (holding `/warm/...` requests 150 ms) until `mode` is set to 1,
/// then reads each request and closes the connection without answering.
fn closing_backend() -> (RawUpstream, Arc<AtomicU8>) {
    let mode = Arc::new(AtomicU8::new(0));
    let m = mode.clone();
    let up = RawUpstream::with(move |r| {
        if m.load(Ordering::SeqCst) == 1 {
            return Reply::Close;
        }
        if r.path().starts_with("/warm") {
            thread::sleep(Duration::from_millis(150));
        }
        default_reply(r)
    });
    (up, mode)
}

fn closing_backend_gateway() -> (RawUpstream, Arc<AtomicU8>, Gateway) {
    let (up, mode) = closing_backend();
    let gw = Gateway::start(&format!(
        "{}{}",
        one_upstream("u", &up.address(), ""),
        route("r", "paths = [\"/\"]\nupstream = \"u\"")
    ));
    warm_pool(gw.addr, "/warm", 20);
    assert!(
        up.connections() >= 2,
        "warm-up opened only {} upstream connection(s)",
        up.connections()
    );
    up.clear();
    mode.store(1, Ordering::SeqCst);
    (up, mode, gw)
}

fn attempts_of(up: &RawUpstream, path: &str) -> usize {
    up.requests().iter().filter(|r| r.path() == path).count()
}

#[test]
fn p1_get_reaches_a_silently_closing_backend_at_most_three_times() {
    let (up, _mode, gw) = closing_backend_gateway();
    let r = gw.get("/once");
    assert_eq!(
        r.status,
        502,
        "GET to a backend that closes without answering: {}",
        describe_response(&r)
    );
    thread::sleep(Duration::from_millis(200));
    let n = attempts_of(&up, "/once");
    assert!(
        (1..=3).contains(&n),
        "GET /once reached the backend {n} times; at most 1 + retries (2) = 3 allowed\n{}",
        up.summary()
    );
    assert_retries(&gw, "u", n - 1, "after the GET");
}

#[test]
fn p1_post_with_body_reaches_a_silently_closing_backend_exactly_once() {
    let (up, _mode, gw) = closing_backend_gateway();
    let r = gw.request(
        "POST",
        "/post",
        &[("content-type", "text/plain")],
        b"charge the card once",
    );
    assert_eq!(
        r.status,
        502,
        "POST to a backend that closes without answering: {}",
        describe_response(&r)
    );
    thread::sleep(Duration::from_millis(200));
    let n = attempts_of(&up, "/post");
    assert_eq!(
        n,
        1,
        "a POST with a body reached the backend {n} times; it must be sent exactly once (never retried once sent)\n{}",
        up.summary()
    );
    assert_retries(&gw, "u", 0, "after the POST");
}

#[test]
fn p1_retry_on_status_is_capped_by_the_upstream_retries() {
    // Six backends that all answer 503: without a cap, max_retries = 5 would try all six.
    let ups: Vec<RawUpstream> = (0..6)
        .map(|_| {
            RawUpstream::with(|_| {
                Reply::Bytes(http_reply(503, &[("content-type", "text/plain")], b"busy"))
            })
        })
        .collect();
    let list: Vec<String> = ups.iter().map(|u| format!("\"{}\"", u.address())).collect();
    let gw = Gateway::start(&format!(
        "\n[[upstreams]]\nname = \"u\"\nbackends = [{}]\n{}",
        list.join(", "),
        route(
            "r",
            "paths = [\"/\"]\nupstream = \"u\"\nretry_on_status = [503]\nmax_retries = 5"
        )
    ));
    let r = gw.get("/busy");
    assert_eq!(r.status, 503, "{}", describe_response(&r));
    thread::sleep(Duration::from_millis(200));
    let n: usize = ups.iter().map(|u| attempts_of(u, "/busy")).sum();
    assert!(
        (1..=3).contains(&n),
        "GET /busy was tried {n} times with retry_on_status = [503], max_retries = 5 and retries = 2 (default); \
         at most 1 + retries = 3 attempts allowed"
    );
    assert_retries(&gw, "u", n - 1, "after retry_on_status");
    if n > 1 {
        let by = retries_by_cause(&gw.metrics(), "u");
        assert_eq!(
            by.get("status").copied().unwrap_or(0.0),
            (n - 1) as f64,
            "retries after a 503 must count as cause=\"status\": {by:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Honest connections
// ---------------------------------------------------------------------------------------

fn honest_connection_case(gw: &Gateway, first: &[u8], what: &str) {
    let mut c = RawConn::connect(gw.addr);
    c.send(first).unwrap();
    let r = c
        .read_response(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{what}: no 502: {}", e.describe()));
    assert_eq!(r.status, 502, "{what}: {}", describe_response(&r));
    if says_close(&r) {
        // (a) Honest: the client was told not to reuse the connection.
        return;
    }
    // (b) Kept alive: then it must really be usable.
    let sent = c.send(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n");
    match c.read_response(Duration::from_secs(5)) {
        Ok(r2) => assert_eq!(
            r2.status,
            200,
            "{what}: second request on the kept-alive connection: {}",
            describe_response(&r2)
        ),
        Err(e) => panic!(
            "{what}: the 502 did not say `Connection: close` ({}), yet the gateway closed the \
             connection: the second request on it got {} (write: {sent:?})",
            describe_response(&r),
            e.describe()
        ),
    }
}

#[test]
fn p2_gateway_made_502_says_close_or_keeps_the_connection_usable() {
    let up = RawUpstream::with(|_| Reply::Close);
    let gw = Gateway::start(&format!(
        "{}{}{}",
        one_upstream("u", &up.address(), "retries = 0"),
        route("fail", "paths = [\"/fail\"]\nupstream = \"u\""),
        mock_route("ok", "=/ok", "fine")
    ));
    for i in 0..3 {
        honest_connection_case(
            &gw,
            b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n",
            &format!("GET, round {i}"),
        );
    }
    honest_connection_case(
        &gw,
        b"POST /fail HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "POST with a body",
    );
}

// ---------------------------------------------------------------------------------------
// 3. Hop-by-hop headers
// ---------------------------------------------------------------------------------------

const HOP_BY_HOP: [&str; 7] = [
    "x-a",
    "x-b",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn hop_by_hop_reply(extra: &[(&str, &str)]) -> Vec<u8> {
    let mut h = vec![
        ("Connection", "x-a, x-b"),
        ("X-A", "1"),
        ("X-B", "2"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Upgrade", "h2c"),
        ("x-ok", "1"),
        ("content-type", "text/plain"),
    ];
    h.extend_from_slice(extra);
    http_reply(200, &h, b"hop")
}

fn assert_no_hop_by_hop(r: &Response, what: &str) {
    assert_eq!(r.status, 200, "{what}: {}", describe_response(r));
    for name in HOP_BY_HOP {
        assert!(
            r.header(name).is_none(),
            "{what}: hop-by-hop header `{name}` reached the client: {}",
            describe_response(r)
        );
    }
    for v in r.header_all("connection") {
        let v = v.to_ascii_lowercase();
        assert!(
            !v.contains("x-a") && !v.contains("x-b"),
            "{what}: the upstream's `Connection: x-a, x-b` reached the client: {}",
            describe_response(r)
        );
    }
    assert_eq!(
        r.header("x-ok"),
        Some("1"),
        "{what}: end-to-end header x-ok lost: {}",
        describe_response(r)
    );
    assert_eq!(r.text(), "hop", "{what}: body");
}

#[test]
fn p3_hop_by_hop_response_headers_are_removed() {
    let up = RawUpstream::with(|_| Reply::Bytes(hop_by_hop_reply(&[])));
    let gw = Gateway::start(&format!(
        "{}{}",
        one_upstream("u", &up.address(), ""),
        route("r", "paths = [\"/\"]\nupstream = \"u\"")
    ));
    assert_no_hop_by_hop(&gw.get("/plain"), "proxied response");
    // On a kept-alive client connection too.
    let mut c = RawConn::connect(gw.addr);
    c.send(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let r = c
        .read_response(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("keep-alive request: {}", e.describe()));
    assert_no_hop_by_hop(&r, "proxied response (keep-alive client)");
}

#[test]
fn p3_hop_by_hop_headers_are_not_replayed_from_the_cache() {
    let up = RawUpstream::with(|_| {
        Reply::Bytes(hop_by_hop_reply(&[("cache-control", "public, max-age=60")]))
    });
    let gw = Gateway::start(&format!(
        "{}{}",
        one_upstream("u", &up.address(), ""),
        route(
            "cached",
            "paths = [\"/\"]\nupstream = \"u\"\nplugins = [{ name = \"cache\" }]"
        )
    ));
    let first = gw.get("/cached");
    assert_no_hop_by_hop(&first, "cache MISS");
    let hit = gw.get("/cached");
    assert_eq!(
        hit.header("x-cache-status"),
        Some("HIT"),
        "second GET should be a cache HIT: {}",
        describe_response(&hit)
    );
    assert_no_hop_by_hop(&hit, "cache HIT");
    assert_eq!(
        up.count(),
        1,
        "the HIT went to the upstream: {}",
        up.summary()
    );
}

#[test]
fn p3_headers_named_in_the_request_connection_header_are_removed() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}",
        one_upstream("u", &up.address(), ""),
        route("r", "paths = [\"/\"]\nupstream = \"u\"")
    ));
    let mut c = RawConn::connect(gw.addr);
    c.send(b"GET /req HTTP/1.1\r\nHost: x\r\nConnection: x-c\r\nX-C: 1\r\nX-Keep: 1\r\n\r\n")
        .unwrap();
    let r = c
        .read_response(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{}", e.describe()));
    assert_eq!(r.status, 200, "{}", describe_response(&r));
    let seen = up.requests();
    assert_eq!(seen.len(), 1, "{}", up.summary());
    assert!(
        seen[0].header("x-c").is_none(),
        "`X-C` was named in the client's `Connection` header yet reached the upstream: {}",
        escape_bytes(&seen[0].head)
    );
    assert!(
        !seen[0]
            .header_all("connection")
            .iter()
            .any(|v| v.to_ascii_lowercase().contains("x-c")),
        "the client's `Connection: x-c` reached the upstream: {}",
        escape_bytes(&seen[0].head)
    );
    assert_eq!(
        seen[0].header("x-keep"),
        Some("1"),
        "an end-to-end header was dropped: {}",
        escape_bytes(&seen[0].head)
    );
}

// ---------------------------------------------------------------------------------------
// 4. Zero-loss SIGTERM
// ---------------------------------------------------------------------------------------

/// A gateway (own `[server]` table with `extra`) proxying everything to `origin`.
fn drain_gateway(origin: &StreamOrigin, extra: &str) -> (GatewayProc, TempDir) {
    let tmp = TempDir::new("drain");
    let (addr, admin) = free_addrs();
    let text = format!(
        "{}{}{}",
        server_table(addr, admin, tmp.path(), extra),
        one_upstream("o", &origin.addr.to_string(), ""),
        route("r", "paths = [\"/\"]\nupstream = \"o\"")
    );
    (GatewayProc::start(&text, addr, admin), tmp)
}

/// `GET path` (keep-alive client, read timeout 15 s); the result, with when it completed.
fn spawn_get(
    addr: SocketAddr,
    path: &str,
) -> thread::JoinHandle<(Result<Response, String>, Instant)> {
    let path = path.to_string();
    thread::spawn(move || {
        let r = RawConn::try_connect(addr)
            .map_err(|e| format!("connect: {e}"))
            .and_then(|mut c| {
                c.send(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                    .map_err(|e| format!("write: {e}"))?;
                c.read_response(Duration::from_secs(15))
                    .map_err(|e| e.describe())
            });
        (r, Instant::now())
    })
}

/// Read the SSE stream of `/sse`: (events' data lines, whether the terminating chunk came,
/// how reading ended).
fn spawn_sse(addr: SocketAddr) -> thread::JoinHandle<(Vec<String>, bool, String)> {
    thread::spawn(move || {
        let mut s = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(s) => s,
            Err(e) => return (Vec::new(), false, format!("connect: {e}")),
        };
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        if let Err(e) =
            s.write_all(b"GET /sse HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n\r\n")
        {
            return (Vec::new(), false, format!("write: {e}"));
        }
        let mut all = Vec::new();
        let mut b = [0u8; 4096];
        let end = loop {
            match s.read(&mut b) {
                Ok(0) => break "closed".to_string(),
                Ok(n) => {
                    all.extend_from_slice(&b[..n]);
                    if all.windows(5).any(|w| w == b"\r\n0\r\n") && all.ends_with(b"\r\n\r\n") {
                        break "terminating chunk".to_string();
                    }
                }
                Err(e) => break format!("read error: {e}"),
            }
        };
        let text = String::from_utf8_lossy(&all).into_owned();
        let events = text
            .lines()
            .filter(|l| l.starts_with("data: "))
            .map(|l| l.trim().to_string())
            .collect();
        let chunked_end = text.contains("\r\n0\r\n\r\n");
        (events, chunked_end, end)
    })
}

/// Open a WebSocket through the gateway: the stream after the 101.
fn ws_open(addr: SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect for websocket");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            _ => break,
        }
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "websocket handshake: {:?}",
        escape_bytes(&head)
    );
    s
}

/// Send one (unmasked, the origin only echoes) text frame and read its echo.
fn ws_echo(s: &mut TcpStream, msg: &str) -> Result<(), String> {
    let mut frame = vec![0x81, msg.len() as u8];
    frame.extend_from_slice(msg.as_bytes());
    s.write_all(&frame).map_err(|e| format!("write: {e}"))?;
    let mut got = vec![0u8; frame.len()];
    s.read_exact(&mut got)
        .map_err(|e| format!("read echo: {e}"))?;
    if got == frame {
        Ok(())
    } else {
        Err(format!(
            "echo {:?} != {:?}",
            escape_bytes(&got),
            escape_bytes(&frame)
        ))
    }
}

/// After the listener closed: a new connection is refused, or closed without an answer.
fn assert_not_accepting(addr: SocketAddr, what: &str) {
    let Ok(mut c) = RawConn::try_connect(addr) else {
        return; // refused
    };
    let _ = c.send(b"GET /late HTTP/1.1\r\nHost: x\r\n\r\n");
    match c.read_response(Duration::from_secs(2)) {
        Ok(r) => panic!(
            "{what}: a new connection was accepted and answered: {}",
            describe_response(&r)
        ),
        Err(e) if e.is_close() => {}
        Err(e) => panic!(
            "{what}: a new connection was neither refused nor closed: {}",
            e.describe()
        ),
    }
}

#[test]
fn p4_sigterm_with_grace_period_loses_no_request_stream_or_websocket() {
    let origin = StreamOrigin::start();
    let (gw, _tmp) = drain_gateway(
        &origin,
        "shutdown_grace_period_seconds = 2\nshutdown_timeout_seconds = 10\n",
    );
    let addr = gw.addr;

    let mut ws = ws_open(addr);
    ws_echo(&mut ws, "before").unwrap_or_else(|e| panic!("websocket before SIGTERM: {e}"));
    let sse = spawn_sse(addr);
    let slow = spawn_get(addr, "/slow/4000");
    assert!(
        wait_until(Duration::from_secs(3), || origin.has_seen("/sse")
            && origin.has_seen("/slow/4000")),
        "the origin did not get the in-flight requests: {:?}",
        origin.seen()
    );

    gw.sigterm();
    let t0 = Instant::now();

    // /readyz turns 503 at once.
    let mut last = String::new();
    let mut not_ready_after = None;
    while t0.elapsed() < Duration::from_millis(300) {
        match try_request(gw.admin, "GET", "/readyz", &[], b"") {
            Ok(r) if r.status == 503 => {
                not_ready_after = Some(t0.elapsed());
                break;
            }
            Ok(r) => last = describe_response(&r),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(20));
    }
    assert!(
        not_ready_after.is_some(),
        "/readyz did not answer 503 within 300 ms of SIGTERM; last: {last}"
    );

    // /healthz stays 200 during the grace period; a new connection 1 s in is served.
    let at = |d: u64| {
        let when = t0 + Duration::from_millis(d);
        thread::sleep(when.saturating_duration_since(Instant::now()));
    };
    at(500);
    let h = try_request(gw.admin, "GET", "/healthz", &[], b"");
    assert!(
        matches!(&h, Ok(r) if r.status == 200),
        "/healthz 0.5 s after SIGTERM (grace 2 s): {h:?}"
    );
    at(1000);
    let mut c = RawConn::try_connect(addr).unwrap_or_else(|e| {
        panic!("a new connection 1 s after SIGTERM (grace 2 s) was refused: {e}")
    });
    c.send(b"GET /during-grace HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let r = c.read_response(Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!(
            "a request on a new connection 1 s after SIGTERM (grace 2 s) got no answer: {}",
            e.describe()
        )
    });
    assert_eq!(r.status, 200, "during grace: {}", describe_response(&r));
    assert!(
        says_close(&r),
        "a response during shutdown must carry `Connection: close`: {}",
        describe_response(&r)
    );
    at(1600);
    let h = try_request(gw.admin, "GET", "/healthz", &[], b"");
    assert!(
        matches!(&h, Ok(r) if r.status == 200),
        "/healthz 1.6 s after SIGTERM (grace 2 s): {h:?}"
    );

    // 2.5 s: the WebSocket still works; the listener no longer takes connections.
    at(2500);
    let ws_after = ws_echo(&mut ws, "after");
    let _ = ws.write_all(&[0x88, 0x00]); // close frame
    let _ = ws.shutdown(Shutdown::Both);
    drop(ws);
    assert_not_accepting(addr, "2.5 s after SIGTERM (grace 2 s)");
    ws_after.unwrap_or_else(|e| panic!("websocket 2.5 s after SIGTERM: {e}"));

    // In-flight work completes.
    let (events, chunked_end, end) = sse.join().unwrap();
    let want: Vec<String> = (0..SSE_EVENTS)
        .map(|i| format!("data: event {i}"))
        .collect();
    assert_eq!(
        events, want,
        "SSE events across SIGTERM (reading ended: {end})"
    );
    assert!(chunked_end, "the SSE stream was cut before its end ({end})");
    let (slow_r, slow_done) = slow.join().unwrap();
    let slow_r = slow_r.unwrap_or_else(|e| panic!("the slow request in flight at SIGTERM: {e}"));
    assert_eq!(
        slow_r.status,
        200,
        "slow request: {}",
        describe_response(&slow_r)
    );
    assert!(
        slow_r.body == slow_body(),
        "slow request: body of {} bytes, want the full {SLOW_BODY_BYTES}",
        slow_r.body.len()
    );

    // Then the process exits, with 0, soon after the last request, before the timeout.
    let (status, exited_at) = gw
        .wait_exit(Duration::from_secs(12).saturating_sub(t0.elapsed()))
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", t0.elapsed()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    let after_last = exited_at.saturating_duration_since(slow_done);
    assert!(
        after_last < Duration::from_millis(1500),
        "exited {after_last:?} after the last in-flight request ended (want < 1.5 s)"
    );
    assert!(
        exited_at - t0 < Duration::from_secs(9),
        "exited {:?} after SIGTERM: it waited for shutdown_timeout_seconds (10) instead of the last request",
        exited_at - t0
    );
}

#[test]
fn p4_sigterm_without_grace_still_finishes_the_request_in_flight() {
    let origin = StreamOrigin::start();
    let (gw, _tmp) = drain_gateway(&origin, "shutdown_timeout_seconds = 10\n");
    let slow = spawn_get(gw.addr, "/slow/2000");
    assert!(
        wait_until(Duration::from_secs(3), || origin.has_seen("/slow/2000")),
        "the origin did not get the request"
    );
    gw.sigterm();
    let t0 = Instant::now();
    let (r, done) = slow.join().unwrap();
    let r = r.unwrap_or_else(|e| panic!("the request in flight at SIGTERM (grace 0): {e}"));
    assert_eq!(r.status, 200, "{}", describe_response(&r));
    assert!(r.body == slow_body(), "body of {} bytes", r.body.len());
    let (status, exited_at) = gw
        .wait_exit(Duration::from_secs(11))
        .unwrap_or_else(|| panic!("still running {:?} after SIGTERM", t0.elapsed()));
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status}"
    );
    assert!(
        exited_at.saturating_duration_since(done) < Duration::from_millis(1500),
        "exited {:?} after the last request ended",
        exited_at.saturating_duration_since(done)
    );
}

// ---------------------------------------------------------------------------------------
// 5. Kubernetes ConfigMap reload
// ---------------------------------------------------------------------------------------

/// Write `..<version>/tollgate.toml` under `root`.
fn write_configmap_version(root: &std::path::Path, version: &str, text: &str) {
    let d = root.join(version);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("tollgate.toml"), text).unwrap();
}

/// Swap `..data` to `version` the way the kubelet does, then remove `old`.
fn kubelet_swap(root: &std::path::Path, version: &str, old: &str, text: &str) {
    write_configmap_version(root, version, text);
    let tmp = root.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join(old)).unwrap();
}

fn wait_body(gw: &GatewayProc, path: &str, body: &str, within: Duration) -> bool {
    wait_until(within, || {
        try_request(gw.addr, "GET", path, &[], b"")
            .is_ok_and(|r| r.status == 200 && r.text() == body)
    })
}

#[test]
fn p5_kubernetes_configmap_swap_is_picked_up_without_sighup() {
    let dir = TempDir::new("k8s");
    let root = dir.path();
    let logs = TempDir::new("k8slogs");
    let (addr, admin) = free_addrs();
    let server = server_table(addr, admin, logs.path(), "");
    let version = |path: &str, body: &str| format!("{server}{}", mock_route(body, path, body));

    write_configmap_version(root, "..2026_12_01_a", &version("=/one", "one"));
    std::os::unix::fs::symlink("..2026_12_01_a", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/tollgate.toml", root.join("tollgate.toml")).unwrap();
    let gw = GatewayProc::start_at(&root.join("tollgate.toml"), addr, admin);
    assert!(
        wait_body(&gw, "/one", "one", Duration::from_secs(1)),
        "first version not served"
    );
    // Give the watcher time to settle before the first swap.
    thread::sleep(Duration::from_millis(300));

    kubelet_swap(
        root,
        "..2026_12_01_b",
        "..2026_12_01_a",
        &version("=/two", "two"),
    );
    let t = Instant::now();
    assert!(
        wait_body(&gw, "/two", "two", Duration::from_secs(3)),
        "after a kubelet-style ConfigMap swap (..data -> ..2026_12_01_b), the new route /two \
         was not served within 3 s (no SIGHUP sent); GET /two: {:?}\nstderr:\n{}",
        try_request(addr, "GET", "/two", &[], b"").map(|r| describe_response(&r)),
        gw.stderr()
    );
    eprintln!("first swap served after {:?}", t.elapsed());
    assert_eq!(gw.get("/one").status, 404, "the old route is still served");

    kubelet_swap(
        root,
        "..2026_12_01_c",
        "..2026_12_01_b",
        &version("=/three", "three"),
    );
    assert!(
        wait_body(&gw, "/three", "three", Duration::from_secs(3)),
        "the second ConfigMap swap (..data -> ..2026_12_01_c) was not picked up within 3 s\nstderr:\n{}",
        gw.stderr()
    );
    assert_eq!(
        gw.get("/two").status,
        404,
        "the previous route is still served"
    );
    assert!(gw.exit_status().is_none(), "the gateway exited");
}

// ---------------------------------------------------------------------------------------
// 6. TLS: SNI certificates, rotation on SIGHUP
// ---------------------------------------------------------------------------------------

struct TlsSetup {
    dir: TempDir,
    port: u16,
    a: (std::path::PathBuf, std::path::PathBuf),
    gw: Gateway,
}

fn tls_gateway() -> TlsSetup {
    let dir = TempDir::new("sni");
    let d = make_cert(dir.path(), "default", "default.test", "gen1");
    let a = make_cert(dir.path(), "a", "a.test", "gen1");
    let b = make_cert(dir.path(), "b", "b.test", "gen1");
    let port = free_port();
    let gw = Gateway::start(&format!(
        r#"
[[server.tls]]
listen = "127.0.0.1:{port}"
cert = "{}"
key = "{}"

[[server.tls.sni]]
hosts = ["a.test"]
cert = "{}"
key = "{}"

[[server.tls.sni]]
hosts = ["b.test"]
cert = "{}"
key = "{}"
{}"#,
        d.0.display(),
        d.1.display(),
        a.0.display(),
        a.1.display(),
        b.0.display(),
        b.1.display(),
        mock_route("all", "/", "tls-ok")
    ));
    TlsSetup { dir, port, a, gw }
}

fn subject(port: u16, sni: Option<&str>) -> String {
    tls_subject(port, sni).unwrap_or_else(|e| panic!("TLS handshake (SNI {sni:?}): {e}"))
}

fn assert_subject(port: u16, sni: Option<&str>, want: &[&str]) {
    let s = subject(port, sni);
    for w in want {
        assert!(
            s.contains(w),
            "SNI {sni:?}: certificate {s:?}, want one with {w:?}"
        );
    }
}

#[test]
fn p6_sni_selects_the_host_certificate_else_the_listener_default() {
    let t = tls_gateway();
    assert_subject(t.port, Some("a.test"), &["CN=a.test"]);
    assert_subject(t.port, Some("b.test"), &["CN=b.test"]);
    assert_subject(t.port, Some("other.test"), &["CN=default.test"]);
    assert_subject(t.port, None, &["CN=default.test"]);
    let mut c = TlsConn::connect(t.port, "a.test");
    let r = c
        .request(
            b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("request over TLS (a.test): {e}"));
    assert_eq!(r.text(), "tls-ok", "{}", describe_response(&r));
}

#[test]
fn p6_sighup_rotates_a_certificate_and_keeps_open_tls_connections() {
    let t = tls_gateway();
    assert_subject(t.port, Some("a.test"), &["CN=a.test", "O=gen1"]);
    let mut before = TlsConn::connect(t.port, "a.test");
    let r = before
        .request(
            b"GET /1 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| panic!("TLS connection before the swap: {e}"));
    assert_eq!(r.status, 200);

    // New pair for a.test, written over the configured files.
    let fresh = TempDir::new("sni2");
    let (c2, k2) = make_cert(fresh.path(), "a2", "a.test", "gen2");
    std::fs::copy(&k2, &t.a.1).unwrap();
    std::fs::copy(&c2, &t.a.0).unwrap();
    t.gw.reload();
    let mut last = String::new();
    let rotated = wait_until(Duration::from_secs(2), || {
        last = tls_subject(t.port, Some("a.test")).unwrap_or_else(|e| e);
        last.contains("O=gen2")
    });
    assert!(
        rotated,
        "2 s after SIGHUP, SNI a.test still gets {last:?}, want the new certificate (O=gen2)"
    );
    assert_subject(t.port, Some("other.test"), &["CN=default.test"]);
    let r = before
        .request(
            b"GET /2 HTTP/1.1\r\nHost: a.test\r\n\r\n",
            Duration::from_secs(5),
        )
        .unwrap_or_else(|e| {
            panic!("the TLS connection opened before the swap, used after it: {e}")
        });
    assert_eq!(r.status, 200, "{}", describe_response(&r));
    let _ = &t.dir;
}

#[test]
fn p6_garbage_certificate_on_reload_keeps_the_old_one_serving() {
    let t = tls_gateway();
    let failures = |gw: &Gateway| {
        gw.metric("tollgate_config_reloads_total", &[("result", "failure")])
            .unwrap_or(0.0)
    };
    let before = failures(&t.gw);
    std::fs::write(&t.a.0, "this is not a certificate\n").unwrap();
    t.gw.reload();
    assert!(
        wait_until(Duration::from_secs(3), || failures(&t.gw) > before),
        "a SIGHUP with a garbage certificate file must count tollgate_config_reloads_total{{result=\"failure\"}} (still {before})"
    );
    assert!(t.gw.is_running(), "the gateway exited on a bad certificate");
    assert_subject(t.port, Some("a.test"), &["CN=a.test", "O=gen1"]);
    assert_subject(t.port, Some("other.test"), &["CN=default.test"]);
}

#[test]
fn p6_check_names_the_tls_listener_whose_certificate_is_garbage() {
    let dir = TempDir::new("sni-check");
    let (cert, key) = make_cert(dir.path(), "d", "default.test", "gen1");
    let garbage = dir.path().join("garbage.crt");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let listener = |cert: &std::path::Path| {
        format!(
            "[server]\nlisten = [\"127.0.0.1:{}\"]\nadmin_listen = \"\"\n\n[[server.tls]]\nlisten = \"127.0.0.1:{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            free_port(),
            free_port(),
            cert.display(),
            key.display()
        )
    };
    let routes = mock_route("all", "/", "x");
    let cases = [
        (
            "the listener's own cert",
            format!("{}{routes}", listener(&garbage)),
            "server.tls[0]",
        ),
        (
            "an SNI cert",
            format!(
                "{}\n[[server.tls.sni]]\nhosts = [\"a.test\"]\ncert = \"{}\"\nkey = \"{}\"\n{routes}",
                listener(&cert),
                garbage.display(),
                key.display()
            ),
            "server.tls[0].sni[0]",
        ),
    ];
    for (what, text, path) in cases {
        let file = dir.path().join("check.toml");
        std::fs::write(&file, &text).unwrap();
        let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
        assert_eq!(
            code, 1,
            "{what} is garbage: tollgate check must fail\nstdout: {out}\nstderr: {err}\nconfig:\n{text}"
        );
        let line = err.lines().find(|l| l.contains(path)).unwrap_or_else(|| {
            panic!("{what} is garbage: tollgate check must name {path}...; stderr:\n{err}")
        });
        assert!(
            !line.contains("unknown field"),
            "{what}: {line:?} is not about the certificate"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 7. DNS re-resolution
// ---------------------------------------------------------------------------------------

/// Ids of the backends that answered `n` requests.
fn who_answers(gw: &Gateway, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| match try_request(gw.addr, "GET", "/", &[], b"") {
            Ok(r) if r.status == 200 => r.text(),
            Ok(r) => format!("status {}", r.status),
            Err(e) => format!("error {e}"),
        })
        .collect()
}

/// `result` labels of `tollgate_upstream_dns_resolutions_total` that mean the name resolved;
/// any other counts as a failure.
const DNS_SUCCESS_RESULTS: [&str; 5] = ["success", "ok", "changed", "unchanged", "same"];

#[test]
fn p7_backend_host_names_are_re_resolved() {
    let lo1 = Ipv4Addr::new(127, 0, 0, 1);
    let lo2 = Ipv4Addr::new(127, 0, 0, 2);
    let (one, _two) = IpEcho::pair("one", "two");
    let port = one.addr.port();
    let dns = DnsServer::start("svc.test", &[lo1]);
    assert_eq!(
        dns_lookup_a(dns.addr, "svc.test").expect("the test DNS server answers"),
        vec![lo1]
    );
    let gw = Gateway::start(&format!(
        "resolvers = [\"{}\"]\n{}{}",
        dns.addr,
        one_upstream(
            "u",
            &format!("svc.test:{port}"),
            "resolve_interval_seconds = 1"
        ),
        route("r", "paths = [\"/\"]\nupstream = \"u\"")
    ));
    let got = who_answers(&gw, 6);
    assert!(
        got.iter().all(|g| g == "one"),
        "svc.test -> 127.0.0.1: answers {got:?}, want all from 127.0.0.1 (\"one\")"
    );

    dns.set(&[lo2]);
    let mut got = Vec::new();
    let moved = wait_until(Duration::from_secs(3), || {
        got = who_answers(&gw, 4);
        got.iter().all(|g| g == "two")
    });
    assert!(
        moved,
        "3 s after svc.test moved to 127.0.0.2 (TTL 1, resolve_interval_seconds = 1), answers {got:?}; \
         DNS queries seen: {}",
        dns.queries()
    );

    dns.set(&[lo1, lo2]);
    let mut seen = BTreeSet::new();
    let spread = wait_until(Duration::from_secs(3), || {
        seen = who_answers(&gw, 10).into_iter().collect();
        seen.contains("one") && seen.contains("two")
    });
    assert!(
        spread,
        "with two A records, requests should spread over both backends; seen {seen:?}"
    );
    let resolved = |text: &str| -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (labels, v) in metric_series(text, "tollgate_upstream_dns_resolutions_total") {
            if labels.iter().any(|(k, x)| k == "upstream" && x == "u") {
                let result = labels
                    .iter()
                    .find(|(k, _)| k == "result")
                    .map(|(_, x)| x.clone())
                    .unwrap_or_default();
                *m.entry(result).or_insert(0.0) += v;
            }
        }
        m
    };
    let before = resolved(&gw.metrics());
    let total_before: f64 = before.values().sum();
    assert!(
        total_before >= 2.0,
        "tollgate_upstream_dns_resolutions_total{{upstream=\"u\"}} should count the resolutions so far \
         (at least the two that changed the addresses): {before:?}"
    );

    // The DNS server goes silent: the last good set keeps serving. Requests are checked for
    // at least 3 s, and until a failed resolution has been counted (a resolver may take a
    // few seconds to time out), at most 12 s.
    let failures = |m: &BTreeMap<String, f64>| -> f64 {
        m.iter()
            .filter(|(k, _)| !DNS_SUCCESS_RESULTS.contains(&k.as_str()))
            .map(|(_, v)| v)
            .sum()
    };
    let failed_before = failures(&before);
    dns.set_answering(false);
    let silent_at = Instant::now();
    let mut seen = BTreeSet::new();
    let after = loop {
        for g in who_answers(&gw, 2) {
            assert!(
                g == "one" || g == "two",
                "{:?} after the DNS server went silent, a request got {g:?}: the last good \
                 addresses must keep serving",
                silent_at.elapsed()
            );
            seen.insert(g);
        }
        let now = resolved(&gw.metrics());
        let elapsed = silent_at.elapsed();
        if (elapsed >= Duration::from_secs(3) && failures(&now) > failed_before)
            || elapsed >= Duration::from_secs(12)
        {
            break now;
        }
        thread::sleep(Duration::from_millis(100));
    };
    assert!(
        seen.contains("one") && seen.contains("two"),
        "while DNS does not answer, requests should still spread over the last good set; seen {seen:?}"
    );
    assert!(
        failures(&after) > failed_before,
        "resolutions that failed while the DNS server was silent ({:?}) must be counted in \
         tollgate_upstream_dns_resolutions_total with a result other than success: {before:?} -> {after:?} \
         (DNS queries received: {})",
        silent_at.elapsed(),
        dns.queries()
    );
}

// ---------------------------------------------------------------------------------------
// 8. Circuit breaker never wedges half-open
// ---------------------------------------------------------------------------------------

#[test]
fn p8_circuit_breaker_recovers_after_half_open_with_no_backend() {
    let b = SwitchBackend::start(200);
    let gw = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "u"
backends = ["{}"]
circuit_breaker = {{ consecutive_failures = 1, open_ms = 200, half_open_requests = 1 }}
[upstreams.health_check]
type = "http"
path = "/health"
interval_ms = 100
timeout_ms = 500
unhealthy_threshold = 1
healthy_threshold = 1
{}"#,
        b.addr,
        route("r", "paths = [\"/\"]\nupstream = \"u\"")
    ));
    assert_eq!(gw.get("/").status, 200, "healthy backend");
    // One failure opens the breaker.
    b.set_status(500);
    assert_eq!(gw.get("/").status, 500, "the failure passes through");
    let r = gw.get("/");
    assert_eq!(r.status, 503, "breaker open: {}", describe_response(&r));
    // No backend can be chosen.
    b.set_healthy(false);
    let backend = b.addr.to_string();
    assert!(
        wait_until(Duration::from_secs(3), || gw.metric(
            "tollgate_upstream_health",
            &[("upstream", "u"), ("backend", &backend)]
        ) == Some(0.0)),
        "the health check did not mark the backend unhealthy"
    );
    thread::sleep(Duration::from_millis(300)); // past open_ms: half-open
    for i in 0..5 {
        let r = gw.get("/");
        assert_eq!(
            r.status,
            503,
            "request {i} with no healthy backend: {}",
            describe_response(&r)
        );
        let code = r.json()["error"].as_str().unwrap_or("").to_string();
        assert!(
            code == "no_healthy_upstream" || code == "upstream_unavailable",
            "request {i}: error {code:?}: {}",
            describe_response(&r)
        );
        thread::sleep(Duration::from_millis(50));
    }
    // Healthy and answering again: traffic must come back.
    b.set_status(200);
    b.set_healthy(true);
    let mut last = String::new();
    let back = wait_until(Duration::from_secs(2), || {
        let r = gw.get("/");
        last = describe_response(&r);
        r.status == 200
    });
    assert!(
        back,
        "2 s after the backend became healthy and answering, requests still fail (the breaker \
         is wedged half-open?): last {last}; circuit state {:?}",
        gw.metric("tollgate_upstream_circuit_state", &[("upstream", "u")])
    );
    for i in 0..10 {
        let r = gw.get("/");
        assert_eq!(
            r.status,
            200,
            "request {i} after recovery: {}",
            describe_response(&r)
        );
    }
}

// ---------------------------------------------------------------------------------------
// 9. Bounded state
// ---------------------------------------------------------------------------------------

/// Send `GET /rl` with `x-key: <key>` for every key, pipelined in batches on keep-alive
/// connections (reconnecting when the gateway closes one); statuses in order.
fn flood_keys(addr: SocketAddr, keys: &[String]) -> Vec<u16> {
    let mut out = Vec::with_capacity(keys.len());
    let mut conn: Option<RawConn> = None;
    let mut i = 0;
    let mut reconnects = 0;
    while i < keys.len() {
        let c = conn.get_or_insert_with(|| RawConn::connect(addr));
        let batch = &keys[i..(i + 50).min(keys.len())];
        let mut bytes = Vec::new();
        for k in batch {
            bytes.extend_from_slice(
                format!("GET /rl HTTP/1.1\r\nHost: x\r\nx-key: {k}\r\n\r\n").as_bytes(),
            );
        }
        let _ = c.send(&bytes);
        let mut got = 0;
        for _ in batch {
            match c.read_response(Duration::from_secs(5)) {
                Ok(r) => {
                    out.push(r.status);
                    got += 1;
                    if says_close(&r) {
                        break;
                    }
                }
                Err(e) => {
                    assert!(e.is_close(), "flood: {}", e.describe());
                    break;
                }
            }
        }
        i += got;
        if got < batch.len() {
            conn = None;
            reconnects += 1;
            assert!(reconnects < 100, "flood: too many closed connections");
        }
    }
    out
}

#[test]
fn p9_rate_limit_keys_are_bounded_and_the_oldest_forgotten() {
    let gw = Gateway::start(&route(
        "rl",
        r#"paths = ["/rl"]
plugins = [
  { name = "rate_limit", limit_by = "header:x-key", minute = 5, max_keys = 1000 },
  { name = "mock", body = "ok" },
]"#,
    ));
    let first = vec!["first-key".to_string(); 6];
    let st = flood_keys(gw.addr, &first);
    assert_eq!(
        st,
        vec![200, 200, 200, 200, 200, 429],
        "quota of 5 per minute for one key"
    );
    let _ = flood_keys(
        gw.addr,
        &(0..500).map(|i| format!("warm-{i}")).collect::<Vec<_>>(),
    );
    let rss_before = rss_kb(gw.pid);

    let t = Instant::now();
    let keys: Vec<String> = (0..20_000)
        .map(|i| format!("k-{i:05}-{}", i * 7919))
        .collect();
    let st = flood_keys(gw.addr, &keys);
    let refused = st.iter().filter(|&&s| s != 200).count();
    assert_eq!(
        refused, 0,
        "distinct keys must each get their quota; {refused} refused"
    );
    eprintln!("20,000 keys in {:?}", t.elapsed());
    let rss_after = rss_kb(gw.pid);
    let grew_mb = (rss_after.saturating_sub(rss_before)) as f64 / 1024.0;
    assert!(
        grew_mb < 30.0,
        "RSS grew {grew_mb:.1} MB ({rss_before} kB -> {rss_after} kB) over 20,000 keys with max_keys = 1000"
    );

    let st = flood_keys(gw.addr, &first);
    assert_eq!(
        st,
        vec![200, 200, 200, 200, 200, 429],
        "after 20,000 newer keys (max_keys = 1000), the first key should have been forgotten and get its full quota again"
    );
}

// ---------------------------------------------------------------------------------------
// 10. Smaller ones
// ---------------------------------------------------------------------------------------

#[test]
fn p10a_keepalive_requests_closes_after_the_third_response() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "keepalive_requests = 3\n{}{}",
        one_upstream("u", &up.address(), ""),
        route("r", "paths = [\"/\"]\nupstream = \"u\"")
    ));
    let mut c = RawConn::connect(gw.addr);
    for i in 1..=3 {
        c.send(format!("GET /ka/{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap_or_else(|e| panic!("request {i}: write failed: {e}"));
        let r = c
            .read_response(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("request {i} of keepalive_requests = 3: {}", e.describe()));
        assert_eq!(r.status, 200, "request {i}: {}", describe_response(&r));
        if i < 3 {
            assert!(
                !says_close(&r),
                "response {i} already says close: {}",
                describe_response(&r)
            );
        } else {
            assert!(
                says_close(&r),
                "the 3rd response (keepalive_requests = 3) must carry `Connection: close`: {}",
                describe_response(&r)
            );
        }
    }
    let _ = c.send(b"GET /ka/4 HTTP/1.1\r\nHost: x\r\n\r\n");
    if let Ok(r) = c.read_response(Duration::from_secs(2)) {
        panic!(
            "a 4th request was answered on a connection limited to 3: {}",
            describe_response(&r)
        );
    }
    thread::sleep(Duration::from_millis(100));
    assert_eq!(up.count(), 3, "exactly 3 requests served: {}", up.summary());
}

#[test]
fn p10b_split_weights_9_to_1_are_exact_in_every_block_of_10() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start(&format!(
        "{}{}{}\n[[routes.split]]\ntargets = [{{ upstream = \"a\", weight = 9 }}, {{ upstream = \"b\", weight = 1 }}]\n",
        one_upstream("a", &a.address(), ""),
        one_upstream("b", &b.address(), ""),
        route("r", "paths = [\"/\"]\nupstream = \"a\"")
    ));
    let mut per_block = Vec::new();
    for _ in 0..10 {
        let mut bs = 0;
        for _ in 0..10 {
            let r = gw.get("/split");
            assert_eq!(r.status, 200, "{}", describe_response(&r));
            if r.upstream_id() == "b" {
                bs += 1;
            }
        }
        per_block.push(bs);
    }
    let total: usize = per_block.iter().sum();
    assert_eq!(
        total, 10,
        "weight 1 of 10 over 100 requests: per block of 10 {per_block:?}"
    );
    assert!(
        per_block.iter().all(|&n| n == 1),
        "every block of 10 requests should send exactly 1 to the weight-1 target: {per_block:?}"
    );
}

#[test]
fn p10c_cors_preflight_is_answered_on_a_get_only_route() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}",
        one_upstream("u", &up.address(), ""),
        route(
            "api",
            "paths = [\"/api\"]\nmethods = [\"GET\"]\nupstream = \"u\"\nplugins = [{ name = \"cors\", origins = [\"https://app.test\"] }]"
        )
    ));
    let r = gw.request(
        "OPTIONS",
        "/api/items",
        &[
            ("origin", "https://app.test"),
            ("access-control-request-method", "GET"),
        ],
        b"",
    );
    assert_eq!(
        r.status,
        204,
        "a CORS preflight on a GET-only route must be answered by cors (204), not 405: {}",
        describe_response(&r)
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.test"),
        "{}",
        describe_response(&r)
    );
    assert_eq!(up.count(), 0, "the preflight reached the upstream");
}

#[test]
fn p10d_split_body_over_the_limit_goes_to_the_default_upstream_and_is_counted() {
    let small = Upstream::start("small");
    let gpu = Upstream::start("gpu");
    let gw = Gateway::start(&format!(
        "{}{}{}\n[[routes.split]]\nmatch = {{ body = {{ model = \"big\" }} }}\ntargets = [{{ upstream = \"gpu\" }}]\n",
        one_upstream("small", &small.address(), ""),
        one_upstream("gpu", &gpu.address(), ""),
        route(
            "chat",
            "paths = [\"=/chat\"]\nupstream = \"small\"\nsplit_body_max_bytes = 100"
        )
    ));
    let json = [("content-type", "application/json")];
    let short = br#"{"model":"big"}"#;
    let r = gw.request("POST", "/chat", &json, short);
    assert_eq!(r.status, 200, "{}", describe_response(&r));
    assert_eq!(
        r.upstream_id(),
        "gpu",
        "a small body matching the rule goes to the split target"
    );

    let mut long = String::from(r#"{"model":"big","pad":""#);
    while long.len() < 198 {
        long.push('x');
    }
    long.push_str("\"}");
    assert_eq!(long.len(), 200);
    let r = gw.request("POST", "/chat", &json, long.as_bytes());
    assert_eq!(r.status, 200, "{}", describe_response(&r));
    assert_eq!(
        r.upstream_id(),
        "small",
        "a 200-byte body over split_body_max_bytes = 100 must go to the route's default upstream"
    );
    assert_eq!(
        r.json()["body"],
        long.as_str(),
        "the body must reach the upstream unchanged"
    );
    assert_eq!(
        gw.metric("tollgate_split_body_too_large_total", &[("route", "chat")]),
        Some(1.0),
        "tollgate_split_body_too_large_total{{route=\"chat\"}} must count the oversized body"
    );
}

#[test]
fn p10e_check_lists_every_type_error_of_a_route() {
    let dir = TempDir::new("check2");
    let file = dir.path().join("two-errors.toml");
    std::fs::write(
        &file,
        "[[upstreams]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\npriority = \"high\"\nstrip_prefix = \"yes\"\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1, "check must fail\nstdout: {out}\nstderr: {err}");
    for path in ["routes[0].priority", "routes[0].strip_prefix"] {
        assert!(
            err.contains(path),
            "tollgate check must list every type error; {path} missing from:\n{err}"
        );
    }
}
