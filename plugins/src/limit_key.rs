//! What a limit counts by: `ip`, `consumer`, `route`, `path`, `header:<name>`, or several of
//! them joined (`["consumer", "header:x-tenant"]`).

use crate::{ConfigError, RequestCtx};
use http::HeaderName;
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::fmt::Write;

/// Key parts as written in TOML: one string or a list.
#[derive(Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum LimitBySpec {
    /// One part.
    One(String),
    /// Several parts, joined.
    Many(Vec<String>),
}

impl Default for LimitBySpec {
    fn default() -> Self {
        LimitBySpec::One("ip".to_string())
    }
}

#[derive(Debug, Clone)]
enum Part {
    Ip,
    Consumer,
    Route,
    Path,
    Header(HeaderName),
}

/// A compiled key definition.
#[derive(Debug, Clone)]
pub struct LimitKey {
    parts: Vec<Part>,
    /// The text it was compiled from, for counter identity.
    pub spec: String,
}

/// The bucket shared by requests that have no value for the key.
pub const UNKNOWN: &str = "unknown";

impl LimitKey {
    /// Compile `limit_by`; errors at `path`.
    pub fn compile(spec: &LimitBySpec, path: &str) -> Result<Self, ConfigError> {
        let list: Vec<&str> = match spec {
            LimitBySpec::One(s) => vec![s.as_str()],
            LimitBySpec::Many(v) => v.iter().map(String::as_str).collect(),
        };
        if list.is_empty() {
            return Err(ConfigError::new(path, "limit_by needs at least one part"));
        }
        let mut parts = Vec::new();
        for s in &list {
            parts.push(match *s {
                "ip" => Part::Ip,
                "consumer" => Part::Consumer,
                "route" => Part::Route,
                "path" => Part::Path,
                other => {
                    match other
                        .strip_prefix("header:")
                        .map(|h| HeaderName::from_bytes(h.as_bytes()))
                    {
                        Some(Ok(h)) => Part::Header(h),
                        _ => {
                            return Err(ConfigError::new(
                                path,
                                format!(
                                "{other:?}: expected ip, consumer, route, path or header:<name>"
                            ),
                            ))
                        }
                    }
                }
            });
        }
        Ok(LimitKey {
            parts,
            spec: list.join("+"),
        })
    }

    /// The key of a request. A part with no value counts as [`UNKNOWN`], so requests without
    /// it share one bucket instead of escaping the limit; `consumer` falls back to the IP for
    /// anonymous requests.
    pub fn extract(&self, req: &RequestHeader, ctx: &RequestCtx) -> String {
        let mut out = String::with_capacity(48);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('|');
            }
            match part {
                Part::Ip => push_ip(&mut out, ctx),
                Part::Consumer => match &ctx.identity {
                    Some(id) if !id.anonymous => {
                        out.push_str("c:");
                        out.push_str(&id.consumer.username);
                    }
                    _ => push_ip(&mut out, ctx),
                },
                Part::Route => out.push_str(&ctx.route),
                Part::Path => out.push_str(req.uri.path()),
                Part::Header(h) => match req.headers.get(h).and_then(|v| v.to_str().ok()) {
                    Some(v) if !v.is_empty() => out.push_str(v),
                    _ => out.push_str(UNKNOWN),
                },
            }
        }
        out
    }
}

fn push_ip(out: &mut String, ctx: &RequestCtx) {
    match ctx.client_ip {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push_str(UNKNOWN),
    }
}
