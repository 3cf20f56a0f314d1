//! Streaming and upgrades (issue 6): SSE events pass through one by one as they are sent, and
//! WebSocket upgrades are proxied both ways after the route's plugins accepted them.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

/// An origin that answers `/events` with 3 SSE events 300 ms apart (chunked), and `/ws` with
/// a WebSocket handshake, then echoes every byte it receives.
fn origin() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(s) = s else { continue };
            thread::spawn(move || {
                let mut reader = BufReader::new(s.try_clone().unwrap());
                let mut out = s;
                let mut first = String::new();
                if reader.read_line(&mut first).is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                        break;
                    }
                }
                if first.contains("/events") {
                    let _ = out.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n");
                    for i in 0..3 {
                        let ev = format!("data: event {i}\n\n");
                        let _ = out.write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes());
                        let _ = out.flush();
                        thread::sleep(Duration::from_millis(300));
                    }
                    let _ = out.write_all(b"0\r\n\r\n");
                } else {
                    let _ = out.write_all(
                        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
                    );
                    let mut buf = [0u8; 1024];
                    loop {
                        match reader.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                if out.write_all(&buf[..n]).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn config(origin: std::net::SocketAddr) -> String {
    format!(
        r#"
[[consumers]]
username = "c"
keys = ["stream-key-123456"]

[[upstreams]]
name = "o"
backends = ["{origin}"]

[[routes]]
name = "sse"
paths = ["/events"]
upstream = "o"
plugins = ["headers"]

[plugins.headers]
response.set = {{ x-gw = "1" }}

[[routes]]
name = "ws"
paths = ["/ws"]
upstream = "o"
plugins = ["key_auth"]
"#
    )
}

#[test]
fn sse_events_arrive_one_by_one() {
    let gw = Gateway::start(&config(origin()));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    s.write_all(b"GET /events HTTP/1.1\r\nhost: x\r\naccept: text/event-stream\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(s);
    let mut seen = Vec::new();
    let mut line = String::new();
    while seen.len() < 3 {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        if line.starts_with("data: ") {
            seen.push((line.trim().to_string(), start.elapsed()));
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
    // The first event arrives long before the origin finished (~900 ms), and the spacing of
    // the events survives the gateway.
    assert!(
        seen[0].1 < Duration::from_millis(250),
        "first event after {:?}: buffered",
        seen[0].1
    );
    assert!(
        seen[1].1 - seen[0].1 > Duration::from_millis(200),
        "{seen:?}"
    );
    assert!(
        seen[2].1 - seen[1].1 > Duration::from_millis(200),
        "{seen:?}"
    );
}

#[test]
fn websocket_echo_through_the_gateway_and_refused_without_credentials() {
    let gw = Gateway::start(&config(origin()));
    let handshake = |key: Option<&str>| {
        let mut s = TcpStream::connect(gw.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let auth = key.map(|k| format!("apikey: {k}\r\n")).unwrap_or_default();
        write!(
            s,
            "GET /ws HTTP/1.1\r\nhost: x\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n{auth}\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).unwrap_or(0) == 0 {
                break;
            }
            head.push(b[0]);
        }
        (s, String::from_utf8_lossy(&head).into_owned())
    };
    let (_s, head) = handshake(None);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (mut s, head) = handshake(Some("stream-key-123456"));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    // Bytes flow both ways after the upgrade (the origin echoes them).
    for msg in [&b"\x81\x05hello"[..], &b"\x81\x05world"[..]] {
        s.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        s.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
}
