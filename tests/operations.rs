//! Operating the gateway: malformed requests, `tollgate check`, reloads (SIGHUP and file
//! change, good and bad files), metrics, the access log, and the admin endpoints.

mod common;

use common::*;
use std::net::TcpListener;
use std::thread;
use std::time::{Duration, Instant};

fn fill(template: &str, subs: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in subs {
        s = s.replace(&format!("@{k}@"), v);
    }
    assert!(!s.contains("@UP"), "unfilled placeholder in:\n{s}");
    s
}

/// 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in:\n{text}"))
        + 1
}

fn status_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

// ---------------------------------------------------------------------------------------
// Malformed requests
// ---------------------------------------------------------------------------------------

#[test]
fn malformed_requests_get_400_or_a_close_never_a_crash() {
    let up = Upstream::start("echo");
    let gw = Gateway::start(&fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#,
        &[("UP", &up.address())],
    ));
    let mut huge = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    huge.extend(vec![b'a'; 2_000_000]);
    huge.extend(b"\r\n\r\n");

    // Complete but invalid requests: the answer must be 400.
    let must_400: Vec<(&str, Vec<u8>)> = vec![
        ("binary garbage", b"\x00\x01\x02\xffgarbage\r\n\r\n".to_vec()),
        ("request line without version", b"GET\r\n\r\n".to_vec()),
        ("unknown HTTP version", b"GET / HTTP/9.9\r\nHost: x\r\n\r\n".to_vec()),
        ("space in a header name", b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n".to_vec()),
        ("header line without colon", b"GET / HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n".to_vec()),
        ("control byte in a header value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n".to_vec()),
        ("non-numeric Content-Length", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".to_vec()),
        (
            "conflicting Content-Lengths",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(),
        ),
        (
            "bad chunk size",
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".to_vec(),
        ),
    ];
    for (name, bytes) in &must_400 {
        let out = raw(gw.addr, bytes);
        let line = status_line(&out);
        assert!(
            line.starts_with("HTTP/1.1 400") || line.starts_with("HTTP/1.0 400"),
            "{name}: expected a 400, got {:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(gw.is_running(), "{name}: the gateway died");
    }

    // A head over max_header_bytes is refused while it arrives, before Pingora buffers it.
    let out = raw(gw.addr, &huge);
    assert!(
        status_line(&out).starts_with("HTTP/1.1 431"),
        "2 MB header: expected a 431, got {:?}",
        String::from_utf8_lossy(&out[..out.len().min(300)])
    );
    assert!(gw.is_running(), "2 MB header: the gateway died");

    // Incomplete requests, the client then half-closes: a 400 or a clean close.
    let incomplete: Vec<(&str, &[u8])> = vec![
        ("nothing at all", b""),
        ("only CRLFs", b"\r\n\r\n\r\n"),
        ("headers cut short", b"GET / HTTP/1.1\r\nHost: x\r\n"),
        (
            "body cut short",
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc",
        ),
    ];
    for (name, bytes) in &incomplete {
        let out = raw_half_close(gw.addr, bytes);
        let line = status_line(&out);
        assert!(
            out.is_empty() || line.contains(" 400 "),
            "{name}: expected a 400 or a close, got {:?}",
            String::from_utf8_lossy(&out)
        );
        assert!(gw.is_running(), "{name}: the gateway died");
    }

    // Content-Length with Transfer-Encoding: chunked wins, and no Content-Length goes on.
    let out = raw(
        gw.addr,
        b"POST /smuggle HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    );
    let text = String::from_utf8_lossy(&out).into_owned();
    if status_line(&out).contains(" 200 ") {
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let v: Json = serde_json::from_str(body).unwrap();
        assert_eq!(v["body"], "hello", "{v}");
        assert!(
            v["headers"].get("content-length").is_none(),
            "CL and TE both sent upstream: {v}"
        );
    } else {
        assert!(
            text.is_empty() || status_line(&out).contains(" 400 "),
            "{text}"
        );
    }

    // Still serving, on the proxy and the admin listener.
    assert!(gw.is_running());
    let r = gw.get("/after");
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_path(), "/after");
    assert_eq!(get(gw.admin, "/healthz").status, 200);
}

// ---------------------------------------------------------------------------------------
// tollgate check
// ---------------------------------------------------------------------------------------

fn check_text(text: &str) -> (i32, String, String, String) {
    let dir = TempDir::new("check");
    let file = dir.path().join("check.toml");
    std::fs::write(&file, text).unwrap();
    let path = file.to_str().unwrap().to_string();
    let (code, out, err) = run_cli(&["check", "-c", &path], &[]);
    (code, out, err, path)
}

/// `tollgate check` must fail, print the file and name `path` with `line`, and say `what`.
fn assert_check_error(text: &str, path: &str, line: usize, what: &str) {
    let (code, out, err, file) = check_text(text);
    assert_eq!(
        code, 1,
        "check should fail on:\n{text}\nstdout: {out}\nstderr: {err}"
    );
    assert!(err.contains(&file), "stderr names the file: {err}");
    let want = format!("{path} (line {line})");
    let hit = err
        .lines()
        .find(|l| l.contains(&want))
        .unwrap_or_else(|| panic!("stderr lacks {want:?}:\n{err}\nconfig:\n{text}"));
    assert!(hit.contains(what), "{want}: expected {what:?} in {hit:?}");
}

const GOOD: &str = r#"
[server]
listen = ["127.0.0.1:18080"]
admin_listen = "127.0.0.1:18081"

[[upstreams]]
name = "users"
backends = [{ addr = "127.0.0.1:9001", weight = 3 }, "127.0.0.1:9002"]

[[upstreams]]
name = "orders"
backends = ["127.0.0.1:9003"]

[[routes]]
name = "users"
paths = ["/users"]
upstream = "users"

[[routes]]
name = "orders"
paths = ["/orders"]
upstream = "orders"

[[routes]]
name = "hello"
paths = ["=/hello"]
plugins = [{ name = "mock", body = "hi" }]
"#;

#[test]
fn check_accepts_the_example_and_a_good_config() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/conf/tollgate.toml");
    let (code, out, err) = run_cli(&["check", "-c", example], &[]);
    assert_eq!(code, 0, "conf/tollgate.toml: {err}");
    assert_eq!(out.lines().count(), 1, "one-line summary: {out:?}");
    assert!(
        out.contains("OK (") && out.contains("routes") && out.contains("upstreams"),
        "{out}"
    );
    assert!(err.trim().is_empty(), "{err}");

    let (code, out, err, path) = check_text(GOOD);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.trim_end(),
        format!("{path}: OK (3 routes, 2 upstreams)")
    );
}

