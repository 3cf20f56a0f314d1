//! Security regression wall: raw bytes over TCP (and raw HTTP/2 frames) against the real
//! `tollgate run` binary and a raw recording upstream. Each test asserts what the client got
//! (status, headers, the JSON error body) *and* what the upstream saw, or that it saw nothing.
//!
//! Tests are named `pNN_...` after the numbered point of the security contract they check.

mod common;

use base64::Engine;
use common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ALICE_KEY: &str = "alice-key-0123456789";
const BOB_KEY: &str = "bob-key-9876543210";
const HS_SECRET: &str = "hs256-secret-for-security-tests-0123456789";
const PASSWORD: &str = "correct horse battery staple";
/// `echo 'correct horse battery staple' | tollgate hash-password`
const PASSWORD_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$gO22hc9uC4w6Sp5Y7dBflw$/FdYzVtLibD4MhNL4liiBzYn3SlbSt/TUn8rle5++Cc";
/// How long to wait before concluding that the upstream saw nothing (a late forward would
/// show up by then).
const SETTLE: Duration = Duration::from_millis(150);

// ---------------------------------------------------------------------------------------
// Config pieces
// ---------------------------------------------------------------------------------------

fn consumers() -> String {
    format!(
        r#"
[[consumers]]
username = "alice"
keys = ["{ALICE_KEY}"]
basic_auth = {{ password_hash = "{PASSWORD_HASH}" }}
jwt = [{{ key = "alice-hs", algorithm = "HS256", secret = "{HS_SECRET}" }}]

[[consumers]]
username = "bob"
keys = ["{BOB_KEY}"]
"#
    )
}

fn upstream(name: &str, up: &RawUpstream) -> String {
    format!(
        "\n[[upstreams]]\nname = \"{name}\"\nbackends = [\"{}\"]\n",
        up.address()
    )
}

/// A `[[routes]]` table: `name` plus `lines` (paths, upstream, plugins, ...).
fn route(name: &str, lines: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\n{lines}\n")
}

/// A route to the upstream named "raw" on `path` with `plugins` (a TOML array body).
fn raw_route(name: &str, path: &str, plugins: &str) -> String {
    route(
        name,
        &format!("paths = [\"{path}\"]\nupstream = \"raw\"\nplugins = [{plugins}]"),
    )
}

/// The catch-all route without plugins.
fn open_route() -> String {
    raw_route("open", "/", "")
}

/// `tollgate check` on a whole config file: (exit code, stdout + stderr).
fn check_text(text: &str) -> (i32, String) {
    let dir = TempDir::new("seccheck");
    let file = dir.path().join("tollgate.toml");
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], &[]);
    (code, format!("{out}{err}"))
}

/// `tollgate check` on `body` behind a loopback `[server]` table.
fn check_body(body: &str) -> (i32, String, String) {
    let text = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\nadmin_listen = \"127.0.0.1:{}\"\n{body}",
        free_port(),
        free_port()
    );
    let (code, out) = check_text(&text);
    (code, out, text)
}

// ---------------------------------------------------------------------------------------
// Requests and assertions
// ---------------------------------------------------------------------------------------

/// `GET target HTTP/1.1` with `Host: gw.test` and `headers` (whole lines without CRLF).
fn get(target: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

fn apikey(k: &str) -> String {
    format!("apikey: {k}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Authorization: Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"))
    )
}

fn hs_token(claims: serde_json::Value) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("alice-hs".into());
    jsonwebtoken::encode(&h, &claims, &EncodingKey::from_secret(HS_SECRET.as_bytes())).unwrap()
}

/// A JWT with an arbitrary header, signed HS256 with alice's secret.
fn hs_token_raw(header: &serde_json::Value, claims: &serde_json::Value) -> String {
    let msg = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let sig = jsonwebtoken::crypto::sign(
        msg.as_bytes(),
        &EncodingKey::from_secret(HS_SECRET.as_bytes()),
        Algorithm::HS256,
    )
    .unwrap();
    format!("{msg}.{sig}")
}

fn ctx(sent: &[u8], r: &Response) -> String {
    format!(
        "\n  sent: {:?}\n  got:  {}",
        escape_bytes(sent),
        describe_response(r)
    )
}

/// A gateway-made refusal: `status`, `content-type: application/json`, `x-request-id`, and
/// a body `{"error": code, "message": "...", "status": status}`.
fn assert_refusal(sent: &[u8], r: &Response, status: u16, code: &str) {
    let c = ctx(sent, r);
    assert_eq!(r.status, status, "wrong status (want {status} {code}):{c}");
    assert_json_error(sent, r, Some(code));
}

/// The JSON error shape, with any code when `code` is None.
fn assert_json_error(sent: &[u8], r: &Response, code: Option<&str>) {
    let c = ctx(sent, r);
    assert!(
        r.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "refusal is not application/json:{c}"
    );
    let j: Json = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("refusal body is not JSON ({e}):{c}"));
    match code {
        Some(code) => assert_eq!(j["error"], code, "wrong error code:{c}"),
        None => assert!(
            j["error"].as_str().is_some_and(|e| !e.is_empty()),
            "no error code:{c}"
        ),
    }
    assert_eq!(j["status"], r.status, "`status` field differs:{c}");
    assert!(
        j["message"].as_str().is_some_and(|m| !m.is_empty()),
        "no message:{c}"
    );
    assert!(
        r.header("x-request-id").is_some_and(|v| !v.is_empty()),
        "refusal without x-request-id:{c}"
    );
}

/// An answer that came from the upstream (the default reply's headers are there).
fn assert_from_upstream(sent: &[u8], r: &Response) {
    assert!(
        r.status == 200 && r.header("x-upstream-seq").is_some(),
        "want the upstream's 200:{}",
        ctx(sent, r)
    );
}

/// After [`SETTLE`]: no request, no garbage, nothing pending at the upstream.
fn assert_upstream_saw_nothing(up: &RawUpstream, sent: &[u8]) {
    thread::sleep(SETTLE);
    assert!(
        up.count() == 0 && up.anomalies().is_empty() && up.pending().is_empty(),
        "sent {:?}\n  the upstream should have seen nothing, but: {}",
        escape_bytes(sent),
        up.summary()
    );
}

/// Exactly one well-framed request reached the upstream (and nothing else); returns it.
fn only_request(up: &RawUpstream, sent: &[u8]) -> Recorded {
    up.wait_count(1, Duration::from_secs(2));
    thread::sleep(SETTLE);
    let reqs = up.requests();
    assert!(
        reqs.len() == 1 && up.anomalies().is_empty() && up.pending().is_empty(),
        "sent {:?}\n  want exactly one request upstream, but: {}",
        escape_bytes(sent),
        up.summary()
    );
    reqs.into_iter().next().unwrap()
}

/// Send, expect the upstream's answer, return what the upstream saw.
fn forwarded(gw: &Gateway, up: &RawUpstream, sent: &[u8]) -> Recorded {
    up.clear();
    let r = send_raw(gw.addr, sent);
    assert_from_upstream(sent, &r);
    only_request(up, sent)
}

/// Send, expect a refusal `status`/`code`, and that the upstream saw nothing.
/// Refused with a plain 400 by Pingora's own parser (before tollgate sees the request, so
/// the body is Pingora's, not the JSON one), and nothing reached the upstream.
fn refused_by_parser(gw: &Gateway, up: &RawUpstream, sent: &[u8]) {
    up.clear();
    let r = send_raw(gw.addr, sent);
    assert_eq!(r.status, 400, "want Pingora's 400:{}", ctx(sent, &r));
    assert_upstream_saw_nothing(up, sent);
}

fn refused(gw: &Gateway, up: &RawUpstream, sent: &[u8], status: u16, code: &str) {
    up.clear();
    let r = send_raw(gw.addr, sent);
    assert_refusal(sent, &r, status, code);
    assert_upstream_saw_nothing(up, sent);
}

fn h2_fields<'a>(
    method: &'a str,
    authority: &'a str,
    path: &'a [u8],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a [u8], &'a [u8])> {
    let mut f: Vec<(&[u8], &[u8])> = vec![
        (b":method", method.as_bytes()),
        (b":scheme", b"http"),
        (b":authority", authority.as_bytes()),
        (b":path", path),
    ];
    for (n, v) in extra {
        f.push((n.as_bytes(), v.as_bytes()));
    }
    f
}

fn h2_response(end: H2End, what: &str) -> H2Response {
    match end {
        H2End::Response(r) => r,
        other => panic!("HTTP/2 {what}: no response: {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// 1. Absolute-form targets
// ---------------------------------------------------------------------------------------

#[test]
fn p01_absolute_form_is_routed_on_its_authority_and_sent_in_origin_form() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        consumers(),
        upstream("raw", &up),
        route(
            "internal",
            "hosts = [\"internal.test\"]\npaths = [\"/\"]\nupstream = \"raw\"\nplugins = [\"key_auth\"]"
        ),
        open_route()
    ));
    let key = apikey(ALICE_KEY);
    for head in [
        "GET http://internal.test/nph/x HTTP/1.1\r\nHost: internal.test\r\n",
        "GET http://INTERNAL.TEST:80/nph/x HTTP/1.1\r\nHost: INTERNAL.TEST:80\r\n",
        // HTTP/1.0 without Host: routed on the authority.
        "GET http://internal.test/nph/x HTTP/1.0\r\n",
    ] {
        // No key: the internal route's 401, never the any-host route beside it.
        let sent = format!("{head}\r\n");
        refused(&gw, &up, sent.as_bytes(), 401, "missing_credentials");
        // With the key: forwarded in origin-form.
        let sent = format!("{head}{key}\r\n\r\n");
        let seen = forwarded(&gw, &up, sent.as_bytes());
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("GET", "/nph/x"),
            "sent {sent:?}: upstream request line {:?}",
            seen.request_line()
        );
    }
    // An upper-case scheme is refused by Pingora's parser: never routed elsewhere.
    refused_by_parser(
        &gw,
        &up,
        b"GET HTTP://INTERNAL.TEST:80/nph/x HTTP/1.1\r\nHost: internal.test\r\n\r\n",
    );
    let sent = format!(
        "GET http://internal.test/nph/x?q=1 HTTP/1.1\r\nHost: internal.test\r\n{key}\r\n\r\n"
    );
    let seen = forwarded(&gw, &up, sent.as_bytes());
    assert_eq!(seen.target, "/nph/x?q=1", "sent {sent:?}");
    // Another host, through the open route: still origin-form upstream.
    let sent = b"GET http://other.test/y HTTP/1.1\r\nHost: other.test\r\n\r\n";
    let seen = forwarded(&gw, &up, sent);
    assert_eq!(
        seen.target,
        "/y",
        "upstream request line {:?}",
        seen.request_line()
    );
}

