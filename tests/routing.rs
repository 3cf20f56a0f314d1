//! Routing, error answers, path rewrites, headers sent upstream, and the `mock` and `headers`
//! plugins, against a real `tollgate run` process.

mod common;

use common::*;

/// Replace `@KEY@` placeholders (keeps TOML braces readable, unlike `format!`).
fn fill(template: &str, subs: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in subs {
        s = s.replace(&format!("@{k}@"), v);
    }
    assert!(!s.contains("@UP"), "unfilled placeholder in:\n{s}");
    s
}

/// A route answered by `mock` with its own name as body and in `x-route`.
fn mock_route(name: &str, match_lines: &str) -> String {
    format!(
        "[[routes]]\nname = \"{name}\"\n{match_lines}\n\n[[routes.plugins]]\nname = \"mock\"\nbody = \"{name}\"\nheaders = {{ x-route = \"{name}\" }}\n\n"
    )
}

/// Which route answered (the mock body), or `404`/`405` for router answers.
fn routed(gw: &Gateway, method: &str, path: &str, headers: &[(&str, &str)]) -> String {
    let r = gw.request(method, path, headers, b"");
    match r.status {
        200 => {
            assert_eq!(
                r.header("x-route"),
                Some(r.text().as_str()),
                "{method} {path}"
            );
            r.text()
        }
        s => s.to_string(),
    }
}