#[test]
fn check_rejects_unknown_key() {
    let text = "[[upstreams]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"a\"\npaths = [\"/a\"]\nupstreem = \"u\"\n";
    assert_check_error(
        text,
        "routes[0].upstreem",
        line_of(text, "upstreem"),
        "unknown field `upstreem`",
    );
}

#[test]
fn check_rejects_unknown_upstream_reference() {
    let text = "[[upstreams]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"a\"\nupstream = \"u\"\n\n[[routes]]\nname = \"b\"\npaths = [\"/b\"]\nupstream = \"nope\"\n";
    assert_check_error(
        text,
        "routes[1].upstream",
        line_of(text, "\"nope\""),
        "no upstream named \"nope\"",
    );
}

#[test]
fn check_rejects_bad_path() {
    let text = "[[routes]]\nname = \"a\"\npaths = [\"api\"]\nplugins = [{ name = \"mock\" }]\n";
    assert_check_error(
        text,
        "routes[0].paths[0]",
        line_of(text, "paths"),
        "\"api\"",
    );
    let text = "[[routes]]\nname = \"a\"\npaths = [\"/ok\", \"~(unclosed\"]\nplugins = [{ name = \"mock\" }]\n";
    assert_check_error(
        text,
        "routes[0].paths[1]",
        line_of(text, "paths"),
        "invalid regex",
    );
}

#[test]
fn check_rejects_bad_plugin_config() {
    let text = "[[routes]]\nname = \"a\"\npaths = [\"/a\"]\n\n[[routes.plugins]]\nname = \"mock\"\nstatus = 42\n";
    assert_check_error(
        text,
        "routes[0].plugins[0].status",
        line_of(text, "status = 42"),
        "42 is not a final HTTP status",
    );
    let text = "[[routes]]\nname = \"a\"\npaths = [\"/a\"]\nplugins = [{ name = \"mock\", stauts = 200 }]\n";
    assert_check_error(
        text,
        "routes[0].plugins[0].stauts",
        line_of(text, "stauts"),
        "unknown field `stauts`",
    );
}