#[test]
fn p01_absolute_form_without_host_mismatched_host_or_foreign_scheme_is_refused() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        consumers(),
        upstream("raw", &up),
        route(
            "internal",
            "hosts = [\"internal.test\"]\npaths = [\"/\"]\nupstream = \"raw\"\nplugins = [\"key_auth\"]"
        ),
        open_route()
    ));
    let key = apikey(ALICE_KEY);
    let cases: [(String, &str); 4] = [
        (
            format!("GET http://internal.test/nph/x HTTP/1.1\r\n{key}\r\n\r\n"),
            "bad_request",
        ),
        (
            format!("GET http://internal.test/nph/x HTTP/1.1\r\nHost: other.test\r\n{key}\r\n\r\n"),
            "bad_request",
        ),
        (
            "GET http://other.test/nph/x HTTP/1.1\r\nHost: internal.test\r\n\r\n".to_string(),
            "bad_request",
        ),
        (
            format!("GET foo://internal.test/x HTTP/1.1\r\nHost: internal.test\r\n{key}\r\n\r\n"),
            "bad_request",
        ),
    ];
    for (sent, code) in cases {
        refused_400(&gw, &up, sent.as_bytes(), code);
    }
}

/// 400 with the JSON body, or Pingora's own 400 when its parser already refused the request
/// (it checks an absolute-form authority against `Host` itself); nothing reaches the
/// upstream either way.
fn refused_400(gw: &Gateway, up: &RawUpstream, sent: &[u8], code: &str) {
    up.clear();
    let r = send_raw(gw.addr, sent);
    assert_eq!(r.status, 400, "want 400:{}", ctx(sent, &r));
    if r.header("server") != Some("Pingora") {
        assert_json_error(sent, &r, Some(code));
    }
    assert_upstream_saw_nothing(up, sent);
}

/// A self-signed certificate for `internal.test` in `dir`: (cert, key) paths.
fn self_signed(dir: &std::path::Path) -> (String, String) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=internal.test",
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

/// Raw bytes over TLS (through `openssl s_client`), the response read until the close.
fn tls_send_raw(port: u16, bytes: &[u8]) -> Response {
    use std::process::{Command, Stdio};
    let mut child = Command::new("timeout")
        .args([
            "10",
            "openssl",
            "s_client",
            "-quiet",
            "-servername",
            "internal.test",
            "-connect",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("openssl s_client");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    let out = child.wait_with_output().unwrap();
    parse_response_bytes(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "TLS: sent {:?}: {e}; s_client stderr: {}",
            escape_bytes(bytes),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn p01_absolute_form_over_tls_is_routed_on_its_authority() {
    let dir = TempDir::new("sectls");
    let (cert, key) = self_signed(dir.path());
    let tls_port = free_port();
    let up = RawUpstream::start();
    let _gw = Gateway::start(&format!(
        "[[server.tls]]\nlisten = \"127.0.0.1:{tls_port}\"\ncert = \"{cert}\"\nkey = \"{key}\"\n{}{}{}{}",
        consumers(),
        upstream("raw", &up),
        route(
            "internal",
            "hosts = [\"internal.test\"]\npaths = [\"/\"]\nupstream = \"raw\"\nplugins = [\"key_auth\"]"
        ),
        open_route()
    ));
    // (An upper-case scheme is refused by Pingora's parser: see p01 over plain TCP.)
    for target in [
        "https://internal.test/nph/x",
        "https://internal.test:443/nph/x",
    ] {
        let host = target.split('/').nth(2).unwrap_or("");
        let sent = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        up.clear();
        let r = tls_send_raw(tls_port, sent.as_bytes());
        assert_refusal(sent.as_bytes(), &r, 401, "missing_credentials");
        assert_upstream_saw_nothing(&up, sent.as_bytes());
        let sent = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\n{}\r\nConnection: close\r\n\r\n",
            apikey(ALICE_KEY)
        );
        up.clear();
        let r = tls_send_raw(tls_port, sent.as_bytes());
        assert_from_upstream(sent.as_bytes(), &r);
        let seen = only_request(&up, sent.as_bytes());
        assert_eq!(
            seen.target,
            "/nph/x",
            "TLS {target}: upstream request line {:?}",
            seen.request_line()
        );
        assert_eq!(
            seen.header_all("x-forwarded-proto"),
            ["https"],
            "{}",
            escape_bytes(&seen.head)
        );
    }
}

// ---------------------------------------------------------------------------------------
// 2. Encoded dot segments, targets without a leading slash
// ---------------------------------------------------------------------------------------

fn admin_and_open_gateway(up: &RawUpstream, server: &str) -> Gateway {
    Gateway::start(&format!(
        "{server}\n{}{}{}{}{}",
        consumers(),
        upstream("raw", up),
        raw_route("admin", "/admin", "\"key_auth\""),
        route(
            "ab",
            "paths = [\"/a/b\"]\nplugins = [{ name = \"mock\", body = \"ab-route\" }]"
        ),
        open_route()
    ))
}

#[test]
fn p02_encoded_dot_segments_are_refused() {
    let up = RawUpstream::start();
    let gw = admin_and_open_gateway(&up, "");
    for path in [
        "/public/..%2fadmin",
        "/public/%2e%2e%2fadmin",
        "/public/.%2e%2fadmin",
        "/public/%2E%2E%2Fadmin",
        "/public/%2e%2e/admin",
        "/public/.%2E/admin",
    ] {
        refused(&gw, &up, &get(path, &[]), 400, "bad_request");
    }
}

#[test]
fn p02_targets_without_a_leading_slash_are_refused() {
    let up = RawUpstream::start();
    let gw = admin_and_open_gateway(&up, "");
    for target in ["a/../admin", "..", "*", "admin"] {
        refused(&gw, &up, &get(target, &[]), 400, "bad_request");
    }
}

// ---------------------------------------------------------------------------------------
// 3. Path normalization: routing and the upstream see the same normalized path
// ---------------------------------------------------------------------------------------

#[test]
fn p03_encoded_unreserved_and_doubled_slashes_route_like_the_normal_path() {
    let up = RawUpstream::start();
    let gw = admin_and_open_gateway(&up, "");
    let key = apikey(ALICE_KEY);
    for path in ["/%61dmin", "//admin", "/adm%69n", "///admin"] {
        refused(&gw, &up, &get(path, &[]), 401, "missing_credentials");
        let seen = forwarded(&gw, &up, &get(path, &[&key]));
        assert_eq!(
            seen.target, "/admin",
            "sent {path}: upstream saw {:?}",
            seen.target
        );
    }
    for (path, want) in [
        ("/%7Euser", "/~user"),
        ("/%7euser", "/~user"),
        ("/x%3ay", "/x%3Ay"),
        ("/x%2cy", "/x%2Cy"),
        ("/x/%41%42c", "/x/ABc"),
    ] {
        let seen = forwarded(&gw, &up, &get(path, &[]));
        assert_eq!(
            seen.target, want,
            "sent {path}: upstream saw {:?}",
            seen.target
        );
    }
}

#[test]
fn p03_ambiguous_path_bytes_are_refused() {
    let up = RawUpstream::start();
    let gw = admin_and_open_gateway(&up, "");
    for path in [
        "/%2fadmin",
        "/%2Fadmin",
        "/admin%2f",
        "/admin%5c",
        "/admin;x",
        "/admin%20",
        "/adm%00in",
        "/a\\b",
    ] {
        refused(&gw, &up, &get(path, &[]), 400, "bad_request");
        // A key does not change the answer.
        refused(
            &gw,
            &up,
            &get(path, &[&apikey(ALICE_KEY)]),
            400,
            "bad_request",
        );
    }
}

#[test]
fn p03_escaped_slashes_keep_forwards_them_encoded_without_matching_the_slash_route() {
    let up = RawUpstream::start();
    let gw = admin_and_open_gateway(
        &up,
        "[server.path_normalization]\nescaped_slashes = \"keep\"\n",
    );
    for path in ["/a%2Fb", "/a%2fb"] {
        let seen = forwarded(&gw, &up, &get(path, &[]));
        assert_eq!(
            seen.target, "/a%2Fb",
            "sent {path}: upstream saw {:?}",
            seen.target
        );
    }
    // The `/a/b` route itself still answers for the real path.
    let r = send_raw(gw.addr, &get("/a/b", &[]));
    assert_eq!(r.text(), "ab-route", "{}", describe_response(&r));
}

#[test]
fn p03_dot_segments_resolve_routes_the_resolved_path() {
    let up = RawUpstream::start();
    let gw = admin_and_open_gateway(
        &up,
        "[server.path_normalization]\ndot_segments = \"resolve\"\n",
    );
    let key = apikey(ALICE_KEY);
    refused(
        &gw,
        &up,
        &get("/x/../admin", &[]),
        401,
        "missing_credentials",
    );
    let seen = forwarded(&gw, &up, &get("/x/../admin", &[&key]));
    assert_eq!(seen.target, "/admin", "upstream saw {:?}", seen.target);
    let seen = forwarded(&gw, &up, &get("/admin/./y/../z", &[&key]));
    assert_eq!(seen.target, "/admin/z", "upstream saw {:?}", seen.target);
}

// ---------------------------------------------------------------------------------------
// 4. Identity and underscore headers
// ---------------------------------------------------------------------------------------

fn headers_gateway(up: &RawUpstream) -> Gateway {
    Gateway::start(&format!(
        "{}{}{}{}{}",
        consumers(),
        upstream("raw", up),
        raw_route("keys", "/keys", "\"key_auth\""),
        raw_route("plain", "/plain", ""),
        route(
            "under",
            "paths = [\"/under\"]\nupstream = \"raw\"\nallow_underscore_headers = true"
        ),
    ))
}

#[test]
fn p04_spoofed_identity_headers_never_reach_the_upstream() {
    let up = RawUpstream::start();
    let gw = headers_gateway(&up);
    let sent = get(
        "/keys/a",
        &[
            &apikey(ALICE_KEY),
            "X_Consumer_Username: root",
            "x_consumer_id: x",
            "X-CONSUMER-USERNAME: root",
            "X-Consumer-Id: root-id",
            "X-Consumer-Groups: admin",
        ],
    );
    let seen = forwarded(&gw, &up, &sent);
    let head = escape_bytes(&seen.head);
    assert_eq!(
        seen.header_all("x-consumer-username"),
        ["alice"],
        "upstream head: {head}"
    );
    assert_eq!(
        seen.header_all("x-consumer-id"),
        ["alice"],
        "upstream head: {head}"
    );
    assert!(
        seen.header("x-consumer-groups")
            .is_none_or(|g| !g.contains("admin")),
        "client's x-consumer-groups reached the upstream: {head}"
    );
    assert!(
        !seen.headers.iter().any(|(n, _)| n.contains('_')),
        "an underscore header reached the upstream: {head}"
    );
    assert!(
        !seen
            .headers
            .iter()
            .any(|(_, v)| v == "root" || v == "x" || v == "root-id"),
        "a spoofed identity value reached the upstream: {head}"
    );
}

#[test]
fn p04_underscore_headers_are_dropped_unless_the_route_allows_them() {
    let up = RawUpstream::start();
    let gw = headers_gateway(&up);
    let sent = get("/plain", &["X_Custom: 1", "x_other_thing: 2", "X-Dash: 3"]);
    let seen = forwarded(&gw, &up, &sent);
    let head = escape_bytes(&seen.head);
    assert!(
        !seen.headers.iter().any(|(n, _)| n.contains('_')),
        "an underscore header reached the upstream: {head}"
    );
    assert_eq!(seen.header("x-dash"), Some("3"), "upstream head: {head}");

    let sent = get("/under", &["X_Custom: 1"]);
    let seen = forwarded(&gw, &up, &sent);
    assert_eq!(
        seen.header("x_custom"),
        Some("1"),
        "allow_underscore_headers = true drops it: {}",
        escape_bytes(&seen.head)
    );
}

// ---------------------------------------------------------------------------------------
// 5. Duplicate credentials
// ---------------------------------------------------------------------------------------

#[test]
fn p05_duplicate_credentials_are_ambiguous() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}{}{}{}",
        consumers(),
        upstream("raw", &up),
        raw_route("jwt", "/jwt", "\"jwt\""),
        raw_route(
            "keys",
            "/keys",
            "{ name = \"key_auth\", query_param = \"apikey\" }"
        ),
        raw_route("basic", "/basic", "\"basic_auth\""),
    ));
    let valid = hs_token(serde_json::json!({"sub": "alice", "exp": now() + 600}));
    let forged = format!(
        "{}.{}.",
        b64url(br#"{"alg":"none","typ":"JWT","kid":"alice-hs"}"#),
        b64url(
            serde_json::json!({"sub": "alice", "exp": now() + 600, "admin": true})
                .to_string()
                .as_bytes()
        )
    );
    let good = format!("Authorization: Bearer {valid}");
    let bad = format!("Authorization: Bearer {forged}");
    // Sanity: each credential alone works.
    forwarded(&gw, &up, &get("/jwt", &[&good]));
    forwarded(&gw, &up, &get("/keys", &[&apikey(ALICE_KEY)]));
    forwarded(&gw, &up, &get("/basic", &[&basic("alice", PASSWORD)]));

    let cases: Vec<Vec<u8>> = vec![
        get("/jwt", &[&good, &bad]),
        get("/jwt", &[&bad, &good]),
        get("/jwt", &[&good, &good]),
        get("/keys", &[&apikey(ALICE_KEY), &apikey(BOB_KEY)]),
        get(
            "/keys",
            &[&apikey(ALICE_KEY), &format!("x-api-key: {BOB_KEY}")],
        ),
        get(
            "/keys",
            &[&apikey(ALICE_KEY), &format!("x-api-key: {ALICE_KEY}")],
        ),
        get(&format!("/keys?apikey={BOB_KEY}"), &[&apikey(ALICE_KEY)]),
        get(&format!("/keys?apikey={ALICE_KEY}&apikey={BOB_KEY}"), &[]),
        get(
            "/basic",
            &[&basic("alice", PASSWORD), &basic("alice", "wrong password")],
        ),
        get(
            "/basic",
            &[&basic("alice", "wrong password"), &basic("alice", PASSWORD)],
        ),
    ];
    for sent in cases {
        refused(&gw, &up, &sent, 401, "ambiguous_credentials");
    }
}

