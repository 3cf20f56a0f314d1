//! Load balancing, health checks, connect failover, timeouts and upstream error answers.

mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

fn fill(template: &str, subs: &[(&str, &str)]) -> String {
    let mut s = template.to_string();
    for (k, v) in subs {
        s = s.replace(&format!("@{k}@"), v);
    }
    assert!(!s.contains("@UP"), "unfilled placeholder in:\n{s}");
    s
}

fn assert_error_json(r: &Response, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"), "{r:?}");
    let v = r.json();
    assert_eq!(v["error"], code, "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(r.header("x-request-id").is_some(), "{r:?}");
}

/// Send `n` GETs to `path` and count answers by upstream id (non-200 answers panic).
fn spread(gw: &Gateway, path: &str, n: usize, headers: &[(&str, &str)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for i in 0..n {
        let r = gw.request("GET", path, headers, b"");
        assert_eq!(r.status, 200, "request {i} to {path}: {}", r.text());
        *counts.entry(r.upstream_id()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn weighted_round_robin_follows_weights() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = [{ addr = "@A@", weight = 3 }, "@B@"]
algorithm = "round_robin"

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#,
        &[("A", &a.address()), ("B", &b.address())],
    );
    let gw = Gateway::start(&cfg);
    let counts = spread(&gw, "/x", 400, &[]);
    let (na, nb) = (
        counts.get("a").copied().unwrap_or(0),
        counts.get("b").copied().unwrap_or(0),
    );
    assert_eq!(na + nb, 400, "{counts:?}");
    assert!(
        (280..=320).contains(&na),
        "weight 3 of 4 should get ~300 of 400: {counts:?}"
    );
    assert!(
        (80..=120).contains(&nb),
        "weight 1 of 4 should get ~100 of 400: {counts:?}"
    );
    assert_eq!((a.count(), b.count()), (na, nb), "the echo servers agree");
}

#[test]
fn consistent_hash_on_header_is_sticky() {
    let ups: Vec<Upstream> = ["a", "b", "c"]
        .iter()
        .map(|id| Upstream::start(id))
        .collect();
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@A@", "@B@", "@C@"]
algorithm = "consistent_hash"
hash_on = "header:x-user"

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#,
        &[
            ("A", &ups[0].address()),
            ("B", &ups[1].address()),
            ("C", &ups[2].address()),
        ],
    );
    let gw = Gateway::start(&cfg);
    let mut used = BTreeSet::new();
    for user in 0..16 {
        let name = format!("user-{user}");
        let counts = spread(&gw, "/profile", 8, &[("X-User", &name)]);
        assert_eq!(
            counts.len(),
            1,
            "{name} must always reach the same backend: {counts:?}"
        );
        used.extend(counts.into_keys());
    }
    assert!(
        used.len() >= 2,
        "16 users should spread over several backends, all went to {used:?}"
    );
    // A request without the header still gets an answer.
    assert_eq!(gw.get("/profile").status, 200);
}

#[test]
fn random_reaches_every_backend() {
    let ups: Vec<Upstream> = ["a", "b", "c"]
        .iter()
        .map(|id| Upstream::start(id))
        .collect();
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@A@", "@B@", "@C@"]
algorithm = "random"

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#,
        &[
            ("A", &ups[0].address()),
            ("B", &ups[1].address()),
            ("C", &ups[2].address()),
        ],
    );
    let gw = Gateway::start(&cfg);
    let counts = spread(&gw, "/x", 90, &[]);
    for id in ["a", "b", "c"] {
        let n = counts.get(id).copied().unwrap_or(0);
        assert!(
            n >= 10,
            "random over 3 backends, 90 requests: {id} got {n} ({counts:?})"
        );
    }
}

const HEALTH_CFG: &str = r#"
[[upstreams]]
name = "u"
backends = ["@A@", "@B@"]

[upstreams.health_check]
type = "http"
path = "/health"
interval_ms = 200
timeout_ms = 500
unhealthy_threshold = 1
healthy_threshold = 1

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#;

#[test]
fn health_check_takes_backend_out_and_back() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start(&fill(
        HEALTH_CFG,
        &[("A", &a.address()), ("B", &b.address())],
    ));
    let health = |backend: &Upstream| {
        gw.metric(
            "tollgate_upstream_health",
            &[("upstream", "u"), ("backend", &backend.address())],
        )
    };

    assert!(
        wait_until(Duration::from_secs(3), || b
            .health_checks
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0),
        "no health check reached the backend"
    );
    let gauge_is =
        |u: &Upstream, v: f64| wait_until(Duration::from_secs(2), || health(u) == Some(v));
    assert!(gauge_is(&a, 1.0) && gauge_is(&b, 1.0), "{}", gw.metrics());
    let counts = spread(&gw, "/x", 20, &[]);
    assert!(
        counts.get("b").copied().unwrap_or(0) > 0,
        "both healthy: {counts:?}"
    );

    b.set_healthy(false);
    let t = Instant::now();
    let mut last = BTreeMap::new();
    let out = wait_until(Duration::from_millis(2500), || {
        last = spread(&gw, "/x", 6, &[]);
        !last.contains_key("b")
    });
    assert!(
        out,
        "b still gets traffic {:?} after it failed its health check: {last:?}",
        t.elapsed()
    );
    let before = b.count();
    let counts = spread(&gw, "/x", 20, &[]);
    assert_eq!(
        counts.get("a").copied(),
        Some(20),
        "unhealthy b must get nothing: {counts:?}"
    );
    assert_eq!(b.count(), before);
    assert!(
        gauge_is(&b, 0.0),
        "tollgate_upstream_health for the failed backend:\n{}",
        gw.metrics()
    );
    assert!(gauge_is(&a, 1.0), "{}", gw.metrics());
    let logged = format!("backend {} is now unhealthy", b.address());
    assert!(
        wait_until(Duration::from_secs(2), || gw.stderr().contains(&logged)),
        "the transition is logged: {logged}"
    );

    b.set_healthy(true);
    let out = wait_until(Duration::from_millis(2500), || {
        last = spread(&gw, "/x", 6, &[]);
        last.contains_key("b")
    });
    assert!(out, "b gets no traffic after it recovered: {last:?}");
    assert!(gauge_is(&b, 1.0), "{}", gw.metrics());
}