fn assert_error_json(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    let v = r.json();
    assert_eq!(v["error"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message missing: {v}"
    );
    assert!(
        r.header("x-request-id").is_some(),
        "gateway answers carry x-request-id: {r:?}"
    );
}

// ---------------------------------------------------------------------------------------
// Route matching
// ---------------------------------------------------------------------------------------

#[test]
fn path_precedence_exact_prefix_regex_priority() {
    // File order is deliberately the opposite of the expected precedence.
    let mut cfg = String::new();
    cfg += &mock_route("prefix", "paths = [\"/api\"]");
    cfg += &mock_route("longer", "paths = [\"/api/v1\"]");
    cfg += &mock_route(
        "regex",
        "paths = [\"~^/api/v1/p[a-z]+$\", \"~^/img/.+\\\\.png$\"]",
    );
    cfg += &mock_route("exact", "paths = [\"=/api/v1/ping\"]");
    cfg += &mock_route("img_static", "paths = [\"/img/static\"]");
    cfg += &mock_route("prio", "paths = [\"~^/api/v1/special\"]\npriority = 10");
    let gw = Gateway::start(&cfg);
    let r = |p: &str| routed(&gw, "GET", p, &[]);

    assert_eq!(
        r("/api/v1/ping"),
        "exact",
        "exact beats longer prefix and regex"
    );
    assert_eq!(
        r("/api/v1/ping?x=1"),
        "exact",
        "the query is not part of the path"
    );
    assert_eq!(r("/api/v1/pong"), "longer", "a prefix beats a regex");
    assert_eq!(r("/api/v1"), "longer");
    assert_eq!(r("/api/v2/x"), "prefix");
    assert_eq!(r("/img/a.png"), "regex", "regex when no prefix matches");
    assert_eq!(r("/img/static/a.png"), "img_static");
    assert_eq!(r("/img/a.gif"), "404");
    assert_eq!(r("/api/v1/special/x"), "prio", "priority beats specificity");
}

#[test]
fn prefix_match_is_segment_aware() {
    let mut cfg = mock_route("api", "paths = [\"/api\"]");
    cfg += &mock_route("docs", "paths = [\"/docs/\"]");
    let gw = Gateway::start(&cfg);
    let r = |p: &str| routed(&gw, "GET", p, &[]);
    assert_eq!(r("/api"), "api");
    assert_eq!(r("/api/"), "api");
    assert_eq!(r("/api/x/y"), "api");
    assert_eq!(r("/api?x=1"), "api");
    assert_eq!(r("/apix"), "404");
    assert_eq!(r("/api-v2"), "404");
    assert_eq!(r("/ap"), "404");
    // A trailing slash in the rule is ignored.
    assert_eq!(r("/docs"), "docs");
    assert_eq!(r("/docs/a"), "docs");
    assert_eq!(r("/docsx"), "404");
}

#[test]
fn host_precedence_exact_wildcard_any() {
    let mut cfg = String::new();
    cfg += &mock_route("anyhost_exact", "paths = [\"=/site/page\"]");
    cfg += &mock_route("fallback", "paths = [\"/site\"]");
    cfg += &mock_route("wild", "hosts = [\"*.example.com\"]\npaths = [\"/site\"]");
    cfg += &mock_route(
        "wild_eu",
        "hosts = [\"*.eu.example.com\"]\npaths = [\"/site\"]",
    );
    cfg += &mock_route(
        "exacthost",
        "hosts = [\"a.example.com\"]\npaths = [\"/site\"]",
    );
    let gw = Gateway::start(&cfg);
    let r = |host: &str, p: &str| routed(&gw, "GET", p, &[("Host", host)]);

    assert_eq!(r("a.example.com", "/site/x"), "exacthost");
    assert_eq!(
        r("A.Example.COM:8080", "/site"),
        "exacthost",
        "case-insensitive, port ignored"
    );
    assert_eq!(
        r("a.example.com", "/site/page"),
        "exacthost",
        "host specificity comes before path specificity"
    );
    assert_eq!(r("b.example.com", "/site"), "wild");
    assert_eq!(r("deep.b.example.com", "/site"), "wild");
    assert_eq!(
        r("x.eu.example.com", "/site"),
        "wild_eu",
        "longer wildcard suffix first"
    );
    assert_eq!(
        r("example.com", "/site"),
        "fallback",
        "*.example.com does not match the bare domain"
    );
    assert_eq!(r("notexample.com", "/site"), "fallback");
    assert_eq!(r("other.org", "/site/a"), "fallback");
    assert_eq!(r("other.org", "/site/page"), "anyhost_exact");
}

#[test]
fn header_and_query_predicates() {
    let mut cfg = String::new();
    cfg += &mock_route("plain", "paths = [\"/feature\"]");
    cfg += &mock_route(
        "canary",
        "paths = [\"/feature\"]\nheaders = { x-canary = \"1\" }\npriority = 5",
    );
    cfg += &mock_route(
        "beta",
        "paths = [\"/feature\"]\nquery = { beta = \"~^(1|true)$\" }\npriority = 5",
    );
    cfg += &mock_route(
        "debug",
        "paths = [\"/feature\"]\nheaders = { x-debug = \"*\" }\npriority = 5",
    );
    cfg += &mock_route(
        "both",
        "paths = [\"/feature\"]\nheaders = { x-canary = \"1\" }\nquery = { v = \"*\" }\npriority = 6",
    );
    let gw = Gateway::start(&cfg);
    let r = |p: &str, h: &[(&str, &str)]| routed(&gw, "GET", p, h);

    assert_eq!(r("/feature", &[]), "plain");
    assert_eq!(r("/feature", &[("X-Canary", "1")]), "canary");
    assert_eq!(r("/feature", &[("X-Canary", "2")]), "plain");
    assert_eq!(
        r("/feature", &[("X-Canary", "2"), ("X-Canary", "1")]),
        "canary",
        "any value may match"
    );
    assert_eq!(r("/feature?beta=true", &[]), "beta");
    assert_eq!(r("/feature?a=1&beta=1", &[]), "beta");
    assert_eq!(r("/feature?beta=yes", &[]), "plain");
    assert_eq!(r("/feature?xbeta=1", &[]), "plain");
    assert_eq!(
        r("/feature", &[("X-Debug", "")]),
        "debug",
        "`*` means present, even empty"
    );
    assert_eq!(r("/feature", &[("X-Debug", "anything")]), "debug");
    assert_eq!(r("/feature?v", &[("X-Canary", "1")]), "both");
    assert_eq!(r("/feature?v=0", &[("X-Canary", "1")]), "both");
}

#[test]
fn not_found_is_json() {
    let gw = Gateway::start(&mock_route("only", "paths = [\"=/only\"]"));
    let r = gw.get("/nope");
    assert_error_json(&r, 404, "route_not_found");
    let r = gw.request("GET", "/nope", &[("X-Request-Id", "nf-123")], b"");
    assert_error_json(&r, 404, "route_not_found");
    assert_eq!(r.header("x-request-id"), Some("nf-123"));
    assert_eq!(
        r.header("content-length"),
        Some(r.body.len().to_string().as_str())
    );
}

#[test]
fn method_not_allowed_lists_methods() {
    let mut cfg = mock_route(
        "only_get",
        "paths = [\"=/only\"]\nmethods = [\"GET\", \"HEAD\"]",
    );
    cfg += &mock_route("m_get", "paths = [\"/m\"]\nmethods = [\"GET\"]");
    cfg += &mock_route("m_post", "paths = [\"/m\"]\nmethods = [\"post\"]");
    let gw = Gateway::start(&cfg);

    let r = gw.request("POST", "/only", &[], b"x");
    assert_error_json(&r, 405, "method_not_allowed");
    let mut allow: Vec<String> = r
        .header("allow")
        .unwrap_or_else(|| panic!("405 without Allow: {r:?}"))
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    allow.sort();
    assert_eq!(allow, ["GET", "HEAD"]);

    let r = gw.request("DELETE", "/m/x", &[], b"");
    assert_error_json(&r, 405, "method_not_allowed");
    let mut allow: Vec<String> = r
        .header("allow")
        .unwrap_or_default()
        .split(',')
        .map(|m| m.trim().to_string())
        .collect();
    allow.sort();
    assert_eq!(
        allow,
        ["GET", "POST"],
        "Allow is the union of the matching routes' methods"
    );

    assert_eq!(routed(&gw, "GET", "/m", &[]), "m_get");
    assert_eq!(routed(&gw, "POST", "/m", &[]), "m_post");
    assert_eq!(routed(&gw, "GET", "/only", &[]), "only_get");
    let head = gw.request("HEAD", "/only", &[], b"");
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    // A path that no route matches whatever the method is still a 404.
    assert_error_json(
        &gw.request("POST", "/elsewhere", &[], b""),
        404,
        "route_not_found",
    );
}

// ---------------------------------------------------------------------------------------
// Path rewrites
// ---------------------------------------------------------------------------------------

#[test]
fn path_rewrites_keep_the_query() {
    let up = Upstream::start("echo");
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "strip"
paths = ["/svc"]
strip_prefix = true
upstream = "u"

[[routes]]
name = "prefix_rw"
paths = ["/old"]
rewrite = "/new/v2"
upstream = "u"

[[routes]]
name = "exact_rw"
paths = ["=/legacy"]
rewrite = "/modern"
upstream = "u"

[[routes]]
name = "regex_rw"
paths = ['~^/users/(?P<id>[0-9]+)/posts/([0-9]+)$']
rewrite = "/u/${id}/p/$2"
upstream = "u"

[[routes]]
name = "regex_bare_name"
paths = ['~^/files/(?P<name>[a-z]+)\.txt$']
rewrite = "/blob/$name"
upstream = "u"

[[routes]]
name = "keep"
paths = ["/keep"]
upstream = "u"
"#,
        &[("UP", &up.address())],
    );
    let gw = Gateway::start(&cfg);
    let p = |path: &str| {
        let r = gw.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.upstream_path()
    };
    assert_eq!(p("/svc/users?x=1&y=2"), "/users?x=1&y=2");
    assert_eq!(p("/svc"), "/");
    assert_eq!(p("/svc?x=1"), "/?x=1");
    assert_eq!(p("/svc/a/b/"), "/a/b/");
    assert_eq!(p("/old/a/b?q=1"), "/new/v2/a/b?q=1");
    assert_eq!(p("/old"), "/new/v2");
    assert_eq!(p("/legacy?a=b"), "/modern?a=b");
    assert_eq!(p("/users/42/posts/7?full=1"), "/u/42/p/7?full=1");
    assert_eq!(p("/files/report.txt"), "/blob/report");
    assert_eq!(p("/keep/a%20b?x=1&y"), "/keep/a%20b?x=1&y");
}