// ---------------------------------------------------------------------------------------
// 6. Forwarded headers cannot be spoofed (HTTP/1.1 and HTTP/2), nor poison the cache
// ---------------------------------------------------------------------------------------

/// An upstream whose cacheable answer names the `x-forwarded-host` it received.
fn xfh_upstream() -> RawUpstream {
    RawUpstream::with(|r| {
        let seq = r.seq.to_string();
        let xfh = r.header_all("x-forwarded-host").join("|");
        let body = format!("seq={} xfh={xfh}", r.seq);
        Reply::Bytes(http_reply(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("x-upstream-seq", &seq),
            ],
            body.as_bytes(),
        ))
    })
}

fn forwarded_gateway(up: &RawUpstream) -> Gateway {
    Gateway::start(&format!(
        "h2c = true\n{}{}{}",
        upstream("raw", up),
        raw_route("cached", "/cached", "{ name = \"cache\" }"),
        open_route()
    ))
}

fn assert_forwarded_headers(seen: &Recorded, host: &str, what: &str) {
    let head = escape_bytes(&seen.head);
    assert_eq!(
        seen.header_all("x-forwarded-host"),
        [host],
        "{what}: upstream x-forwarded-host; head: {head}"
    );
    // The peer is appended to what the client sent (as Kong, Envoy and nginx do): one line,
    // the gateway's own entry last. The client address tollgate acts on ignores it.
    assert_eq!(
        seen.header_all("x-forwarded-for"),
        ["1.2.3.4, 127.0.0.1"],
        "{what}: upstream x-forwarded-for; head: {head}"
    );
    assert!(
        seen.header_all("x-forwarded-proto") == ["http"],
        "{what}: upstream x-forwarded-proto; head: {head}"
    );
}

#[test]
fn p06_forwarded_headers_from_an_untrusted_peer_are_replaced_http1() {
    let up = RawUpstream::start();
    let gw = forwarded_gateway(&up);
    let sent = b"GET /fwd HTTP/1.1\r\nHost: real.test\r\nX-Forwarded-Host: evil.test\r\nX-Forwarded-For: 1.2.3.4\r\nx-forwarded-host: evil2.test\r\n\r\n";
    let seen = forwarded(&gw, &up, sent);
    assert_forwarded_headers(&seen, "real.test", "HTTP/1.1");
}

#[test]
fn p06_forwarded_headers_from_an_untrusted_peer_are_replaced_h2() {
    let up = RawUpstream::start();
    let gw = forwarded_gateway(&up);
    let mut c = H2Conn::connect(gw.addr).expect("h2c connect");
    let fields = h2_fields(
        "GET",
        "real.test",
        b"/fwd",
        &[
            ("x-forwarded-host", "evil.test"),
            ("x-forwarded-for", "1.2.3.4"),
        ],
    );
    let r = h2_response(c.request(&fields, None, IO_TIMEOUT), "GET /fwd");
    assert_eq!(r.status, 200, "h2 GET /fwd: {r:?}\n{}", up.summary());
    let seen = only_request(&up, b"(h2) GET /fwd x-forwarded-host: evil.test");
    assert_forwarded_headers(&seen, "real.test", "HTTP/2");
}

#[test]
fn p06_h2_forged_forwarded_host_does_not_change_the_cached_answer() {
    let up = xfh_upstream();
    let gw = forwarded_gateway(&up);
    let forged = [("x-forwarded-host", "evil.test")];
    // a) the h2 request with the forged header fills the cache; an HTTP/1 client of the
    //    real host must get an answer made for the real host.
    let mut c = H2Conn::connect(gw.addr).expect("h2c connect");
    let r = h2_response(
        c.request(
            &h2_fields("GET", "real.test", b"/cached/a", &forged),
            None,
            IO_TIMEOUT,
        ),
        "GET /cached/a",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        !r.text().contains("evil"),
        "the forged host reached the origin: {:?}",
        r.text()
    );
    let sent = b"GET /cached/a HTTP/1.1\r\nHost: real.test\r\n\r\n";
    let r1 = send_raw(gw.addr, sent);
    assert!(
        r1.status == 200 && !r1.text().contains("evil"),
        "HTTP/1 client got an answer made for the forged host:{}\n{}",
        ctx(sent, &r1),
        up.summary()
    );
    // b) the HTTP/1 client fills the cache; the h2 request with the forged header hits the
    //    same entry (the key uses the real host) and the origin is asked once.
    up.clear();
    let sent = b"GET /cached/b HTTP/1.1\r\nHost: real.test\r\n\r\n";
    let first = send_raw(gw.addr, sent);
    assert_eq!(first.status, 200, "{}", ctx(sent, &first));
    let r = h2_response(
        c.request(
            &h2_fields("GET", "real.test", b"/cached/b", &forged),
            None,
            IO_TIMEOUT,
        ),
        "GET /cached/b",
    );
    assert_eq!(
        r.text(),
        first.text(),
        "h2 request with x-forwarded-host: evil.test got another cache entry: {r:?}\n{}",
        up.summary()
    );
    let again = send_raw(gw.addr, sent);
    assert_eq!(again.text(), first.text(), "{}", ctx(sent, &again));
    thread::sleep(SETTLE);
    assert_eq!(
        up.count(),
        1,
        "origin asked more than once: {}",
        up.summary()
    );
}

// ---------------------------------------------------------------------------------------
// 7. The cache is per consumer unless shared
// ---------------------------------------------------------------------------------------

fn counting_cacheable_upstream() -> RawUpstream {
    RawUpstream::with(|r| {
        let seq = r.seq.to_string();
        let body = format!("answer seq={}", r.seq);
        Reply::Bytes(http_reply(
            200,
            &[
                ("cache-control", "public, max-age=60"),
                ("x-upstream-seq", &seq),
            ],
            body.as_bytes(),
        ))
    })
}

#[test]
fn p07_a_consumer_never_gets_another_consumers_cached_answer() {
    let up = counting_cacheable_upstream();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        consumers(),
        upstream("raw", &up),
        raw_route(
            "c",
            "/c",
            "\"key_auth\", { name = \"cache\", default_ttl_seconds = 60 }"
        ),
    ));
    let alice = get("/c/x", &[&apikey(ALICE_KEY)]);
    let bob = get("/c/x", &[&apikey(BOB_KEY)]);
    let a1 = send_raw(gw.addr, &alice);
    assert_eq!(a1.status, 200, "{}", ctx(&alice, &a1));
    let a2 = send_raw(gw.addr, &alice);
    assert_eq!(
        (a2.header("x-cache-status"), a2.text()),
        (Some("HIT"), a1.text()),
        "the route does not cache at all (alice's second request):{}",
        ctx(&alice, &a2)
    );
    let b1 = send_raw(gw.addr, &bob);
    assert_ne!(
        b1.text(),
        a1.text(),
        "bob got alice's cached answer:{}",
        ctx(&bob, &b1)
    );
    assert_eq!(
        b1.header("x-cache-status"),
        Some("MISS"),
        "{}",
        ctx(&bob, &b1)
    );
    thread::sleep(SETTLE);
    assert_eq!(up.count(), 2, "{}", up.summary());
    let b2 = send_raw(gw.addr, &bob);
    assert_eq!(b2.text(), b1.text(), "bob's own entry:{}", ctx(&bob, &b2));
    let a3 = send_raw(gw.addr, &alice);
    assert_eq!(
        a3.text(),
        a1.text(),
        "alice's own entry:{}",
        ctx(&alice, &a3)
    );
}