#[test]
fn check_rejects_unknown_plugin() {
    let text = "[[routes]]\nname = \"a\"\npaths = [\"/a\"]\nplugins = [{ name = \"nope\" }, { name = \"mock\" }]\n";
    assert_check_error(
        text,
        "routes[0].plugins[0]",
        line_of(text, "plugins"),
        "unknown plugin \"nope\"",
    );
    let text =
        "[plugins.nope]\nx = 1\n\n[[routes]]\nname = \"a\"\nplugins = [{ name = \"mock\" }]\n";
    assert_check_error(
        text,
        "plugins.nope",
        line_of(text, "[plugins.nope]"),
        "unknown plugin \"nope\"",
    );
}

#[test]
fn check_rejects_invalid_toml_with_its_line() {
    let text = "[[routes]]\nname = \"a\"\npaths = [\"/a\"]\nupstream = = \"u\"\n";
    let (code, _, err, _) = check_text(text);
    assert_eq!(code, 1);
    assert!(
        err.contains("(line 4)") && err.contains("invalid TOML"),
        "{err}"
    );
    let text = "[server]\nthreads = 1\n\n[[routes]]\nname = \"a\"\nname = \"b\"\n";
    let (code, _, err, _) = check_text(text);
    assert_eq!(code, 1);
    assert!(
        err.contains("(line 6)") && err.contains("duplicate key"),
        "{err}"
    );
}

#[test]
fn check_env_vars_expand_or_fail_when_unset() {
    let text = "[[upstreams]]\nname = \"u\"\nbackends = [\"127.0.0.1:1\"]\nhost = \"${TOLLGATE_IT_SURELY_UNSET}\"\n\n[[routes]]\nname = \"a\"\nupstream = \"u\"\n";
    assert_check_error(
        text,
        "upstreams[0].host",
        line_of(text, "host ="),
        "environment variable TOLLGATE_IT_SURELY_UNSET is not set",
    );
    // Set: it expands (here into a backend address, checked for validity).
    let dir = TempDir::new("check-env");
    let file = dir.path().join("env.toml");
    let text = "[[upstreams]]\nname = \"u\"\nbackends = [\"${TOLLGATE_IT_BACKEND}\"]\n\n[[routes]]\nname = \"a\"\nupstream = \"u\"\n";
    std::fs::write(&file, text).unwrap();
    let f = file.to_str().unwrap();
    let (code, out, err) = run_cli(
        &["check", "-c", f],
        &[("TOLLGATE_IT_BACKEND", "127.0.0.1:9")],
    );
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = run_cli(
        &["check", "-c", f],
        &[("TOLLGATE_IT_BACKEND", "not an address")],
    );
    assert_eq!(code, 1, "the expanded value is validated");
    assert!(err.contains("upstreams[0].backends[0]"), "{err}");
    // `$${` is a literal `${`.
    let text =
        "[[routes]]\nname = \"a\"\nplugins = [{ name = \"mock\", body = \"$${NOT_A_VAR}\" }]\n";
    let (code, _, err, _) = check_text(text);
    assert_eq!(code, 0, "{err}");
}

#[test]
fn check_reports_several_errors_in_one_run() {
    let text = r#"[[upstreams]]
name = "u"
backends = ["127.0.0.1:1"]
algorithm = "round_robbin"

[[routes]]
name = "a"
paths = ["/a"]
upstream = "missing"

[[routes]]
name = "b"
paths = ["/b"]
plugins = [{ name = "mock", status = 42 }]

[[routes]]
name = "c"
paths = ["/c"]
plugins = [{ name = "nope" }, { name = "mock" }]
"#;
    let (code, _, err, _) = check_text(text);
    assert_eq!(code, 1);
    let expect = [
        ("upstreams[0].algorithm", line_of(text, "round_robbin")),
        ("routes[0].upstream", line_of(text, "\"missing\"")),
        ("routes[1].plugins[0].status", line_of(text, "status = 42")),
        ("routes[2].plugins[0]", line_of(text, "\"nope\"")),
    ];
    for (path, line) in expect {
        let want = format!("{path} (line {line})");
        assert!(err.contains(&want), "missing {want:?} in:\n{err}");
    }
    let n: usize = err
        .lines()
        .next()
        .and_then(|l| l.rsplit(": ").next())
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(n >= 4, "header line counts every error: {err}");
    // Sorted by line.
    let lines: Vec<usize> = err
        .lines()
        .filter_map(|l| l.split("(line ").nth(1))
        .filter_map(|l| l.split(')').next())
        .filter_map(|n| n.parse().ok())
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "errors in file order: {err}");
}

