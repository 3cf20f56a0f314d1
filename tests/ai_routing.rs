//! AI inference routes (issue 18, parts 3 and 4): model fallback on connect failure,
//! timeout before the first byte, 429 and 5xx, with the body replayed and `model`
//! rewritten; no fallback once bytes streamed; the body bound; the idle timeout between SSE
//! events; per-upstream concurrency limits with a queue.

mod common;

use common::*;
use std::thread;
use std::time::{Duration, Instant};

const CHAT: &str = "/v1/chat/completions";
const JSON: (&str, &str) = ("content-type", "application/json");

/// A config with upstreams `openai` (at `a`), `selfhosted` (at `b`) and `dead` (nothing
/// listens), and `route` appended.
fn config(a: &OpenAi, b: &OpenAi, route: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "openai"
backends = ["{a}"]

[[upstreams]]
name = "selfhosted"
backends = ["{b}"]

[[upstreams]]
name = "dead"
backends = ["127.0.0.1:{dead}"]
retries = 0

{route}
"#,
        a = a.address(),
        b = b.address(),
        dead = free_port(),
    )
}

const FALLBACK: &str = r#"
[[routes]]
name = "chat"
paths = ["=/v1/chat/completions"]
fallback = [
  { upstream = "openai" },
  { upstream = "selfhosted", model = "llama-3-70b" },
]
first_byte_timeout_ms = 400
"#;

fn post(gw: &Gateway, body: &[u8]) -> Response {
    request(gw.addr, "POST", CHAT, &[JSON], body)
}

fn fallbacks(gw: &Gateway, from: &str, cause: &str) -> f64 {
    gw.metric(
        "tollgate_fallbacks_total",
        &[
            ("route", "chat"),
            ("from", from),
            ("to", "selfhosted"),
            ("cause", cause),
        ],
    )
    .unwrap_or(0.0)
}

/// The second target got the client's body with only `model` changed.
fn assert_rewritten(sent: &[u8], got: &AiRequest) {
    assert_eq!(got.model().as_deref(), Some("llama-3-70b"));
    let mut want: Json = serde_json::from_slice(sent).unwrap();
    want["model"] = Json::from("llama-3-70b");
    assert_eq!(got.json.as_ref(), Some(&want));
    assert_eq!(
        got.header("content-length"),
        Some(got.body.len().to_string().as_str())
    );
}

