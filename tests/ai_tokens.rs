//! AI inference gateway (issue 18, parts 1 and 2): token accounting from OpenAI-compatible
//! answers (`ai_usage`, and inside `token_limit`) and token budgets (`token_limit`), with the
//! real binary, the fake OpenAI upstream and a real redis-server.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

fn upstream(ai: &OpenAi) -> String {
    format!(
        "[[upstreams]]\nname = \"ai\"\nbackends = [\"{}\"]\n",
        ai.address()
    )
}

fn route(name: &str, path: &str, plugins: &str) -> String {
    format!("\n[[routes]]\nname = \"{name}\"\npaths = [\"{path}\"]\nupstream = \"ai\"\nplugins = [{plugins}]\n")
}

const JSON: (&str, &str) = ("content-type", "application/json");

fn chat(gw: &Gateway, path: &str, body: &[u8], extra: &[(&str, &str)]) -> Response {
    let mut h = vec![JSON];
    h.extend_from_slice(extra);
    gw.request("POST", path, &h, body)
}

/// The access log line of a request id (waits for the writer thread).
fn log_line(gw: &Gateway, id: &str) -> Json {
    let mut found = None;
    wait_until(Duration::from_secs(5), || {
        found = gw.access_log().into_iter().find(|l| l["request_id"] == id);
        found.is_some()
    });
    found.unwrap_or_else(|| panic!("no access log line for {id}:\n{}", gw.stdout()))
}

fn tokens(gw: &Gateway, route: &str, model: &str, kind: &str) -> Option<f64> {
    gw.metric(
        "tollgate_ai_tokens_total",
        &[("route", route), ("model", model), ("kind", kind)],
    )
}

#[test]
fn usage_from_json_and_sse_in_the_access_log_and_the_metric() {
    let ai = OpenAi::start("ai");
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream(&ai),
        route(
            "chat",
            "/v1",
            r#"{ name = "ai_usage", models = ["gpt-4o"] }"#
        )
    ));

    // JSON answer: 10 prompt + 7 completion (max_tokens).
    let body = chat_body("gpt-4o", false, false, Some(7));
    let r = chat(
        &gw,
        "/v1/chat/completions",
        &body,
        &[("x-request-id", "json-1"), ("accept-encoding", "gzip")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["usage"]["total_tokens"], 17);
    // The body read ahead still went upstream, byte for byte, without Accept-Encoding.
    let got = &ai.received()[0];
    assert_eq!(got.body, body);
    assert_eq!(got.header("accept-encoding"), None);
    let line = log_line(&gw, "json-1");
    assert_eq!(line["model"], "gpt-4o");
    assert_eq!(line["prompt_tokens"], 10);
    assert_eq!(line["completion_tokens"], 7);

    // SSE with include_usage, a model not listed: label `other`.
    let body = chat_body("llama-3", true, true, None);
    let r = chat(
        &gw,
        "/v1/chat/completions",
        &body,
        &[("x-request-id", "sse-1")],
    );
    assert_eq!(r.status, 200);
    let text = r.text();
    assert_eq!(text.matches("data: ").count(), 5, "{text}");
    assert!(
        text.ends_with("data: [DONE]\n\n"),
        "the stream is unchanged: {text}"
    );
    let line = log_line(&gw, "sse-1");
    assert_eq!(line["model"], "llama-3");
    assert_eq!(line["prompt_tokens"], 10);
    assert_eq!(line["completion_tokens"], 20);

    assert_eq!(
        gw.wait_metric(
            "tollgate_ai_tokens_total",
            &[("route", "chat"), ("model", "gpt-4o"), ("kind", "prompt")],
            10.0
        ),
        Some(10.0)
    );
    assert_eq!(tokens(&gw, "chat", "gpt-4o", "completion"), Some(7.0));
    assert_eq!(tokens(&gw, "chat", "other", "prompt"), Some(10.0));
    assert_eq!(tokens(&gw, "chat", "other", "completion"), Some(20.0));

    // A stream without include_usage reports nothing: counted as missing, no log fields.
    let body = chat_body("gpt-4o", true, false, None);
    let r = chat(
        &gw,
        "/v1/chat/completions",
        &body,
        &[("x-request-id", "sse-2")],
    );
    assert_eq!(r.status, 200);
    let line = log_line(&gw, "sse-2");
    assert!(line.get("prompt_tokens").is_none(), "{line}");
    assert!(line.get("model").is_none(), "{line}");
    assert_eq!(
        gw.metric(
            "tollgate_ai_usage_missing_total",
            &[("route", "chat"), ("reason", "no_usage")]
        ),
        Some(1.0)
    );
    assert_eq!(tokens(&gw, "chat", "gpt-4o", "prompt"), Some(10.0));
}