/// The rewrite example of docs/config.md, verbatim: `rewrite = "/u/$1/${rest}"`.
#[test]
fn rewrite_documented_braced_named_capture() {
    let up = Upstream::start("echo");
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "users"
paths = ['~^/users/(\d+)/(?P<rest>.*)$']
rewrite = "/u/$1/${rest}"
upstream = "u"
"#,
        &[("UP", &up.address())],
    );
    let dir = TempDir::new("doc-rewrite");
    let file = dir.path().join("doc.toml");
    std::fs::write(
        &file,
        format!("[server]\nlisten = [\"127.0.0.1:1\"]\n{cfg}"),
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(
        code, 0,
        "docs/config.md shows `rewrite = \"/u/$1/${{rest}}\"` as a named capture, but the config is rejected:\n{err}"
    );
    let gw = Gateway::start(&cfg);
    let r = gw.get("/users/7/posts?x=1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_path(), "/u/7/posts?x=1");
}

#[test]
fn dot_segments_are_refused() {
    let up = Upstream::start("echo");
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "public"
paths = ["/public"]
upstream = "u"
"#,
        &[("UP", &up.address())],
    );
    let gw = Gateway::start(&cfg);
    for path in [
        "/public/../admin",
        "/public/./x",
        "/public/%2e%2e/admin",
        "/public/%2E/x",
    ] {
        assert_error_json(&gw.get(path), 400, "bad_request");
    }
    assert_eq!(
        up.count(),
        0,
        "no dot-segment request may reach the upstream"
    );
    assert_eq!(
        gw.get("/public/..x/a.b").status,
        200,
        "dots inside a segment are fine"
    );
}