#[test]
fn no_healthy_backend_is_503() {
    let a = Upstream::start("a");
    let b = Upstream::start("b");
    let gw = Gateway::start(&fill(
        HEALTH_CFG,
        &[("A", &a.address()), ("B", &b.address())],
    ));
    a.set_healthy(false);
    b.set_healthy(false);
    let all_down = wait_until(Duration::from_secs(3), || {
        let m = gw.metrics();
        [&a, &b].iter().all(|u| {
            metric_value(&m, "tollgate_upstream_health", &[("backend", &u.address())]) == Some(0.0)
        })
    });
    assert!(all_down, "health metrics:\n{}", gw.metrics());
    let before = a.count() + b.count();
    assert_error_json(&gw.get("/x"), 503, "no_healthy_upstream");
    assert_eq!(a.count() + b.count(), before);
}

#[test]
fn connect_refused_fails_over_to_a_live_backend() {
    let live = Upstream::start("live");
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@DEAD@", "@LIVE@"]
algorithm = "round_robin"

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#,
        &[("DEAD", &dead_addr()), ("LIVE", &live.address())],
    );
    let gw = Gateway::start(&cfg);
    let counts = spread(&gw, "/x", 20, &[]);
    assert_eq!(counts.get("live").copied(), Some(20), "{counts:?}");
}

