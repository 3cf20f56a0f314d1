//! Response-body hooks (issue 17): `response_transform` and `compress` through the real
//! binary and real upstreams: what the client receives (bytes and framing) and what the
//! upstream saw.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// A chunked response with these chunks.
fn chunked_reply(status: u16, headers: &[(&str, &str)], chunks: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Canned\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("transfer-encoding: chunked\r\n\r\n");
    let mut out = out.into_bytes();
    for c in chunks {
        out.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend_from_slice(c);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// `http_reply`, without the body for `HEAD`.
fn reply_for(r: &Recorded, status: u16, headers: &[(&str, &str)], body: &[u8]) -> Reply {
    let mut bytes = http_reply(status, headers, body);
    if r.method == "HEAD" {
        bytes.truncate(bytes.len() - body.len());
    }
    Reply::Bytes(bytes)
}

const JSON: &[u8] = br#"{"a":{"b":0,"c":1},"secret":"s3cr3t","keep":[1,2]}"#;

fn text_body() -> String {
    (0..200)
        .map(|i| format!("line {i}: the quick brown fox\n"))
        .collect()
}

/// The origin of most tests, by path.
fn origin() -> RawUpstream {
    RawUpstream::with(|r| {
        let json = [("content-type", "application/json")];
        match r.path() {
            "/t/json" => reply_for(r, 200, &json, JSON),
            "/t/chunked-json" => Reply::Bytes(chunked_reply(
                200,
                &json,
                &[&JSON[..7], &JSON[7..20], &JSON[20..]],
            )),
            "/t/text" => reply_for(
                r,
                200,
                &[("content-type", "text/plain")],
                b"hello world, wonderful world",
            ),
            "/t/big" => Reply::Bytes(chunked_reply(
                200,
                &[("content-type", "text/plain")],
                &[text_body().as_bytes(), b"world tail"],
            )),
            "/t/big-cl" => reply_for(
                r,
                200,
                &[("content-type", "text/plain")],
                text_body().as_bytes(),
            ),
            "/z/page" => reply_for(
                r,
                200,
                &[
                    ("content-type", "text/html; charset=utf-8"),
                    ("etag", "\"v1\""),
                    ("vary", "Origin"),
                ],
                text_body().as_bytes(),
            ),
            "/z/small" => reply_for(r, 200, &[("content-type", "text/html")], b"tiny"),
            "/z/encoded" => reply_for(
                r,
                200,
                &[("content-type", "text/html"), ("content-encoding", "gzip")],
                &gzip(text_body().as_bytes()),
            ),
            _ => reply_for(r, 404, &[("content-type", "text/plain")], b"no"),
        }
    })
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn gunzip_bytes(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("not gzip ({e}): {:?}", escape_bytes(b)));
    out
}

fn unbrotli(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    brotli::Decompressor::new(b, 4096)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("not brotli ({e}): {:?}", escape_bytes(b)));
    out
}

fn config(up: &RawUpstream) -> String {
    format!(
        r#"
[[upstreams]]
name = "o"
backends = ["{up}"]

[[routes]]
name = "transform"
paths = ["/t"]
upstream = "o"

[[routes.plugins]]
name = "response_transform"
json.set = {{ "a.b" = 42, "added.x" = "y" }}
json.remove = ["secret", "a.c"]
max_body_bytes = 4096
regex = [{{ pattern = "wor(ld)", replace = "WOR$1" }}]

[[routes]]
name = "zip"
paths = ["/z"]
upstream = "o"

[[routes.plugins]]
name = "compress"
algorithms = ["br", "gzip"]

[[routes]]
name = "zip-mock"
paths = ["=/mock"]

[[routes.plugins]]
name = "compress"
algorithms = ["gzip"]

[[routes.plugins]]
name = "mock"
body = "{mock}"
"#,
        up = up.address(),
        mock = "mocked answer ".repeat(200),
    )
}

/// Send `head` (a request without body) on `conn` and read the response.
fn exchange(conn: &mut RawConn, method: &str, path: &str, extra: &str) -> Response {
    conn.send(format!("{method} {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n").as_bytes())
        .unwrap();
    let r = if method == "HEAD" {
        conn.read_head_response(IO_TIMEOUT)
    } else {
        conn.read_response(IO_TIMEOUT)
    };
    r.unwrap_or_else(|e| panic!("{method} {path}: {}", e.describe()))
}

fn expected_json() -> Json {
    serde_json::json!({"a": {"b": 42}, "keep": [1, 2], "added": {"x": "y"}})
}

#[test]
fn json_transformed_from_a_content_length_and_a_chunked_body() {
    let up = origin();
    let gw = Gateway::start(&config(&up));
    // One kept-alive connection: the second response can only be read if the first was
    // framed (chunked), not ended by a close.
    let mut c = RawConn::connect(gw.addr);
    for path in ["/t/json", "/t/chunked-json", "/t/json"] {
        let r = exchange(&mut c, "GET", path, "");
        assert_eq!(r.status, 200, "{}", describe_response(&r));
        assert_eq!(
            r.header("transfer-encoding"),
            Some("chunked"),
            "{path}: {}",
            describe_response(&r)
        );
        assert_eq!(r.header("content-length"), None, "{path}");
        assert_eq!(r.json(), expected_json(), "{path}");
    }
    assert!(!c.closed());
    // The upstream got the requests unchanged, on its own framing.
    let seen: Vec<_> = up.requests().iter().map(|r| r.path().to_string()).collect();
    assert_eq!(seen, ["/t/json", "/t/chunked-json", "/t/json"]);
    assert_eq!(
        gw.metric(
            "tollgate_response_transforms_total",
            &[("route", "transform"), ("result", "transformed")]
        ),
        Some(3.0)
    );
}

#[test]
fn regex_replaces_in_text_and_head_gets_no_body() {
    let up = origin();
    let gw = Gateway::start(&config(&up));
    let mut c = RawConn::connect(gw.addr);
    let r = exchange(&mut c, "GET", "/t/text", "");
    assert_eq!(r.text(), "hello WORld, wonderful WORld");
    // HEAD: no body invented, the origin's Content-Length kept, the connection still usable.
    let r = exchange(&mut c, "HEAD", "/t/text", "");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(
        r.header("content-length"),
        Some("28"),
        "{}",
        describe_response(&r)
    );
    let r = exchange(&mut c, "GET", "/t/text", "");
    assert_eq!(r.text(), "hello WORld, wonderful WORld");
}

#[test]
fn bodies_over_max_body_bytes_pass_through_whole() {
    let up = origin();
    let gw = Gateway::start(&config(&up));
    let mut c = RawConn::connect(gw.addr);
    // Unknown length, found too large while streaming: nothing replaced, nothing lost.
    let r = exchange(&mut c, "GET", "/t/big", "");
    let want = format!("{}world tail", text_body());
    assert_eq!(r.text(), want);
    // Known to be too large: untouched, with its Content-Length.
    let r = exchange(&mut c, "GET", "/t/big-cl", "");
    assert_eq!(r.text(), text_body());
    assert_eq!(
        r.header("content-length"),
        Some(&*text_body().len().to_string())
    );
    assert_eq!(
        gw.metric(
            "tollgate_response_transforms_total",
            &[("route", "transform"), ("result", "too_large")]
        ),
        Some(2.0)
    );
}

#[test]
fn gzip_and_brotli_decode_to_the_original() {
    let up = origin();
    let gw = Gateway::start(&config(&up));
    let mut c = RawConn::connect(gw.addr);
    let original = text_body().into_bytes();
    let r = exchange(
        &mut c,
        "GET",
        "/z/page",
        "accept-encoding: gzip, br;q=0.5\r\n",
    );
    assert_eq!(
        r.header("content-encoding"),
        Some("gzip"),
        "{}",
        describe_response(&r)
    );
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("etag"), Some("W/\"v1\""));
    assert_eq!(r.header_all("vary"), ["Origin", "Accept-Encoding"]);
    assert!(r.body.len() < original.len() / 2, "{} bytes", r.body.len());
    assert_eq!(gunzip_bytes(&r.body), original);

    let r = exchange(&mut c, "GET", "/z/page", "accept-encoding: gzip, br\r\n");
    assert_eq!(r.header("content-encoding"), Some("br"));
    assert_eq!(unbrotli(&r.body), original);
    assert!(r.header_all("vary").contains(&"Accept-Encoding"));

    // The upstream saw the client's Accept-Encoding (it may compress itself).
    let reqs = up.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("accept-encoding"), Some("gzip, br"));

    // A plugin's answer is compressed whole, with its compressed length.
    let r = exchange(&mut c, "GET", "/mock", "accept-encoding: gzip\r\n");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.header("content-length"), Some(&*r.body.len().to_string()));
    assert_eq!(
        gunzip_bytes(&r.body),
        "mocked answer ".repeat(200).as_bytes()
    );
}