// ---------------------------------------------------------------------------------------
// Headers sent upstream
// ---------------------------------------------------------------------------------------

fn forwarding_gateway(up: &Upstream) -> Gateway {
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[upstreams]]
name = "named"
backends = ["@UP@"]
host = "backend.internal"

[[routes]]
name = "echo"
paths = ["/echo"]
upstream = "u"

[[routes]]
name = "preserve"
paths = ["/preserve"]
preserve_host = true
upstream = "u"

[[routes]]
name = "named"
paths = ["/named"]
upstream = "named"

[[routes]]
name = "named_preserve"
paths = ["/named-preserve"]
preserve_host = true
upstream = "named"

[[routes]]
name = "lean"
paths = ["/lean"]
upstream = "u"
forwarded_headers = false
request_id = false
"#,
        &[("UP", &up.address())],
    );
    Gateway::start(&cfg)
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).collect::<Vec<_>>() == [8, 4, 4, 4, 12]
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

#[test]
fn forwarded_headers() {
    let up = Upstream::start("echo");
    let gw = forwarding_gateway(&up);

    let r = gw.request("GET", "/echo", &[("Host", "client.test:9999")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http")
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some("client.test:9999")
    );
    assert_eq!(
        r.header("x-upstream-id"),
        Some("echo"),
        "upstream response headers pass through"
    );

    let r = gw.request("GET", "/echo", &[("X-Forwarded-For", "10.1.2.3")], b"");
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("10.1.2.3, 127.0.0.1"),
        "the client IP is appended"
    );
    let lines = r.json()["header_lines"].as_array().unwrap().clone();
    let xff_lines = lines.iter().filter(|l| l[0] == "x-forwarded-for").count();
    assert_eq!(xff_lines, 1, "one X-Forwarded-For line upstream: {lines:?}");

    let r = gw.request(
        "GET",
        "/echo",
        &[
            ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "spoofed"),
        ],
        b"",
    );
    assert_eq!(
        r.upstream_header("x-forwarded-proto").as_deref(),
        Some("http"),
        "client value replaced"
    );
    assert_eq!(
        r.upstream_header("x-forwarded-host").as_deref(),
        Some(gw.addr.to_string().as_str()),
        "client value replaced by its Host"
    );
}

