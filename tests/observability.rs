//! Observability (issue 19, parts 2 and 3): the access log's fields, its `fields` option and
//! its reopening on SIGUSR1; the metrics of docs/operations.md's reference table.

mod common;

use common::*;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// Two backends of one upstream; the very first request (to either) gets a 503, every other
/// one the default 200.
fn flaky_pair() -> (RawUpstream, RawUpstream) {
    let seen = Arc::new(AtomicUsize::new(0));
    let make = |seen: Arc<AtomicUsize>| {
        RawUpstream::with(move |r| {
            if seen.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::Bytes(http_reply(503, &[], b"busy"))
            } else {
                default_reply(r)
            }
        })
    };
    (make(seen.clone()), make(seen))
}

fn config(a: &str, b: &str, extra: &str) -> String {
    format!(
        r#"{extra}
[[upstreams]]
name = "pair"
backends = ["{a}", "{b}"]

[[consumers]]
username = "alice"
keys = ["alice-key-0123456789"]

[[routes]]
name = "keyed"
paths = ["/keyed"]
upstream = "pair"
plugins = ["key_auth"]
retry_on_status = [503]
max_retries = 1

[[routes]]
name = "open"
paths = ["/open"]
upstream = "pair"
"#
    )
}

/// Wait for the access log line of request `id`, from stdout or from `file`.
fn line_of(gw: &Gateway, id: &str) -> Json {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = gw.access_log().into_iter().find(|l| l["request_id"] == id);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no access log line for {id}; stdout:\n{}", gw.stdout()))
}

/// The raw text of the access log line of request `id`.
fn raw_line(gw: &Gateway, id: &str) -> String {
    line_of(gw, id);
    gw.stdout()
        .lines()
        .find(|l| l.contains(&format!("\"request_id\":\"{id}\"")))
        .unwrap_or_default()
        .to_string()
}

#[test]
fn access_log_has_the_request_fields() {
    let (a, b) = flaky_pair();
    let gw = Gateway::start(&config(&a.address(), &b.address(), ""));
    let tp = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let r = gw.request(
        "GET",
        "/keyed",
        &[
            ("x-request-id", "obs-keyed"),
            ("host", "api.example.com:8080"),
            ("user-agent", "obs-test/1.0"),
            ("apikey", "alice-key-0123456789"),
            ("traceparent", &tp),
        ],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let l = line_of(&gw, "obs-keyed");
    assert_eq!(l["host"], "api.example.com", "{l}");
    assert_eq!(l["user_agent"], "obs-test/1.0");
    assert_eq!(l["protocol"], "HTTP/1.1");
    assert_eq!(l["consumer"], "alice");
    assert_eq!(l["upstream_status"], 200, "the last attempt's status: {l}");
    assert_eq!(l["retries"], 1, "one retry after the 503: {l}");
    assert_eq!(l["request_bytes"], 0);
    assert_eq!(l["trace_id"], TRACE_ID);
    assert_eq!(a.count() + b.count(), 2);

    let body = vec![b'x'; 1234];
    let r = gw.request(
        "POST",
        "/open",
        &[
            ("x-request-id", "obs-post"),
            ("traceparent", "00-zz-bad-01"),
        ],
        &body,
    );
    assert_eq!(r.status, 200);
    let l = line_of(&gw, "obs-post");
    assert_eq!(l["request_bytes"], 1234, "{l}");
    assert_eq!(l["consumer"], "");
    assert_eq!(l["user_agent"], "");
    assert_eq!(l["retries"], 0);
    assert!(l.get("trace_id").is_none(), "invalid traceparent: {l}");

    // Durations have microsecond resolution: at most three decimals of milliseconds.
    for id in ["obs-keyed", "obs-post"] {
        let raw = raw_line(&gw, id);
        for field in ["duration_ms", "upstream_ms"] {
            let key = format!("\"{field}\":");
            let at = raw.find(&key).map(|i| i + key.len());
            let value: String = at
                .map(|i| {
                    raw[i..]
                        .chars()
                        .take_while(|c| *c != ',' && *c != '}')
                        .collect()
                })
                .unwrap_or_default();
            let decimals = value.split_once('.').map_or(0, |(_, d)| d.len());
            assert!(
                !value.is_empty() && decimals <= 3,
                "{field} = {value:?} in {raw}"
            );
        }
    }
}

#[test]
fn access_log_fields_option_chooses_fields() {
    let (a, b) = flaky_pair();
    let gw = Gateway::start(&config(
        &a.address(),
        &b.address(),
        "[server.access_log]\nfields = [\"request_id\", \"status\", \"host\"]\n",
    ));
    gw.request("GET", "/open", &[("x-request-id", "obs-fields")], b"");
    let l = line_of(&gw, "obs-fields");
    let mut keys: Vec<&str> = l
        .as_object()
        .map(|o| o.keys().map(String::as_str).collect())
        .unwrap_or_default();
    keys.sort_unstable();
    assert_eq!(keys, ["host", "request_id", "status"], "{l}");
}

#[test]
fn access_log_unknown_field_is_a_config_error() {
    let dir = TempDir::new("obs-check");
    let path = dir.path().join("t.toml");
    std::fs::write(
        &path,
        "[server.access_log]\nfields = [\"status\", \"colour\"]\n\n[[routes]]\nname = \"m\"\npaths = [\"/\"]\nplugins = [\"mock\"]\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_ne!(code, 0, "{out}{err}");
    let text = format!("{out}{err}");
    assert!(
        text.contains("server.access_log.fields[1]") && text.contains("colour"),
        "{text}"
    );
}

/// Is SIGUSR1 (signal 10, bit 9) caught by `pid`?
fn catches_usr1(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << 9) != 0)
}