#[test]
fn p07_shared_cache_without_consumer_key_is_shared() {
    let up = counting_cacheable_upstream();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        consumers(),
        upstream("raw", &up),
        raw_route(
            "c",
            "/c",
            "\"key_auth\", { name = \"cache\", default_ttl_seconds = 60, shared = true, key = { consumer = false } }"
        ),
    ));
    let alice = get("/c/x", &[&apikey(ALICE_KEY)]);
    let bob = get("/c/x", &[&apikey(BOB_KEY)]);
    let a1 = send_raw(gw.addr, &alice);
    assert_eq!(a1.status, 200, "{}", ctx(&alice, &a1));
    let b1 = send_raw(gw.addr, &bob);
    assert_eq!(
        (b1.header("x-cache-status"), b1.text()),
        (Some("HIT"), a1.text()),
        "shared = true: bob should share alice's entry:{}",
        ctx(&bob, &b1)
    );
    thread::sleep(SETTLE);
    assert_eq!(up.count(), 1, "{}", up.summary());
}

#[test]
fn p07_cache_consumer_false_without_shared_is_a_config_error() {
    let up = RawUpstream::start();
    let body = format!(
        "{}{}{}",
        consumers(),
        upstream("raw", &up),
        raw_route(
            "c",
            "/c",
            "\"key_auth\", { name = \"cache\", key = { consumer = false } }"
        ),
    );
    let (code, out, text) = check_body(&body);
    assert_eq!(code, 1, "tollgate check accepted:\n{text}\noutput: {out}");
    assert!(
        out.contains("routes[0].plugins[1]"),
        "the error does not name the path: {out}"
    );
}

// ---------------------------------------------------------------------------------------
// 8. CORS
// ---------------------------------------------------------------------------------------

#[test]
fn p08_cors_regex_origins_are_anchored_and_null_is_not_echoed() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream("raw", &up),
        raw_route(
            "cors",
            "/cors",
            r#"{ name = "cors", origins = ["~https://.*\\.trusted\\.com"], credentials = true }"#
        ),
    ));
    for origin in [
        "https://x.trusted.com.evil.net",
        "http://a.trusted.com",
        "https://a.trusted.com:8443",
        "null",
    ] {
        let sent = get("/cors", &[&format!("Origin: {origin}")]);
        let r = send_raw(gw.addr, &sent);
        assert!(
            r.header("access-control-allow-origin").is_none()
                && r.header("access-control-allow-credentials").is_none(),
            "origin {origin} was allowed:{}",
            ctx(&sent, &r)
        );
        let pre = format!(
            "OPTIONS /cors HTTP/1.1\r\nHost: gw.test\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: GET\r\n\r\n"
        );
        up.clear();
        let r = send_raw(gw.addr, pre.as_bytes());
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "preflight from {origin} was allowed:{}",
            ctx(pre.as_bytes(), &r)
        );
        assert_upstream_saw_nothing(&up, pre.as_bytes());
    }
    let sent = get("/cors", &["Origin: https://a.trusted.com"]);
    let r = send_raw(gw.addr, &sent);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://a.trusted.com"),
        "{}",
        ctx(&sent, &r)
    );
    assert_eq!(
        r.header("access-control-allow-credentials"),
        Some("true"),
        "{}",
        ctx(&sent, &r)
    );
}

#[test]
fn p08_cors_null_origin_is_never_echoed_with_credentials() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream("raw", &up),
        raw_route(
            "cors",
            "/cors",
            r#"{ name = "cors", origins = ["~.*"], credentials = true }"#
        ),
    ));
    let sent = get("/cors", &["Origin: null"]);
    let r = send_raw(gw.addr, &sent);
    assert!(
        r.header("access-control-allow-origin").is_none(),
        "Origin: null echoed with credentials:{}",
        ctx(&sent, &r)
    );
    let sent = get("/cors", &["Origin: https://ok.example"]);
    let r = send_raw(gw.addr, &sent);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://ok.example"),
        "sanity: a real origin is echoed:{}",
        ctx(&sent, &r)
    );
}

#[test]
fn p08_cors_wildcard_with_credentials_is_a_config_error() {
    let up = RawUpstream::start();
    let body = format!(
        "{}{}",
        upstream("raw", &up),
        raw_route(
            "cors",
            "/cors",
            r#"{ name = "cors", origins = ["*"], credentials = true }"#
        ),
    );
    let (code, out, text) = check_body(&body);
    assert_eq!(code, 1, "tollgate check accepted:\n{text}\noutput: {out}");
    assert!(
        out.contains("routes[0].plugins[0]"),
        "the error does not name the path: {out}"
    );
}

// ---------------------------------------------------------------------------------------
// 9. Content-Length lists and duplicates; CL/TE mutations
// ---------------------------------------------------------------------------------------

fn post(cl_lines: &str, body: &[u8]) -> Vec<u8> {
    let mut b = format!("POST /p HTTP/1.1\r\nHost: gw.test\r\n{cl_lines}\r\n\r\n").into_bytes();
    b.extend_from_slice(body);
    b
}

#[test]
fn p09_identical_content_lengths_are_forwarded_as_one() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!("{}{}", upstream("raw", &up), open_route()));
    for cl in [
        "Content-Length: 5, 5",
        "Content-Length: 5\r\nContent-Length: 5",
    ] {
        let sent = post(cl, b"hello");
        let seen = forwarded(&gw, &up, &sent);
        assert_eq!(
            (seen.header_all("content-length"), seen.body.as_slice()),
            (vec!["5"], &b"hello"[..]),
            "sent {:?}: upstream saw {:?}",
            escape_bytes(&sent),
            escape_bytes(&seen.raw)
        );
    }
}

#[test]
fn p09_conflicting_content_lengths_are_refused() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!("{}{}", upstream("raw", &up), open_route()));
    for cl in [
        "Content-Length: 5, 6",
        "Content-Length: 5\r\nContent-Length: 6",
        "Content-Length: 6\r\nContent-Length: 5",
        "Content-Length: 5, 5, 6",
    ] {
        // Pingora's parser refuses disagreeing lengths itself (RFC 9112 §6.3).
        refused_by_parser(&gw, &up, &post(cl, b"hello!"));
    }
}

#[test]
fn p09_h2_duplicate_content_length_reaches_the_upstream_once() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "h2c = true\n{}{}",
        upstream("raw", &up),
        open_route()
    ));
    let mut c = H2Conn::connect(gw.addr).expect("h2c connect");
    let fields = h2_fields(
        "POST",
        "gw.test",
        b"/p",
        &[("content-length", "5"), ("content-length", "5")],
    );
    let r = h2_response(c.request(&fields, Some(b"hello"), IO_TIMEOUT), "POST /p");
    assert_eq!(r.status, 200, "{r:?}\n{}", up.summary());
    let seen = only_request(&up, b"(h2) POST /p content-length: 5 twice, DATA hello");
    assert_eq!(
        (seen.header_all("content-length"), seen.body.as_slice()),
        (vec!["5"], &b"hello"[..]),
        "upstream saw {:?}",
        escape_bytes(&seen.raw)
    );
}

#[test]
fn p09_content_length_list_smuggling_never_skips_key_auth() {
    let up = RawUpstream::start();
    let gw = admin_and_open_gateway(&up, "");
    let smuggled = b"GET /admin/secret HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let mut fifty = vec![b'x'; 50 - smuggled.len()];
    fifty.extend_from_slice(smuggled);
    assert_eq!(fifty.len(), 50);
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    for cl in [
        "Content-Length: 50, 50",
        "Content-Length: 50\r\nContent-Length: 50",
    ] {
        // The smuggled request is the end of the 50-byte body...
        cases.push((cl.into(), post(cl, &fifty)));
        // ...or pipelined right after it.
        let mut b = post(cl, &[b'y'; 50]);
        b.extend_from_slice(smuggled);
        cases.push((cl.into(), b));
    }
    // A list that disagrees, with the smuggled request after the short reading.
    let mut b = post("Content-Length: 5, 50", b"hello");
    b.extend_from_slice(smuggled);
    cases.push(("5, 50".into(), b));
    for (what, sent) in cases {
        up.clear();
        let ex = exchange(
            gw.addr,
            &sent,
            Duration::from_millis(300),
            Duration::from_secs(3),
        );
        thread::sleep(SETTLE);
        let reqs = up.requests();
        let c = format!(
            "{what}: sent {:?}{}\n  {}",
            escape_bytes(&sent),
            ex.describe(),
            up.summary()
        );
        assert!(
            !reqs.iter().any(|r| r.path().starts_with("/admin")),
            "a request for /admin reached the upstream without key_auth: {c}"
        );
        assert!(
            !up.anomalies().iter().any(|a| a.is_garbage()) && up.pending().is_empty(),
            "the upstream got bytes it frames differently: {c}"
        );
        for r in &reqs {
            assert!(
                r.path() == "/p" && r.body.len() == 50,
                "the upstream framed a different body: {c}"
            );
        }
        if what == "5, 50" {
            assert!(reqs.is_empty(), "a conflicting list was forwarded: {c}");
        }
        // Whatever came first, /admin without a key is still refused.
        refused(
            &gw,
            &up,
            &get("/admin/secret", &[]),
            401,
            "missing_credentials",
        );
    }
}

/// What a CL/TE mutation may lead to.
enum Want {
    /// A valid, unambiguous request: must be forwarded with this body.
    Forward(Vec<u8>),
    /// Refused (400 or a close), or forwarded with one of these bodies.
    Either(Vec<Vec<u8>>),
    /// Must be refused (400, 501 for an unknown coding, or a close); nothing upstream.
    Refuse,
}

const SMUGGLED: &[u8] = b"GET /admin/smuggled HTTP/1.1\r\nHost: gw.test\r\n\r\n";

/// `POST /m` with `headers` (lines ending CRLF), `body`, then the smuggled GET.
fn mutation(headers: &str, body: &[u8]) -> Vec<u8> {
    let mut b = format!("POST /m HTTP/1.1\r\nHost: gw.test\r\n{headers}\r\n").into_bytes();
    b.extend_from_slice(body);
    b.extend_from_slice(SMUGGLED);
    b
}

/// A CL+TE ambiguity: `Content-Length` covers `0\r\n\r\n` + the smuggled GET; chunked ends
/// after `0\r\n\r\n`. Returns (bytes, [CL reading, chunked reading]).
fn cl_te(te_lines: &str) -> (Vec<u8>, Vec<Vec<u8>>) {
    let mut body = b"0\r\n\r\n".to_vec();
    body.extend_from_slice(SMUGGLED);
    let mut b = format!(
        "POST /m HTTP/1.1\r\nHost: gw.test\r\nContent-Length: {}\r\n{te_lines}\r\n",
        body.len()
    )
    .into_bytes();
    b.extend_from_slice(&body);
    (b, vec![body, Vec::new()])
}