#[test]
fn compress_leaves_alone_what_it_must() {
    let up = origin();
    let gw = Gateway::start(&config(&up));
    let mut c = RawConn::connect(gw.addr);
    let original = text_body().into_bytes();
    // Below min_size.
    let r = exchange(&mut c, "GET", "/z/small", "accept-encoding: gzip\r\n");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, b"tiny");
    assert_eq!(r.header("content-length"), Some("4"));
    // Already encoded by the origin: the same bytes.
    let r = exchange(&mut c, "GET", "/z/encoded", "accept-encoding: br, gzip\r\n");
    assert_eq!(r.header("content-encoding"), Some("gzip"));
    assert_eq!(r.body, gzip(&original));
    // gzip refused, nothing else offered.
    let r = exchange(
        &mut c,
        "GET",
        "/z/page",
        "accept-encoding: gzip;q=0, identity\r\n",
    );
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, original);
    assert_eq!(r.header_all("vary"), ["Origin", "Accept-Encoding"]);
    // No Accept-Encoding at all.
    let r = exchange(&mut c, "GET", "/z/page", "");
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(r.body, original);
    // HEAD: no body, nothing encoded.
    let r = exchange(&mut c, "HEAD", "/z/page", "accept-encoding: gzip\r\n");
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-encoding"), None);
    assert_eq!(
        r.header("content-length"),
        Some(&*original.len().to_string())
    );
    // The connection survived every one of them.
    let r = exchange(&mut c, "GET", "/z/page", "accept-encoding: gzip\r\n");
    assert_eq!(gunzip_bytes(&r.body), original);
}