#[test]
fn count_stream_counts_content_events_when_no_usage_comes() {
    let ai = OpenAi::start("ai");
    ai.set_stream(4, Duration::ZERO);
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream(&ai),
        route(
            "chat",
            "/v1",
            r#"{ name = "ai_usage", count_stream = true }"#
        )
    ));
    let body = chat_body("m", true, false, None);
    let r = chat(&gw, "/v1/x", &body, &[("x-request-id", "counted")]);
    assert_eq!(r.status, 200);
    let line = log_line(&gw, "counted");
    // Four content events, no usage event: 4 completion tokens counted, 0 prompt.
    assert_eq!(line["completion_tokens"], 4);
    assert_eq!(line["prompt_tokens"], 0);
    assert_eq!(tokens(&gw, "chat", "other", "completion"), Some(4.0));
}

/// Read one chunk of a chunked body.
fn read_chunk(r: &mut BufReader<TcpStream>) -> Vec<u8> {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let n =
        usize::from_str_radix(line.trim(), 16).unwrap_or_else(|_| panic!("chunk size {line:?}"));
    let mut buf = vec![0u8; n + 2];
    r.read_exact(&mut buf).unwrap();
    buf.truncate(n);
    buf
}

#[test]
fn sse_events_arrive_one_by_one_through_token_limit() {
    let ai = OpenAi::start("ai");
    let gap = Duration::from_millis(400);
    ai.set_stream(3, gap);
    let gw = Gateway::start(&format!(
        "{}{}",
        upstream(&ai),
        route(
            "tl",
            "/v1",
            r#"{ name = "token_limit", hour = 100000, estimate = "max_tokens" }"#
        )
    ));
    let body = chat_body("gpt-4o", true, true, Some(5));
    let mut s = TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    let mut r = BufReader::new(s);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        lines.push(line.trim().to_ascii_lowercase());
    }
    assert!(lines[0].starts_with("http/1.1 200"), "{lines:?}");
    assert!(
        lines.contains(&"x-ratelimit-remaining-tokens: 99995".to_string()),
        "{lines:?}"
    );
    let mut received = String::new();
    let mut arrived = Vec::new();
    for i in 0..3 {
        while !received.contains(&format!("tok{i} ")) {
            let chunk = read_chunk(&mut r);
            assert!(!chunk.is_empty(), "ended before event {i}: {received}");
            received.push_str(&String::from_utf8_lossy(&chunk));
        }
        arrived.push(Instant::now());
        // The next event is sent `gap` after this one: it has not arrived with it.
        assert!(
            !received.contains(&format!("tok{} ", i + 1)),
            "events arrived together: {received}"
        );
    }
    for w in arrived.windows(2) {
        let between = w[1] - w[0];
        assert!(
            between >= gap - Duration::from_millis(150),
            "events held back and released together: {between:?}"
        );
    }
    // The rest, up to the last (empty) chunk.
    loop {
        let chunk = read_chunk(&mut r);
        if chunk.is_empty() {
            break;
        }
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.ends_with("data: [DONE]\n\n"), "{received}");
    // 10 prompt + 5 completion, charged by the usage event (estimate 5 corrected by +10).
    let probe = chat(
        &gw,
        "/v1/chat/completions",
        &chat_body("gpt-4o", false, false, Some(1)),
        &[],
    );
    assert_eq!(probe.header("x-ratelimit-remaining-tokens"), Some("99984"));
}

/// Wait for the start of a second with at least 600 ms left in it.
fn early_in_a_second() {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_millis();
    if ms > 300 {
        thread::sleep(Duration::from_millis(1005 - ms as u64));
    }
}

