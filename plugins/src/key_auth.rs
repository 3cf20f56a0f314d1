//! `key_auth`: authenticate by an API key in a header or a query parameter.

use crate::consumer::{Consumer, Consumers};
use crate::{parse_config_all, Answer, Auth, BuildCtx, ConfigError, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue, StatusCode};
use pingora::http::RequestHeader;
use serde::Deserialize;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "key_auth";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyAuthConfig {
    #[serde(default = "default_key_names")]
    key_names: Vec<String>,
    #[serde(default)]
    query_param: Option<String>,
    #[serde(default)]
    hide_credentials: bool,
    #[serde(default)]
    anonymous: Option<String>,
}

fn default_key_names() -> Vec<String> {
    vec!["apikey".to_string(), "x-api-key".to_string()]
}

/// The compiled `key_auth` plugin.
pub struct KeyAuth {
    headers: Vec<HeaderName>,
    query_param: Option<String>,
    hide_credentials: bool,
    anonymous: Option<Arc<Consumer>>,
    consumers: Arc<Consumers>,
}

const CHALLENGE: HeaderValue = HeaderValue::from_static("Key");

/// Constructor for the registry.
pub fn build(value: &toml::Value, ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: KeyAuthConfig = parse_config_all(value)?;
    let mut errors = Vec::new();
    let mut headers = Vec::new();
    for (i, n) in cfg.key_names.iter().enumerate() {
        match HeaderName::from_bytes(n.as_bytes()) {
            Ok(h) => headers.push(h),
            Err(_) => errors.push(ConfigError::new(
                format!("key_names[{i}]"),
                format!("{n:?} is not a header name"),
            )),
        }
    }
    if headers.is_empty() && cfg.query_param.is_none() {
        errors.push(ConfigError::new(
            "key_names",
            "set at least one header name or a query_param",
        ));
    }
    let anonymous = ctx
        .consumers
        .named(cfg.anonymous.as_deref(), "anonymous", &mut errors);
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(KeyAuth {
        headers,
        query_param: cfg.query_param.filter(|q| !q.is_empty()),
        hide_credentials: cfg.hide_credentials,
        anonymous,
        consumers: ctx.consumers.clone(),
    }))
}

fn unauthorized(code: &'static str, message: &str) -> Answer {
    Answer::error(StatusCode::UNAUTHORIZED, code, message)
        .with_header(http::header::WWW_AUTHENTICATE, CHALLENGE)
}

#[async_trait]
impl Plugin for KeyAuth {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Authentication
    }

    async fn authenticate(&self, req: &RequestHeader, _ctx: &mut RequestCtx) -> Auth {
        let in_headers = self
            .headers
            .iter()
            .flat_map(|h| req.headers.get_all(h).iter().map(|v| v.as_bytes()));
        let in_query = self
            .query_param
            .as_deref()
            .zip(req.uri.query())
            .into_iter()
            .flat_map(|(q, query)| crate::req::query_values(query, q).map(str::as_bytes));
        let mut keys = in_headers.chain(in_query);
        let presented = keys.next();
        if keys.next().is_some() {
            return Auth::Invalid(Answer::ambiguous_credentials(CHALLENGE));
        }
        match presented {
            None => Auth::Missing(unauthorized(
                "missing_credentials",
                "no API key found in the request",
            )),
            Some(key) => match self.consumers.by_key(key) {
                Some(identity) => Auth::Authenticated(identity),
                None => Auth::Invalid(unauthorized(
                    "invalid_credentials",
                    "the API key is not valid",
                )),
            },
        }
    }

    fn anonymous(&self) -> Option<&Arc<Consumer>> {
        self.anonymous.as_ref()
    }

    fn upstream_request(&self, req: &mut RequestHeader, _ctx: &mut RequestCtx) {
        if self.hide_credentials {
            for h in &self.headers {
                req.remove_header(h);
            }
            if let Some(q) = &self.query_param {
                crate::req::strip_query_param(req, q);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymous_must_exist() {
        let v: toml::Value = toml::from_str("anonymous = \"nobody\"").unwrap();
        let errs = build(&v, &BuildCtx::default()).err().unwrap();
        assert_eq!(errs[0].path, "anonymous");
    }
}