/// An origin sending SSE events one at a time: each after the test says `go`.
fn sse_origin(go: mpsc::Receiver<()>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let Some(Ok(s)) = listener.incoming().next() else {
            return;
        };
        let mut reader = BufReader::new(s.try_clone().unwrap());
        let mut out = s;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                break;
            }
        }
        let _ = out.write_all(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
        );
        for i in 0..3 {
            if i > 0 && go.recv_timeout(Duration::from_secs(10)).is_err() {
                return;
            }
            let ev = format!("data: event {i}\n\n");
            let _ = out.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
            let _ = out.flush();
        }
        let _ = out.write_all(b"0\r\n\r\n");
    });
    addr
}

/// Read one chunk of a chunked body.
fn read_chunk(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let n =
        usize::from_str_radix(line.trim(), 16).unwrap_or_else(|_| panic!("chunk size {line:?}"));
    let mut buf = vec![0u8; n + 2];
    r.read_exact(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

fn sse_config(origin: std::net::SocketAddr, compress_sse: bool) -> String {
    let types = if compress_sse {
        "content_types = [\"text/event-stream\"]\nmin_size = 1\nalgorithms = [\"gzip\"]"
    } else {
        ""
    };
    format!(
        r#"
[[upstreams]]
name = "o"
backends = ["{origin}"]

[[routes]]
name = "sse"
paths = ["/events"]
upstream = "o"

[[routes.plugins]]
name = "response_transform"
regex = [{{ pattern = "event", replace = "EVENT" }}]

[[routes.plugins]]
name = "compress"
{types}
"#
    )
}

#[test]
fn sse_events_arrive_one_by_one_through_body_hooks() {
    for compress_sse in [false, true] {
        let (tx, rx) = mpsc::channel();
        let gw = Gateway::start(&sse_config(sse_origin(rx), compress_sse));
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /events HTTP/1.1\r\nhost: x\r\naccept-encoding: gzip\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" {
                break;
            }
            head.push(line.trim().to_ascii_lowercase());
        }
        assert!(
            head.contains(&"transfer-encoding: chunked".to_string()),
            "{head:?}"
        );
        let gzipped = head.contains(&"content-encoding: gzip".to_string());
        assert_eq!(gzipped, compress_sse, "{head:?}");
        let mut decoder = flate2::write::GzDecoder::new(Vec::new());
        let mut received = String::new();
        for i in 0..3 {
            // Event i has arrived before the origin was allowed to send event i + 1.
            while !received.contains(&format!("data: event {i}\n\n")) {
                let chunk = read_chunk(&mut r);
                assert!(
                    !chunk.is_empty(),
                    "body ended before event {i}: {received:?}"
                );
                if gzipped {
                    decoder.write_all(&chunk).unwrap();
                    decoder.flush().unwrap();
                    received = String::from_utf8_lossy(decoder.get_ref()).into_owned();
                } else {
                    received.push_str(&String::from_utf8_lossy(&chunk));
                }
            }
            // Event streams are not transformed (the regex would have said EVENT).
            assert!(!received.contains("EVENT"), "{received:?}");
            let _ = tx.send(());
        }
    }
}