#[test]
fn forwarded_headers_and_request_id_can_be_turned_off() {
    let up = Upstream::start("echo");
    let gw = forwarding_gateway(&up);

    let r = gw.request("GET", "/lean", &[("X-Forwarded-For", "10.1.2.3")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-forwarded-proto"), None);
    assert_eq!(r.upstream_header("x-forwarded-host"), None);
    assert_eq!(
        r.upstream_header("x-forwarded-for").as_deref(),
        Some("10.1.2.3"),
        "the client's value passes untouched"
    );
    assert_eq!(r.upstream_header("x-request-id"), None);
    assert_eq!(r.header("x-request-id"), None);

    let r = gw.request("GET", "/lean", &[("X-Request-Id", "abc-123")], b"");
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("abc-123"),
        "a client's id still passes through"
    );
    let r = gw.get("/lean-no-such-route");
    assert_eq!(r.status, 404);
    assert!(
        r.header("x-request-id").is_some(),
        "answers outside the route keep their id"
    );
}

#[test]
fn request_id_generated_or_kept() {
    let up = Upstream::start("echo");
    let gw = forwarding_gateway(&up);

    let a = gw.get("/echo");
    let b = gw.get("/echo");
    let id_a = a
        .header("x-request-id")
        .expect("response x-request-id")
        .to_string();
    assert!(is_uuid(&id_a), "generated id is a UUID: {id_a}");
    assert_eq!(
        a.upstream_header("x-request-id"),
        Some(id_a.clone()),
        "same id upstream and back"
    );
    assert_ne!(
        b.header("x-request-id"),
        Some(id_a.as_str()),
        "a new id per request"
    );

    let r = gw.request("GET", "/echo", &[("X-Request-Id", "my-id-123")], b"");
    assert_eq!(
        r.upstream_header("x-request-id").as_deref(),
        Some("my-id-123")
    );
    assert_eq!(r.header("x-request-id"), Some("my-id-123"));

    let long = "x".repeat(65);
    let r = gw.request("GET", "/echo", &[("X-Request-Id", &long)], b"");
    let got = r.header("x-request-id").unwrap_or_default().to_string();
    assert!(is_uuid(&got), "an id over 64 bytes is replaced, got {got}");
    assert_eq!(r.upstream_header("x-request-id"), Some(got));

    let max = "y".repeat(64);
    let r = gw.request("GET", "/echo", &[("X-Request-Id", &max)], b"");
    assert_eq!(
        r.header("x-request-id"),
        Some(max.as_str()),
        "64 bytes is accepted"
    );

    let r = gw.request("GET", "/echo", &[("X-Request-Id", "has space")], b"");
    let got = r.header("x-request-id").unwrap_or_default().to_string();
    assert!(is_uuid(&got), "a non-printable id is replaced, got {got}");
}

#[test]
fn host_header_sent_upstream() {
    let up = Upstream::start("echo");
    let gw = forwarding_gateway(&up);
    let host = |path: &str| {
        let r = gw.request("GET", path, &[("Host", "client.test:8080")], b"");
        assert_eq!(r.status, 200, "{}", r.text());
        r.upstream_header("host").unwrap_or_default()
    };
    assert_eq!(host("/echo"), up.address(), "default: the backend address");
    assert_eq!(
        host("/preserve"),
        "client.test:8080",
        "preserve_host keeps the client's"
    );
    assert_eq!(host("/named"), "backend.internal", "the upstream's `host`");
    assert_eq!(
        host("/named-preserve"),
        "client.test:8080",
        "preserve_host beats the upstream's host"
    );
}

#[test]
fn method_and_body_reach_upstream() {
    let up = Upstream::start("echo");
    let gw = forwarding_gateway(&up);
    let r = gw.request(
        "POST",
        "/echo/items",
        &[("Content-Type", "text/plain")],
        b"hello body",
    );
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["body"], "hello body");
    assert_eq!(v["headers"]["content-type"], "text/plain");
    let r = gw.request("PUT", "/echo", &[], b"");
    assert_eq!(r.json()["method"], "PUT");
    let r = gw.request("HEAD", "/echo", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
}

// ---------------------------------------------------------------------------------------
// Plugins
// ---------------------------------------------------------------------------------------

#[test]
fn mock_plugin_answers() {
    let up = Upstream::start("echo");
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "custom"
paths = ["=/mock"]

[[routes.plugins]]
name = "mock"
status = 201
body = "created!"
content_type = "text/x-custom"
headers = { x-mock = "yes", cache-control = "no-store" }

[[routes]]
name = "defaults"
paths = ["=/mock-default"]
plugins = [{ name = "mock", body = "plain" }]

[[routes]]
name = "with_upstream"
paths = ["/maintenance"]
upstream = "u"
plugins = [{ name = "mock", status = 503, content_type = "application/json", body = '{"maintenance":true}', headers = { retry-after = "120" } }]
"#,
        &[("UP", &up.address())],
    );
    let gw = Gateway::start(&cfg);

    let r = gw.request("GET", "/mock", &[("X-Request-Id", "mock-1")], b"");
    assert_eq!(r.status, 201);
    assert_eq!(r.text(), "created!");
    assert_eq!(r.header("content-type"), Some("text/x-custom"));
    assert_eq!(r.header("content-length"), Some("8"));
    assert_eq!(r.header("x-mock"), Some("yes"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("x-request-id"), Some("mock-1"));
    let head = gw.request("HEAD", "/mock", &[], b"");
    assert_eq!(head.status, 201);
    assert!(head.body.is_empty());

    let r = gw.get("/mock-default");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "plain");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));

    let r = gw.get("/maintenance/x");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["maintenance"], true);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("retry-after"), Some("120"));
    assert_eq!(up.count(), 0, "a mock answer never reaches the upstream");
}

