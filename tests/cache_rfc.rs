//! The cache plugin against RFC 9111 (shared cache) details: Age and Date arithmetic, 304
//! header updates, invalidation by unknown methods and by Location, hop-by-hop fields, keys
//! of global caches and traffic splits, status headers on gateway errors, opt-in TTLs
//! (`force_ttl_seconds`, `heuristic`), statuses, Redis storage shared by gateways, metrics.
//!
//! Every test runs the real binary against origins on 127.0.0.1 whose answers it scripts,
//! and counts the requests that reach them.

#[path = "common/cache_origin.rs"]
mod cache_origin;
mod common;

use cache_origin::*;
use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Helpers

fn status(r: &Response) -> String {
    r.header("x-cache-status").unwrap_or("-").to_string()
}

/// The response's `Age` as a number (panics with the response if absent or not a number).
fn age(r: &Response) -> u64 {
    r.header("age")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no numeric Age: {}", describe_response(r)))
}

fn upstream(name: &str, addr: &str) -> String {
    format!("\n[[upstreams]]\nname = \"{name}\"\nbackends = [\"{addr}\"]\n")
}

fn route(name: &str, lines: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\n{lines}\n")
}

/// One upstream `o` on `origin`, one route `c` on `/` with `plugin` (a plugin list entry).
fn cache_gateway(origin: &Origin, plugin: &str) -> Gateway {
    Gateway::start(&format!(
        "{}{}",
        upstream("o", &origin.addr.to_string()),
        route(
            "c",
            &format!("paths = [\"/\"]\nupstream = \"o\"\nplugins = [{plugin}]")
        )
    ))
}

/// GET twice; returns both responses.
fn get2(gw: &Gateway, path: &str) -> (Response, Response) {
    let a = gw.get(path);
    let b = gw.get(path);
    (a, b)
}

// ---------------------------------------------------------------------------------------
// 1, 2, 3: Age and Date arithmetic