#[test]
fn the_budget_is_tokens_not_requests_then_resets() {
    let ai = OpenAi::start("ai");
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream(&ai),
        route("tl", "/tl", r#"{ name = "token_limit", second = 100 }"#),
        route(
            "est",
            "/est",
            r#"{ name = "token_limit", minute = 100, estimate = 30 }"#
        ),
    ));
    // Each answer costs 10 prompt + 20 completion = 30 tokens.
    let body = chat_body("gpt-4o", false, false, None);
    early_in_a_second();
    // No estimate: admitted while anything is left. Used before each: 0, 30, 60, 90.
    for remaining in ["100", "70", "40", "10"] {
        let r = chat(&gw, "/tl/v1/chat/completions", &body, &[]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100"));
        assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some(remaining));
        assert_eq!(r.header("x-ratelimit-reset-tokens"), Some("1"));
    }
    // 120 used: the fifth is refused, before the upstream.
    let r = chat(&gw, "/tl/v1/chat/completions", &body, &[]);
    assert_eq!(r.status, 429, "{}", r.text());
    let j = r.json();
    assert_eq!(j["error"], "token_limit_exceeded");
    assert_eq!(j["status"], 429);
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("100"));
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("0"));
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    assert_eq!(ai.count(), 4, "refused requests do not reach the upstream");
    assert_eq!(
        gw.metric(
            "tollgate_token_limit_decisions_total",
            &[("route", "tl"), ("result", "allowed")]
        ),
        Some(4.0)
    );
    assert_eq!(
        gw.metric(
            "tollgate_token_limit_decisions_total",
            &[("route", "tl"), ("result", "limited")]
        ),
        Some(1.0)
    );
    assert_eq!(
        gw.metric(
            "tollgate_requests_rejected_total",
            &[
                ("route", "tl"),
                ("plugin", "token_limit"),
                ("status", "429")
            ]
        ),
        Some(1.0)
    );

    // With an estimate of 30: 90 used leaves 10 < 30, so the fourth is refused.
    let statuses: Vec<u16> = (0..4)
        .map(|_| chat(&gw, "/est/v1/chat/completions", &body, &[]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 200, 429]);

    // Two windows later the counts have slid out: four pass again.
    thread::sleep(Duration::from_millis(2050));
    early_in_a_second();
    for _ in 0..4 {
        assert_eq!(chat(&gw, "/tl/v1/chat/completions", &body, &[]).status, 200);
    }
    assert_eq!(chat(&gw, "/tl/v1/chat/completions", &body, &[]).status, 429);
}

/// Tokens charged in Redis under the token_limit prefix (every key and period summed).
fn redis_tokens(redis: &Redis) -> i64 {
    redis
        .keys()
        .iter()
        .filter(|k| k.starts_with("tollgate:tl:"))
        .map(|k| match redis.cmd(&["GET", k]) {
            Resp::Bulk(Some(v)) => String::from_utf8_lossy(&v).parse::<i64>().unwrap_or(0),
            _ => 0,
        })
        .sum()
}

#[test]
fn two_gateways_share_one_budget_in_redis() {
    let redis = Redis::start();
    let ai = OpenAi::start("ai");
    let body = format!(
        "{}{}",
        upstream(&ai),
        route(
            "tl",
            "/v1",
            &format!(
                r#"{{ name = "token_limit", hour = 100, limit_by = "header:x-tenant", policy = "redis", redis = {{ url = "{}", timeout_ms = 500 }} }}"#,
                redis.url()
            )
        )
    );
    let (a, b) = (Gateway::start(&body), Gateway::start(&body));
    let req = chat_body("gpt-4o", false, false, None);
    let send = |gw: &Gateway| chat(gw, "/v1/chat/completions", &req, &[("x-tenant", "acme")]);
    // 30 tokens an answer; each gateway sees what the other charged.
    let mut used = 0;
    for (gw, remaining) in [(&a, "100"), (&b, "70"), (&a, "40"), (&b, "10")] {
        let r = send(gw);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some(remaining));
        used += 30;
        assert!(
            wait_until(Duration::from_secs(5), || redis_tokens(&redis) == used),
            "charge not in Redis: {} != {used}",
            redis_tokens(&redis)
        );
    }
    assert_eq!(send(&a).status, 429);
    assert_eq!(send(&b).status, 429);
    assert_eq!(ai.count(), 4);
    // Another tenant has its own budget.
    let r = chat(&b, "/v1/chat/completions", &req, &[("x-tenant", "other")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("100"));
}

/// Send `n` requests at once; count 200s and 429s.
fn burst(addr: SocketAddr, path: &str, body: &[u8], n: usize) -> (usize, usize, usize) {
    let (path, body) = (path.to_string(), body.to_vec());
    burst_of(n, n, move || {
        request(addr, "POST", &path, &[JSON], &body).status
    })
}