/// A bad path in one route and an unknown key in another are both reported in one run.
#[test]
fn check_reports_path_errors_together_with_key_errors() {
    let text = "[[routes]]\nname = \"a\"\npaths = [\"/a\"]\nupstreem = \"u\"\nplugins = [{ name = \"mock\" }]\n\n[[routes]]\nname = \"b\"\npaths = [\"api\"]\nplugins = [{ name = \"mock\" }]\n";
    let (code, _, err, _) = check_text(text);
    assert_eq!(code, 1);
    assert!(err.contains("routes[0].upstreem"), "{err}");
    assert!(
        err.contains(&format!(
            "routes[1].paths[0] (line {})",
            line_of(text, "\"api\"")
        )),
        "the bad path of routes[1] is not reported while routes[0] has an unknown key:\n{err}"
    );
}

#[test]
fn run_refuses_a_bad_config_and_check_a_missing_file() {
    let dir = TempDir::new("run-bad");
    let file = dir.path().join("bad.toml");
    std::fs::write(&file, "[[routes]]\nname = \"a\"\nupstream = \"nope\"\n").unwrap();
    let (code, _, err) = run_cli(&["run", "-c", file.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(err.contains("routes[0].upstream (line 3)"), "{err}");
    let (code, _, err) = run_cli(&["check", "-c", "/nonexistent/tollgate.toml"], &[]);
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/tollgate.toml") && err.contains("cannot read"),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------

const V1: &str = r#"
[[upstreams]]
name = "u1"
backends = ["@ONE@"]

[[routes]]
name = "all"
paths = ["/"]
upstream = "u1"
"#;

const V2: &str = r#"
[[upstreams]]
name = "u2"
backends = ["@TWO@"]

[[routes]]
name = "all"
paths = ["/"]
upstream = "u2"

[[routes]]
name = "new"
paths = ["=/new"]
plugins = [{ name = "mock", body = "new route" }]
"#;

/// A config body that reloads on SIGHUP only (the file is not watched).
fn sighup_only(body: &str) -> String {
    format!("watch_config = false\n{body}")
}

fn reloads(gw: &Gateway, result: &str) -> f64 {
    gw.metric("tollgate_config_reloads_total", &[("result", result)])
        .unwrap_or(-1.0)
}

#[test]
fn sighup_reload_keeps_in_flight_requests_on_the_old_config() {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let subs = [("ONE", one.address()), ("TWO", two.address())];
    let subs: Vec<(&str, &str)> = subs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // SIGHUP only (watch_config = false): a swapped symlink is seen only when signalled.
    let gw = Gateway::builder(&sighup_only(&fill(V1, &subs)))
        .symlinked()
        .start();
    assert_eq!(gw.get("/echo").upstream_id(), "one");
    assert_eq!(gw.get("/new").upstream_id(), "one");
    assert_eq!(reloads(&gw, "success"), 0.0);

    let before = one.count();
    let addr = gw.addr;
    let slow = thread::spawn(move || {
        let t = Instant::now();
        (get(addr, "/slow/1500"), t.elapsed())
    });
    assert!(
        wait_until(Duration::from_secs(5), || one.count() > before),
        "the slow request never reached upstream one"
    );

    gw.swap_config(&sighup_only(&fill(V2, &subs)));
    gw.reload();
    let switched = wait_until(Duration::from_secs(3), || {
        gw.get("/echo").upstream_id() == "two"
    });
    assert!(
        switched,
        "new requests still go to upstream one after SIGHUP"
    );
    let r = gw.get("/new");
    assert_eq!(
        (r.status, r.text()),
        (200, "new route".to_string()),
        "the added route"
    );

    let (r, took) = slow.join().unwrap();
    assert_eq!(
        r.status,
        200,
        "in-flight request across the reload: {}",
        r.text()
    );
    assert_eq!(
        r.upstream_id(),
        "one",
        "it finishes on the config it started with"
    );
    assert!(took >= Duration::from_millis(1400), "{took:?}");

    let m = "tollgate_config_reloads_total";
    assert_eq!(gw.wait_metric(m, &[("result", "success")], 1.0), Some(1.0));
    assert_eq!(reloads(&gw, "failure"), 0.0);
    assert!(
        gw.stderr().contains("config reloaded (SIGHUP)"),
        "{}",
        gw.stderr()
    );
    assert!(gw.is_running());
}

#[test]
fn file_change_reloads_without_a_signal() {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let subs = [("ONE", one.address()), ("TWO", two.address())];
    let subs: Vec<(&str, &str)> = subs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::start(&fill(V1, &subs));
    assert_eq!(gw.get("/echo").upstream_id(), "one");
    gw.wait_file_watcher();

    gw.rewrite_config(&fill(V2, &subs));
    let switched = wait_until(Duration::from_secs(3), || {
        gw.get("/echo").upstream_id() == "two"
    });
    assert!(switched, "the rewritten file was not picked up within 3 s");
    assert_eq!(gw.get("/new").text(), "new route");
    assert!(
        wait_until(Duration::from_secs(3), || reloads(&gw, "success") >= 1.0),
        "tollgate_config_reloads_total{{result=\"success\"}} did not go up"
    );
    assert!(
        gw.stderr().contains("config reloaded (file changed)"),
        "{}",
        gw.stderr()
    );

    // A broken write is rejected the same way, and the running config stays.
    gw.rewrite_config("[[routes]]\nname = \"broken\"\nupstream = \"nope\"\n");
    assert!(
        wait_until(Duration::from_secs(3), || reloads(&gw, "failure") >= 1.0),
        "a broken file change did not count as a failed reload"
    );
    assert_eq!(gw.get("/echo").upstream_id(), "two");
}

#[test]
fn broken_reload_keeps_the_old_config() {
    let one = Upstream::start("one");
    let two = Upstream::start("two");
    let subs = [("ONE", one.address()), ("TWO", two.address())];
    let subs: Vec<(&str, &str)> = subs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let gw = Gateway::builder(&sighup_only(&fill(V1, &subs)))
        .symlinked()
        .start();
    assert_eq!(gw.get("/echo").upstream_id(), "one");

    // A config error (unknown upstream).
    let broken = "[[upstreams]]\nname = \"u1\"\nbackends = [\"127.0.0.1:1\"]\n\n[[routes]]\nname = \"all\"\nupstream = \"nope\"\n";
    gw.swap_config(broken);
    gw.reload();
    assert_eq!(
        gw.wait_metric(
            "tollgate_config_reloads_total",
            &[("result", "failure")],
            1.0
        ),
        Some(1.0)
    );
    assert_eq!(
        gw.get("/echo").upstream_id(),
        "one",
        "the old config keeps serving"
    );
    let full = gw.config_text();
    let line = line_of(&full, "\"nope\"");
    let err = gw.stderr();
    let rejected = err
        .lines()
        .position(|l| l.contains("rejected"))
        .unwrap_or_else(|| panic!("no rejection logged:\n{err}"));
    let rest: Vec<&str> = err.lines().skip(rejected).take(4).collect();
    let rest = rest.join("\n");
    assert!(
        rest.contains(&gw.config_path.display().to_string()),
        "names the file: {rest}"
    );
    assert!(
        rest.contains(&format!("routes[0].upstream (line {line})")),
        "names path and line: {rest}"
    );

    // Invalid TOML.
    gw.swap_config("[[routes]\nname = ");
    gw.reload();
    assert_eq!(
        gw.wait_metric(
            "tollgate_config_reloads_total",
            &[("result", "failure")],
            2.0
        ),
        Some(2.0)
    );
    assert_eq!(gw.get("/echo").upstream_id(), "one");
    assert_eq!(reloads(&gw, "success"), 0.0);

    // Fixed: the next reload succeeds.
    gw.swap_config(&sighup_only(&fill(V2, &subs)));
    gw.reload();
    assert!(wait_until(Duration::from_secs(3), || gw
        .get("/echo")
        .upstream_id()
        == "two"));
    let m = "tollgate_config_reloads_total";
    assert_eq!(gw.wait_metric(m, &[("result", "success")], 1.0), Some(1.0));
    assert!(gw.is_running());
}

// ---------------------------------------------------------------------------------------
// Metrics, access log, admin
// ---------------------------------------------------------------------------------------

const OBSERVED: &str = r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[routes]]
name = "m_echo"
paths = ["/echo"]
upstream = "u"

[[routes]]
name = "m_mock"
paths = ["=/mock"]
plugins = [{ name = "mock", body = "mocked" }]
"#;

#[test]
fn metrics_count_requests_and_durations() {
    let up = Upstream::start("one");
    let gw = Gateway::start(&fill(OBSERVED, &[("UP", &up.address())]));
    for _ in 0..5 {
        assert_eq!(gw.get("/echo").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(gw.request("POST", "/echo", &[], b"x").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(gw.get("/mock").status, 200);
    }
    assert_eq!(gw.get("/nothing").status, 404);

    // Counted in the logging phase, which may end just after the client has its answer:
    // each expectation is polled for a moment.
    let want = |name: &str, labels: &[(&str, &str)], value: f64| {
        let got = gw.wait_metric(name, labels, value);
        assert_eq!(got, Some(value), "{name} {labels:?}:\n{}", gw.metrics());
    };
    let req = "tollgate_http_requests_total";
    want(req, &[], 11.0);
    want(
        req,
        &[("route", "m_echo"), ("method", "GET"), ("status", "200")],
        5.0,
    );
    want(
        req,
        &[("route", "m_echo"), ("method", "POST"), ("status", "200")],
        2.0,
    );
    want(
        req,
        &[("route", "m_mock"), ("method", "GET"), ("status", "200")],
        3.0,
    );
    want(
        req,
        &[("route", ""), ("method", "GET"), ("status", "404")],
        1.0,
    );

    let dur = "tollgate_http_request_duration_seconds";
    want(&format!("{dur}_count"), &[("route", "m_echo")], 7.0);
    want(
        &format!("{dur}_bucket"),
        &[("route", "m_echo"), ("le", "+Inf")],
        7.0,
    );
    want(
        &format!("{dur}_bucket"),
        &[("route", "m_mock"), ("le", "+Inf")],
        3.0,
    );
    let sum = gw.metric(&format!("{dur}_sum"), &[("route", "m_echo")]);
    assert!(sum.is_some_and(|s| s > 0.0), "{sum:?}");

    let up_dur = "tollgate_upstream_request_duration_seconds";
    want(&format!("{up_dur}_count"), &[("upstream", "u")], 7.0);
    want(
        &format!("{up_dur}_bucket"),
        &[("upstream", "u"), ("le", "+Inf")],
        7.0,
    );

    want(
        "tollgate_gateway_errors_total",
        &[("route", ""), ("error", "route_not_found")],
        1.0,
    );
    want("tollgate_access_log_dropped_total", &[], 0.0);
}

#[test]
fn admin_endpoints() {
    let gw = Gateway::start(&fill(OBSERVED, &[("UP", "127.0.0.1:9")]));
    let r = get(gw.admin, "/healthz");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ok");
    let r = get(gw.admin, "/readyz");
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["status"], "ready");
    let r = get(gw.admin, "/metrics");
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("text/plain"),
        "{r:?}"
    );
    assert!(
        r.text()
            .contains("# TYPE tollgate_config_reloads_total counter"),
        "{}",
        r.text()
    );
    let r = get(gw.admin, "/other");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "not_found");
}

#[test]
fn access_log_one_json_line_per_request() {
    let up = Upstream::start("one");
    let gw = Gateway::start(&fill(OBSERVED, &[("UP", &up.address())]));
    let echo = gw.request(
        "GET",
        "/echo/x?secret=1",
        &[("X-Request-Id", "log-echo")],
        b"",
    );
    let mock = gw.request("GET", "/mock", &[("X-Request-Id", "log-mock")], b"");
    let nf = gw.request("DELETE", "/nothing", &[("X-Request-Id", "log-404")], b"");
    let ids = ["log-echo", "log-mock", "log-404"];
    let mut lines = Vec::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            lines = gw.access_log();
            ids.iter()
                .all(|id| lines.iter().any(|l| l["request_id"] == *id))
        }),
        "access log lines missing; stdout:\n{}",
        gw.stdout()
    );
    assert_eq!(lines.len(), 3, "one line per request: {lines:#?}");
    let line = |id: &str| {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap()
            .clone()
    };
    let fields = [
        "time",
        "request_id",
        "client_ip",
        "method",
        "path",
        "route",
        "upstream",
        "backend",
        "status",
        "bytes_sent",
        "duration_ms",
    ];
    for l in &lines {
        for f in fields {
            assert!(l.get(f).is_some(), "field {f} missing in {l}");
        }
        let time = l["time"].as_str().unwrap_or("");
        assert!(
            time.len() >= 20 && time.contains('T') && time.ends_with('Z'),
            "RFC 3339 time: {time}"
        );
        assert_eq!(l["client_ip"], "127.0.0.1");
        assert!(l["duration_ms"].as_f64().is_some_and(|d| d > 0.0), "{l}");
    }

    let l = line("log-echo");
    assert_eq!(l["method"], "GET");
    assert_eq!(l["path"], "/echo/x", "no query string in the log");
    assert_eq!(l["route"], "m_echo");
    assert_eq!(l["upstream"], "u");
    assert_eq!(l["backend"], up.address());
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes_sent"], echo.body.len());
    assert!(l["upstream_ms"].as_f64().is_some_and(|d| d > 0.0), "{l}");

    let l = line("log-mock");
    assert_eq!(l["route"], "m_mock");
    assert_eq!(l["upstream"], "");
    assert_eq!(l["backend"], "");
    assert_eq!(l["bytes_sent"], mock.body.len());

    let l = line("log-404");
    assert_eq!(l["method"], "DELETE");
    assert_eq!(l["route"], "");
    assert_eq!(l["status"], 404);
    assert_eq!(l["error"], "route_not_found");
    assert_eq!(l["bytes_sent"], nf.body.len());
}