fn mutation_cases() -> Vec<(&'static str, Vec<u8>, Want)> {
    let hello = || b"hello".to_vec();
    let chunked_hello: &[u8] = b"5\r\nhello\r\n0\r\n\r\n";
    let mut v: Vec<(&'static str, Vec<u8>, Want)> = vec![
        (
            "baseline CL",
            mutation("Content-Length: 5\r\n", b"hello"),
            Want::Forward(hello()),
        ),
        (
            "baseline chunked",
            mutation("Transfer-Encoding: chunked\r\n", chunked_hello),
            Want::Forward(hello()),
        ),
        (
            "CL name case",
            mutation("cOnTeNt-LeNgTh: 5\r\n", b"hello"),
            Want::Forward(hello()),
        ),
        (
            "CL extra OWS",
            mutation("Content-Length:   5  \r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "CL tab OWS",
            mutation("Content-Length:\t5\r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "CL space before colon",
            mutation("Content-Length : 5\r\n", b"hello"),
            Want::Refuse,
        ),
        (
            "CL plus sign",
            mutation("Content-Length: +5\r\n", b"hello"),
            Want::Refuse,
        ),
        (
            "CL negative",
            mutation("Content-Length: -5\r\n", b"hello"),
            Want::Refuse,
        ),
        (
            "CL hex",
            mutation("Content-Length: 0x5\r\n", b"hello"),
            Want::Refuse,
        ),
        (
            "CL list same",
            mutation("Content-Length: 5, 5\r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "CL list different",
            mutation("Content-Length: 5, 6\r\n", b"hello"),
            Want::Refuse,
        ),
        (
            "CL two lines same",
            mutation("Content-Length: 5\r\nContent-Length: 5\r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "CL two lines different",
            mutation("Content-Length: 5\r\nContent-Length: 6\r\n", b"hello"),
            Want::Refuse,
        ),
        (
            "CL overflow 2^64+5",
            mutation("Content-Length: 18446744073709551621\r\n", b"hello"),
            Want::Refuse,
        ),
        (
            "CL leading zeros",
            mutation("Content-Length: 0005\r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "CL space inside",
            mutation("Content-Length: 5 5\r\n", b"hello"),
            Want::Refuse,
        ),
        (
            "CL trailing comma",
            mutation("Content-Length: 5,\r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "CL NUL byte",
            mutation("Content-Length: 5\x00\r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "CL obs-fold",
            mutation("Content-Length:\r\n 5\r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "obs-fold hiding a CL",
            mutation(
                "X-Pad: a\r\n Content-Length: 40\r\nContent-Length: 5\r\n",
                b"hello",
            ),
            Want::Either(vec![hello()]),
        ),
        (
            "bare CR in a header line",
            mutation("Content-Length: 5\rX-Y: z\r\n", b"hello"),
            Want::Either(vec![hello()]),
        ),
        (
            "TE value case",
            mutation("Transfer-Encoding: CHUNKED\r\n", chunked_hello),
            Want::Either(vec![hello()]),
        ),
        (
            "TE name case",
            mutation("tRANSFER-eNCODING: chunked\r\n", chunked_hello),
            Want::Either(vec![hello()]),
        ),
        (
            "chunk size overflow",
            mutation(
                "Transfer-Encoding: chunked\r\n",
                b"10000000000000005\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Refuse,
        ),
        (
            "chunk size not hex",
            mutation(
                "Transfer-Encoding: chunked\r\n",
                b"5g\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Refuse,
        ),
        (
            "chunk size negative",
            mutation(
                "Transfer-Encoding: chunked\r\n",
                b"-5\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Refuse,
        ),
        (
            "chunk size 0x prefix",
            mutation(
                "Transfer-Encoding: chunked\r\n",
                b"0x5\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Refuse,
        ),
        (
            "chunk size leading space",
            mutation(
                "Transfer-Encoding: chunked\r\n",
                b" 5\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Either(vec![hello()]),
        ),
        (
            "chunk extension",
            mutation(
                "Transfer-Encoding: chunked\r\n",
                b"5;ext=1\r\nhello\r\n0\r\n\r\n",
            ),
            Want::Either(vec![hello()]),
        ),
        (
            "chunk data longer than its size",
            mutation("Transfer-Encoding: chunked\r\n", b"3\r\nhello\r\n0\r\n\r\n"),
            Want::Refuse,
        ),
        (
            "chunked LF-only lines",
            mutation("Transfer-Encoding: chunked\r\n", b"5\nhello\n0\n\n"),
            Want::Either(vec![hello()]),
        ),
        (
            "chunked trailer with a CL",
            mutation(
                "Transfer-Encoding: chunked\r\n",
                b"5\r\nhello\r\n0\r\nContent-Length: 40\r\n\r\n",
            ),
            Want::Either(vec![hello()]),
        ),
    ];
    let mut lf = b"POST /m HTTP/1.1\nHost: gw.test\nContent-Length: 5\n\nhello".to_vec();
    lf.extend_from_slice(SMUGGLED);
    v.push(("LF-only request head", lf, Want::Either(vec![hello()])));
    let mut fold = b"POST /m HTTP/1.1\r\n Content-Length: 40\r\nHost: gw.test\r\nContent-Length: 5\r\n\r\nhello".to_vec();
    fold.extend_from_slice(SMUGGLED);
    v.push((
        "whitespace line before the first header",
        fold,
        Want::Either(vec![hello()]),
    ));
    for (name, te, refuse) in [
        ("CL + TE", "Transfer-Encoding: chunked\r\n", false),
        (
            "TE space before colon + CL",
            "Transfer-Encoding : chunked\r\n",
            true,
        ),
        (
            "TE tab before value + CL",
            "Transfer-Encoding:\tchunked\r\n",
            false,
        ),
        ("TE xchunked + CL", "Transfer-Encoding: xchunked\r\n", false),
        (
            "TE chunked, identity + CL",
            "Transfer-Encoding: chunked, identity\r\n",
            true,
        ),
        (
            "TE identity, chunked + CL",
            "Transfer-Encoding: identity, chunked\r\n",
            false,
        ),
        (
            "TE two lines chunked / identity + CL",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n",
            true,
        ),
        (
            "TE obs-fold + CL",
            "Transfer-Encoding:\r\n chunked\r\n",
            false,
        ),
        (
            "TE vertical tab + CL",
            "Transfer-Encoding:\x0bchunked\r\n",
            false,
        ),
        ("TE NUL + CL", "Transfer-Encoding: chunked\x00\r\n", false),
        (
            "TE quoted + CL",
            "Transfer-Encoding: \"chunked\"\r\n",
            false,
        ),
        (
            "TE chunked, chunked + CL",
            "Transfer-Encoding: chunked, chunked\r\n",
            false,
        ),
    ] {
        let (b, bodies) = cl_te(te);
        v.push((
            name,
            b,
            if refuse {
                Want::Refuse
            } else {
                Want::Either(bodies)
            },
        ));
    }
    // TE before CL.
    let mut body = b"0\r\n\r\n".to_vec();
    body.extend_from_slice(SMUGGLED);
    let mut b = format!(
        "POST /m HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    b.extend_from_slice(&body);
    v.push(("TE + CL", b, Want::Either(vec![body.clone(), Vec::new()])));
    // HTTP/1.0 with both.
    let mut b = format!(
        "POST /m HTTP/1.0\r\nHost: gw.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        body.len()
    )
    .into_bytes();
    b.extend_from_slice(&body);
    v.push(("HTTP/1.0 CL + TE", b, Want::Either(vec![body, Vec::new()])));
    v
}

/// One mutation: Ok, or why it failed.
fn check_mutation(
    gw: &Gateway,
    up: &RawUpstream,
    name: &str,
    sent: &[u8],
    want: &Want,
) -> Result<(), String> {
    up.clear();
    let ex = exchange(
        gw.addr,
        sent,
        Duration::from_millis(200),
        Duration::from_secs(3),
    );
    thread::sleep(Duration::from_millis(100));
    let reqs = up.requests();
    let c = format!(
        "[{name}] sent {:?}{}\n  {}",
        escape_bytes(sent),
        ex.describe(),
        up.summary()
    );
    if std::env::var_os("SECURITY_VERBOSE").is_some() {
        let statuses: Vec<u16> = ex.responses.iter().map(|r| r.status).collect();
        eprintln!(
            "[{name}] client got {statuses:?} closed={}; upstream: {:?}, {} anomalies",
            ex.closed,
            reqs.iter()
                .map(|r| escape_bytes(&r.body))
                .collect::<Vec<_>>(),
            up.anomalies().len()
        );
    }
    if reqs.iter().any(|r| r.path().starts_with("/admin")) {
        return Err(format!("the smuggled request reached the upstream: {c}"));
    }
    if up.anomalies().iter().any(|a| a.is_garbage()) || !up.pending().is_empty() {
        return Err(format!(
            "the upstream got bytes it frames differently than the gateway: {c}"
        ));
    }
    if reqs.len() > 1 {
        return Err(format!("more than one request reached the upstream: {c}"));
    }
    match reqs.first() {
        None => {
            if let Want::Forward(_) = want {
                return Err(format!("a valid request was not forwarded: {c}"));
            }
            match ex.responses.first() {
                Some(r) if r.status == 400 || r.status == 501 => {
                    if ex.responses.len() > 1 || !ex.closed {
                        return Err(format!(
                            "after refusing the framing the gateway kept reading the connection: {c}"
                        ));
                    }
                }
                Some(_) => return Err(format!("want 400 (or a close), got another answer: {c}")),
                None if ex.closed => {}
                None => return Err(format!("neither answered nor closed: {c}")),
            }
        }
        Some(r) => {
            let bodies: &[Vec<u8>] = match want {
                Want::Refuse => return Err(format!("must be refused, was forwarded: {c}")),
                Want::Forward(b) => std::slice::from_ref(b),
                Want::Either(b) => b,
            };
            if r.method != "POST" || r.path() != "/m" {
                return Err(format!("upstream saw another request than POST /m: {c}"));
            }
            if !bodies.contains(&r.body) {
                return Err(format!(
                    "upstream body {:?} is none of the readings {:?}: {c}",
                    escape_bytes(&r.body),
                    bodies.iter().map(|b| escape_bytes(b)).collect::<Vec<_>>()
                ));
            }
            match ex.responses.first() {
                Some(first) if first.status == 200 && first.header("x-upstream-seq").is_some() => {}
                _ => {
                    return Err(format!(
                        "forwarded, but the client did not get the upstream's answer first: {c}"
                    ))
                }
            }
        }
    }
    // A legitimate request on a new connection is still answered correctly.
    up.clear();
    let legit = b"POST /legit HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 3\r\n\r\nabc";
    match try_send_raw(gw.addr, legit) {
        Ok(r) if r.status == 200 => {}
        Ok(r) => {
            return Err(format!(
                "[{name}] the next legitimate request got {}",
                describe_response(&r)
            ))
        }
        Err(e) => {
            return Err(format!(
                "[{name}] the next legitimate request: {}",
                e.describe()
            ))
        }
    }
    thread::sleep(Duration::from_millis(50));
    let reqs = up.requests();
    if reqs.len() != 1
        || reqs[0].path() != "/legit"
        || reqs[0].body != b"abc"
        || !up.anomalies().is_empty()
    {
        return Err(format!(
            "[{name}] the next legitimate request arrived wrong upstream: {}",
            up.summary()
        ));
    }
    Ok(())
}

#[test]
fn p09_cl_te_mutation_table_never_desyncs_gateway_and_upstream() {
    let up = RawUpstream::start();
    let gw = admin_and_open_gateway(&up, "");
    let cases = mutation_cases();
    let mut failures = Vec::new();
    for (name, sent, want) in &cases {
        if let Err(e) = check_mutation(&gw, &up, name, sent, want) {
            failures.push(e);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} CL/TE mutations failed:\n\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

// ---------------------------------------------------------------------------------------
// 10. Pipelining
// ---------------------------------------------------------------------------------------

#[test]
fn p10_pipelined_requests_are_answered_in_order() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!("{}{}", upstream("raw", &up), open_route()));
    let sent =
        b"GET /one HTTP/1.1\r\nHost: gw.test\r\n\r\nGET /two HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let mut c = RawConn::connect(gw.addr);
    c.send(sent).unwrap();
    let r1 = c.read_response(IO_TIMEOUT).unwrap_or_else(|e| {
        panic!(
            "first pipelined response: {}\n{}",
            e.describe(),
            up.summary()
        )
    });
    assert_eq!(
        (r1.status, r1.header("x-upstream-target")),
        (200, Some("/one")),
        "{}",
        ctx(sent, &r1)
    );
    if r1
        .header("connection")
        .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    {
        let (closed, rest) = c.wait_close(Duration::from_secs(3));
        assert!(
            closed,
            "first response says close but the connection stays open: {:?}",
            escape_bytes(&rest)
        );
        return;
    }
    let r2 = c.read_response(Duration::from_secs(5)).unwrap_or_else(|e| {
        panic!(
            "the first response kept the connection alive but the second pipelined request was never answered: {}\n{}",
            e.describe(),
            up.summary()
        )
    });
    assert_eq!(
        (r2.status, r2.header("x-upstream-target")),
        (200, Some("/two")),
        "{}",
        ctx(sent, &r2)
    );
    let order: Vec<String> = up.requests().iter().map(|r| r.target.clone()).collect();
    assert_eq!(order, ["/one", "/two"], "{}", up.summary());
}

// ---------------------------------------------------------------------------------------
// 11. Slow and oversized heads, connection limits
// ---------------------------------------------------------------------------------------

/// Write `bytes` one at a time every `every` on a clone of `stream`, until the stop flag is
/// set or a write fails.
fn trickle(
    stream: &std::net::TcpStream,
    bytes: Vec<u8>,
    every: Duration,
) -> (Arc<AtomicBool>, thread::JoinHandle<()>) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut s = stream.try_clone().unwrap();
    let stop2 = stop.clone();
    let h = thread::spawn(move || {
        for b in bytes {
            thread::sleep(every);
            if stop2.load(Ordering::SeqCst) || s.write_all(&[b]).is_err() {
                return;
            }
        }
    });
    (stop, h)
}

/// The end of a slow head: a 408 `request_timeout` or a close, within `limit` of `t0`.
fn assert_cut_off(what: &str, t0: Instant, got: Result<Response, NoResponse>, limit: Duration) {
    let took = t0.elapsed();
    match &got {
        Ok(r) => {
            assert_refusal(what.as_bytes(), r, 408, "request_timeout");
        }
        Err(e) if e.is_close() => {}
        Err(e) => panic!(
            "{what}: neither 408 nor a close after {took:?}: {}",
            e.describe()
        ),
    }
    assert!(
        took <= limit,
        "{what}: cut off only after {took:?} (limit {limit:?}): {got:?}"
    );
}

fn slow_gateway(up: &RawUpstream, server: &str) -> Gateway {
    Gateway::start(&format!(
        "{server}\n{}{}",
        upstream("raw", up),
        open_route()
    ))
}

fn slow_tail() -> Vec<u8> {
    let mut v = b"Host: gw.test\r\nX-Slow: ".to_vec();
    v.extend(std::iter::repeat_n(b'a', 40));
    v
}

#[test]
fn p11_slow_head_on_the_first_request_is_cut_off() {
    let up = RawUpstream::start();
    let gw = slow_gateway(&up, "header_timeout_ms = 1000");
    let mut c = RawConn::connect(gw.addr);
    let t0 = Instant::now();
    c.send(b"GET / HTTP/1.1\r\n").unwrap();
    let (stop, h) = trickle(&c.stream, slow_tail(), Duration::from_millis(300));
    let got = c.read_response(Duration::from_secs(6));
    stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
    assert_cut_off(
        "slow first request head (1 byte / 300 ms)",
        t0,
        got,
        Duration::from_millis(2000),
    );
    assert_upstream_saw_nothing(&up, b"slow head");
}

#[test]
fn p11_slow_head_on_a_keepalive_request_is_cut_off() {
    let up = RawUpstream::start();
    let gw = slow_gateway(&up, "header_timeout_ms = 1000");
    let mut c = RawConn::connect(gw.addr);
    c.send(&get("/first", &[])).unwrap();
    let r = c
        .read_response(IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("first request: {}", e.describe()));
    assert_eq!(r.status, 200, "{}", describe_response(&r));
    thread::sleep(Duration::from_millis(200));
    up.clear();
    let t0 = Instant::now();
    c.send(b"GET /second HTTP/1.1\r\n").unwrap();
    let (stop, h) = trickle(&c.stream, slow_tail(), Duration::from_millis(300));
    let got = c.read_response(Duration::from_secs(6));
    stop.store(true, Ordering::SeqCst);
    h.join().unwrap();
    assert_cut_off(
        "slow second (keep-alive) request head",
        t0,
        got,
        Duration::from_millis(2000),
    );
    assert_upstream_saw_nothing(&up, b"slow keep-alive head");
}

#[test]
fn p11_oversized_head_is_refused_before_it_is_all_read() {
    const MAX: usize = 8192;
    const TOTAL: usize = 200 * 1024;
    let up = RawUpstream::start();
    let gw = slow_gateway(&up, &format!("max_header_bytes = {MAX}"));
    let mut c = RawConn::connect(gw.addr);
    let sent = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = c.stream.try_clone().unwrap();
    let (sent2, stop2) = (sent.clone(), stop.clone());
    let writer = thread::spawn(move || {
        let mut head = b"GET / HTTP/1.1\r\nHost: gw.test\r\n".to_vec();
        let mut i = 0;
        while head.len() < TOTAL {
            head.extend_from_slice(format!("X-Fill-{i:04}: {}\r\n", "a".repeat(1000)).as_bytes());
            i += 1;
        }
        head.extend_from_slice(b"\r\n");
        for chunk in head.chunks(2048) {
            if stop2.load(Ordering::SeqCst) || w.write_all(chunk).is_err() {
                return;
            }
            sent2.fetch_add(chunk.len(), Ordering::SeqCst);
            thread::sleep(Duration::from_millis(20));
        }
    });
    let got = c.read_response(Duration::from_secs(15));
    let at = sent.load(Ordering::SeqCst);
    stop.store(true, Ordering::SeqCst);
    let limit = MAX + 12 * 1024;
    match &got {
        Ok(r) => assert_refusal(b"200 KiB head, 2 KiB / 20 ms", r, 431, "headers_too_large"),
        Err(e) if e.is_close() => {}
        Err(e) => panic!("no answer to a 200 KiB head: {}", e.describe()),
    }
    assert!(
        at <= limit,
        "the answer ({}) came only after {at} bytes of head were sent (max_header_bytes = {MAX}, want <= {limit})",
        match &got { Ok(r) => r.status.to_string(), Err(e) => e.describe() }
    );
    let (closed, _) = c.wait_close(Duration::from_secs(3));
    assert!(closed, "connection left open after the 431");
    writer.join().unwrap();
    assert_upstream_saw_nothing(&up, b"oversized head");
}

#[test]
fn p11_h2c_short_preface_is_closed() {
    let up = RawUpstream::start();
    let gw = slow_gateway(&up, "h2c = true\nheader_timeout_ms = 1000");
    let mut c = RawConn::connect(gw.addr);
    let t0 = Instant::now();
    c.send(b"PRI * HTTP/2.0\r\n").unwrap();
    let (closed, bytes) = c.wait_close(Duration::from_secs(5));
    let took = t0.elapsed();
    assert!(
        closed,
        "a 16-byte h2c preface kept its connection open for {took:?} (got {:?})",
        escape_bytes(&bytes)
    );
    assert!(
        took <= Duration::from_millis(2000),
        "16-byte h2c preface closed only after {took:?}"
    );
}

#[test]
fn p11_connections_per_ip_are_limited() {
    let up = RawUpstream::start();
    let gw = slow_gateway(&up, "max_connections_per_ip = 5");
    let req = get("/ok", &[]);
    let mut open = Vec::new();
    for i in 0..5 {
        let mut c = RawConn::connect(gw.addr);
        c.send(&req).unwrap();
        let r = c
            .read_response(IO_TIMEOUT)
            .unwrap_or_else(|e| panic!("connection {}: {}", i + 1, e.describe()));
        assert_eq!(
            r.status,
            200,
            "connection {}: {}",
            i + 1,
            describe_response(&r)
        );
        open.push(c);
    }
    let mut sixth = RawConn::connect(gw.addr);
    let _ = sixth.send(&req);
    match sixth.read_response(Duration::from_secs(3)) {
        Ok(r) => {
            assert_refusal(&req, &r, 503, "too_many_connections");
            assert!(
                r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")),
                "503 without Connection: close: {}",
                describe_response(&r)
            );
        }
        Err(e) if e.is_close() => {}
        Err(e) => panic!("6th connection: neither 503 nor a close: {}", e.describe()),
    }
    drop(sixth);
    drop(open);
    let mut last = String::new();
    let ok = wait_until(Duration::from_secs(3), || {
        match try_send_raw(gw.addr, &req) {
            Ok(r) if r.status == 200 => true,
            Ok(r) => {
                last = describe_response(&r);
                false
            }
            Err(e) => {
                last = e.describe();
                false
            }
        }
    });
    assert!(
        ok,
        "after closing the 5 connections a new one is not served: {last}"
    );
}

/// Open `n` keep-alive connections that each got a 200.
fn served_connections(addr: SocketAddr, n: usize) -> Vec<RawConn> {
    let req = get("/ok", &[]);
    (0..n)
        .map(|i| {
            let mut c = RawConn::connect(addr);
            c.send(&req).unwrap();
            let r = c
                .read_response(IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("connection {}: {}", i + 1, e.describe()));
            assert_eq!(
                r.status,
                200,
                "connection {}: {}",
                i + 1,
                describe_response(&r)
            );
            c
        })
        .collect()
}

#[test]
fn p11_connections_per_listener_are_limited() {
    let up = RawUpstream::start();
    let gw = slow_gateway(&up, "max_connections = 3\nmax_connections_per_ip = 0");
    let open = served_connections(gw.addr, 3);
    let req = get("/ok", &[]);
    let mut extra = RawConn::connect(gw.addr);
    let _ = extra.send(&req);
    match extra.read_response(Duration::from_secs(3)) {
        Ok(r) => assert_refusal(&req, &r, 503, "too_many_connections"),
        Err(e) if e.is_close() => {}
        Err(e) => panic!(
            "4th connection (max_connections = 3): neither 503 nor a close: {}",
            e.describe()
        ),
    }
    drop(extra);
    drop(open);
    assert!(
        wait_until(Duration::from_secs(3), || try_send_raw(gw.addr, &req)
            .is_ok_and(|r| r.status == 200)),
        "after closing the 3 connections a new one is not served"
    );
}

#[test]
fn p11_trusted_proxies_are_exempt_from_the_per_ip_limit() {
    let up = RawUpstream::start();
    let gw = slow_gateway(
        &up,
        "max_connections_per_ip = 2\ntrusted_proxies = [\"127.0.0.1/32\"]",
    );
    let open = served_connections(gw.addr, 5);
    drop(open);
}

#[test]
fn p11_legitimate_request_is_served_while_50_slow_connections_are_open() {
    let up = RawUpstream::start();
    let gw = slow_gateway(&up, "header_timeout_ms = 10000");
    let mut slow = Vec::new();
    for _ in 0..50 {
        let mut c = RawConn::connect(gw.addr);
        c.send(b"GET / HTTP/1.1\r\nHost: gw.test\r\nX-Slow: a")
            .unwrap();
        slow.push(c);
    }
    thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let sent = get("/legit", &[]);
    let r = send_raw(gw.addr, &sent);
    assert_from_upstream(&sent, &r);
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "served only after {:?}",
        t0.elapsed()
    );
    drop(slow);
}

// ---------------------------------------------------------------------------------------
// 12. Password verification is bounded; failed logins are limited
// ---------------------------------------------------------------------------------------

#[test]
fn p12_basic_auth_verification_is_bounded_and_negative_cached() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        consumers(),
        upstream("raw", &up),
        raw_route(
            "basic",
            "/basic",
            "{ name = \"basic_auth\", max_concurrent_verifications = 1 }"
        ),
    ));
    let addr = gw.addr;
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let b = barrier.clone();
            thread::spawn(move || {
                let sent = get("/basic", &[&basic("alice", &format!("wrong-{i}"))]);
                b.wait();
                let t = Instant::now();
                let got = try_send_raw(addr, &sent);
                (sent, got, t.elapsed())
            })
        })
        .collect();
    for h in handles {
        let (sent, got, took) = h.join().unwrap();
        let r = got.unwrap_or_else(|e| {
            panic!(
                "a bad login hung or was dropped after {took:?}: {}",
                e.describe()
            )
        });
        match r.status {
            401 => assert_refusal(&sent, &r, 401, "invalid_credentials"),
            503 => {
                assert_refusal(&sent, &r, 503, "auth_overloaded");
                assert!(
                    r.header("retry-after").is_some(),
                    "503 without Retry-After:{}",
                    ctx(&sent, &r)
                );
            }
            _ => panic!("want 401 or 503:{}", ctx(&sent, &r)),
        }
    }
    let peak = peak_rss_kb(gw.pid);
    assert!(peak < 300 * 1024, "gateway peak RSS {} MiB", peak / 1024);
    assert_upstream_saw_nothing(&up, b"8 bad logins");

    // The same bad credential twice: the second is answered from the negative cache.
    let sent = get("/basic", &[&basic("alice", "repeated-wrong-password")]);
    let mut first = None;
    for _ in 0..20 {
        let t = Instant::now();
        let r = send_raw(addr, &sent);
        if r.status == 503 {
            thread::sleep(Duration::from_millis(300));
            continue;
        }
        assert_refusal(&sent, &r, 401, "invalid_credentials");
        first = Some(t.elapsed());
        break;
    }
    let t1 = first.expect("the verifier stayed overloaded for 20 tries");
    let t = Instant::now();
    let r = send_raw(addr, &sent);
    let t2 = t.elapsed();
    assert_refusal(&sent, &r, 401, "invalid_credentials");
    assert!(
        t2 < Duration::from_millis(150) && t2 * 2 < t1,
        "a repeated bad credential is not answered fast: first {t1:?}, repeat {t2:?}"
    );
}

#[test]
fn p12_auth_failure_limit_blocks_even_a_correct_password() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}{}",
        consumers(),
        upstream("raw", &up),
        raw_route(
            "login",
            "/login",
            "\"basic_auth\", { name = \"auth_failure_limit\", max_failures = 3, window_seconds = 60 }"
        ),
    ));
    forwarded(&gw, &up, &get("/login", &[&basic("alice", PASSWORD)]));
    for i in 0..3 {
        refused(
            &gw,
            &up,
            &get("/login", &[&basic("alice", &format!("bad-{i}"))]),
            401,
            "invalid_credentials",
        );
    }
    let sent = get("/login", &[&basic("alice", PASSWORD)]);
    up.clear();
    let r = send_raw(gw.addr, &sent);
    assert_refusal(&sent, &r, 429, "too_many_auth_failures");
    assert!(
        r.header("retry-after").is_some(),
        "429 without Retry-After:{}",
        ctx(&sent, &r)
    );
    assert_upstream_saw_nothing(&up, &sent);
}

// ---------------------------------------------------------------------------------------
// 13. The rate-limit store stays bounded
// ---------------------------------------------------------------------------------------

#[test]
fn p13_rate_limit_store_memory_is_bounded_under_distinct_keys() {
    let gw = Gateway::start(&route(
        "rl",
        "paths = [\"/rl\"]\nplugins = [{ name = \"rate_limit\", minute = 1000, limit_by = \"header:x-key\" }, { name = \"mock\", body = \"ok\" }]",
    ));
    let run = |prefix: String, n: usize, addr: SocketAddr| {
        let mut c = RawConn::connect(addr);
        for i in 0..n {
            let req = format!("GET /rl HTTP/1.1\r\nHost: gw.test\r\nx-key: {prefix}-{i}\r\n\r\n");
            if c.send(req.as_bytes()).is_err() {
                c = RawConn::connect(addr);
                c.send(req.as_bytes()).unwrap();
            }
            let r = c
                .read_response(IO_TIMEOUT)
                .unwrap_or_else(|e| panic!("request {i} ({prefix}): {}", e.describe()));
            assert_eq!(
                r.status,
                200,
                "request {i} ({prefix}): {}",
                describe_response(&r)
            );
            if r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
            {
                c = RawConn::connect(addr);
            }
        }
    };
    run("warm".into(), 500, gw.addr);
    let before = rss_kb(gw.pid);
    let t0 = Instant::now();
    let addr = gw.addr;
    let hs: Vec<_> = (0..4)
        .map(|t| thread::spawn(move || run(format!("k{t}"), 5000, addr)))
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    let took = t0.elapsed();
    let r = send_raw(gw.addr, &get("/rl", &["x-key: after"]));
    assert_eq!(
        r.status,
        200,
        "after 20,000 keys: {}",
        describe_response(&r)
    );
    let after = rss_kb(gw.pid);
    let grew = after.saturating_sub(before);
    assert!(
        grew < 50 * 1024,
        "RSS grew {} MiB ({before} kB -> {after} kB) over 20,000 distinct keys ({took:?})",
        grew / 1024
    );
}

// ---------------------------------------------------------------------------------------
// 14. Buffered request bodies
// ---------------------------------------------------------------------------------------

fn buffered_gateway(up: &RawUpstream) -> Gateway {
    Gateway::start(&format!(
        "{}\n[[routes]]\nname = \"buf\"\npaths = [\"/buf\"]\nupstream = \"raw\"\n\n[routes.request_body]\nbuffer = true\nmax_bytes = 1000\n\n[[routes]]\nname = \"stall\"\npaths = [\"/stall\"]\nupstream = \"raw\"\n\n[routes.request_body]\nbuffer = true\nmax_bytes = 1000\nread_timeout_ms = 500\n",
        upstream("raw", up)
    ))
}

#[test]
fn p14_buffered_body_reaches_the_upstream_whole_after_its_last_byte() {
    let up = RawUpstream::start();
    let gw = buffered_gateway(&up);
    let parts: [&[u8]; 3] = [&[b'a'; 100], &[b'b'; 100], &[b'c'; 100]];
    let mut c = RawConn::connect(gw.addr);
    c.send(b"POST /buf HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 300\r\n\r\n")
        .unwrap();
    c.send(parts[0]).unwrap();
    thread::sleep(Duration::from_millis(200));
    c.send(parts[1]).unwrap();
    thread::sleep(Duration::from_millis(200));
    let before_last = Instant::now();
    c.send(parts[2]).unwrap();
    let r = c
        .read_response(IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("buffered POST: {}\n{}", e.describe(), up.summary()));
    assert_eq!(r.status, 200, "{}\n{}", describe_response(&r), up.summary());
    let seen = only_request(&up, b"POST /buf in 3 parts");
    assert_eq!(seen.body, parts.concat(), "{}", up.summary());
    assert!(
        seen.first_byte_at > before_last,
        "the upstream got the request {:?} before the last part was sent (not buffered)",
        before_last.saturating_duration_since(seen.first_byte_at)
    );
}

#[test]
fn p14_buffered_body_over_max_bytes_is_413() {
    let up = RawUpstream::start();
    let gw = buffered_gateway(&up);
    let mut sent = b"POST /buf HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 2000\r\n\r\n".to_vec();
    sent.extend_from_slice(&[b'x'; 2000]);
    refused(&gw, &up, &sent, 413, "body_too_large");
    // Without a Content-Length the gateway has to count.
    let mut sent =
        b"POST /buf HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        sent.extend_from_slice(b"1f4\r\n");
        sent.extend_from_slice(&[b'y'; 500]);
        sent.extend_from_slice(b"\r\n");
    }
    sent.extend_from_slice(b"0\r\n\r\n");
    refused(&gw, &up, &sent, 413, "body_too_large");
}

#[test]
fn p14_buffered_body_that_stalls_is_408() {
    let up = RawUpstream::start();
    let gw = buffered_gateway(&up);
    let mut c = RawConn::connect(gw.addr);
    let mut sent = b"POST /stall HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 300\r\n\r\n".to_vec();
    sent.extend_from_slice(&[b'a'; 100]);
    c.send(&sent).unwrap();
    let t0 = Instant::now();
    let r = c
        .read_response(Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("stalled body: {} after {:?}", e.describe(), t0.elapsed()));
    assert_refusal(&sent, &r, 408, "request_timeout");
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "408 only after {:?}",
        t0.elapsed()
    );
    assert_upstream_saw_nothing(&up, &sent);
}

// ---------------------------------------------------------------------------------------
// 15. Query-string secrets never reach the logs
// ---------------------------------------------------------------------------------------

/// Requests carrying a query-string key that end in an upstream timeout, a malformed body
/// and a client abort; then neither the log nor the access log may contain the key or the
/// query string.
fn check_query_secrets_not_logged(rust_log: Option<&str>) {
    const SECRET: &str = "SECRET123-query-key-0042";
    const MARK: &str = "QSMARKER77";
    let up = RawUpstream::with(|_| Reply::Hang);
    let mut b = Gateway::builder(&format!(
        "[[consumers]]\nusername = \"carol\"\nkeys = [\"{SECRET}\"]\n{}\n[[routes]]\nname = \"t\"\npaths = [\"/t\"]\nupstream = \"raw\"\nread_timeout_ms = 300\nplugins = [{{ name = \"key_auth\", query_param = \"apikey\", hide_credentials = true }}]\n",
        upstream("raw", &up)
    ));
    if let Some(spec) = rust_log {
        b = b.rust_log(spec);
    }
    let gw = b.start();
    let q = format!("apikey={SECRET}&marker={MARK}");
    // Upstream timeout.
    let sent = get(&format!("/t/slow?{q}"), &[]);
    let r = send_raw(gw.addr, &sent);
    assert_eq!(r.status, 504, "{}", ctx(&sent, &r));
    // Malformed body.
    let sent = format!(
        "POST /t/body?{q} HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"
    );
    let _ = exchange(
        gw.addr,
        sent.as_bytes(),
        Duration::from_millis(200),
        Duration::from_secs(3),
    );
    // A body cut short by the client.
    let sent =
        format!("POST /t/cut?{q} HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\nabc");
    let mut c = RawConn::connect(gw.addr);
    let _ = c.send(sent.as_bytes());
    thread::sleep(Duration::from_millis(200));
    drop(c);
    thread::sleep(Duration::from_millis(500));
    for r in up.requests() {
        assert!(
            !r.target.contains(SECRET),
            "hide_credentials: the upstream saw the key: {}",
            r.request_line()
        );
    }
    for (name, text) in [("stderr", gw.stderr()), ("stdout", gw.stdout())] {
        for needle in [SECRET, "SECRET123", MARK, "apikey="] {
            let line = text.lines().find(|l| l.contains(needle));
            assert!(
                line.is_none(),
                "RUST_LOG={rust_log:?}: {needle:?} is in the gateway's {name}: {:?}",
                line.unwrap()
            );
        }
    }
}

#[test]
fn p15_query_credentials_are_never_logged_at_the_default_level() {
    check_query_secrets_not_logged(None);
}

#[test]
fn p15_query_credentials_are_never_logged_even_at_trace() {
    check_query_secrets_not_logged(Some("trace"));
}

// ---------------------------------------------------------------------------------------
// 16. JWT: exp required, crit refused
// ---------------------------------------------------------------------------------------

#[test]
fn p16_jwt_requires_exp_and_refuses_crit() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        consumers(),
        upstream("raw", &up),
        raw_route("jwt", "/jwt", "\"jwt\""),
        raw_route("lax", "/lax", "{ name = \"jwt\", require_exp = false }"),
    ));
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let with_exp = hs_token(serde_json::json!({"sub": "alice", "exp": now() + 600}));
    forwarded(&gw, &up, &get("/jwt", &[&bearer(&with_exp)]));
    let no_exp = hs_token(serde_json::json!({"sub": "alice"}));
    refused(
        &gw,
        &up,
        &get("/jwt", &[&bearer(&no_exp)]),
        401,
        "missing_exp",
    );
    forwarded(&gw, &up, &get("/lax", &[&bearer(&no_exp)]));
    let exp = now() + 600;
    let crit = hs_token_raw(
        &serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": "alice-hs", "crit": ["exp"], "exp": exp}),
        &serde_json::json!({"sub": "alice", "exp": exp}),
    );
    refused(
        &gw,
        &up,
        &get("/jwt", &[&bearer(&crit)]),
        401,
        "unsupported_crit",
    );
    refused(
        &gw,
        &up,
        &get("/lax", &[&bearer(&crit)]),
        401,
        "unsupported_crit",
    );
}