#[test]
fn falls_back_on_503_and_429_with_the_body_replayed_and_model_rewritten() {
    let a = OpenAi::start("a");
    let b = OpenAi::start("b");
    let gw = Gateway::start(&config(&a, &b, FALLBACK));
    let body = chat_body("gpt-4o", false, false, Some(3));

    let r = post(&gw, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tollgate-upstream"), Some("openai"));
    assert_eq!(b.count(), 0);

    for (status, cause) in [(503, "5xx"), (429, "429")] {
        a.set_mode(AiMode::Status(status));
        let r = post(&gw, &body);
        assert_eq!(r.status, 200, "{status}: {}", r.text());
        assert_eq!(r.header("x-tollgate-upstream"), Some("selfhosted"));
        assert_eq!(r.header("x-upstream-id"), Some("b"));
        let first = a.received().pop().unwrap();
        assert_eq!(first.body, body, "the first target gets the client's body");
        assert_rewritten(&body, &b.received().pop().unwrap());
        assert_eq!(fallbacks(&gw, "openai", cause), 1.0);
    }
}

#[test]
fn falls_back_on_connect_refused_and_on_a_slow_first_byte() {
    let a = OpenAi::start("a");
    let b = OpenAi::start("b");
    let route = r#"
[[routes]]
name = "chat"
paths = ["=/v1/chat/completions"]
fallback = [{ upstream = "dead" }, { upstream = "selfhosted", model = "llama-3-70b" }]

[[routes]]
name = "slow"
paths = ["=/slow"]
fallback = [{ upstream = "openai" }, { upstream = "selfhosted", model = "llama-3-70b" }]
first_byte_timeout_ms = 300
"#;
    let gw = Gateway::start(&config(&a, &b, route));
    let body = chat_body("gpt-4o", true, false, None);
    let r = post(&gw, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tollgate-upstream"), Some("selfhosted"));
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    assert_rewritten(&body, &b.received().pop().unwrap());
    assert_eq!(fallbacks(&gw, "dead", "connect"), 1.0);

    a.set_mode(AiMode::Slow(Duration::from_millis(1500)));
    let started = Instant::now();
    let r = request(gw.addr, "POST", "/slow", &[JSON], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tollgate-upstream"), Some("selfhosted"));
    assert!(started.elapsed() < Duration::from_millis(1400));
    assert_eq!(a.count(), 1);
    assert_rewritten(&body, &b.received().pop().unwrap());
    let labels = [
        ("route", "slow"),
        ("from", "openai"),
        ("to", "selfhosted"),
        ("cause", "timeout"),
    ];
    assert_eq!(gw.metric("tollgate_fallbacks_total", &labels), Some(1.0));
    assert_eq!(
        gw.metric(
            "tollgate_upstream_stream_timeouts_total",
            &[("route", "slow"), ("kind", "first_byte")]
        ),
        Some(1.0)
    );
}

#[test]
fn no_fallback_once_the_stream_began() {
    let a = OpenAi::start("a");
    let b = OpenAi::start("b");
    let gw = Gateway::start(&config(&a, &b, FALLBACK));
    a.set_mode(AiMode::DropMidBody);
    let body = chat_body("gpt-4o", true, false, None);
    // An error is the cut stream too: the chunked body never ended.
    if let Ok(r) = try_request(gw.addr, "POST", CHAT, &[JSON], &body) {
        assert_eq!(r.status, 200);
        assert!(!r.text().contains("[DONE]"), "{}", r.text());
    }
    thread::sleep(Duration::from_millis(200));
    assert_eq!(a.count(), 1);
    assert_eq!(b.count(), 0, "the second target gets nothing");
}

#[test]
fn a_body_over_the_bound_gets_no_fallback_or_413() {
    let a = OpenAi::start("a");
    let b = OpenAi::start("b");
    let route = r#"
[[routes]]
name = "chat"
paths = ["=/v1/chat/completions"]
fallback = [{ upstream = "openai" }, { upstream = "selfhosted", model = "llama-3-70b" }]
max_body_bytes = 200

[[routes]]
name = "strict"
paths = ["=/strict"]
fallback = [{ upstream = "openai" }, { upstream = "selfhosted" }]
max_body_bytes = 200
on_body_over_limit = "reject"
"#;
    let gw = Gateway::start(&config(&a, &b, route));
    let big = serde_json::to_vec(&serde_json::json!({
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "x".repeat(400)}],
    }))
    .unwrap();
    a.set_mode(AiMode::Status(503));
    let r = post(&gw, &big);
    assert_eq!(r.status, 503, "the first target only");
    assert_eq!(b.count(), 0);
    assert_eq!(a.received().pop().unwrap().body, big);
    assert_eq!(
        gw.metric(
            "tollgate_body_over_limit_total",
            &[("route", "chat"), ("action", "default_target")]
        ),
        Some(1.0)
    );

    let r = request(gw.addr, "POST", "/strict", &[JSON], &big);
    assert_eq!(r.status, 413);
    assert_eq!(r.json()["error"], "body_too_large");
    assert_eq!(r.json()["status"], 413);
    assert_eq!(a.count(), 1);
    assert_eq!(
        gw.metric(
            "tollgate_body_over_limit_total",
            &[("route", "strict"), ("action", "reject")]
        ),
        Some(1.0)
    );
    // Within the bound, the fallback works.
    let r = post(&gw, &chat_body("gpt-4o", false, false, None));
    assert_eq!(r.header("x-tollgate-upstream"), Some("selfhosted"));
}

#[test]
fn idle_timeout_between_sse_events_ends_the_stream() {
    let a = OpenAi::start("a");
    let b = OpenAi::start("b");
    let route = r#"
[[routes]]
name = "chat"
paths = ["=/v1/chat/completions"]
fallback = [{ upstream = "openai" }, { upstream = "selfhosted" }]
first_byte_timeout_ms = 2000
idle_timeout_ms = 300
"#;
    let gw = Gateway::start(&config(&a, &b, route));
    a.set_stream(3, Duration::from_millis(900));
    let body = chat_body("gpt-4o", true, false, None);
    let started = Instant::now();
    let r = try_request(gw.addr, "POST", CHAT, &[JSON], &body);
    assert!(started.elapsed() < Duration::from_millis(1500));
    if let Ok(r) = r {
        assert!(!r.text().contains("[DONE]"), "{}", r.text());
    }
    assert_eq!(b.count(), 0);
    assert_eq!(
        gw.wait_metric(
            "tollgate_upstream_stream_timeouts_total",
            &[("route", "chat"), ("kind", "idle")],
            1.0
        ),
        Some(1.0)
    );
    // Gaps under the idle timeout stream through, after a first byte slower than it.
    a.set_stream(3, Duration::from_millis(100));
    a.set_mode(AiMode::Slow(Duration::from_millis(600)));
    let r = post(&gw, &body);
    assert_eq!(r.status, 200);
    assert!(r.text().ends_with("data: [DONE]\n\n"), "{}", r.text());
    assert_eq!(r.header("x-tollgate-upstream"), Some("openai"));
}

#[test]
fn per_upstream_concurrency_limit_queues_then_refuses() {
    let a = OpenAi::start("a");
    let b = OpenAi::start("b");
    let text = format!(
        r#"
[[upstreams]]
name = "limited"
backends = ["{a}"]
max_concurrent_requests = 2
queue_size = 2
queue_timeout_ms = 400

[[upstreams]]
name = "other"
backends = ["{b}"]

[[routes]]
name = "chat"
paths = ["=/v1/chat/completions"]
upstream = "limited"

[[routes]]
name = "fb"
paths = ["=/fb"]
fallback = [{{ upstream = "limited" }}, {{ upstream = "other" }}]
"#,
        a = a.address(),
        b = b.address()
    );
    let gw = Gateway::start(&text);
    a.set_mode(AiMode::Slow(Duration::from_millis(1200)));
    let body = chat_body("gpt-4o", false, false, None);
    let addr = gw.addr;
    let mut handles = Vec::new();
    for _ in 0..4 {
        let body = body.clone();
        handles.push(thread::spawn(move || {
            let t = Instant::now();
            let r = request(addr, "POST", CHAT, &[JSON], &body);
            (r.status, r.json()["error"].clone(), t.elapsed())
        }));
        thread::sleep(Duration::from_millis(60));
    }
    // Two in flight, two queued: a fifth finds the queue full.
    let t = Instant::now();
    let r = request(addr, "POST", CHAT, &[JSON], &body);
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "upstream_busy");
    assert!(t.elapsed() < Duration::from_millis(300), "refused at once");
    // On a route with fallback, the full queue moves the request to the next target.
    let r = request(addr, "POST", "/fb", &[JSON], &body);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tollgate-upstream"), Some("other"));
    let mut results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    results.sort_by_key(|r| r.0);
    assert_eq!(results[0].0, 200);
    assert_eq!(results[1].0, 200);
    assert_eq!(results[2].0, 503, "{results:?}");
    assert_eq!(results[3].0, 503, "{results:?}");
    assert_eq!(results[2].1, "upstream_busy");
    assert!(a.max_in_flight() <= 2, "{}", a.max_in_flight());
    assert_eq!(a.count(), 2);
    for (reason, want) in [("queue_full", 2.0), ("queue_timeout", 2.0)] {
        assert_eq!(
            gw.metric(
                "tollgate_upstream_queue_rejections_total",
                &[("upstream", "limited"), ("reason", reason)]
            ),
            Some(want),
            "{reason}"
        );
    }
    assert_eq!(
        gw.metric(
            "tollgate_upstream_queued_requests",
            &[("upstream", "limited")]
        ),
        Some(0.0)
    );
    // Every slot came back.
    a.set_mode(AiMode::Ok);
    for _ in 0..3 {
        assert_eq!(request(addr, "POST", CHAT, &[JSON], &body).status, 200);
    }
}