#[test]
fn access_log_disabled_writes_nothing() {
    let up = Upstream::start("one");
    let cfg = format!(
        "[server.access_log]\nenabled = false\n{}",
        fill(OBSERVED, &[("UP", &up.address())])
    );
    let gw = Gateway::start(&cfg);
    for p in ["/echo", "/mock", "/nothing"] {
        gw.get(p);
    }
    // The requests have been through the logging phase once they are counted.
    assert_eq!(
        gw.wait_metric("tollgate_http_requests_total", &[], 3.0),
        Some(3.0)
    );
    thread::sleep(Duration::from_millis(300));
    assert!(gw.access_log().is_empty(), "stdout: {}", gw.stdout());
    assert!(gw.stdout().trim().is_empty(), "stdout: {}", gw.stdout());
}

#[test]
fn access_log_to_a_file() {
    let up = Upstream::start("one");
    // The gateway runs in its temp dir, so a relative path lands there.
    let cfg = format!(
        "[server.access_log]\npath = \"access.log\"\n{}",
        fill(OBSERVED, &[("UP", &up.address())])
    );
    let gw = Gateway::start(&cfg);
    gw.request("GET", "/echo", &[("X-Request-Id", "to-file")], b"");
    let file = gw.dir.path().join("access.log");
    assert!(
        wait_until(Duration::from_secs(5), || std::fs::read_to_string(&file)
            .is_ok_and(|s| s.contains("\"request_id\":\"to-file\""))),
        "no line in {}",
        file.display()
    );
    assert!(
        gw.access_log().is_empty(),
        "nothing on stdout: {}",
        gw.stdout()
    );
}