// ---------------------------------------------------------------------------------------
// 17. X-Forwarded-For from a trusted proxy
// ---------------------------------------------------------------------------------------

#[test]
fn p17_forwarded_for_from_a_trusted_proxy_must_parse() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "trusted_proxies = [\"127.0.0.1/32\"]\n{}{}",
        upstream("raw", &up),
        raw_route(
            "r",
            "/",
            "{ name = \"ip_restriction\", deny = [\"10.9.9.9\"] }"
        ),
    ));
    for xff in ["10.9.9.9, garbage", "garbage", "10.9.9.9, 999.1.1.1"] {
        refused(
            &gw,
            &up,
            &get("/x", &[&format!("X-Forwarded-For: {xff}")]),
            400,
            "bad_request",
        );
    }
    for xff in ["10.9.9.9", "10.9.9.9, 127.0.0.1"] {
        refused(
            &gw,
            &up,
            &get("/x", &[&format!("X-Forwarded-For: {xff}")]),
            403,
            "ip_forbidden",
        );
    }
    forwarded(&gw, &up, &get("/x", &["X-Forwarded-For: 192.0.2.1"]));
    forwarded(&gw, &up, &get("/x", &[]));
}

// ---------------------------------------------------------------------------------------
// 18. Host, non-ASCII h2 paths, log flooding, the admin listener
// ---------------------------------------------------------------------------------------

