//! `ip_restriction`: allow and deny lists of addresses and CIDR ranges (IPv4 and IPv6),
//! applied to the client address (after `[server] trusted_proxies`).

use crate::net::{contains, parse_nets};
use crate::{parse_config_all, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use http::StatusCode;
use ipnet::IpNet;
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "ip_restriction";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpConfig {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// The compiled `ip_restriction` plugin.
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, _ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: IpConfig = parse_config_all(value)?;
    let mut errors = Vec::new();
    let allow = parse_nets(&cfg.allow, "allow", &mut errors);
    let deny = parse_nets(&cfg.deny, "deny", &mut errors);
    if cfg.allow.is_empty() && cfg.deny.is_empty() {
        errors.push(ConfigError::new("", "set `allow`, `deny` or both"));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(IpRestriction { allow, deny }))
}

#[async_trait]
impl Plugin for IpRestriction {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::AccessControl
    }

    async fn request(&self, _req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        // Deny wins over allow; with an allow list, anything not on it is refused.
        let allowed = match ctx.client_ip {
            Some(ip) => {
                !contains(&self.deny, ip) && (self.allow.is_empty() || contains(&self.allow, ip))
            }
            None => self.allow.is_empty() && self.deny.is_empty(),
        };
        if allowed {
            Flow::Continue
        } else {
            Flow::Respond(Answer::error(
                StatusCode::FORBIDDEN,
                "ip_forbidden",
                "your IP address is not allowed",
            ))
        }
    }
}
