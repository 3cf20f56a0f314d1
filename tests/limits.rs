//! Traffic limits and access control (issue 4): rate limits in process and in a real Redis,
//! concurrency, IP rules with trusted proxies, body size, CORS.

mod common;

use common::*;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

fn echo(up: &Upstream) -> String {
    format!(
        "[[upstreams]]\nname = \"echo\"\nbackends = [\"{}\"]\n",
        up.address()
    )
}

fn route(name: &str, path: &str, plugins: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\npaths = [\"{path}\"]\nupstream = \"echo\"\nplugins = [{plugins}]\n")
}

/// Send `total` requests from `clients` threads at once; count the statuses.
fn burst(
    addr: SocketAddr,
    path: &str,
    clients: usize,
    total: usize,
    headers: &[(&str, &str)],
) -> (usize, usize, usize) {
    let path = path.to_string();
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    burst_of(clients, total, move || {
        let h: Vec<(&str, &str)> = headers
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        request(addr, "GET", &path, &h, b"").status
    })
}

#[test]
fn local_limit_is_exact_under_concurrency() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}",
        echo(&up),
        route("rl", "/rl", r#"{ name = "rate_limit", minute = 100 }"#)
    ));
    let (ok, limited, other) = burst(gw.addr, "/rl", 64, 300, &[]);
    assert_eq!((ok, limited, other), (100, 200, 0));
    assert_eq!(
        up.count(),
        100,
        "limited requests must not reach the upstream"
    );
    assert_eq!(
        gw.metric(
            "tollgate_ratelimit_decisions_total",
            &[("route", "rl"), ("result", "allowed")]
        ),
        Some(100.0)
    );
    assert_eq!(
        gw.metric(
            "tollgate_ratelimit_decisions_total",
            &[("route", "rl"), ("result", "limited")]
        ),
        Some(200.0)
    );
}

#[test]
fn redis_limit_is_exact_and_shared_by_two_gateways() {
    let redis = Redis::start();
    let up = Upstream::start("u");
    let body = format!(
        "{}{}",
        echo(&up),
        route(
            "rl",
            "/rl",
            &format!(
                r#"{{ name = "rate_limit", minute = 100, policy = "redis", redis = {{ url = "{}", timeout_ms = 500 }} }}"#,
                redis.url()
            )
        )
    );
    let a = Gateway::start(&body);
    let (ok, limited, other) = burst(a.addr, "/rl", 64, 300, &[]);
    assert_eq!((ok, limited, other), (100, 200, 0), "one gateway");

    // A second gateway with the same definition shares the counters: a different key (IP
    // is the same, so use a header key on a fresh route) is limited globally.
    let shared = format!(
        "{}{}",
        echo(&up),
        route(
            "shared",
            "/shared",
            &format!(
                r#"{{ name = "rate_limit", minute = 50, limit_by = "header:x-tenant", policy = "redis", redis = {{ url = "{}", timeout_ms = 500 }} }}"#,
                redis.url()
            )
        )
    );
    let b = Gateway::start(&shared);
    let c = Gateway::start(&shared);
    let tenant = [("x-tenant", "acme")];
    let (b_ok, b_lim, _) = {
        let (tx, rx) = std::sync::mpsc::channel();
        let (baddr, caddr) = (b.addr, c.addr);
        let t = thread::spawn(move || {
            tx.send(burst(caddr, "/shared", 32, 80, &[("x-tenant", "acme")]))
                .unwrap()
        });
        let first = burst(baddr, "/shared", 32, 80, &tenant);
        t.join().unwrap();
        let second = rx.recv().unwrap();
        (first.0 + second.0, first.1 + second.1, 0)
    };
    assert_eq!((b_ok, b_lim), (50, 110), "two gateways, one limit");
    // Another tenant has its own budget.
    assert_eq!(
        b.request("GET", "/shared", &[("x-tenant", "other")], b"")
            .status,
        200
    );
}

