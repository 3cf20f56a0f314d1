//! Response caching (issue 5): RFC 9111 semantics on a real origin whose answers each test
//! scripts, counting the requests that reach it.

#[path = "common/cache_origin.rs"]
mod cache_origin;
mod common;

use cache_origin::*;
use common::*;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::Duration;

fn gateway(origin: &Origin, plugin: &str, extra: &str) -> Gateway {
    Gateway::start(&format!(
        "{extra}\n[[upstreams]]\nname = \"o\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"c\"\npaths = [\"/\"]\nupstream = \"o\"\nplugins = [{plugin}]\n",
        origin.addr
    ))
}

fn status(r: &Response) -> String {
    r.header("x-cache-status").unwrap_or("-").to_string()
}

#[test]
fn hit_miss_bypass_age_and_expiry() {
    let o = Origin::start();
    o.script("/a", Script::ok("max-age=2", "A"));
    o.script("/nostore", Script::ok("no-store", "N"));
    o.script("/private", Script::ok("private, max-age=60", "P"));
    o.script(
        "/plain",
        Script {
            headers: vec![],
            ..Script::ok("", "plain")
        },
    );
    let gw = gateway(&o, r#""cache""#, "");

    let r = gw.get("/a");
    assert_eq!(
        (r.status, status(&r), r.text().as_str()),
        (200, "MISS".into(), "A")
    );
    assert_eq!(
        r.header("cache-status"),
        Some("tollgate; fwd=uri-miss; stored")
    );
    let r = gw.get("/a");
    assert_eq!(status(&r), "HIT");
    assert_eq!(r.header("cache-status"), Some("tollgate; hit"));
    assert_eq!(r.text(), "A");
    assert!(r.header("age").is_some(), "Age on hits");
    assert_eq!(o.hits("/a"), 1);
    // HEAD is served from the stored GET.
    let r = gw.request("HEAD", "/a", &[], b"");
    assert_eq!((r.status, status(&r)), (200, "HIT".into()));
    assert_eq!(o.hits("/a"), 1);
    thread::sleep(Duration::from_millis(2200));
    let r = gw.get("/a");
    assert_eq!(status(&r), "EXPIRED");
    assert_eq!(o.hits("/a"), 2);
    assert_eq!(status(&gw.get("/a")), "HIT");

    for p in ["/nostore", "/private", "/plain"] {
        let r = gw.get(p);
        assert_eq!(status(&r), "BYPASS", "{p}: not cacheable");
        assert_eq!(
            r.header("cache-status"),
            Some("tollgate; fwd=uri-miss"),
            "{p}: looked up, not stored"
        );
        gw.get(p);
        assert_eq!(o.hits(p), 2, "{p} must not be stored");
    }
    // Request no-store bypasses; no-cache / max-age=0 revalidate.
    let r = gw.request("GET", "/a", &[("cache-control", "no-store")], b"");
    assert_eq!(status(&r), "BYPASS");
    assert_eq!(o.hits("/a"), 3);
    let r = gw.request("GET", "/a", &[("cache-control", "no-cache")], b"");
    assert_ne!(status(&r), "HIT");
    assert_eq!(o.hits("/a"), 4);
    let r = gw.request("GET", "/a", &[("cache-control", "max-age=0")], b"");
    assert_ne!(status(&r), "HIT");
    assert_eq!(o.hits("/a"), 5);
    assert_eq!(
        gw.metric(
            "tollgate_cache_requests_total",
            &[("route", "c"), ("status", "hit")]
        ),
        Some(3.0)
    );
}

#[test]
fn s_maxage_wins_and_expires_and_default_ttl() {
    let o = Origin::start();
    o.script("/s", Script::ok("max-age=0, s-maxage=60", "S"));
    o.script("/public", Script::ok("public", "pub"));
    let expires = httpdate(std::time::SystemTime::now() + Duration::from_secs(60));
    o.script(
        "/exp",
        Script {
            headers: vec![("expires".into(), expires)],
            ..Script::ok("", "E")
        },
    );
    let gw = gateway(&o, r#"{ name = "cache", default_ttl_seconds = 60 }"#, "");
    for p in ["/s", "/public", "/exp"] {
        gw.get(p);
        assert_eq!(status(&gw.get(p)), "HIT", "{p}");
        assert_eq!(o.hits(p), 1, "{p}");
    }
}

#[test]
fn vary_keeps_variants_apart_and_vary_star_is_not_stored() {
    let o = Origin::start();
    o.script(
        "/v",
        Script::ok("max-age=60", "v").header("vary", "Accept-Encoding"),
    );
    o.script("/star", Script::ok("max-age=60", "s").header("vary", "*"));
    let gw = gateway(&o, r#""cache""#, "");
    let get = |enc: &str| gw.request("GET", "/v", &[("accept-encoding", enc)], b"");
    let gz = get("gzip");
    let br = get("br");
    assert_eq!((status(&gz), status(&br)), ("MISS".into(), "MISS".into()));
    assert_ne!(gz.header("x-serial"), br.header("x-serial"));
    let gz2 = get("gzip");
    let br2 = get("br");
    assert_eq!((status(&gz2), status(&br2)), ("HIT".into(), "HIT".into()));
    assert_eq!(
        gz2.header("x-serial"),
        gz.header("x-serial"),
        "gzip variant served to gzip"
    );
    assert_eq!(
        br2.header("x-serial"),
        br.header("x-serial"),
        "br variant served to br"
    );
    assert_eq!(o.hits("/v"), 2);
    gw.get("/star");
    assert_eq!(status(&gw.get("/star")), "BYPASS");
    assert_eq!(o.hits("/star"), 2);
}

#[test]
fn revalidation_with_etag_and_last_modified() {
    let o = Origin::start();
    o.script(
        "/e",
        Script {
            etag: Some("\"v1\"".into()),
            ..Script::ok("max-age=1", "etag-body")
        },
    );
    o.script(
        "/l",
        Script {
            last_modified: Some("Wed, 21 Oct 2026 07:28:00 GMT".into()),
            ..Script::ok("max-age=1", "lm-body")
        },
    );
    let gw = gateway(&o, r#""cache""#, "");
    for (p, body) in [("/e", "etag-body"), ("/l", "lm-body")] {
        assert_eq!(status(&gw.get(p)), "MISS");
        thread::sleep(Duration::from_millis(1200));
        let r = gw.get(p);
        assert_eq!(status(&r), "REVALIDATED", "{p}");
        assert_eq!(r.text(), body, "{p}: the stored body is served after a 304");
        assert_eq!(o.hits(p), 2);
        // The 304 refreshed the entry: fresh again.
        assert_eq!(status(&gw.get(p)), "HIT", "{p}");
        assert_eq!(o.hits(p), 2);
    }
    assert_eq!(
        o.last_header("/e", "if-none-match").as_deref(),
        Some("\"v1\"")
    );
    assert_eq!(
        o.last_header("/l", "if-modified-since").as_deref(),
        Some("Wed, 21 Oct 2026 07:28:00 GMT")
    );
    // A client's conditional request is answered from the cache.
    o.script(
        "/c",
        Script {
            etag: Some("\"c1\"".into()),
            ..Script::ok("max-age=60", "c")
        },
    );
    assert_eq!(gw.get("/c").status, 200);
    let r = gw.request("GET", "/c", &[("if-none-match", "\"c1\"")], b"");
    assert_eq!((r.status, status(&r)), (304, "HIT".into()));
    assert_eq!(o.hits("/c"), 1);
}

#[test]
fn unsafe_methods_pass_through_and_invalidate() {
    let o = Origin::start();
    o.script("/item", Script::ok("max-age=60", "item"));
    let gw = gateway(&o, r#""cache""#, "");
    gw.get("/item");
    assert_eq!(status(&gw.get("/item")), "HIT");
    let r = gw.request("POST", "/item", &[], b"x=1");
    assert_eq!(r.status, 200);
    assert_eq!(o.hits("/item"), 2, "POST reached the origin");
    assert_eq!(
        status(&gw.get("/item")),
        "MISS",
        "POST invalidated the stored GET"
    );
    assert_eq!(o.hits("/item"), 3);
}

#[test]
fn concurrent_misses_are_coalesced() {
    let o = Origin::start();
    o.script(
        "/slow",
        Script {
            delay_ms: 500,
            ..Script::ok("max-age=60", "slow")
        },
    );
    let gw = gateway(&o, r#""cache""#, "");
    let addr = gw.addr;
    let threads: Vec<_> = (0..10)
        .map(|_| thread::spawn(move || get(addr, "/slow")))
        .collect();
    let responses: Vec<Response> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(responses
        .iter()
        .all(|r| r.status == 200 && r.text() == "slow"));
    assert_eq!(
        o.hits("/slow"),
        1,
        "10 concurrent misses, one origin request"
    );
    let serials: std::collections::HashSet<_> = responses
        .iter()
        .map(|r| r.header("x-serial").unwrap().to_string())
        .collect();
    assert_eq!(serials.len(), 1, "all served the one stored response");
}

#[test]
fn key_options_query_headers_and_authorization() {
    let o = Origin::start();
    o.script("/q", Script::ok("max-age=60", "q"));
    o.script("/auth", Script::ok("max-age=60", "auth"));
    o.script("/authpub", Script::ok("public, max-age=60", "authpub"));
    let gw = gateway(
        &o,
        r#"{ name = "cache", key = { query = "sorted", headers = ["x-tenant"] } }"#,
        "",
    );
    gw.get("/q?a=1&b=2");
    assert_eq!(status(&gw.get("/q?b=2&a=1")), "HIT", "sorted query");
    assert_eq!(
        status(&gw.request("GET", "/q?a=1&b=2", &[("x-tenant", "t2")], b"")),
        "MISS",
        "header in key"
    );
    assert_eq!(o.hits("/q"), 2);
    // Authorization: not stored unless the response says so.
    gw.request("GET", "/auth", &[("authorization", "Bearer x")], b"");
    assert_eq!(
        status(&gw.request("GET", "/auth", &[("authorization", "Bearer x")], b"")),
        "BYPASS"
    );
    assert_eq!(o.hits("/auth"), 2);
    gw.request("GET", "/authpub", &[("authorization", "Bearer x")], b"");
    assert_eq!(
        status(&gw.request("GET", "/authpub", &[("authorization", "Bearer x")], b"")),
        "HIT"
    );
}

#[test]
fn set_cookie_and_statuses() {
    let o = Origin::start();
    o.script(
        "/cookie",
        Script::ok("max-age=60", "c").header("set-cookie", "s=1"),
    );
    o.script(
        "/500",
        Script {
            status: 500,
            ..Script::ok("max-age=60", "err")
        },
    );
    o.script(
        "/404",
        Script {
            status: 404,
            ..Script::ok("max-age=60", "nf")
        },
    );
    let gw = gateway(&o, r#""cache""#, "");
    for (p, want, origin_hits) in [
        ("/cookie", "BYPASS", 2),
        ("/500", "BYPASS", 2),
        ("/404", "HIT", 1),
    ] {
        gw.get(p);
        assert_eq!(status(&gw.get(p)), want, "{p}");
        assert_eq!(o.hits(p), origin_hits, "{p}");
    }
}

#[test]
fn purge_method_and_admin_purge() {
    let o = Origin::start();
    o.script("/p", Script::ok("max-age=60", "p").header("vary", "accept"));
    o.script("/q", Script::ok("max-age=60", "q"));
    let token = "purge-token-0123456789";
    let gw = gateway(
        &o,
        &format!(r#"{{ name = "cache", purge = {{ token = "{token}" }} }}"#),
        "",
    );
    gw.request("GET", "/p", &[("accept", "a")], b"");
    gw.request("GET", "/p", &[("accept", "b")], b"");
    assert_eq!(
        status(&gw.request("GET", "/p", &[("accept", "b")], b"")),
        "HIT"
    );
    let r = gw.request("PURGE", "/p", &[], b"");
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["error"], "purge_forbidden");
    let r = gw.request("PURGE", "/p", &[("x-purge-token", token)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["purged"], 2, "both variants");
    assert_eq!(
        status(&gw.request("GET", "/p", &[("accept", "b")], b"")),
        "MISS"
    );
    assert_eq!(
        gw.request("PURGE", "/nothing", &[("x-purge-token", token)], b"")
            .status,
        404
    );

    gw.get("/q");
    assert_eq!(status(&gw.get("/q")), "HIT");
    let r = request(gw.admin, "POST", "/cache/purge?route=c", &[], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["purged"].as_u64().unwrap() >= 2);
    assert_eq!(status(&gw.get("/q")), "MISS");
    let r = request(gw.admin, "POST", "/cache/purge?route=c&path=/q", &[], b"");
    assert_eq!(r.json()["purged"], 1);
    assert_eq!(
        request(gw.admin, "POST", "/cache/purge", &[], b"").status,
        400
    );
}

#[test]
fn eviction_under_a_small_budget() {
    let o = Origin::start();
    let big = "x".repeat(20_000);
    for i in 0..10 {
        o.script(&format!("/o{i}"), Script::ok("max-age=60", &big));
    }
    o.script("/huge", Script::ok("max-age=60", &"y".repeat(200_000)));
    let gw = gateway(
        &o,
        r#"{ name = "cache", max_object_bytes = 100000 }"#,
        "cache_max_bytes = 100000\n",
    );
    for i in 0..10 {
        gw.get(&format!("/o{i}"));
    }
    assert!(
        wait_until(Duration::from_secs(3), || {
            let m = gw.metrics();
            metric_value(&m, "tollgate_cache_evictions_total", &[]).unwrap_or(0.0) >= 4.0
        }),
        "{}",
        gw.metrics()
    );
    let bytes = gw.metric("tollgate_cache_bytes", &[]).unwrap();
    assert!(
        bytes <= 110_000.0,
        "cache holds {bytes} bytes over a 100000 budget"
    );
    // The newest objects are kept, the oldest evicted.
    assert_eq!(status(&gw.get("/o9")), "HIT");
    assert_eq!(status(&gw.get("/o0")), "MISS");
    // Larger than max_object_bytes: never stored.
    gw.get("/huge");
    assert_eq!(status(&gw.get("/huge")), "BYPASS");
    assert_eq!(o.hits("/huge"), 2);
}

#[test]
fn stale_if_error_when_the_origin_is_down() {
    let o = Origin::start();
    o.script(
        "/s",
        Script::ok("max-age=1, stale-if-error=60", "still here"),
    );
    o.script("/n", Script::ok("max-age=1", "gone"));
    let gw = gateway(&o, r#""cache""#, "");
    gw.get("/s");
    gw.get("/n");
    thread::sleep(Duration::from_millis(1200));
    o.state.down.store(true, Ordering::SeqCst);
    let r = gw.get("/s");
    assert_eq!((r.status, r.text().as_str()), (200, "still here"));
    assert_eq!(status(&r), "STALE");
    let r = gw.get("/n");
    assert_eq!(r.status, 502, "no stale-if-error: the error is passed on");
}

#[test]
fn reload_keeps_the_cache() {
    let o = Origin::start();
    o.script("/k", Script::ok("max-age=60", "k"));
    let gw = gateway(&o, r#""cache""#, "");
    gw.get("/k");
    assert_eq!(status(&gw.get("/k")), "HIT");
    let mut text = gw.config_text();
    text.push_str("\n[[routes]]\nname = \"other\"\npaths = [\"=/other\"]\nplugins = [{ name = \"mock\", body = \"o\" }]\n");
    gw.rewrite_config_raw(&text);
    gw.reload();
    assert!(wait_until(Duration::from_secs(5), || gw
        .get("/other")
        .status
        == 200));
    assert_eq!(status(&gw.get("/k")), "HIT");
    assert_eq!(o.hits("/k"), 1);
}

#[test]
fn post_bodies_keyed_by_hash_on_inference_routes() {
    let o = Origin::start();
    o.script("/v1/completions", Script::ok("max-age=60", "completion"));
    let gw = gateway(&o, r#"{ name = "cache", key = { body = true } }"#, "");
    let body_a = br#"{"model":"m","prompt":"hello"}"#;
    let body_b = br#"{"model":"m","prompt":"other"}"#;
    let r = gw.request(
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        body_a,
    );
    assert_eq!((r.status, status(&r)), (200, "MISS".into()));
    // The origin got the body although the gateway read it for the key.
    assert_eq!(
        o.last_header("/v1/completions", "content-length")
            .as_deref(),
        Some(body_a.len().to_string().as_str())
    );
    let r = gw.request(
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        body_a,
    );
    assert_eq!(status(&r), "HIT", "identical request body");
    let r = gw.request(
        "POST",
        "/v1/completions",
        &[("content-type", "application/json")],
        body_b,
    );
    assert_eq!(status(&r), "MISS", "different body, different entry");
    assert_eq!(o.hits("/v1/completions"), 2);
    // Bodies over 64 KiB are not keyed (and not cached), but still proxied.
    let big = vec![b'a'; 70 * 1024];
    let r = gw.request("POST", "/v1/completions", &[], &big);
    assert_eq!((r.status, status(&r)), (200, "BYPASS".into()));
    assert_eq!(o.hits("/v1/completions"), 3);
}

#[test]
fn stale_while_revalidate_serves_stale_and_refreshes() {
    let o = Origin::start();
    o.script(
        "/swr",
        Script {
            delay_ms: 300,
            ..Script::ok("max-age=1, stale-while-revalidate=30", "swr")
        },
    );
    let gw = gateway(&o, r#""cache""#, "");
    gw.get("/swr");
    thread::sleep(Duration::from_millis(1200));
    let t = std::time::Instant::now();
    let r = gw.get("/swr");
    assert_eq!((r.status, status(&r)), (200, "STALE".into()));
    assert!(
        t.elapsed() < Duration::from_millis(250),
        "stale answer waited for the origin: {:?}",
        t.elapsed()
    );
    // The background revalidation refreshes the entry.
    assert!(wait_until(Duration::from_secs(3), || o.hits("/swr") == 2));
    assert!(wait_until(Duration::from_secs(3), || status(
        &gw.get("/swr")
    ) == "HIT"));
}