/// docs/config.md: 502 `upstream_unavailable` = "connect refused/failed on every backend
/// tried". Two cases: two dead backends (default `retries = 2`, so every backend is tried),
/// and a single dead backend.
#[test]
fn only_dead_backends_is_502() {
    let cfg = fill(
        r#"
[[upstreams]]
name = "two_dead"
backends = ["@D1@", "@D2@"]

[[upstreams]]
name = "one_dead"
backends = ["@D3@"]

[[routes]]
name = "two"
paths = ["/two"]
upstream = "two_dead"

[[routes]]
name = "one"
paths = ["/one"]
upstream = "one_dead"
"#,
        &[
            ("D1", &dead_addr()),
            ("D2", &dead_addr()),
            ("D3", &dead_addr()),
        ],
    );
    let gw = Gateway::start(&cfg);
    for path in ["/two", "/one"] {
        for _ in 0..2 {
            let r = gw.get(path);
            assert_eq!(
                (
                    r.status,
                    r.json()["error"].as_str().unwrap_or("").to_string()
                ),
                (502, "upstream_unavailable".to_string()),
                "GET {path} with only refused backends: {}",
                r.text()
            );
            assert_error_json(&r, 502, "upstream_unavailable");
        }
    }
    // Still alive and answering its admin endpoints.
    assert_eq!(get(gw.admin, "/healthz").status, 200);
}

#[test]
fn retries_zero_means_no_failover() {
    let live = Upstream::start("live");
    let cfg = fill(
        r#"
[[upstreams]]
name = "u"
backends = ["@DEAD@", "@LIVE@"]
retries = 0

[[routes]]
name = "r"
paths = ["/"]
upstream = "u"
"#,
        &[("DEAD", &dead_addr()), ("LIVE", &live.address())],
    );
    let gw = Gateway::start(&cfg);
    let statuses: Vec<u16> = (0..10).map(|_| gw.get("/x").status).collect();
    assert!(
        statuses.contains(&502),
        "with retries = 0 the dead backend must show: {statuses:?}"
    );
    assert!(statuses.contains(&200), "{statuses:?}");
}

const TIMEOUT_CFG: &str = r#"
[[upstreams]]
name = "u"
backends = ["@UP@"]

[[upstreams]]
name = "short"
backends = ["@UP@"]
read_timeout_ms = 300

[[routes]]
name = "route_timeout"
paths = ["/rt"]
strip_prefix = true
read_timeout_ms = 300
upstream = "u"

[[routes]]
name = "upstream_timeout"
paths = ["/ut"]
strip_prefix = true
upstream = "short"

[[routes]]
name = "default"
paths = ["/"]
upstream = "u"
"#;

#[test]
fn read_timeout_is_504_and_the_gateway_keeps_serving() {
    let up = Upstream::start("slowpoke");
    let gw = Gateway::start(&fill(TIMEOUT_CFG, &[("UP", &up.address())]));

    let t = Instant::now();
    let r = gw.get("/rt/slow/2000");
    let took = t.elapsed();
    assert_error_json(&r, 504, "upstream_timeout");
    assert!(
        took < Duration::from_millis(1500),
        "route read_timeout_ms = 300, answered after {took:?}"
    );
    assert!(
        took >= Duration::from_millis(250),
        "answered before the timeout: {took:?}"
    );

    let t = Instant::now();
    assert_error_json(&gw.get("/ut/slow/2000"), 504, "upstream_timeout");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "upstream read_timeout_ms = 300"
    );

    // Afterwards: normal requests, and slow-but-in-time ones, are fine.
    let r = gw.get("/echo");
    assert_eq!(r.status, 200);
    assert_eq!(r.upstream_id(), "slowpoke");
    assert_eq!(gw.get("/rt/slow/50").status, 200);
    assert_eq!(
        gw.get("/slow/600").status,
        200,
        "routes without the override use 60 s"
    );
    assert!(gw.is_running());
}

#[test]
fn upstream_error_statuses_pass_through() {
    let up = Upstream::start("echo");
    let gw = Gateway::start(&fill(TIMEOUT_CFG, &[("UP", &up.address())]));
    for code in [404u16, 500, 502, 503] {
        let r = gw.get(&format!("/status/{code}"));
        assert_eq!(r.status, code);
        assert_eq!(
            r.upstream_id(),
            "echo",
            "the upstream's own answer, not a gateway error"
        );
        assert!(r.json().get("error").is_none());
    }
    let r = gw.get("/status/204");
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
}