#[test]
fn headers_on_pass_and_on_429_and_window_rollover() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        echo(&up),
        route(
            "rl",
            "/rl",
            r#"{ name = "rate_limit", second = 3, hour = 1000 }"#
        ),
        route(
            "ietf",
            "/ietf",
            r#"{ name = "rate_limit", minute = 2, headers = "ietf" }"#
        ),
    ));
    // Start early in a second so the three requests share one window.
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    if ms > 600 {
        thread::sleep(Duration::from_millis(1010 - ms as u64));
    }
    for remaining in ["2", "1", "0"] {
        let r = gw.get("/rl");
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("x-ratelimit-limit"),
            Some("3"),
            "tightest window is the second"
        );
        assert_eq!(r.header("x-ratelimit-remaining"), Some(remaining));
        assert_eq!(r.header("x-ratelimit-reset"), Some("1"));
    }
    let r = gw.get("/rl");
    assert_eq!(r.status, 429);
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.header("x-ratelimit-limit"), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    // After two windows the previous counts have slid out.
    thread::sleep(Duration::from_millis(2100));
    for _ in 0..3 {
        assert_eq!(gw.get("/rl").status, 200);
    }
    assert_eq!(gw.get("/rl").status, 429);

    let r = gw.get("/ietf");
    assert_eq!(r.header("ratelimit-policy"), Some("\"default\";q=2;w=60"));
    assert!(
        r.header("ratelimit")
            .unwrap()
            .starts_with("\"default\";r=1;t="),
        "{:?}",
        r.header("ratelimit")
    );
    assert_eq!(r.header("x-ratelimit-limit"), None);
}

#[test]
fn missing_key_values_share_one_bucket() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}",
        echo(&up),
        route(
            "rl",
            "/rl",
            r#"{ name = "rate_limit", minute = 2, limit_by = "header:x-user" }"#
        )
    ));
    assert_eq!(gw.get("/rl").status, 200);
    assert_eq!(gw.get("/rl").status, 200);
    assert_eq!(
        gw.get("/rl").status,
        429,
        "requests without the header are limited together"
    );
    assert_eq!(
        gw.request("GET", "/rl", &[("x-user", "a")], b"").status,
        200
    );
}

#[test]
fn redis_down_follows_on_store_error() {
    let mut redis = Redis::start();
    let up = Upstream::start("u");
    let rl = |mode: &str, path: &str| {
        route(
            mode,
            path,
            &format!(
                r#"{{ name = "rate_limit", minute = 2, policy = "redis", redis = {{ url = "{}", timeout_ms = 100 }}, on_store_error = "{mode}" }}"#,
                redis.url()
            ),
        )
    };
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        echo(&up),
        rl("open", "/open"),
        rl("closed", "/closed"),
        rl("local", "/local")
    ));
    for p in ["/open", "/closed", "/local"] {
        assert_eq!(gw.get(p).status, 200, "{p} with Redis up");
    }
    redis.stop();
    let t = Instant::now();
    // open: everything passes.
    for _ in 0..5 {
        assert_eq!(gw.get("/open").status, 200);
    }
    // closed: refused with 503.
    let r = gw.get("/closed");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "rate_limit_unavailable");
    // local: counted in process, from zero: two pass, then 429.
    let statuses: Vec<u16> = (0..4).map(|_| gw.get("/local").status).collect();
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "requests hung on a dead Redis: {:?}",
        t.elapsed()
    );
    for mode in ["open", "closed", "local"] {
        let n = gw.metric(
            "tollgate_ratelimit_store_errors_total",
            &[("route", mode), ("on_store_error", mode)],
        );
        assert!(n.unwrap_or(0.0) >= 1.0, "{mode}: {n:?}");
    }
    assert!(
        gw.stderr().contains("rate-limit store"),
        "no log line:\n{}",
        gw.stderr()
    );

    // Redis back on the same port: shared counting resumes.
    let _redis = Redis::start_on(redis.port);
    assert!(
        wait_until(Duration::from_secs(5), || gw.get("/closed").status != 503),
        "did not reconnect to Redis"
    );
}