/// §4.2.3: the origin's `Age` is part of the stored response's age.
#[test]
fn age_from_the_origin_is_carried_into_hits() {
    let o = Origin::start();
    o.script("/a30", Script::ok("max-age=100", "a30").header("age", "30"));
    o.script("/a98", Script::ok("max-age=100", "a98").header("age", "98"));
    let gw = cache_gateway(&o, r#""cache""#);

    let (m, h) = get2(&gw, "/a30");
    assert_eq!(status(&m), "MISS", "{}", describe_response(&m));
    assert_eq!(status(&h), "HIT", "{}", describe_response(&h));
    let a = age(&h);
    assert!(
        (30..=32).contains(&a),
        "a hit of a response that arrived with Age: 30 says Age: {a}"
    );
    assert_eq!(o.hits("/a30"), 1);

    let (m, h) = get2(&gw, "/a98");
    assert_eq!(status(&m), "MISS");
    assert_eq!(status(&h), "HIT", "98 s old of 100: still fresh for ~2 s");
    assert!(age(&h) >= 98, "{}", describe_response(&h));
    thread::sleep(Duration::from_secs(3));
    let r = gw.get("/a98");
    assert_ne!(
        status(&r),
        "HIT",
        "Age 98 + 3 s > max-age 100: stale, must go to the origin"
    );
    assert_eq!(o.hits("/a98"), 2);
}

/// §5.1: `Age` is the first value of the first line; an invalid one is ignored.
#[test]
fn age_header_parsing_first_value_first_line_invalid_ignored() {
    let o = Origin::start();
    o.script(
        "/list",
        Script::ok("max-age=3600", "l").header("age", "7200,0"),
    );
    o.script("/bad", Script::ok("max-age=60", "b").header("age", "abc"));
    o.script(
        "/two-stale",
        Script::ok("max-age=600", "s")
            .header("age", "900")
            .header("age", "5"),
    );
    o.script(
        "/two-fresh",
        Script::ok("max-age=600", "f")
            .header("age", "5")
            .header("age", "900"),
    );
    let gw = cache_gateway(&o, r#""cache""#);

    let (_, r) = get2(&gw, "/list");
    assert_ne!(
        status(&r),
        "HIT",
        "Age: 7200,0 is 7200 > max-age 3600: stale on arrival"
    );
    assert_eq!(o.hits("/list"), 2);

    let (_, r) = get2(&gw, "/bad");
    assert_eq!(status(&r), "HIT", "an invalid Age is ignored: fresh");
    let a = age(&r);
    assert!(a <= 2, "invalid Age ignored, yet the hit says Age: {a}");
    assert_eq!(o.hits("/bad"), 1);

    let (_, r) = get2(&gw, "/two-stale");
    assert_ne!(status(&r), "HIT", "first Age line (900) counts: stale");
    assert_eq!(o.hits("/two-stale"), 2);

    let (_, r) = get2(&gw, "/two-fresh");
    assert_eq!(status(&r), "HIT", "first Age line (5) counts: fresh");
    let a = age(&r);
    assert!((5..=7).contains(&a), "first Age line was 5, hit says {a}");
    assert_eq!(o.hits("/two-fresh"), 1);
}

/// §4.2.1: the lifetime from `Expires` is `Expires − Date`; §4.2.3: apparent age
/// (`now − Date`) and `Age` count.
#[test]
fn expires_counts_from_date_and_apparent_age_counts() {
    let o = Origin::start();
    o.script(
        "/future-date",
        Script::ok("", "fd")
            .dated(400)
            .header("expires", &httpdate_offset(300)),
    );
    o.script(
        "/aged",
        Script::ok("", "ag")
            .dated(0)
            .header("expires", &httpdate_offset(100))
            .header("age", "150"),
    );
    o.script(
        "/apparent",
        Script::ok("", "ap")
            .dated(-1000)
            .header("expires", &httpdate_offset(1000)),
    );
    let gw = cache_gateway(&o, r#""cache""#);

    let (_, r) = get2(&gw, "/future-date");
    assert_ne!(
        status(&r),
        "HIT",
        "Expires 100 s before Date: lifetime 0, not fresh"
    );
    assert_eq!(o.hits("/future-date"), 2);

    let (_, r) = get2(&gw, "/aged");
    assert_ne!(status(&r), "HIT", "lifetime 100 s, Age 150: not fresh");
    assert_eq!(o.hits("/aged"), 2);

    let (m, r) = get2(&gw, "/apparent");
    assert_eq!(status(&m), "MISS");
    assert_eq!(
        status(&r),
        "HIT",
        "lifetime 2000 s, age 1000 s: fresh; {}",
        describe_response(&r)
    );
    let a = age(&r);
    assert!(
        (999..=1003).contains(&a),
        "Date 1000 s ago: the apparent age counts, hit says Age: {a}"
    );
    assert_eq!(o.hits("/apparent"), 1);
}

// ---------------------------------------------------------------------------------------
// 4: Date

fn assert_date_near_now(r: &Response, what: &str) {
    let dates = r.header_all("date");
    assert_eq!(dates.len(), 1, "{what}: one Date: {}", describe_response(r));
    let t = parse_imf_fixdate(dates[0])
        .unwrap_or_else(|| panic!("{what}: Date {:?} is not an IMF-fixdate", dates[0]));
    let skew = (t - unix_now()).abs();
    assert!(skew <= 5, "{what}: Date {:?} is {skew} s off", dates[0]);
}

/// RFC 9110 §6.6.1: the origin's `Date` reaches an HTTP/1.1 client unchanged (proxied and
/// cached), and a response without one gets one.
#[test]
fn origin_date_is_passed_through_over_http1() {
    let fixed = "Sun, 06 Nov 1994 08:49:37 GMT";
    let recent = httpdate_offset(-5);
    let recent2 = recent.clone();
    let up = RawUpstream::with(move |r| {
        let reply = match r.path() {
            "/plain/dated" => http_reply(
                200,
                &[("date", fixed), ("content-type", "text/plain")],
                b"dated",
            ),
            "/c/dated" => http_reply(
                200,
                &[("date", recent2.as_str()), ("cache-control", "max-age=60")],
                b"cached dated",
            ),
            "/c/undated" => http_reply(200, &[("cache-control", "max-age=60")], b"cached undated"),
            _ => http_reply(200, &[("content-type", "text/plain")], b"undated"),
        };
        Reply::Bytes(reply)
    });
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream("u", &up.address()),
        route("plain", "paths = [\"/plain\"]\nupstream = \"u\""),
        route(
            "cached",
            "paths = [\"/c\"]\nupstream = \"u\"\nplugins = [\"cache\"]"
        )
    ));

    let r = gw.get("/plain/dated");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header_all("date"),
        vec![fixed],
        "the origin's Date on a proxied route: {}",
        describe_response(&r)
    );
    let r = gw.get("/plain/undated");
    assert_date_near_now(&r, "proxied response without Date");

    let (m, h) = get2(&gw, "/c/dated");
    assert_eq!((status(&m), status(&h)), ("MISS".into(), "HIT".into()));
    assert_eq!(
        m.header_all("date"),
        vec![recent.as_str()],
        "MISS keeps the origin's Date"
    );
    assert_eq!(
        h.header_all("date"),
        vec![recent.as_str()],
        "HIT carries the stored Date"
    );

    let (m, h) = get2(&gw, "/c/undated");
    assert_eq!((status(&m), status(&h)), ("MISS".into(), "HIT".into()));
    assert_date_near_now(&m, "cached MISS without an origin Date");
    assert_date_near_now(&h, "HIT of a response without an origin Date");
}

// ---------------------------------------------------------------------------------------
// 5: 304 updates the stored headers