// ---------------------------------------------------------------------------------------
// Readiness
// ---------------------------------------------------------------------------------------

/// `/readyz` must not say ready when the proxy could not bind its listen address (here
/// another socket holds it): docs/operations.md, "once ... the first proxy listener accepts
/// connections".
#[test]
fn readyz_is_not_ready_when_the_listen_port_is_taken() {
    let port = free_port();
    let squatter = TcpListener::bind(("127.0.0.1", port)).expect("hold the port");
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let text = format!(
        "[server]\nlisten = [\"{addr}\"]\nadmin_listen = \"{admin}\"\nthreads = 1\n\n[[routes]]\nname = \"r\"\nplugins = [{{ name = \"mock\" }}]\n"
    );
    let gw = Gateway::spawn_unchecked(&text, addr, admin);
    // Wait until the gateway answers on its admin port (or exits, which is also fine).
    let mut ready = false;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && gw.is_running() {
        if let Ok(r) = try_request(admin, "GET", "/readyz", &[], b"") {
            ready = r.status == 200;
            if ready {
                break;
            }
        }
        thread::sleep(Duration::from_millis(50));
    }
    drop(squatter);
    assert!(
        !ready,
        "/readyz says ready although {addr} belongs to another socket; gateway stderr:\n{}",
        gw.stderr()
    );
    // If it gave up, it must say why and exit with an error.
    if let Some(status) = gw.exit_status() {
        assert!(
            !status.success(),
            "exited with {status} although it could not listen"
        );
        assert!(
            gw.stderr().contains(&addr.to_string()),
            "the error names the address: {}",
            gw.stderr()
        );
    }
}