#[test]
fn reload_keeps_counters_of_unchanged_limits() {
    let up = Upstream::start("u");
    let body = format!(
        "{}{}",
        echo(&up),
        route("rl", "/rl", r#"{ name = "rate_limit", minute = 3 }"#)
    );
    let gw = Gateway::start(&body);
    for _ in 0..3 {
        assert_eq!(gw.get("/rl").status, 200);
    }
    assert_eq!(gw.get("/rl").status, 429);
    // Same limit, another route added: counts survive.
    gw.rewrite_config(&format!("{body}\n[[routes]]\nname = \"new\"\npaths = [\"/new\"]\nplugins = [{{ name = \"mock\", body = \"new\" }}]\n"));
    gw.reload();
    assert!(wait_until(Duration::from_secs(5), || gw.get("/new").status == 200));
    assert_eq!(gw.get("/rl").status, 429, "the reload reset the counter");
    // A changed limit is a new counter.
    gw.rewrite_config(&format!(
        "{}{}",
        echo(&up),
        route("rl", "/rl", r#"{ name = "rate_limit", minute = 4 }"#)
    ));
    gw.reload();
    assert!(wait_until(Duration::from_secs(5), || gw.get("/new").status == 404));
    assert_eq!(gw.get("/rl").status, 200);
}

#[test]
fn concurrency_limit_refuses_the_excess() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}",
        echo(&up),
        route("c", "/slow", r#"{ name = "concurrency", max = 2 }"#)
    ));
    let addr = gw.addr;
    let slow: Vec<_> = (0..2)
        .map(|_| thread::spawn(move || get(addr, "/slow/800").status))
        .collect();
    assert!(wait_until(Duration::from_secs(3), || up.count() >= 2));
    let r = gw.get("/slow/10");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"));
    for t in slow {
        assert_eq!(t.join().unwrap(), 200);
    }
    // Slots are released when requests end (just after the client has its answer).
    assert!(wait_until(Duration::from_secs(3), || gw
        .get("/slow/10")
        .status
        == 200));
    assert_eq!(
        gw.metric(
            "tollgate_requests_rejected_total",
            &[("route", "c"), ("plugin", "concurrency"), ("status", "503")]
        ),
        Some(1.0)
    );
}

#[test]
fn ip_rules_v4_v6_and_trusted_proxies() {
    let up = Upstream::start("u");
    let body = format!(
        "{}{}{}",
        echo(&up),
        route(
            "deny",
            "/deny",
            r#"{ name = "ip_restriction", deny = ["10.0.0.0/8", "2001:db8::/32"] }"#
        ),
        route(
            "allow",
            "/allow",
            r#"{ name = "ip_restriction", allow = ["192.0.2.0/24", "2001:db8:1::/48"] }"#
        ),
    );
    // Without trusted proxies, X-Forwarded-For is ignored: the client is 127.0.0.1.
    let gw = Gateway::start(&body);
    assert_eq!(
        gw.request("GET", "/deny", &[("x-forwarded-for", "10.1.2.3")], b"")
            .status,
        200
    );
    let r = gw.request("GET", "/allow", &[("x-forwarded-for", "192.0.2.1")], b"");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "ip_forbidden");
    drop(gw);

    // 127.0.0.1 is a trusted proxy: the client is the last untrusted X-Forwarded-For entry.
    // (Lines before the first table header of a body belong to the harness's [server].)
    let gw = Gateway::start(&format!(
        "trusted_proxies = [\"127.0.0.1\", \"172.16.0.0/12\"]\n{body}"
    ));
    let status = |path: &str, xff: &str| {
        gw.request("GET", path, &[("x-forwarded-for", xff)], b"")
            .status
    };
    assert_eq!(status("/deny", "10.1.2.3"), 403);
    assert_eq!(status("/deny", "2001:db8::5"), 403);
    assert_eq!(status("/deny", "203.0.113.9"), 200);
    // A spoofed entry to the left of an untrusted one is ignored.
    assert_eq!(status("/deny", "10.1.2.3, 203.0.113.9"), 200);
    // Trusted hops are skipped from the right.
    assert_eq!(status("/deny", "10.1.2.3, 172.16.5.5"), 403);
    assert_eq!(status("/allow", "192.0.2.44"), 200);
    assert_eq!(status("/allow", "2001:db8:1::7"), 200);
    assert_eq!(status("/allow", "2001:db8:2::7"), 403);
    assert_eq!(status("/allow", "198.51.100.1"), 403);
    // The upstream still sees the whole chain with the peer appended.
    let r = gw.request("GET", "/deny", &[("x-forwarded-for", "203.0.113.9")], b"");
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("203.0.113.9, 127.0.0.1")
    );
}