#[test]
fn p18_http11_without_host_is_refused_http10_is_served() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!("{}{}", upstream("raw", &up), open_route()));
    refused(
        &gw,
        &up,
        b"GET /nohost HTTP/1.1\r\n\r\n",
        400,
        "bad_request",
    );
    refused(
        &gw,
        &up,
        b"GET /nohost HTTP/1.1\r\nX-A: b\r\n\r\n",
        400,
        "bad_request",
    );
    let seen = forwarded(&gw, &up, b"GET /old HTTP/1.0\r\n\r\n");
    assert_eq!(seen.target, "/old");
}

#[test]
fn p18_h2_non_ascii_path_is_percent_encoded_or_refused() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "h2c = true\n{}{}",
        upstream("raw", &up),
        open_route()
    ));
    let mut c = H2Conn::connect(gw.addr).expect("h2c connect");
    let end = c.request(
        &h2_fields("GET", "gw.test", b"/caf\xc3\xa9", &[]),
        None,
        IO_TIMEOUT,
    );
    thread::sleep(SETTLE);
    let what = b"(h2) GET :path /caf\\xc3\\xa9";
    match end {
        H2End::Response(r) if r.status == 200 => {
            let seen = only_request(&up, what);
            assert_eq!(seen.target_escaped(), "/caf%C3%A9", "{}", up.summary());
        }
        H2End::Response(r) if r.status == 400 => {
            let resp = Response {
                status: r.status,
                headers: r.headers.clone(),
                body: r.body.clone(),
            };
            assert_json_error(what, &resp, None);
            assert_upstream_saw_nothing(&up, what);
        }
        // A stream reset (PROTOCOL_ERROR) from the HTTP/2 layer is a refusal too.
        H2End::Reset(_) => assert_upstream_saw_nothing(&up, what),
        other => panic!("non-ASCII :path: {other:?}\n{}", up.summary()),
    }
}

