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
fn sigusr1_without_a_log_file_is_ignored() {
    let (a, b) = flaky_pair();
    let off = Gateway::start(&config(
        &a.address(),
        &b.address(),
        "[server.access_log]\nenabled = false\n",
    ));
    assert!(wait_until(Duration::from_secs(5), || catches_usr1(off.pid)));
    let ok = Command::new("kill")
        .args(["-USR1", &off.pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok);
    off.get("/open");
    assert!(off.is_running(), "SIGUSR1 with the access log disabled");

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

/// The `# TYPE` of metric `name` in `text`.
fn metric_type(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("# TYPE {name} ")))
        .map(str::to_string)
}

/// Label names of the series of `name`, sorted, `le` left out.
fn label_names(text: &str, name: &str) -> Vec<String> {
    let mut names: Vec<String> = metric_series(text, name)
        .first()
        .map(|(ls, _)| {
            ls.iter()
                .map(|(k, _)| k.clone())
                .filter(|k| k != "le")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn metrics_reference() {
    let (a, b) = flaky_pair();
    let body_of = |extra: &str| config(&a.address(), &b.address(), extra);
    let gw = Gateway::start(&body_of(""));
    let key = [("apikey", "alice-key-0123456789")];
    assert_eq!(gw.request("GET", "/keyed", &key, b"").status, 200);
    assert_eq!(gw.request("GET", "/keyed", &[], b"").status, 401);
    let mut sent = 0;
    for _ in 0..3 {
        let r = gw.request("POST", "/open", &[], &[b'y'; 1000]);
        assert_eq!(r.status, 200);
        sent += r.body.len();
    }
    // All five have been through the logging phase once counted.
    assert_eq!(
        gw.wait_metric("tollgate_http_requests_total", &[], 5.0),
        Some(5.0)
    );
    let text = gw.metrics();

    let info = metric_series(&text, "tollgate_build_info");
    assert_eq!(
        metric_type(&text, "tollgate_build_info").as_deref(),
        Some("gauge")
    );
    assert_eq!(info.len(), 1, "{info:?}");
    assert_eq!(info[0].1, 1.0);
    assert_eq!(
        info[0].0,
        [("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]
    );

    // Duration by route, upstream and status class; series only for what happened.
    let dur = "tollgate_http_request_duration_seconds";
    assert_eq!(metric_type(&text, dur).as_deref(), Some("histogram"));
    assert_eq!(
        label_names(&text, &format!("{dur}_count")),
        ["route", "status_class", "upstream"]
    );
    let count = |labels: &[(&str, &str)]| metric_value(&text, &format!("{dur}_count"), labels);
    let ok_open = [
        ("route", "open"),
        ("upstream", "pair"),
        ("status_class", "2xx"),
    ];
    assert_eq!(count(&ok_open), Some(3.0), "{text}");
    assert_eq!(
        count(&[
            ("route", "keyed"),
            ("upstream", "pair"),
            ("status_class", "2xx")
        ]),
        Some(1.0)
    );
    // The 401 was answered by key_auth: no upstream.
    assert_eq!(
        count(&[
            ("route", "keyed"),
            ("upstream", ""),
            ("status_class", "4xx")
        ]),
        Some(1.0)
    );
    assert_eq!(count(&[("status_class", "5xx")]), None, "no zero series");
    assert_eq!(
        metric_value(&text, "tollgate_http_requests_total", &[("method", "PUT")]),
        None,
        "no zero series per route and method"
    );

    let over = "tollgate_gateway_overhead_seconds";
    assert_eq!(metric_type(&text, over).as_deref(), Some("histogram"));
    let over_count = metric_value(&text, &format!("{over}_count"), &[("route", "open")]);
    assert_eq!(over_count, Some(3.0));
    let over_sum = metric_value(&text, &format!("{over}_sum"), &[("route", "open")]);
    let total_sum = metric_value(&text, &format!("{dur}_sum"), &ok_open);
    assert!(
        over_sum.zip(total_sum).is_some_and(|(o, t)| o < t),
        "overhead {over_sum:?} < total {total_sum:?}"
    );

    for (name, want) in [
        ("tollgate_http_request_bytes_total", 3000.0),
        ("tollgate_http_response_bytes_total", sent as f64),
    ] {
        assert_eq!(metric_type(&text, name).as_deref(), Some("counter"));
        assert_eq!(
            metric_value(&text, name, &[("route", "open")]),
            Some(want),
            "{name}"
        );
    }

    let inflight = "tollgate_http_requests_in_flight";
    assert_eq!(metric_type(&text, inflight).as_deref(), Some("gauge"));
    assert_eq!(gw.wait_metric(inflight, &[], 0.0), Some(0.0));

    for (name, kind) in [
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
    ] {
        assert_eq!(metric_type(&text, name).as_deref(), Some(kind), "{name}");
        let v = metric_value(&text, name, &[]);
        assert!(v.is_some_and(|v| v > 0.0), "{name} = {v:?}");
    }

    // The config's time and hash, set at start and on every successful reload.
    let ts = "tollgate_config_last_reload_timestamp_seconds";
    assert_eq!(metric_type(&text, ts).as_deref(), Some("gauge"));
    let t1 = metric_value(&text, ts, &[]).unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    assert!(t1 > now - 120.0 && t1 <= now, "{t1} vs {now}");
    let hash = |text: &str| {
        let s = metric_series(text, "tollgate_config_info");
        assert_eq!(s.len(), 1, "one running config: {s:?}");
        assert_eq!(s[0].1, 1.0);
        s[0].0
            .iter()
            .find(|(k, _)| k == "hash")
            .map(|(_, v)| v.clone())
    };
    let h1 = hash(&text).unwrap_or_default();
    assert!(
        h1.len() == 12 && h1.bytes().all(|b| b.is_ascii_hexdigit()),
        "{h1}"
    );
    gw.rewrite_config(&body_of("# changed\n"));
    gw.reload();
    let mut later = String::new();
    assert!(
        wait_until(Duration::from_secs(5), || {
            later = gw.metrics();
            metric_value(&later, ts, &[]).is_some_and(|t| t > t1)
        }),
        "timestamp did not advance:\n{later}"
    );
    assert_ne!(hash(&later).unwrap_or_default(), h1, "new config, new hash");
}

#[test]
fn access_log_protocol_of_http2() {
    let (a, b) = flaky_pair();
    let gw = Gateway::start(&config(&a.address(), &b.address(), "h2c = true\n"));
    let mut h2 = H2Conn::connect(gw.addr).expect("h2c connection");
    h2.request(
        &[
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/open"),
            (b":authority", b"h2.example.com"),
            (b"x-request-id", b"obs-h2"),
        ],
        None,
        Duration::from_secs(5),
    );
    let l = line_of(&gw, "obs-h2");
    assert_eq!(l["protocol"], "HTTP/2", "{l}");
    assert_eq!(l["host"], "h2.example.com", "{l}");
}

#[test]
fn the_process_log_can_be_json_lines() {
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "log_format = \"json\"\n\n[[upstreams]]\nname = \"echo\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"echo\"\n",
        up.address()
    ));
    assert_eq!(gw.get("/x?apikey=secret-in-query").status, 200);
    // A line from tollgate and lines from Pingora, each one JSON object.
    let err = gw.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(lines.len() >= 3, "{err}");
    for l in &lines {
        let v: Json = serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        for k in ["ts", "level", "target", "message"] {
            assert!(v.get(k).is_some(), "{k} missing in {l}");
        }
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("\"target\":\"tollgate::server\"") && l.contains("ready")),
        "{err}"
    );
    assert!(!err.contains("secret-in-query"), "{err}");
}

/// Every metric `deploy/grafana/tollgate.json` queries is documented in docs/operations.md,
/// and the core ones are on a running gateway's `/metrics` with the labels the panels use.
#[test]
fn the_grafana_dashboard_queries_real_metrics() {
    let dashboard: Json =
        serde_json::from_str(include_str!("../deploy/grafana/tollgate.json")).expect("valid JSON");
    let docs = include_str!("../docs/operations.md");
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().expect("targets") {
            exprs.push(t["expr"].as_str().expect("expr").to_string());
        }
    }
    assert!(exprs.len() >= 14, "{exprs:?}");
    let mut names = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("tollgate_").or_else(|| rest.find("process_")) {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let base = name
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .trim_end_matches("_sum")
                .to_string();
            names.insert(base);
        }
    }
    for n in &names {
        assert!(
            docs.contains(&format!("`{n}`")),
            "{n} is not in docs/operations.md"
        );
    }
    // A gateway that served a request exposes the panels' core series.
    let up = Upstream::start("u");
    let gw = Gateway::start(&format!(
        "[[upstreams]]\nname = \"echo\"\nbackends = [\"{}\"]\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"echo\"\n",
        up.address()
    ));
    assert_eq!(gw.get("/x").status, 200);
    // The logging phase records the request after the response is sent.
    assert_eq!(
        gw.wait_metric("tollgate_http_requests_total", &[], 1.0),
        Some(1.0)
    );
    let text = gw.metrics();
    for n in [
        "tollgate_http_requests_total",
        "tollgate_http_request_duration_seconds_bucket",
        "tollgate_gateway_overhead_seconds_bucket",
        "tollgate_upstream_request_duration_seconds_bucket",
        "tollgate_upstream_attempt_duration_seconds_bucket",
        "tollgate_tracing_spans_exported_total",
        "tollgate_http_requests_in_flight",
        "tollgate_downstream_connections",
        "tollgate_config_last_reload_timestamp_seconds",
        "tollgate_build_info",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with(n)),
            "{n} missing from /metrics:\n{text}"
        );
    }
    assert!(
        text.lines().any(
            |l| l.starts_with("tollgate_http_request_duration_seconds_bucket{")
                && l.contains("route=\"r\"")
                && l.contains("le=")
        ),
        "{text}"
    );
}
