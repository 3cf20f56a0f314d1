//! The fake OpenAI-compatible upstream of the harness answers as the AI tests expect.

mod common;

use common::*;

#[test]
fn the_fake_answers_json_and_sse_with_usage() {
    let ai = OpenAi::start("ai");
    let body = chat_body("gpt-4o", false, false, Some(7));
    let r = request(
        ai.addr,
        "POST",
        "/v1/chat/completions",
        &[("content-type", "application/json")],
        &body,
    );
    assert_eq!(r.status, 200);
    let j = r.json();
    assert_eq!(j["usage"]["completion_tokens"], 7);
    assert_eq!(j["usage"]["total_tokens"], 17);
    assert_eq!(r.header("x-model-received"), Some("gpt-4o"));

    let body = chat_body("gpt-4o", true, true, None);
    let r = request(ai.addr, "POST", "/v1/chat/completions", &[], &body);
    let text = r.text();
    assert_eq!(text.matches("data: ").count(), 5, "{text}");
    assert!(
        text.contains(r#""usage":{"completion_tokens":20"#),
        "{text}"
    );
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    ai.set_mode(AiMode::Status(429));
    let r = request(ai.addr, "POST", "/v1/chat/completions", &[], &body);
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(ai.count(), 3);
    assert_eq!(ai.received()[0].model().as_deref(), Some("gpt-4o"));
}