#[test]
fn access_log_reopens_on_sigusr1() {
    let (a, b) = flaky_pair();
    let gw = Gateway::start(&config(
        &a.address(),
        &b.address(),
        "[server.access_log]\npath = \"access.log\"\n",
    ));
    let file = gw.dir.path().join("access.log");
    let rotated = gw.dir.path().join("access.log.1");
    let has = |p: &std::path::Path, id: &str| {
        std::fs::read_to_string(p).is_ok_and(|s| s.contains(&format!("\"request_id\":\"{id}\"")))
    };
    gw.request("GET", "/open", &[("x-request-id", "before-rotate")], b"");
    assert!(wait_until(Duration::from_secs(5), || has(
        &file,
        "before-rotate"
    )));
    std::fs::rename(&file, &rotated).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || catches_usr1(gw.pid)),
        "SIGUSR1 not caught"
    );
    let ok = Command::new("kill")
        .args(["-USR1", &gw.pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -USR1");
    assert!(
        wait_until(Duration::from_secs(5), || file.exists()),
        "no new file at the configured path"
    );
    gw.request("GET", "/open", &[("x-request-id", "after-rotate")], b"");
    assert!(
        wait_until(Duration::from_secs(5), || has(&file, "after-rotate")),
        "new file: {:?}",
        std::fs::read_to_string(&file)
    );
    assert!(gw.is_running());
    assert!(has(&rotated, "before-rotate"));
    assert!(!has(&rotated, "after-rotate"), "old file got the new line");
}

#[test]
fn sigusr1_with_stdout_log_is_ignored() {
    let (a, b) = flaky_pair();
    let gw = Gateway::start(&config(&a.address(), &b.address(), ""));
    assert!(wait_until(Duration::from_secs(5), || catches_usr1(gw.pid)));
    let ok = Command::new("kill")
        .args(["-USR1", &gw.pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok);
    gw.request("GET", "/open", &[("x-request-id", "stdout-usr1")], b"");
    line_of(&gw, "stdout-usr1");
    assert!(gw.is_running());
}
