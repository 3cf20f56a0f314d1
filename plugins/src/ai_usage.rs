//! `ai_usage`: token accounting of an OpenAI-compatible upstream's answers (see [`crate::ai`]):
//! the [`Usage`](crate::ai::Usage) in `ctx.extensions` for later hooks and the access log, and
//! `tollgate_ai_tokens_total{route,model,kind}`. `token_limit` accounts by itself; this plugin
//! is for routes that only count.

use crate::ai::{self, Accounting, AccountingSpec};
use crate::{parse_config_all, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "ai_usage";

/// The compiled `ai_usage` plugin.
pub struct AiUsage {
    accounting: Arc<Accounting>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, _ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let spec: AccountingSpec = parse_config_all(value)?;
    let mut errors = Vec::new();
    let accounting = Accounting::new(spec, &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(AiUsage { accounting }))
}

#[async_trait]
impl Plugin for AiUsage {
    fn name(&self) -> &'static str {
        NAME
    }

    /// With the limits: after authentication (the body is not read for unauthenticated
    /// requests), and its body hook sees the upstream's bytes before any transform.
    fn phase(&self) -> Phase {
        Phase::Limits
    }

    async fn request_session(&self, session: &mut Session, ctx: &mut RequestCtx) -> Flow {
        match ai::read_request(session, ctx).await {
            Ok(()) => Flow::Continue,
            Err(answer) => Flow::Respond(answer),
        }
    }

    fn upstream_request(&self, req: &mut RequestHeader, _ctx: &mut RequestCtx) {
        ai::upstream_request(req);
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        self.accounting.start(resp, ctx);
    }

    fn wants_response_body(&self) -> bool {
        true
    }

    fn response_body(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        self.accounting.feed(body, end_of_stream, ctx);
    }

    fn log(&self, _status: u16, ctx: &mut RequestCtx) {
        ai::finish(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::Usage;
    use crate::testing::{self, Harness};

    #[test]
    fn usage_from_a_json_answer_through_the_hooks() {
        let h = Harness::new([testing::build(build, r#"models = ["gpt-4o"]"#).unwrap()]);
        let mut ctx = testing::ctx();
        let mut resp = testing::response(200, &[("content-type", "application/json")]);
        h.response(&mut resp, &mut ctx);
        let body = br#"{"model":"gpt-4o","usage":{"prompt_tokens":5,"completion_tokens":6,"total_tokens":11}}"#;
        let out = h.response_body(&[&body[..9], &body[9..]], &mut ctx);
        assert_eq!(out, body, "the body passes unchanged");
        h.log(200, &mut ctx);
        let u = ctx.extensions.get::<Usage>().unwrap();
        assert_eq!(
            (u.prompt_tokens, u.completion_tokens, u.total_tokens),
            (5, 6, 11)
        );
        assert_eq!(u.model.as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn config_errors_have_paths() {
        let errors = testing::build(
            build,
            r#"models = ["a", "a"]
max_response_bytes = 0
"#,
        )
        .err()
        .unwrap();
        let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["models[1]", "max_response_bytes"]);
        let errors = testing::build(build, "modles = []").err().unwrap();
        assert_eq!(errors[0].path, "modles");
    }
}
