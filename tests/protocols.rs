//! Protocols and downstream protection (issue 6): HTTP/2 over TLS (ALPN) and h2c, HTTP/2 to
//! upstreams, oversized headers (431), requests per connection, idle keep-alive timeout.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

fn self_signed(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl")
        .status
        .success();
    assert!(ok, "openssl could not make a test certificate");
    (cert.display().to_string(), key.display().to_string())
}

/// `curl` with `args`; returns (HTTP version, status, body).
fn curl(args: &[&str]) -> (String, String, String) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "5",
            "-o",
            "-",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (v, code) = tail.split_once(' ').unwrap_or(("", ""));
    (v.to_string(), code.to_string(), body.to_string())
}

#[test]
fn http2_over_tls_and_h2c_and_to_upstreams() {
    let dir = TempDir::new("tls");
    let (cert, key) = self_signed(dir.path());
    let tls_port = free_port();
    let up = Upstream::start("u");
    // Gateway A: h2c and TLS listeners.
    let a = Gateway::start(&format!(
        "h2c = true\n[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n\n[[upstreams]]\nname = \"u\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
        up.address()
    ));
    let (v, code, body) = curl(&[
        "--http2",
        "-k",
        &format!("https://127.0.0.1:{tls_port}/over-tls"),
    ]);
    assert_eq!((v.as_str(), code.as_str()), ("2", "200"), "{body}");
    assert!(body.contains("/over-tls"), "{body}");
    assert!(body.contains(r#""x-forwarded-proto":"https""#), "{body}");
    let (v, code, _) = curl(&["--http2-prior-knowledge", &format!("http://{}/h2c", a.addr)]);
    assert_eq!((v.as_str(), code.as_str()), ("2", "200"));
    let (v, code, _) = curl(&[&format!("http://{}/h1", a.addr)]);
    assert_eq!(
        (v.as_str(), code.as_str()),
        ("1.1", "200"),
        "HTTP/1.1 still works with h2c on"
    );

    // Gateway B speaks HTTP/2 (h2c) to gateway A.
    let b = Gateway::start(&format!(
        "[[upstreams]]\nname = \"a\"\nbackends = [\"{}\"]\nhttp2 = true\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"a\"\n",
        a.addr
    ));
    for i in 0..5 {
        let r = b.get(&format!("/through/{i}"));
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.upstream_path(), format!("/through/{i}"));
    }
}

#[test]
fn oversized_headers_get_431_and_connection_limits_apply() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "max_header_bytes = 4096\nkeepalive_requests = 3\nkeepalive_timeout_seconds = 1\n\n[[upstreams]]\nname = \"u\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
        up.address()
    ));
    let big = "x".repeat(5000);
    let r = gw.request("GET", "/", &[("x-big", &big)], b"");
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"], "headers_too_large");
    assert_eq!(gw.request("GET", "/", &[("x-small", "y")], b"").status, 200);

    // Keep-alive: the third request on a connection is its last.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answers = 0;
    for _ in 0..3 {
        s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        answers += 1;
    }
    assert_eq!(answers, 3);
    let mut buf = [0u8; 64];
    let closed = matches!(s.read(&mut buf), Ok(0));
    assert!(closed, "connection left open after keepalive_requests");

    // An idle keep-alive connection is closed after keepalive_timeout_seconds.
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").unwrap();
    let mut buf = vec![0u8; 8192];
    let _ = s.read(&mut buf).unwrap();
    let t = std::time::Instant::now();
    let n = s.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "idle connection not closed");
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        t.elapsed()
    );
}

/// A client that never finishes its request head is cut off (Pingora's fixed 60 s timeout for
/// a connection's first request head), and does not hold the gateway up meanwhile.
#[test]
fn slow_header_client_is_cut_off() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nname = \"u\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"u\"\n",
        up.address()
    ));
    let mut slow = TcpStream::connect(gw.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(75)))
        .unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nx-partial: ")
        .unwrap();
    let t = std::time::Instant::now();
    assert_eq!(
        gw.get("/").status,
        200,
        "other clients are served meanwhile"
    );
    let mut buf = [0u8; 256];
    let n = slow.read(&mut buf).unwrap_or(0);
    let took = t.elapsed();
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert!(
        took < Duration::from_secs(70),
        "slow client held its connection for {took:?}"
    );
}
