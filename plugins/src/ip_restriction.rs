//! `ip_restriction`: allow and deny lists of addresses and CIDR ranges (IPv4 and IPv6),
//! applied to the client address (after `[server] trusted_proxies`).

use crate::{parse_config, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use http::StatusCode;
use ipnet::IpNet;
use pingora::proxy::Session;
use serde::Deserialize;
use std::net::IpAddr;
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

/// Parse `1.2.3.4`, `10.0.0.0/8`, `::1` or `2001:db8::/32`.
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))
}

/// Parse a list of addresses/ranges, errors at `name[i]`.
pub fn parse_nets(list: &[String], name: &str, errors: &mut Vec<ConfigError>) -> Vec<IpNet> {
    let mut out = Vec::new();
    for (i, s) in list.iter().enumerate() {
        match parse_net(s) {
            Ok(n) => out.push(n),
            Err(e) => errors.push(ConfigError::new(format!("{name}[{i}]"), e)),
        }
    }
    out
}

/// Does any of `nets` contain `ip`? IPv4-mapped IPv6 addresses count as IPv4.
pub fn contains(nets: &[IpNet], ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    nets.iter().any(|n| n.contains(&ip))
}

/// The compiled `ip_restriction` plugin.
pub struct IpRestriction {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, _ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: IpConfig = parse_config(value).map_err(|e| vec![e])?;
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

    async fn request(&self, _session: &mut Session, ctx: &mut RequestCtx) -> Flow {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v4_v6_and_mapped() {
        let nets = vec![
            parse_net("10.0.0.0/8").unwrap(),
            parse_net("2001:db8::/32").unwrap(),
            parse_net("192.0.2.7").unwrap(),
        ];
        assert!(contains(&nets, "10.1.2.3".parse().unwrap()));
        assert!(contains(&nets, "::ffff:10.1.2.3".parse().unwrap()));
        assert!(contains(&nets, "2001:db8::1".parse().unwrap()));
        assert!(contains(&nets, "192.0.2.7".parse().unwrap()));
        assert!(!contains(&nets, "192.0.2.8".parse().unwrap()));
        assert!(!contains(&nets, "2001:db9::1".parse().unwrap()));
        assert!(parse_net("10.0.0.0/33").is_err());
    }
}
