//! `acl`: allow or deny consumer groups on a route (after authentication).

use crate::{parse_config_all, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use http::StatusCode;
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "acl";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclConfig {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// The compiled `acl` plugin.
pub struct Acl {
    allow: Vec<String>,
    deny: Vec<String>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, _ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: AclConfig = parse_config_all(value)?;
    if cfg.allow.is_empty() == cfg.deny.is_empty() {
        return Err(vec![ConfigError::new(
            "",
            "set exactly one of `allow` or `deny` (a list of consumer groups)",
        )]);
    }
    Ok(Arc::new(Acl {
        allow: cfg.allow,
        deny: cfg.deny,
    }))
}

#[async_trait]
impl Plugin for Acl {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Authorization
    }

    async fn request(&self, _req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let groups: &[String] = ctx.identity.as_ref().map_or(&[], |i| &i.consumer.groups);
        let in_any = |list: &[String]| groups.iter().any(|g| list.contains(g));
        let allowed = if self.allow.is_empty() {
            !in_any(&self.deny)
        } else {
            in_any(&self.allow)
        };
        if allowed {
            Flow::Continue
        } else {
            Flow::Respond(Answer::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "you are not allowed to use this route",
            ))
        }
    }
}
