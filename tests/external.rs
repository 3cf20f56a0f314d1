//! External processing (issue 17): `forward_auth` against an auth service written here (a
//! recording upstream with a scripted answer), `ext_proc` against the reference Python
//! processor in `examples/ext_proc/processor.py`. Real binary, real services on 127.0.0.1.

mod common;

use common::*;
use std::io::BufRead;
use std::time::{Duration, Instant};

fn upstream_section(up: &Upstream) -> String {
    format!(
        "[[upstreams]]\nname = \"echo\"\nbackends = [\"{}\"]\n",
        up.address()
    )
}

fn route(name: &str, path: &str, plugin: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\npaths = [\"{path}\"]\nupstream = \"echo\"\nplugins = [{plugin}]\n"
    )
}

/// An address nothing listens on.
fn dead_address() -> String {
    format!("127.0.0.1:{}", free_port())
}

fn assert_error(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let j = r.json();
    assert_eq!(j["error"], code, "body: {}", r.text());
    assert_eq!(j["status"], status);
    assert!(j["message"].is_string());
}

/// The auth service of these tests: answers by the `Authorization` it is sent.
/// `Bearer good` → 200 `X-User-Id: 42`; `Bearer other` → 200 `X-User-Id: 7`; `Bearer slow`
/// → the same as good after 1.5 s; `Bearer forbidden` → 403 text; anything else → 401 JSON
/// with `WWW-Authenticate` and an internal header that must not reach the client.
fn auth_service() -> RawUpstream {
    RawUpstream::with(|r| {
        let auth = r.header("authorization").unwrap_or("");
        let ok = |id: &str| {
            Reply::Bytes(http_reply(
                200,
                &[("x-user-id", id), ("x-not-copied", "1")],
                b"ignored body",
            ))
        };
        match auth {
            "Bearer good" => ok("42"),
            "Bearer other" => ok("7"),
            "Bearer slow" => {
                std::thread::sleep(Duration::from_millis(1500));
                ok("42")
            }
            "Bearer forbidden" => Reply::Bytes(http_reply(
                403,
                &[("content-type", "text/plain")],
                b"forbidden by the auth service",
            )),
            _ => Reply::Bytes(http_reply(
                401,
                &[
                    ("content-type", "application/json"),
                    ("www-authenticate", "Bearer realm=\"test\""),
                    ("x-internal-secret", "do-not-leak"),
                ],
                br#"{"reason":"bad or missing token"}"#,
            )),
        }
    })
}

fn forward_auth(url: &str, extra: &str) -> String {
    format!(
        r#"{{ name = "forward_auth", url = "{url}", request_headers = ["authorization"], upstream_headers = ["x-user-id"], client_headers = ["www-authenticate"]{extra} }}"#
    )
}