fn warn_error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .map(str::to_string)
        .collect()
}

#[test]
fn p18_malformed_requests_do_not_flood_the_log() {
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!("{}{}", upstream("raw", &up), open_route()));
    let before = warn_error_lines(&gw.stderr()).len();
    let kinds: [&[u8]; 5] = [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: gw.test\r\nContent-Length: abc\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost gw.test\r\n\r\n",
        b"BLAH\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: gw.test\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n\r\n",
    ];
    for i in 0..50 {
        let _ = exchange(
            gw.addr,
            kinds[i % kinds.len()],
            Duration::from_millis(50),
            Duration::from_secs(2),
        );
    }
    thread::sleep(Duration::from_millis(500));
    let lines = warn_error_lines(&gw.stderr());
    let new = &lines[before..];
    assert!(
        new.len() <= 3,
        "50 malformed requests logged {} WARN/ERROR lines:\n{}",
        new.len(),
        new.join("\n")
    );
}

#[test]
fn p18_admin_token_guards_metrics_and_purge() {
    const TOKEN: &str = "s3cr3t-admin-token";
    let up = RawUpstream::start();
    let gw = Gateway::start(&format!(
        "admin_token = \"{TOKEN}\"\n{}{}",
        upstream("raw", &up),
        raw_route("c", "/c", "{ name = \"cache\" }"),
    ));
    let admin = gw.admin;
    let req = |method: &str, path: &str, auth: Option<&str>| {
        let mut s = format!("{method} {path} HTTP/1.1\r\nHost: admin\r\n");
        if let Some(a) = auth {
            s.push_str(&format!("Authorization: {a}\r\n"));
        }
        if method == "POST" {
            s.push_str("Content-Length: 0\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    let good = format!("Bearer {TOKEN}");
    for (method, path) in [("GET", "/metrics"), ("POST", "/cache/purge?route=c")] {
        for auth in [
            None,
            Some("Bearer wrong-token"),
            Some(TOKEN),
            Some("Basic czNjcjN0"),
        ] {
            let sent = req(method, path, auth);
            let r = send_raw(admin, &sent);
            assert_eq!(
                r.status,
                401,
                "admin {method} {path} with {auth:?}:{}",
                ctx(&sent, &r)
            );
            assert_json_error(&sent, &r, None);
        }
        let sent = req(method, path, Some(&good));
        let r = send_raw(admin, &sent);
        assert_eq!(
            r.status,
            200,
            "admin {method} {path} with the token:{}",
            ctx(&sent, &r)
        );
    }
    for path in ["/healthz", "/readyz"] {
        let sent = req("GET", path, None);
        let r = send_raw(admin, &sent);
        assert_eq!(
            r.status,
            200,
            "admin {path} without a token:{}",
            ctx(&sent, &r)
        );
    }
}

#[test]
fn p18_public_admin_listener_requires_a_token() {
    let server = format!(
        "[server]\nlisten = [\"127.0.0.1:{}\"]\nadmin_listen = \"0.0.0.0:{}\"\n",
        free_port(),
        free_port()
    );
    let routes = "\n[[routes]]\nname = \"r\"\nplugins = [{ name = \"mock\" }]\n";
    let text = format!("{server}{routes}");
    let (code, out) = check_text(&text);
    assert_eq!(
        code, 1,
        "tollgate check accepted a public admin listener without admin_token:\n{text}\n{out}"
    );
    assert!(
        out.contains("admin"),
        "the error does not say what is wrong: {out}"
    );
    let text = format!("{server}admin_token = \"s3cr3t-admin-token\"\n{routes}");
    let (code, out) = check_text(&text);
    assert_eq!(
        code, 0,
        "with admin_token the same file is valid:\n{text}\n{out}"
    );
}