#[test]
fn cached_responses_are_stored_as_they_came_and_compressed_per_request() {
    let up = RawUpstream::with(|r| {
        reply_for(
            r,
            200,
            &[
                ("content-type", "application/json"),
                ("cache-control", "public, max-age=60"),
            ],
            JSON.repeat(40).as_slice(),
        )
    });
    let gw = Gateway::start(&format!(
        r#"
[[upstreams]]
name = "o"
backends = ["{}"]

[[routes]]
name = "cached"
paths = ["/c"]
upstream = "o"
plugins = ["cache", {{ name = "compress", algorithms = ["gzip"] }}]
"#,
        up.address()
    ));
    let original = JSON.repeat(40);
    let mut c = RawConn::connect(gw.addr);
    // Miss (streamed through Pingora's cache phases), then hits: gzip for whoever asks,
    // the stored identity body for whoever does not.
    for (i, ae) in ["gzip", "gzip", "", "gzip"].iter().enumerate() {
        let extra = if ae.is_empty() {
            String::new()
        } else {
            format!("accept-encoding: {ae}\r\n")
        };
        let r = exchange(&mut c, "GET", "/c/x", &extra);
        let status = r.header("x-cache-status").unwrap_or("").to_string();
        assert_eq!(
            status,
            if i == 0 { "MISS" } else { "HIT" },
            "{}",
            describe_response(&r)
        );
        if ae.is_empty() {
            assert_eq!(r.header("content-encoding"), None);
            assert_eq!(r.body, original);
        } else {
            assert_eq!(
                r.header("content-encoding"),
                Some("gzip"),
                "{i}: {}",
                describe_response(&r)
            );
            assert_eq!(gunzip_bytes(&r.body), original, "{i}");
        }
        assert!(r.header_all("vary").contains(&"Accept-Encoding"), "{i}");
    }
    assert_eq!(up.count(), 1);
}