#[test]
fn request_size_by_header_and_by_stream() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        echo(&up),
        route(
            "size",
            "/size",
            r#"{ name = "request_size", max_body_bytes = 16 }"#
        ),
        route(
            "strict",
            "/strict",
            r#"{ name = "request_size", max_body_bytes = 16, require_content_length = true }"#
        ),
    ));
    let r = gw.request("POST", "/size", &[], b"0123456789abcdef");
    assert_eq!(r.status, 200, "exactly the limit passes");
    let before = up.count();
    let r = gw.request("POST", "/size", &[], b"0123456789abcdefX");
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    assert_eq!(
        up.count(),
        before,
        "refused by Content-Length before reaching the upstream"
    );

    // Chunked, growing past the limit in the second chunk.
    let raw_req = |path: &str, chunks: &[&str]| {
        let mut s = format!("POST {path} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n");
        for c in chunks {
            s.push_str(&format!("{:x}\r\n{c}\r\n", c.len()));
        }
        s.push_str("0\r\n\r\n");
        String::from_utf8_lossy(&raw(gw.addr, s.as_bytes())).into_owned()
    };
    let small = raw_req("/size", &["0123", "4567"]);
    assert!(small.starts_with("HTTP/1.1 200"), "{small}");
    let big = raw_req("/size", &["0123456789", "0123456789"]);
    assert!(big.starts_with("HTTP/1.1 413"), "{big}");
    assert!(big.contains("body_too_large"), "{big}");
    let strict = raw_req("/strict", &["01"]);
    assert!(strict.starts_with("HTTP/1.1 411"), "{strict}");
    assert!(gw.get("/size").status == 200 && gw.is_running());
}

#[test]
fn cors_preflight_simple_and_disallowed() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        echo(&up),
        route(
            "cors",
            "/cors",
            r#"{ name = "cors", origins = ["https://app.example.com", "~^https://[a-z]+\\.example\\.org$"], methods = ["GET", "PUT"], exposed_headers = ["x-total"], credentials = true, max_age_seconds = 300 }"#
        ),
        route("any", "/any", r#"{ name = "cors" }"#),
    ));
    let before = up.count();
    let pre = |origin: &str, method: &str| {
        gw.request(
            "OPTIONS",
            "/cors",
            &[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", "x-a, content-type"),
            ],
            b"",
        )
    };
    let r = pre("https://app.example.com", "PUT");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    assert_eq!(r.header("access-control-allow-methods"), Some("GET, PUT"));
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("x-a, content-type")
    );
    assert_eq!(r.header("access-control-max-age"), Some("300"));
    assert!(r.header_all("vary").iter().any(|v| v.contains("Origin")));
    let r = pre("https://shop.example.org", "GET");
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example.org")
    );
    let r = pre("https://evil.example.com", "GET");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "cors_forbidden");
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert_eq!(pre("https://app.example.com", "DELETE").status, 403);
    assert_eq!(up.count(), before, "preflights never reach the upstream");

    // Simple requests go upstream; allowed origins get CORS headers, others none.
    let r = gw.request(
        "GET",
        "/cors",
        &[("origin", "https://app.example.com")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-expose-headers"), Some("x-total"));
    assert!(r.header_all("vary").iter().any(|v| v.contains("Origin")));
    let r = gw.request(
        "GET",
        "/cors",
        &[("origin", "https://evil.example.com")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    assert!(
        r.header_all("vary").iter().any(|v| v.contains("Origin")),
        "Vary: Origin always"
    );
    let r = gw.get("/cors");
    assert!(
        r.header_all("vary").iter().any(|v| v.contains("Origin")),
        "Vary: Origin without Origin too"
    );

    // Any origin without credentials: a literal *.
    let r = gw.request("GET", "/any", &[("origin", "https://x.test")], b"");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}
