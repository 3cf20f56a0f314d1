//! `mock`: answer with a configured status, headers and body, without an upstream.

use crate::{parse_config_all, Answer, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "mock";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MockConfig {
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    body: String,
    #[serde(default = "default_content_type")]
    content_type: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn default_status() -> u16 {
    200
}
fn default_content_type() -> String {
    "text/plain; charset=utf-8".to_string()
}

/// The compiled `mock` plugin: the whole answer is built once, at config load.
pub struct Mock {
    answer: Answer,
}

/// Constructor for the registry.
pub fn build(
    value: &toml::Value,
    _ctx: &crate::BuildCtx,
) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: MockConfig = parse_config_all(value)?;
    let mut errors = Vec::new();
    let status = match StatusCode::from_u16(cfg.status) {
        Ok(s) if s.as_u16() >= 200 => s,
        _ => {
            errors.push(ConfigError::new(
                "status",
                format!("{} is not a final HTTP status (200-999)", cfg.status),
            ));
            StatusCode::OK
        }
    };
    let mut headers = Vec::new();
    match HeaderValue::from_str(&cfg.content_type) {
        Ok(v) => headers.push((http::header::CONTENT_TYPE, v)),
        Err(_) => errors.push(ConfigError::new("content_type", "not a valid header value")),
    }
    for (k, v) in &cfg.headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(n), Ok(v)) => headers.push((n, v)),
            _ => errors.push(ConfigError::new(
                format!("headers.{k}"),
                "not a valid header name and value",
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(Mock {
        answer: Answer {
            status,
            headers,
            body: Bytes::from(cfg.body),
            code: None,
        },
    }))
}

#[async_trait]
impl Plugin for Mock {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Respond
    }

    async fn request(&self, _req: &RequestHeader, _ctx: &mut RequestCtx) -> Flow {
        Flow::Respond(self.answer.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validates_status_and_headers() {
        let v: toml::Value =
            toml::from_str("status = 42\n[headers]\n\"bad name\" = \"x\"").unwrap();
        let errs = build(&v, &Default::default()).err().unwrap();
        let paths: Vec<_> = errs.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["status", "headers.bad name"]);
        let v: toml::Value = toml::from_str("stauts = 200").unwrap();
        let errs = build(&v, &Default::default()).err().unwrap();
        assert!(errs[0].message.contains("unknown field `stauts`"));
        let v: toml::Value = toml::from_str("status = 201\nbody = \"hi\"").unwrap();
        assert!(build(&v, &Default::default()).is_ok());
    }
}