/// §4.3.4: a 304 replaces the stored header fields it carries (not Content-Length).
#[test]
fn not_modified_updates_the_stored_headers() {
    let o = Origin::start();
    let first = Script {
        etag: Some("\"v1\"".into()),
        ..Script::ok("max-age=1", "hello")
            .header("x-frame-options", "deny")
            .header("content-type", "text/plain")
    };
    o.script("/r", first);
    let gw = cache_gateway(&o, r#""cache""#);
    let r = gw.get("/r");
    assert_eq!((status(&r), r.text().as_str()), ("MISS".into(), "hello"));
    // The 304 the origin will send (its serve() answers 304 with these headers and
    // `content-length: 0` when If-None-Match matches).
    o.script(
        "/r",
        Script {
            etag: Some("\"v1\"".into()),
            ..Script::ok("max-age=60", "IGNORED")
                .header("x-frame-options", "sameorigin")
                .header("content-type", "text/html")
                .header("x-new", "1")
        },
    );
    thread::sleep(Duration::from_secs(2));
    let rv = gw.get("/r");
    let hit = gw.get("/r");
    assert_eq!(
        o.last_header("/r", "if-none-match").as_deref(),
        Some("\"v1\""),
        "revalidated with the stored ETag"
    );
    assert_eq!(o.hits("/r"), 2, "one revalidation, then a hit");
    for (r, want) in [(&rv, "REVALIDATED"), (&hit, "HIT")] {
        let d = describe_response(r);
        assert_eq!(status(r), want, "{d}");
        assert_eq!(r.status, 200, "{d}");
        assert_eq!(r.text(), "hello", "{want}: the stored body; {d}");
        assert_eq!(r.header("content-length"), Some("5"), "{want}: {d}");
        assert_eq!(
            r.header_all("x-frame-options"),
            vec!["sameorigin"],
            "{want}: replaced by the 304's value; {d}"
        );
        assert_eq!(
            r.header_all("content-type"),
            vec!["text/html"],
            "{want}: {d}"
        );
        assert_eq!(
            r.header("x-new"),
            Some("1"),
            "{want}: added by the 304; {d}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 6: invalidation

fn raw_method(gw: &Gateway, method: &str, path: &str) -> Response {
    send_raw(
        gw.addr,
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            gw.addr
        )
        .as_bytes(),
    )
}

/// §4.4: a non-error response to an unsafe method (any method not known to be safe, the
/// unregistered ones included) invalidates the target URI; a safe method does not.
#[test]
fn unknown_methods_invalidate_and_safe_ones_do_not() {
    let o = Origin::start();
    o.script("/x", Script::ok("max-age=60", "x"));
    let gw = cache_gateway(&o, r#""cache""#);
    let (_, h) = get2(&gw, "/x");
    assert_eq!(status(&h), "HIT");

    for (i, method) in ["M-SEARCH", "PROPPATCH"].iter().enumerate() {
        let r = raw_method(&gw, method, "/x");
        assert_eq!(r.status, 200, "{method}: {}", describe_response(&r));
        assert_eq!(
            o.method_hits(method, "/x"),
            1,
            "{method} reached the origin"
        );
        let r = gw.get("/x");
        assert_ne!(status(&r), "HIT", "{method} answered 200 must drop /x");
        assert_eq!(o.method_hits("GET", "/x"), 2 + i);
        assert_eq!(status(&gw.get("/x")), "HIT", "stored again");
    }

    let r = raw_method(&gw, "OPTIONS", "/x");
    assert_eq!(r.status, 200, "OPTIONS: {}", describe_response(&r));
    let r = gw.get("/x");
    assert_eq!(status(&r), "HIT", "OPTIONS is safe: /x stays stored");
    assert_eq!(o.method_hits("GET", "/x"), 3);
}

/// §4.4: the URIs in `Location` and `Content-Location` of a non-error answer to an unsafe
/// method are invalidated too, when they are on the same host.
#[test]
fn location_and_content_location_invalidate_on_the_same_host_only() {
    let o = Origin::start();
    let gw = cache_gateway(&o, r#""cache""#);
    let host = gw.addr.to_string();
    o.script("/x", Script::ok("max-age=60", "x"));
    o.script("/y", Script::ok("max-age=60", "y"));
    o.script(
        "/a",
        Script::ok("", "created")
            .status(201)
            .header("location", "/x"),
    );
    o.script(
        "/b",
        Script::ok("", "created")
            .status(201)
            .header("content-location", &format!("http://{host}/y")),
    );
    o.script(
        "/c",
        Script::ok("", "created")
            .status(201)
            .header("location", "http://elsewhere.example/x"),
    );
    for p in ["/x", "/y"] {
        let (_, h) = get2(&gw, p);
        assert_eq!(status(&h), "HIT", "{p}");
    }

    let r = gw.request("POST", "/a", &[], b"v=1");
    assert_eq!(r.status, 201);
    assert_ne!(status(&gw.get("/x")), "HIT", "Location: /x dropped /x");
    assert_eq!(o.method_hits("GET", "/x"), 2);
    assert_eq!(status(&gw.get("/y")), "HIT", "only /x was dropped");
    assert_eq!(status(&gw.get("/x")), "HIT", "stored again");

    let r = gw.request("POST", "/b", &[], b"v=1");
    assert_eq!(r.status, 201);
    assert_ne!(
        status(&gw.get("/y")),
        "HIT",
        "Content-Location on the same host dropped /y"
    );
    assert_eq!(o.method_hits("GET", "/y"), 2);

    let r = gw.request("POST", "/c", &[], b"v=1");
    assert_eq!(r.status, 201);
    assert_eq!(
        status(&gw.get("/x")),
        "HIT",
        "a Location on another host must not drop this host's /x"
    );
    assert_eq!(o.method_hits("GET", "/x"), 2);
}

// ---------------------------------------------------------------------------------------
// 7: hop-by-hop

#[test]
fn hop_by_hop_fields_are_neither_forwarded_nor_stored() {
    let o = Origin::start();
    o.script(
        "/h",
        Script::ok("max-age=60", "hop")
            .header("connection", "x-a")
            .header("x-a", "1")
            .header("keep-alive", "timeout=5"),
    );
    let gw = cache_gateway(&o, r#""cache""#);
    let (m, h) = get2(&gw, "/h");
    assert_eq!((status(&m), status(&h)), ("MISS".into(), "HIT".into()));
    for (r, what) in [(&m, "MISS"), (&h, "HIT")] {
        let d = describe_response(r);
        assert_eq!(r.text(), "hop", "{what}");
        assert!(
            r.header("x-a").is_none(),
            "{what}: X-A named by Connection: {d}"
        );
        assert!(r.header("keep-alive").is_none(), "{what}: Keep-Alive: {d}");
        for c in r.header_all("connection") {
            assert!(
                !c.to_ascii_lowercase().contains("x-a"),
                "{what}: the origin's Connection: {d}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8: keys of a global cache and of traffic splits

/// A global `[plugins.cache]` on two routes serving one URL from different upstreams: each
/// route's entries are its own.
#[test]
fn global_cache_keeps_two_routes_on_one_url_apart() {
    let a = Origin::start();
    let b = Origin::start();
    a.script("/p", Script::ok("public, max-age=60", "from A"));
    b.script("/p", Script::ok("public, max-age=60", "from B"));
    let gw = Gateway::start(&format!(
        "[plugins.cache]\ndefault_ttl_seconds = 60\n{}{}{}{}",
        upstream("a", &a.addr.to_string()),
        upstream("b", &b.addr.to_string()),
        route(
            "canary",
            "paths = [\"/p\"]\nheaders = { x-canary = \"1\" }\npriority = 10\nupstream = \"b\""
        ),
        route("main", "paths = [\"/p\"]\nupstream = \"a\"")
    ));
    let main = || gw.get("/p");
    let canary = || gw.request("GET", "/p", &[("x-canary", "1")], b"");
    // Warm both.
    let r = main();
    assert_eq!((r.text().as_str(), status(&r).as_str()), ("from A", "MISS"));
    let r = canary();
    assert_eq!(
        r.text(),
        "from B",
        "canary after main: {}",
        describe_response(&r)
    );
    for round in 0..2 {
        let r = main();
        assert_eq!(
            (r.text().as_str(), status(&r).as_str()),
            ("from A", "HIT"),
            "main, round {round}"
        );
        let r = canary();
        assert_eq!(
            (r.text().as_str(), status(&r).as_str()),
            ("from B", "HIT"),
            "canary, round {round}"
        );
    }
    assert_eq!((a.hits("/p"), b.hits("/p")), (1, 1));
}

/// A route whose traffic split sends requests to two upstreams: each target's cached answer
/// is served only to requests sent to that target.
#[test]
fn traffic_split_targets_keep_their_own_cached_answers() {
    let a = Origin::start();
    let b = Origin::start();
    for p in ["/h", "/w"] {
        a.script(p, Script::ok("max-age=60", "from A"));
        b.script(p, Script::ok("max-age=60", "from B"));
    }
    let gw = Gateway::start(&format!(
        "{}{}{}\n[[routes.split]]\nmatch = {{ headers = {{ x-t = \"b\" }} }}\ntargets = [{{ upstream = \"b\" }}]\n{}\n[[routes.split]]\ntargets = [{{ upstream = \"a\", weight = 1 }}, {{ upstream = \"b\", weight = 1 }}]\n",
        upstream("a", &a.addr.to_string()),
        upstream("b", &b.addr.to_string()),
        route("hdr", "paths = [\"/h\"]\nupstream = \"a\"\nplugins = [\"cache\"]"),
        route("w", "paths = [\"/w\"]\nupstream = \"a\"\nplugins = [\"cache\"]"),
    ));
    let plain = || gw.get("/h");
    let to_b = || gw.request("GET", "/h", &[("x-t", "b")], b"");
    assert_eq!(plain().text(), "from A");
    let r = to_b();
    assert_eq!(
        r.text(),
        "from B",
        "split to b after a's answer was stored: {}",
        describe_response(&r)
    );
    for round in 0..2 {
        let r = plain();
        assert_eq!(
            (r.text().as_str(), status(&r).as_str()),
            ("from A", "HIT"),
            "round {round}"
        );
        let r = to_b();
        assert_eq!(
            (r.text().as_str(), status(&r).as_str()),
            ("from B", "HIT"),
            "round {round}"
        );
    }
    assert_eq!((a.hits("/h"), b.hits("/h")), (1, 1));

    // Weights 1:1 send exactly one request in every two to each target.
    let rs: Vec<Response> = (0..8).map(|_| gw.get("/w")).collect();
    let from_a = rs.iter().filter(|r| r.text() == "from A").count();
    let from_b = rs.iter().filter(|r| r.text() == "from B").count();
    let hits = rs.iter().filter(|r| status(r) == "HIT").count();
    let seen: Vec<String> = rs
        .iter()
        .map(|r| format!("{}/{}", r.text(), status(r)))
        .collect();
    assert_eq!((from_a, from_b), (4, 4), "answers per target: {seen:?}");
    assert_eq!(hits, 6, "one miss per target, then hits: {seen:?}");
    assert_eq!((a.hits("/w"), b.hits("/w")), (1, 1), "{seen:?}");
}

// ---------------------------------------------------------------------------------------
// 9: status headers on gateway-made errors

#[test]
fn gateway_errors_on_a_cache_route_carry_the_cache_status_headers() {
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream("dead", &dead_addr()),
        route(
            "c",
            "paths = [\"/\"]\nupstream = \"dead\"\nplugins = [\"cache\"]"
        )
    ));
    let r = gw.get("/down");
    let d = describe_response(&r);
    assert_eq!(r.status, 502, "{d}");
    assert_eq!(r.json()["error"], "upstream_unavailable", "{d}");
    assert_eq!(r.json()["status"], 502, "{d}");
    assert_eq!(r.header("content-type"), Some("application/json"), "{d}");
    assert_eq!(r.header("x-cache-status"), Some("MISS"), "{d}");
    assert!(
        r.header("cache-status")
            .is_some_and(|v| v.starts_with("tollgate;")),
        "{d}"
    );
}

// ---------------------------------------------------------------------------------------
// 10: opt-in TTL

/// Responses without caching headers are not stored by default (no heuristic freshness).
#[test]
fn no_caching_headers_bypass_by_default() {
    let o = Origin::start();
    o.script("/plain", Script::ok("", "plain"));
    let gw = cache_gateway(&o, r#""cache""#);
    let (a, b) = get2(&gw, "/plain");
    assert_eq!((status(&a), status(&b)), ("BYPASS".into(), "BYPASS".into()));
    assert_eq!(b.header("cache-status"), Some("tollgate; fwd=uri-miss"));
    assert_eq!(o.hits("/plain"), 2);
}

#[test]
fn force_ttl_stores_responses_without_caching_headers_and_expires_them() {
    let o = Origin::start();
    o.script("/plain", Script::ok("", "plain"));
    let gw = cache_gateway(&o, r#"{ name = "cache", force_ttl_seconds = 2 }"#);
    let (m, h) = get2(&gw, "/plain");
    assert_eq!(status(&m), "MISS", "{}", describe_response(&m));
    assert_eq!(status(&h), "HIT", "{}", describe_response(&h));
    assert_eq!(h.text(), "plain");
    assert_eq!(o.hits("/plain"), 1);
    thread::sleep(Duration::from_secs(3));
    let r = gw.get("/plain");
    assert_ne!(status(&r), "HIT", "force_ttl_seconds = 2, 3 s later");
    assert_eq!(o.hits("/plain"), 2);
}

#[test]
fn force_ttl_overrides_max_age_0_and_no_cache_but_not_no_store_private_or_cookies() {
    let o = Origin::start();
    o.script("/ma0", Script::ok("max-age=0", "ma0"));
    o.script("/nc", Script::ok("no-cache", "nc"));
    o.script("/ns", Script::ok("no-store", "ns"));
    o.script("/pv", Script::ok("private", "pv"));
    o.script("/ck", Script::ok("", "ck").header("set-cookie", "s=1"));
    let gw = cache_gateway(&o, r#"{ name = "cache", force_ttl_seconds = 60 }"#);
    for p in ["/ma0", "/nc"] {
        let (_, h) = get2(&gw, p);
        assert_eq!(status(&h), "HIT", "{p}: {}", describe_response(&h));
        assert_eq!(o.hits(p), 1, "{p}");
    }
    for p in ["/ns", "/pv", "/ck"] {
        let (a, b) = get2(&gw, p);
        assert_eq!(
            (status(&a), status(&b)),
            ("BYPASS".into(), "BYPASS".into()),
            "{p}: never stored"
        );
        assert_eq!(o.hits(p), 2, "{p}");
    }
}

// ---------------------------------------------------------------------------------------
// 11: heuristic freshness

#[test]
fn heuristic_freshness_is_opt_in_and_capped() {
    let o = Origin::start();
    for p in ["/heur/x", "/capped/x", "/plain/x"] {
        o.script(
            p,
            Script::ok("", p)
                .dated(0)
                .header("last-modified", &httpdate_offset(-1000)),
        );
    }
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        upstream("o", &o.addr.to_string()),
        route(
            "heur",
            "paths = [\"/heur\"]\nupstream = \"o\"\nplugins = [{ name = \"cache\", heuristic = true }]"
        ),
        route(
            "capped",
            "paths = [\"/capped\"]\nupstream = \"o\"\nplugins = [{ name = \"cache\", heuristic = true, heuristic_max_seconds = 1 }]"
        ),
        route(
            "plain",
            "paths = [\"/plain\"]\nupstream = \"o\"\nplugins = [\"cache\"]"
        ),
    ));
    let (m, h) = get2(&gw, "/heur/x");
    assert_eq!(status(&m), "MISS", "{}", describe_response(&m));
    assert_eq!(status(&h), "HIT", "10% of 1000 s = fresh for 100 s");
    assert_eq!(o.hits("/heur/x"), 1);

    let (a, b) = get2(&gw, "/plain/x");
    assert_eq!(
        (status(&a), status(&b)),
        ("BYPASS".into(), "BYPASS".into()),
        "no heuristic without heuristic = true"
    );
    assert_eq!(o.hits("/plain/x"), 2);

    let r = gw.get("/capped/x");
    assert_ne!(status(&r), "HIT");
    thread::sleep(Duration::from_millis(2200));
    let r = gw.get("/capped/x");
    assert_ne!(status(&r), "HIT", "capped at 1 s: stale after 2 s");
    assert_eq!(o.hits("/capped/x"), 2);
}

// ---------------------------------------------------------------------------------------
// 12: statuses

#[test]
fn statuses_outside_the_default_list_are_stored_with_explicit_freshness() {
    let o = Origin::start();
    for p in ["/r302max", "/strict/r302max"] {
        o.script(
            p,
            Script::ok("max-age=60", "moved")
                .status(302)
                .header("location", "/elsewhere"),
        );
    }
    o.script(
        "/r302plain",
        Script::ok("", "moved")
            .status(302)
            .header("location", "/elsewhere"),
    );
    o.script("/strict/ok", Script::ok("max-age=60", "ok"));
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream("o", &o.addr.to_string()),
        route("c", "paths = [\"/\"]\nupstream = \"o\"\nplugins = [\"cache\"]"),
        route(
            "strict",
            "paths = [\"/strict\"]\nupstream = \"o\"\nplugins = [{ name = \"cache\", statuses = [200] }]"
        ),
    ));
    let (m, h) = get2(&gw, "/r302max");
    assert_eq!((m.status, h.status), (302, 302));
    assert_eq!(
        status(&h),
        "HIT",
        "302 with max-age, default statuses: {}",
        describe_response(&h)
    );
    assert_eq!(o.hits("/r302max"), 1);

    let (_, r) = get2(&gw, "/r302plain");
    assert_eq!(status(&r), "BYPASS", "302 without freshness");
    assert_eq!(o.hits("/r302plain"), 2);

    let (_, r) = get2(&gw, "/strict/ok");
    assert_eq!(status(&r), "HIT", "the strict route caches 200s");
    let (_, r) = get2(&gw, "/strict/r302max");
    assert_eq!(r.status, 302);
    assert_eq!(status(&r), "BYPASS", "explicit statuses = [200]: no 302");
    assert_eq!(o.hits("/strict/r302max"), 2);
}

/// The default `statuses` are the heuristically cacheable ones (RFC 9110 §15.1), so a
/// `public` response without a lifetime gets `default_ttl_seconds` for those.
#[test]
fn default_statuses_include_405_414_and_501() {
    let o = Origin::start();
    for code in [405u16, 414, 501, 500] {
        o.script(&format!("/s{code}"), Script::ok("public", "s").status(code));
    }
    let gw = cache_gateway(&o, r#"{ name = "cache", default_ttl_seconds = 60 }"#);
    for code in [405u16, 414, 501] {
        let p = format!("/s{code}");
        let (m, h) = get2(&gw, &p);
        assert_eq!((m.status, h.status), (code, code));
        assert_eq!(status(&h), "HIT", "{p}: {}", describe_response(&h));
        assert_eq!(o.hits(&p), 1, "{p}");
    }
    let (_, r) = get2(&gw, "/s500");
    assert_eq!(status(&r), "BYPASS", "500 is not in the default list");
    assert_eq!(o.hits("/s500"), 2);
}

// ---------------------------------------------------------------------------------------
// 13: Redis storage

const PREFIX: &str = "tgtest:cache";
/// Both gateways of a test must see the same Host: it is part of the key.
const HOST: &str = "shared.test";

fn redis_gateway(origin: &Origin, redis: &Redis) -> Gateway {
    let plugin = format!(
        "{{ name = \"cache\", storage = \"redis\", redis = {{ url = \"{}\", timeout_ms = 100, prefix = \"{PREFIX}\", max_bytes = 268435456 }}, purge = {{ allow_ips = [\"127.0.0.1/32\"] }}, max_object_bytes = 1048576 }}",
        redis.url()
    );
    cache_gateway(origin, &plugin)
}

fn hget(gw: &Gateway, path: &str) -> Response {
    gw.request("GET", path, &[("host", HOST)], b"")
}

/// A body without repeats, so a truncated or shifted copy is caught.
fn patterned(len: usize) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut i = 0u64;
    while s.len() < len {
        s.push_str(&format!("{i:09}\n"));
        i += 1;
    }
    s.truncate(len);
    s
}

/// Wait for a write to Redis after the response (the store may finish just after the
/// client has the body).
fn settle() {
    thread::sleep(Duration::from_millis(300));
}

#[test]
fn redis_storage_is_shared_between_gateways_and_purged_for_both() {
    let redis = Redis::start();
    let o = Origin::start();
    o.script(
        "/r",
        Script::ok("max-age=60", "shared body")
            .header("content-type", "text/plain")
            .header("etag", "\"r1\"")
            .header("x-origin", "yes"),
    );
    let gw1 = redis_gateway(&o, &redis);
    let gw2 = redis_gateway(&o, &redis);

    let m = hget(&gw1, "/r");
    assert_eq!(
        (m.status, status(&m)),
        (200, "MISS".into()),
        "{}",
        describe_response(&m)
    );
    settle();
    let h = hget(&gw2, "/r");
    assert_eq!(
        status(&h),
        "HIT",
        "stored by gateway 1, served by gateway 2: {}",
        describe_response(&h)
    );
    assert_eq!(o.hits("/r"), 1);
    assert_eq!(h.text(), m.text());
    for name in [
        "content-type",
        "etag",
        "x-origin",
        "x-serial",
        "cache-control",
    ] {
        assert_eq!(h.header(name), m.header(name), "{name}");
    }
    assert_eq!(
        gw1.metric(
            "tollgate_cache_requests_total",
            &[("route", "c"), ("status", "miss"), ("storage", "redis")]
        ),
        Some(1.0)
    );
    assert_eq!(
        gw2.metric(
            "tollgate_cache_requests_total",
            &[("route", "c"), ("status", "hit"), ("storage", "redis")]
        ),
        Some(1.0)
    );

    let p = gw1.request("PURGE", "/r", &[("host", HOST)], b"");
    assert_eq!(p.status, 200, "{}", describe_response(&p));
    let r = hget(&gw2, "/r");
    assert_ne!(
        status(&r),
        "HIT",
        "purged on gateway 1: gone for gateway 2 too"
    );
    assert_eq!(o.hits("/r"), 2);
}

#[test]
fn redis_storage_serves_large_bodies_whole_and_skips_too_large_ones() {
    let redis = Redis::start();
    let o = Origin::start();
    let big = patterned(300 * 1024);
    let huge = patterned(1024 * 1024 + 200_000);
    o.script("/big", Script::ok("max-age=60", &big));
    o.script("/huge", Script::ok("max-age=60", &huge));
    let gw1 = redis_gateway(&o, &redis);
    let gw2 = redis_gateway(&o, &redis);

    let r = hget(&gw1, "/big");
    assert_eq!(r.body.len(), big.len());
    settle();
    let r = hget(&gw2, "/big");
    assert_eq!(status(&r), "HIT", "300 KiB stored in Redis by gateway 1");
    assert_eq!(r.body.len(), big.len(), "whole body from gateway 2");
    assert!(r.body == big.as_bytes(), "same bytes from gateway 2");
    assert_eq!(o.hits("/big"), 1);

    let r = hget(&gw1, "/huge");
    assert_eq!(r.body.len(), huge.len());
    assert!(r.body == huge.as_bytes());
    settle();
    let r = hget(&gw2, "/huge");
    assert_ne!(status(&r), "HIT", "over max_object_bytes: never stored");
    assert_eq!(r.body.len(), huge.len(), "the client gets the whole body");
    assert!(r.body == huge.as_bytes());
    assert_eq!(o.hits("/huge"), 2);
}

#[test]
fn redis_keys_are_under_the_prefix_and_all_expire() {
    let redis = Redis::start();
    let o = Origin::start();
    o.script("/t1", Script::ok("max-age=60", "t1"));
    o.script(
        "/t2",
        Script::ok("max-age=5", "t2").header("vary", "accept"),
    );
    o.script(
        "/t3",
        Script {
            etag: Some("\"t3\"".into()),
            ..Script::ok("no-cache", "t3")
        },
    );
    let gw = redis_gateway(&o, &redis);
    hget(&gw, "/t1");
    gw.request("GET", "/t2", &[("host", HOST), ("accept", "a")], b"");
    gw.request("GET", "/t2", &[("host", HOST), ("accept", "b")], b"");
    hget(&gw, "/t3");
    settle();
    assert_eq!(status(&hget(&gw, "/t1")), "HIT", "served from Redis");
    let keys = redis.keys();
    assert!(!keys.is_empty(), "nothing stored in Redis");
    for k in &keys {
        assert!(
            k.starts_with(PREFIX),
            "key {k:?} outside the prefix {PREFIX}"
        );
        match redis.cmd(&["PTTL", k]) {
            Resp::Int(ms) => assert!(ms > 0, "key {k:?} has PTTL {ms} (no expiry)"),
            other => panic!("PTTL {k}: {other:?}"),
        }
    }
}

#[test]
fn redis_outage_falls_back_to_the_origin_and_recovers() {
    let mut redis = Redis::start();
    let port = redis.port;
    let o = Origin::start();
    for p in ["/k", "/k2", "/back"] {
        o.script(p, Script::ok("max-age=60", p));
    }
    let gw = redis_gateway(&o, &redis);
    assert_eq!(status(&hget(&gw, "/k")), "MISS");
    settle();
    assert_eq!(
        status(&hget(&gw, "/k")),
        "HIT",
        "Redis works before the outage"
    );

    redis.stop();
    for p in ["/k", "/k2", "/k", "/k2"] {
        let t = Instant::now();
        let r = hget(&gw, p);
        let took = t.elapsed();
        assert_eq!(
            r.status,
            200,
            "{p} with Redis down: {}",
            describe_response(&r)
        );
        assert_eq!(r.text(), p);
        assert!(
            took < Duration::from_secs(1),
            "{p} took {took:?} with Redis down"
        );
    }
    assert_eq!(
        o.hits("/k2"),
        2,
        "nothing can be stored while Redis is down"
    );
    let mut errors = None;
    assert!(
        wait_until(Duration::from_secs(3), || {
            errors = gw.metric("tollgate_cache_store_errors_total", &[]);
            errors.is_some_and(|v| v > 0.0)
        }),
        "tollgate_cache_store_errors_total = {errors:?}"
    );

    let _redis = Redis::start_on(port);
    let mut last = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            hget(&gw, "/back");
            thread::sleep(Duration::from_millis(100));
            last = status(&hget(&gw, "/back"));
            last == "HIT"
        }),
        "no hits within 5 s of Redis coming back (last {last})"
    );
}

// ---------------------------------------------------------------------------------------
// 14: metrics

#[test]
fn cache_request_metrics_carry_route_status_and_storage() {
    let o = Origin::start();
    o.script("/m", Script::ok("max-age=60", "m"));
    o.script("/n", Script::ok("no-store", "n"));
    let gw = cache_gateway(&o, r#""cache""#);
    get2(&gw, "/m");
    gw.get("/n");
    for s in ["miss", "hit", "bypass"] {
        assert_eq!(
            gw.metric(
                "tollgate_cache_requests_total",
                &[("route", "c"), ("status", s), ("storage", "memory")]
            ),
            Some(1.0),
            "status {s}:\n{}",
            gw.metrics()
        );
    }
    let text = gw.metrics();
    let series = metric_series(&text, "tollgate_cache_requests_total");
    assert!(!series.is_empty());
    for (labels, _) in series {
        let get = |k: &str| labels.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert!(
            matches!(get("storage"), Some("memory" | "redis")),
            "{labels:?}"
        );
        assert!(get("route").is_some(), "{labels:?}");
        let st = get("status").unwrap_or("");
        assert!(
            !st.is_empty() && st == st.to_ascii_lowercase(),
            "{labels:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Ranges served from the cache (RFC 9110 §14): both storages give exactly the bytes asked.

fn range_from_a_hit(gw: &Gateway, o: &Origin, path: &str, body: &str) {
    let headers = [("host", HOST)];
    let r = gw.request("GET", path, &headers, b"");
    assert_eq!(r.body.len(), body.len());
    settle();
    for (range, want) in [
        ("bytes=0-4", &body[0..5]),
        ("bytes=10-19", &body[10..20]),
        ("bytes=-3", &body[body.len() - 3..]),
        ("bytes=70000-70009", &body[70_000..70_010]),
    ] {
        let r = gw.request("GET", path, &[("host", HOST), ("range", range)], b"");
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(status(&r), "HIT", "{range}");
        assert!(r.body == want.as_bytes(), "{range}: {} bytes", r.body.len());
        assert_eq!(
            r.header("content-length").map(str::to_string),
            Some(want.len().to_string()),
            "{range}"
        );
    }
    // Two ranges on one keep-alive connection: a byte too many in the first would be read
    // as the start of the second answer.
    let mut conn = TcpStream::connect(gw.addr).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    for (range, want) in [("bytes=0-4", &body[0..5]), ("bytes=5-9", &body[5..10])] {
        write!(
            conn,
            "GET {path} HTTP/1.1\r\nHost: {HOST}\r\nRange: {range}\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 206"), "{range}: {line:?}");
        let mut len = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap();
                }
            }
        }
        let mut got = vec![0; len];
        reader.read_exact(&mut got).unwrap();
        assert!(got == want.as_bytes(), "{range} on a kept-alive connection");
    }
    assert_eq!(o.hits(path), 1, "every range came from the stored copy");
}

#[test]
fn ranges_of_a_cached_object_are_exact_in_memory() {
    let o = Origin::start();
    let body = patterned(100 * 1024);
    o.script("/r", Script::ok("max-age=60", &body));
    let gw = cache_gateway(&o, r#""cache""#);
    range_from_a_hit(&gw, &o, "/r", &body);
}

#[test]
fn ranges_of_a_cached_object_are_exact_in_redis() {
    let redis = Redis::start();
    let o = Origin::start();
    let body = patterned(100 * 1024);
    o.script("/r", Script::ok("max-age=60", &body));
    let gw = redis_gateway(&o, &redis);
    range_from_a_hit(&gw, &o, "/r", &body);
}
