//! `conf/examples/ai-gateway.toml`, run as written against fake inference servers: only the
//! listeners, the backend addresses and the provider's TLS are changed by the test.

mod common;

use common::*;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use std::time::{SystemTime, UNIX_EPOCH};

const ALICE_SECRET: &str = "alice-secret-0123456789abcdef0123456789";
const BOB_SECRET: &str = "bob-secret-0123456789abcdef012345678901";
const EXAMPLE: &str = include_str!("../conf/examples/ai-gateway.toml");

fn jwt(kid: &str, secret: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.to_string());
    let claims = serde_json::json!({ "sub": kid, "exp": exp });
    encode(&h, &claims, &EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

/// The example from its upstreams on, pointed at the fakes.
fn example(openai: &OpenAi, pool: &OpenAi, v1: &OpenAi, v2: &OpenAi) -> String {
    let start = EXAMPLE
        .find("\n# ---- upstreams")
        .expect("the example has an upstreams part");
    let body = &EXAMPLE[start + 1..];
    body.replace(
        "\"api.openai.com:443\"",
        &format!("\"{}\"", openai.address()),
    )
    .replace("tls = true\n", "")
    .replace(
        "\"10.0.0.11:8000\", \"10.0.0.12:8000\"",
        &format!("\"{}\"", pool.address()),
    )
    .replace("\"10.0.1.11:8000\"", &format!("\"{}\"", v1.address()))
    .replace("\"10.0.1.21:8000\"", &format!("\"{}\"", v2.address()))
    .replace("path = \"/health\"", "path = \"/v1/models\"")
}

/// What a fake received on the chat endpoint (the pool also gets health checks).
fn chats(ai: &OpenAi) -> Vec<AiRequest> {
    ai.received()
        .into_iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .collect()
}

fn chat(gw: &Gateway, token: &str, body: &[u8]) -> Response {
    let auth = format!("Bearer {token}");
    gw.request(
        "POST",
        "/v1/chat/completions",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
}

#[test]
fn the_ai_gateway_example_routes_falls_back_and_limits_tokens() {
    let (openai, pool, v1, v2) = (
        OpenAi::start("openai"),
        OpenAi::start("pool"),
        OpenAi::start("v1"),
        OpenAi::start("v2"),
    );
    let gw = Gateway::builder(&example(&openai, &pool, &v1, &v2))
        .env("OPENAI_API_KEY", "sk-test-provider-key")
        .env("ALICE_JWT_SECRET", ALICE_SECRET)
        .env("BOB_JWT_SECRET", BOB_SECRET)
        .start();
    let alice = jwt("alice-app", ALICE_SECRET);
    let bob = jwt("bob-app", BOB_SECRET);

    // Hosted first; the provider gets its key, not the client's token.
    let r = chat(&gw, &alice, &chat_body("gpt-4o", false, false, Some(50)));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tollgate-upstream"), Some("openai"));
    let got = openai.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].header("authorization"),
        Some("Bearer sk-test-provider-key")
    );
    assert_eq!(got[0].model().as_deref(), Some("gpt-4o"));
    // Alice's tier: 20000 tokens a minute, 60 tokens used (10 prompt + 50 completion).
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("20000"));

    // The provider is rate limited: the self-hosted pool answers, with the model rewritten.
    openai.set_mode(AiMode::Status(429));
    let body = chat_body("gpt-4o", false, false, Some(40));
    let r = chat(&gw, &bob, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("x-tollgate-upstream"), Some("self-hosted"));
    let got = chats(&pool);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].model().as_deref(), Some("llama-3-70b"));
    let mut sent: Json = serde_json::from_slice(&body).unwrap();
    sent["model"] = Json::from("llama-3-70b");
    assert_eq!(
        got[0].json.as_ref(),
        Some(&sent),
        "the rest of the body is as sent"
    );
    // Bob's tier is the pro one.
    assert_eq!(r.header("x-ratelimit-limit-tokens"), Some("2000000"));

    // The self-hosted model by name: 9 in 10 to v1, 1 in 10 to v2 (the canary), no provider.
    let asked = openai.count();
    for i in 0..10 {
        let r = chat(
            &gw,
            &bob,
            &chat_body("llama-3-70b", false, false, Some(i + 1)),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!((v1.count(), v2.count()), (9, 1));
    assert_eq!(openai.count(), asked);

    // Streaming with usage: events pass, and the usage is charged.
    openai.set_mode(AiMode::Ok);
    let r = chat(&gw, &alice, &chat_body("gpt-4o", true, true, Some(30)));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("data: [DONE]"), "{}", r.text());

    // Identical non-streaming prompts of one consumer: the second is a cache hit only if
    // the upstream allows it; the fake sends no Cache-Control, so both reach it, and the
    // answer carries the cache status.
    let before = openai.count();
    let body = chat_body("gpt-4o", false, false, Some(5));
    let a = chat(&gw, &alice, &body);
    let b = chat(&gw, &alice, &body);
    assert_eq!((a.status, b.status), (200, 200));
    assert!(a.header("x-cache-status").is_some(), "{:?}", a.headers);
    assert!(openai.count() > before);

    // No token: the JWT plugin's 401, nothing sent anywhere.
    let all = || {
        [&openai, &pool, &v1, &v2]
            .iter()
            .map(|ai| chats(ai).len())
            .sum::<usize>()
    };
    let total = all();
    let r = gw.request("POST", "/v1/chat/completions", &[], &body);
    assert_eq!(r.status, 401);
    assert_eq!(all(), total);
}

#[test]
fn the_ai_gateway_example_passes_check() {
    let dir = TempDir::new("ai-example");
    let file = dir.path().join("ai-gateway.toml");
    // The provider's name cannot be resolved on a machine without DNS: an address instead.
    std::fs::write(
        &file,
        EXAMPLE.replace("api.openai.com:443", "127.0.0.1:443"),
    )
    .unwrap();
    let env = [
        ("OPENAI_API_KEY", "sk-x"),
        ("ALICE_JWT_SECRET", ALICE_SECRET),
        ("BOB_JWT_SECRET", BOB_SECRET),
    ];
    let (code, out, err) = run_cli(&["check", "-c", file.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("OK (2 routes, 4 upstreams)"), "{out}");
}

#[test]
fn the_config_reference_shows_the_example_as_it_is() {
    let docs = include_str!("../docs/config.md");
    assert!(
        docs.contains(EXAMPLE),
        "docs/config.md must include conf/examples/ai-gateway.toml verbatim (section \"Inference (AI) gateway\")"
    );
}