#[test]
fn headers_plugin_changes_request_and_response() {
    let up = Upstream::start("echo");
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "h"
paths = ["/h"]
upstream = "u"

[[routes.plugins]]
name = "headers"
request.remove = ["x-secret"]
request.set = { x-set = "s" }
request.add = { x-add = "a" }
response.remove = ["x-upstream-id"]
response.set = { x-resp = "r" }
response.add = { x-echo = "2" }
"#,
        &[("UP", &up.address())],
    );
    let gw = Gateway::start(&cfg);
    let r = gw.request(
        "GET",
        "/h",
        &[
            ("X-Secret", "1"),
            ("X-Set", "client"),
            ("X-Add", "client"),
            ("X-Keep", "k"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let seen = &v["headers"];
    assert!(seen.get("x-secret").is_none(), "request.remove: {seen}");
    assert_eq!(seen["x-set"], "s", "request.set replaces: {seen}");
    assert_eq!(seen["x-add"], "client, a", "request.add appends: {seen}");
    assert_eq!(seen["x-keep"], "k");

    assert_eq!(r.header("x-resp"), Some("r"));
    assert_eq!(
        r.header_all("x-echo"),
        ["1", "2"],
        "response.add appends to the upstream's value"
    );
    assert_eq!(r.header("x-upstream-id"), None, "response.remove");
}

#[test]
fn global_plugin_applies_and_routes_override_or_disable_it() {
    let up = Upstream::start("echo");
    let cfg = fill(
        r#"
[plugins.headers]
request.set = { x-global-req = "g" }
response.set = { x-global = "g" }

[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "plain"
paths = ["/plain"]
upstream = "u"

[[routes]]
name = "mocked"
paths = ["=/mocked"]
plugins = [{ name = "mock", body = "m" }]

[[routes]]
name = "override"
paths = ["/override"]
upstream = "u"
plugins = [{ name = "headers", response.set = { x-local = "l" } }]

[[routes]]
name = "disabled"
paths = ["/disabled"]
upstream = "u"
plugins = [{ name = "headers", enabled = false }]

[[routes]]
name = "by_name"
paths = ["/by-name"]
upstream = "u"
plugins = ["headers"]
"#,
        &[("UP", &up.address())],
    );
    let gw = Gateway::start(&cfg);

    let r = gw.get("/plain");
    assert_eq!(r.header("x-global"), Some("g"), "global response change");
    assert_eq!(
        r.upstream_header("x-global-req").as_deref(),
        Some("g"),
        "global request change"
    );

    let r = gw.get("/mocked");
    assert_eq!(r.text(), "m");
    assert_eq!(
        r.header("x-global"),
        Some("g"),
        "response hooks also run on plugin answers"
    );

    let r = gw.get("/override");
    assert_eq!(r.header("x-local"), Some("l"));
    assert_eq!(
        r.header("x-global"),
        None,
        "the route's config replaces the global one"
    );
    assert_eq!(r.upstream_header("x-global-req"), None);

    let r = gw.get("/disabled");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-global"),
        None,
        "enabled = false disables the global plugin"
    );
    assert_eq!(r.upstream_header("x-global-req"), None);

    let r = gw.get("/by-name");
    assert_eq!(
        r.header("x-global"),
        Some("g"),
        "name only uses the global instance"
    );

    let r = gw.get("/nothing-here");
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-global"), None, "router answers run no plugins");
}

#[test]
fn global_plugin_disabled_at_top_level() {
    let up = Upstream::start("echo");
    let cfg = fill(
        r#"
[plugins.headers]
enabled = false
response.set = { x-global = "g" }

[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "plain"
paths = ["/plain"]
upstream = "u"
"#,
        &[("UP", &up.address())],
    );
    let gw = Gateway::start(&cfg);
    let r = gw.get("/plain");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("x-global"),
        None,
        "[plugins.headers] enabled = false"
    );
}