#[test]
fn concurrent_long_requests_stay_within_the_documented_bound() {
    let ai = OpenAi::start("ai");
    // Long answers: all ten requests are in flight before the first one ends.
    ai.set_mode(AiMode::Slow(Duration::from_millis(800)));
    let gw = Gateway::start(&format!(
        "{}{}{}",
        upstream(&ai),
        route(
            "est",
            "/est",
            r#"{ name = "token_limit", hour = 100, estimate = "max_tokens" }"#
        ),
        route("none", "/none", r#"{ name = "token_limit", hour = 100 }"#),
    ));
    // max_tokens 30: the estimate is 30; each answer costs 10 + 30 = 40.
    let body = chat_body("gpt-4o", false, false, Some(30));
    let (ok, limited, other) = burst(gw.addr, "/est/v1/chat/completions", &body, 10);
    // 3 × 30 reserved fit in 100, a fourth does not: 3 admitted, charged 3 × 40 = 120, which
    // is the bound: 100 + Σ(cost − estimate) = 100 + 3 × 10 (the prompt tokens).
    assert_eq!((ok, limited, other), (3, 7, 0));
    assert_eq!(ai.count(), 3);
    let r = chat(&gw, "/est/v1/x", &body, &[]);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-ratelimit-remaining-tokens"), Some("0"));

    // Without an estimate nothing is reserved: every concurrent request sees the whole
    // budget (the documented reason to configure one).
    let before = ai.count();
    let (ok, limited, _) = burst(gw.addr, "/none/v1/chat/completions", &body, 10);
    assert_eq!((ok, limited), (10, 0));
    assert_eq!(ai.count() - before, 10);
    assert_eq!(chat(&gw, "/none/v1/x", &body, &[]).status, 429);
}

#[test]
fn store_down_follows_on_store_error() {
    let mut redis = Redis::start();
    let ai = OpenAi::start("ai");
    let tl = |mode: &str| {
        route(
            mode,
            &format!("/{mode}"),
            &format!(
                r#"{{ name = "token_limit", hour = 50, policy = "redis", redis = {{ url = "{}", timeout_ms = 100 }}, on_store_error = "{mode}" }}"#,
                redis.url()
            ),
        )
    };
    let gw = Gateway::start(&format!(
        "{}{}{}{}",
        upstream(&ai),
        tl("open"),
        tl("closed"),
        tl("local")
    ));
    let body = chat_body("gpt-4o", false, false, None);
    let send = |p: &str| chat(&gw, &format!("/{p}/v1/chat/completions"), &body, &[]);
    for p in ["open", "closed", "local"] {
        assert_eq!(send(p).status, 200, "{p} with Redis up");
    }
    // The three charges are in Redis (else a charge failing after the stop would land in the
    // local counters, as documented, and change the count below).
    assert!(
        wait_until(Duration::from_secs(5), || redis_tokens(&redis) == 90),
        "charges not in Redis: {}",
        redis_tokens(&redis)
    );
    redis.stop();
    let t = Instant::now();
    // open: through, uncounted.
    for _ in 0..3 {
        assert_eq!(send("open").status, 200);
    }
    // closed: 503.
    let r = send("closed");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"], "token_limit_unavailable");
    assert_eq!(r.header("retry-after"), Some("1"));
    // local: counted in this process from zero, 30 tokens each: 0 and 30 used pass, 60 not.
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(send("local").status);
        // The charge goes to Redis in the background, fails, and lands locally.
        thread::sleep(Duration::from_millis(150));
    }
    assert_eq!(statuses, [200, 200, 429]);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "requests hung on a dead Redis: {:?}",
        t.elapsed()
    );
    for mode in ["open", "closed", "local"] {
        let n = gw.metric(
            "tollgate_token_limit_store_errors_total",
            &[("route", mode), ("on_store_error", mode)],
        );
        assert!(n.unwrap_or(0.0) >= 1.0, "{mode}: {n:?}");
    }
    assert_eq!(
        gw.metric(
            "tollgate_token_limit_decisions_total",
            &[("route", "open"), ("result", "error")]
        ),
        Some(3.0)
    );
    assert!(
        gw.stderr().contains("token-limit store"),
        "no log line:\n{}",
        gw.stderr()
    );
}

#[test]
fn check_reports_config_errors_with_paths() {
    let dir = TempDir::new("ai-check");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = [\"127.0.0.1:1\"]\n\n[[upstreams]]\nname = \"ai\"\nbackends = [\"127.0.0.1:2\"]\n\n[[routes]]\nname = \"r\"\npaths = [\"/\"]\nupstream = \"ai\"\nplugins = [{ name = \"token_limit\", minute = 0, estimate = \"lots\" }, { name = \"ai_usage\", models = [\"\"] }]\n",
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_ne!(code, 0, "{out}{err}");
    let all = format!("{out}{err}");
    assert!(all.contains("routes[0].plugins[0].minute"), "{all}");
    assert!(all.contains("routes[0].plugins[0].estimate"), "{all}");
    assert!(all.contains("routes[0].plugins[1].models[0]"), "{all}");
}