#[test]
fn forward_auth_allows_denies_and_removes_forged_headers() {
    let up = Upstream::start("u");
    let auth = auth_service();
    let url = format!("http://{}/verify", auth.address());
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_section(&up),
        route("fa", "/fa", &forward_auth(&url, ""))
    ));

    // Allowed: the service's X-User-Id reaches the upstream, the client's forged one does not.
    let r = gw.request(
        "GET",
        "/fa/items?q=1",
        &[
            ("authorization", "Bearer good"),
            ("x-user-id", "admin"),
            ("cookie", "session=s1"),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = r.json();
    assert_eq!(seen["headers"]["x-user-id"], "42", "{seen}");
    assert!(seen["headers"]["x-not-copied"].is_null());
    // What the auth service was sent.
    let sent = auth.requests();
    assert_eq!(sent.len(), 1);
    let s = &sent[0];
    assert_eq!(s.method, "GET");
    assert_eq!(s.target, "/verify");
    assert_eq!(s.header("authorization"), Some("Bearer good"));
    assert_eq!(s.header("x-forwarded-method"), Some("GET"));
    assert_eq!(s.header("x-forwarded-uri"), Some("/fa/items?q=1"));
    assert_eq!(s.header("x-forwarded-host"), Some(&*gw.addr.to_string()));
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-for"), Some("127.0.0.1"));
    assert!(
        s.header("cookie").is_none(),
        "only request_headers are sent"
    );
    assert!(s.header("x-user-id").is_none(), "not a request header");

    // Denied: the service's answer goes to the client as it is; the upstream is not called.
    let before = up.count();
    let r = gw.request("GET", "/fa/items", &[("authorization", "Bearer nope")], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.text(), r#"{"reason":"bad or missing token"}"#);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("www-authenticate"), Some("Bearer realm=\"test\""));
    assert!(
        r.header("x-internal-secret").is_none(),
        "not in client_headers"
    );
    let r = gw.request("GET", "/fa/items", &[], b"");
    assert_eq!(r.status, 401, "no credentials: the service decides");
    let r = gw.request(
        "POST",
        "/fa/items",
        &[
            ("authorization", "Bearer forbidden"),
            ("x-user-id", "admin"),
        ],
        b"payload",
    );
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "forbidden by the auth service");
    assert_eq!(
        up.count(),
        before,
        "a denied request never reaches the upstream"
    );

    // Metrics, and no secret in the logs.
    let allowed = gw.metric(
        "tollgate_external_call_duration_seconds_count",
        &[
            ("plugin", "forward_auth"),
            ("route", "fa"),
            ("outcome", "allowed"),
        ],
    );
    assert_eq!(allowed, Some(1.0));
    let denied = gw.metric(
        "tollgate_external_call_duration_seconds_count",
        &[
            ("plugin", "forward_auth"),
            ("route", "fa"),
            ("outcome", "denied"),
        ],
    );
    assert_eq!(denied, Some(3.0));
    let log = gw.stderr();
    assert!(
        !log.contains("Bearer good") && !log.contains("do-not-leak"),
        "{log}"
    );
}

#[test]
fn forward_auth_failure_modes_and_timeouts() {
    let up = Upstream::start("u");
    let auth = auth_service();
    let dead = format!("http://{}/verify", dead_address());
    let live = format!("http://{}/verify", auth.address());
    let gw = Gateway::start(&format!(
        "{}{}{}{}{}",
        upstream_section(&up),
        route("deny", "/deny", &forward_auth(&dead, "")),
        route(
            "allow",
            "/allow",
            &forward_auth(&dead, r#", failure_mode = "allow""#)
        ),
        route("slow", "/slow", &forward_auth(&live, ", timeout_ms = 300")),
        route(
            "slowallow",
            "/slowallow",
            &forward_auth(&live, r#", timeout_ms = 300, failure_mode = "allow""#)
        ),
    ));

    // Service down, deny: 503 in the gateway's error format, upstream not called.
    let r = gw.request("GET", "/deny", &[("authorization", "Bearer good")], b"");
    assert_error(&r, 503, "auth_service_unavailable");
    assert_eq!(up.count(), 0);
    // Service down, allow: passes, and a forged identity header is still removed.
    let r = gw.request(
        "GET",
        "/allow",
        &[("authorization", "Bearer good"), ("x-user-id", "admin")],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.upstream_header("x-user-id").is_none(), "{}", r.text());

    // A service slower than timeout_ms is a failure too.
    let start = Instant::now();
    let r = gw.request("GET", "/slow", &[("authorization", "Bearer slow")], b"");
    assert_error(&r, 503, "auth_service_unavailable");
    assert!(
        start.elapsed() < Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );
    let r = gw.request(
        "GET",
        "/slowallow",
        &[("authorization", "Bearer slow")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-user-id").is_none());

    let failures =
        |route: &str, reason: &str, mode: &str| failures(&gw, "forward_auth", route, reason, mode);
    assert_eq!(failures("deny", "connect", "deny"), Some(1.0));
    assert_eq!(failures("allow", "connect", "allow"), Some(1.0));
    assert_eq!(failures("slow", "timeout", "deny"), Some(1.0));
    assert_eq!(failures("slowallow", "timeout", "allow"), Some(1.0));
    assert!(gw
        .metrics()
        .contains("tollgate_external_call_duration_seconds_bucket"));
}

#[test]
fn forward_auth_caches_decisions_per_credential() {
    let up = Upstream::start("u");
    let auth = auth_service();
    let url = format!("http://{}/verify", auth.address());
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_section(&up),
        route(
            "cached",
            "/c",
            &forward_auth(&url, ", cache = { ttl_seconds = 60, max_entries = 100 }")
        ),
    ));
    let get = |token: &str| gw.request("GET", "/c/x", &[("authorization", token)], b"");

    let r = get("Bearer good");
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("42"));
    let r = get("Bearer good");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.upstream_header("x-user-id").as_deref(),
        Some("42"),
        "a cached allow still copies the headers"
    );
    assert_eq!(
        auth.count(),
        1,
        "the second request was decided from the cache"
    );

    // Another credential is another key.
    let r = get("Bearer other");
    assert_eq!(r.upstream_header("x-user-id").as_deref(), Some("7"));
    assert_eq!(auth.count(), 2);
    // Denials are cached too, and still answered as the service sent them.
    for _ in 0..2 {
        let r = get("Bearer nope");
        assert_eq!(r.status, 401);
        assert_eq!(r.text(), r#"{"reason":"bad or missing token"}"#);
    }
    assert_eq!(auth.count(), 3);
    // Another path is another key (the default key has method, host and URI).
    assert_eq!(
        gw.request("GET", "/c/y", &[("authorization", "Bearer good")], b"")
            .status,
        200
    );
    assert_eq!(auth.count(), 4);
    // Calls reuse pooled connections.
    assert!(
        auth.connections() < auth.count(),
        "{} connections for {} calls",
        auth.connections(),
        auth.count()
    );

    let cache = |result: &str| {
        gw.metric(
            "tollgate_forward_auth_cache_total",
            &[("route", "cached"), ("result", result)],
        )
    };
    assert_eq!(cache("hit"), Some(2.0));
    assert_eq!(cache("miss"), Some(4.0));
}

/// The reference processor, started on a free port; killed when dropped.
struct Processor {
    child: std::process::Child,
    addr: String,
}

impl Processor {
    fn start() -> Processor {
        let script = format!(
            "{}/examples/ext_proc/processor.py",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut child = std::process::Command::new("python3")
            .arg(script)
            .arg("0")
            .env("SLOW_SECONDS", "1.5")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 (scripts/test.sh installs it)");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("processor said {line:?}"))
            .to_string();
        Processor { child, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/process", self.addr)
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn ext_proc_mutates_answers_and_processes_responses() {
    let up = Upstream::start("u");
    let proc_ = Processor::start();
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_section(&up),
        route(
            "ep",
            "/ep",
            &format!(
                r#"{{ name = "ext_proc", url = "{}", response_headers = true, max_body_bytes = 1024 }}"#,
                proc_.url()
            )
        ),
    ));

    // Header changes reach the upstream; response headers are changed on the way back.
    let r = gw.request("GET", "/ep/hello", &[("x-remove-me", "1")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.upstream_header("x-processed-by").as_deref(),
        Some("processor.py")
    );
    assert!(r.upstream_header("x-remove-me").is_none());
    assert_eq!(r.header("x-response-processed"), Some("processor.py"));
    assert!(r.header("x-echo").is_none(), "removed by the processor");

    // The body is sent to the processor and still reaches the upstream.
    let r = gw.request("POST", "/ep/body", &[], b"hello");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.upstream_header("x-body-length").as_deref(), Some("5"));
    assert_eq!(r.json()["body"], "hello");

    // The processor may change the upstream path.
    let r = gw.get("/ep/rewrite");
    assert_eq!(r.upstream_path(), "/rewritten");

    // An immediate response: the upstream is not called.
    let before = up.count();
    let r = gw.get("/ep/blocked");
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "blocked by the processor\n");
    assert_eq!(r.header("x-blocked-by"), Some("processor.py"));
    assert_eq!(up.count(), before);

    let calls = |outcome: &str| {
        gw.metric(
            "tollgate_external_call_duration_seconds_count",
            &[
                ("plugin", "ext_proc"),
                ("route", "ep"),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("immediate"), Some(1.0));
    // 3 request phases and 3 response phases changed something.
    assert_eq!(calls("mutated"), Some(6.0));
}

#[test]
fn ext_proc_failures_follow_the_failure_mode() {
    let up = Upstream::start("u");
    let proc_ = Processor::start();
    let dead = format!("http://{}/process", dead_address());
    let ext = |url: &str, extra: &str| {
        format!(r#"{{ name = "ext_proc", url = "{url}", timeout_ms = 400{extra} }}"#)
    };
    let gw = Gateway::start(&format!(
        "{}{}{}{}{}",
        upstream_section(&up),
        route("deny", "/deny", &ext(&proc_.url(), "")),
        route(
            "allow",
            "/allow",
            &ext(&proc_.url(), r#", failure_mode = "allow""#)
        ),
        route("dead", "/dead", &ext(&dead, "")),
        route(
            "resp",
            "/resp",
            &ext(
                &dead,
                r#", response_headers = true, failure_mode = "allow""#
            )
        ),
    ));

    // Slow processor: past timeout_ms, deny answers 503 and allow passes unchanged.
    let start = Instant::now();
    let r = gw.get("/deny/slow");
    assert_error(&r, 503, "ext_proc_unavailable");
    assert!(
        start.elapsed() < Duration::from_millis(1400),
        "{:?}",
        start.elapsed()
    );
    let r = gw.get("/allow/slow");
    assert_eq!(r.status, 200);
    assert!(r.upstream_header("x-processed-by").is_none());
    // A malformed answer is a failure, not a crash.
    assert_error(&gw.get("/deny/malformed"), 503, "ext_proc_unavailable");
    assert_eq!(gw.get("/allow/malformed").status, 200);
    // A dead processor.
    assert_error(&gw.get("/dead/x"), 503, "ext_proc_unavailable");
    assert_eq!(
        up.count(),
        2,
        "only the allowed requests reached the upstream"
    );
    // Both phases fail with allow: the response goes through unchanged.
    let r = gw.get("/resp/x");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-echo"), Some("1"));
    // The processor still works after all this.
    let r = gw.get("/allow/fine");
    assert_eq!(
        r.upstream_header("x-processed-by").as_deref(),
        Some("processor.py")
    );
    assert!(gw.is_running());

    let failures =
        |route: &str, reason: &str, mode: &str| failures(&gw, "ext_proc", route, reason, mode);
    assert_eq!(failures("deny", "timeout", "deny"), Some(1.0));
    assert_eq!(failures("allow", "timeout", "allow"), Some(1.0));
    assert_eq!(failures("deny", "malformed", "deny"), Some(1.0));
    assert_eq!(failures("allow", "malformed", "allow"), Some(1.0));
    assert_eq!(failures("dead", "connect", "deny"), Some(1.0));
    assert_eq!(failures("resp", "connect", "allow"), Some(2.0));
}

#[test]
fn ext_proc_response_failure_with_deny_replaces_the_response() {
    let up = Upstream::start("u");
    let proc_ = Processor::start();
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream_section(&up),
        route(
            "resp",
            "/resp",
            &format!(
                r#"{{ name = "ext_proc", url = "{}", response_headers = true, timeout_ms = 400 }}"#,
                proc_.url()
            )
        ),
    ));
    // The request phase passes, the upstream answers, the response phase fails: the
    // client gets the 503, not the upstream's response.
    let r = gw.get("/resp/respfail");
    assert_error(&r, 503, "ext_proc_unavailable");
    assert_eq!(up.count(), 1);
    assert!(r.header("x-upstream-id").is_none());
    // And the next request on the route is fine.
    let r = gw.get("/resp/ok");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-response-processed"), Some("processor.py"));
}

#[test]
fn config_check_rejects_bad_external_plugins() {
    let dir = TempDir::new("external-check");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[[upstreams]]
name = "echo"
backends = ["127.0.0.1:9"]

[[routes]]
name = "r"
paths = ["/"]
upstream = "echo"
plugins = [
  { name = "forward_auth", url = "ftp://x/", upstream_headers = ["content-length"] },
  { name = "ext_proc", url = "http://127.0.0.1:9/", timeout_ms = 0 },
]
"#,
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_ne!(code, 0, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(text.contains("plugins[0].url"), "{text}");
    assert!(text.contains("plugins[0].upstream_headers[0]"), "{text}");
    assert!(text.contains("plugins[1].timeout_ms"), "{text}");
}

/// `tollgate_external_call_failures_total` of one plugin, route, reason and failure mode.
fn failures(gw: &Gateway, plugin: &str, route: &str, reason: &str, mode: &str) -> Option<f64> {
    gw.metric(
        "tollgate_external_call_failures_total",
        &[
            ("plugin", plugin),
            ("route", route),
            ("reason", reason),
            ("failure_mode", mode),
        ],
    )
}
