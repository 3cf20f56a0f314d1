//! `cors`: answer CORS preflights at the gateway and add CORS headers to responses.
//!
//! - A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) never reaches
//!   the upstream: an allowed origin gets 204 with the `Access-Control-Allow-*` headers; a
//!   disallowed origin or method gets 403 `cors_forbidden`.
//! - Other requests with an allowed `Origin` get `Access-Control-Allow-Origin` (and
//!   credentials / exposed headers) on the response; a disallowed origin is proxied without
//!   CORS headers, so the browser refuses to hand the response to the page.
//! - `Vary: Origin` is on every response of the route.
//! - With `credentials = true` the origin is echoed, never a literal `*`; `*` itself is then
//!   a config error, and the `null` origin is never allowed.
//! - `~regex` origins must match the whole origin (they are anchored).

use crate::{parse_config_all, Answer, BuildCtx, ConfigError, Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use bytes::Bytes;
use http::{header, HeaderValue, Method, StatusCode};
use pingora::http::{RequestHeader, ResponseHeader};
use regex::Regex;
use serde::Deserialize;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "cors";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorsConfig {
    #[serde(default = "default_origins")]
    origins: Vec<String>,
    #[serde(default = "default_methods")]
    methods: Vec<String>,
    #[serde(default)]
    headers: Option<Vec<String>>,
    #[serde(default)]
    exposed_headers: Vec<String>,
    #[serde(default)]
    credentials: bool,
    #[serde(default = "default_max_age")]
    max_age_seconds: u64,
}

fn default_origins() -> Vec<String> {
    vec!["*".to_string()]
}
fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "PUT", "PATCH", "POST", "DELETE"]
        .map(String::from)
        .to_vec()
}
fn default_max_age() -> u64 {
    600
}

enum OriginRule {
    Any,
    Exact(String),
    Regex(Regex),
}

/// The compiled `cors` plugin.
pub struct Cors {
    origins: Vec<OriginRule>,
    any_origin: bool,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    headers_value: Option<HeaderValue>,
    exposed_value: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// Constructor for the registry.
pub fn build(value: &toml::Value, _ctx: &BuildCtx) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: CorsConfig = parse_config_all(value)?;
    let mut errors = Vec::new();
    let mut origins = Vec::new();
    for (i, o) in cfg.origins.iter().enumerate() {
        if o == "*" {
            origins.push(OriginRule::Any);
        } else if let Some(re) = o.strip_prefix('~') {
            // Anchored: a pattern must match the whole origin, or
            // `https://x.trusted.com.evil.net` would pass for `https://.*\.trusted\.com`.
            match Regex::new(&format!("^(?:{re})$")) {
                Ok(r) => origins.push(OriginRule::Regex(r)),
                Err(e) => errors.push(ConfigError::new(
                    format!("origins[{i}]"),
                    format!("invalid regex: {e}"),
                )),
            }
        } else if o.starts_with("http://") || o.starts_with("https://") {
            origins.push(OriginRule::Exact(
                o.trim_end_matches('/').to_ascii_lowercase(),
            ));
        } else {
            errors.push(ConfigError::new(
                format!("origins[{i}]"),
                format!("{o:?}: expected \"*\", \"https://host[:port]\" or \"~regex\""),
            ));
        }
    }
    let mut methods = Vec::new();
    for (i, m) in cfg.methods.iter().enumerate() {
        match Method::from_bytes(m.to_ascii_uppercase().as_bytes()) {
            Ok(m) => methods.push(m),
            Err(_) => errors.push(ConfigError::new(
                format!("methods[{i}]"),
                format!("{m:?} is not a method"),
            )),
        }
    }
    let list = |v: &[String], name: &str, errors: &mut Vec<ConfigError>| -> Option<HeaderValue> {
        if v.is_empty() {
            return None;
        }
        HeaderValue::from_str(&v.join(", "))
            .map_err(|_| errors.push(ConfigError::new(name, "not valid header names")))
            .ok()
    };
    let methods_value = list(
        &methods.iter().map(|m| m.to_string()).collect::<Vec<_>>(),
        "methods",
        &mut errors,
    )
    .unwrap_or(HeaderValue::from_static("GET"));
    let headers_value = cfg
        .headers
        .as_ref()
        .and_then(|h| list(h, "headers", &mut errors));
    let exposed_value = list(&cfg.exposed_headers, "exposed_headers", &mut errors);
    if cfg.credentials && origins.iter().any(|o| matches!(o, OriginRule::Any)) {
        errors.push(ConfigError::new(
            "origins",
            "\"*\" cannot be combined with credentials = true (any site could read responses made with the user's cookies); list the allowed origins",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(Cors {
        any_origin: origins.iter().any(|o| matches!(o, OriginRule::Any)),
        origins,
        methods,
        methods_value,
        headers_value,
        exposed_value,
        credentials: cfg.credentials,
        max_age: HeaderValue::from(cfg.max_age_seconds),
    }))
}

/// Set when the request's origin is allowed: the value for `Access-Control-Allow-Origin`.
#[derive(Clone)]
struct AllowedOrigin(HeaderValue);

impl Cors {
    fn origin_allowed(&self, origin: &str) -> bool {
        // The opaque `null` origin (sandboxed frames, `file:`, redirects) is anyone's: never
        // trusted with credentials.
        if self.credentials && origin.eq_ignore_ascii_case("null") {
            return false;
        }
        let lower = origin.to_ascii_lowercase();
        self.origins.iter().any(|rule| match rule {
            OriginRule::Any => true,
            OriginRule::Exact(o) => *o == lower,
            OriginRule::Regex(r) => r.is_match(origin),
        })
    }

    /// `*` only when any origin is allowed and credentials are off; else the origin itself.
    fn allow_origin_value(&self, origin: &HeaderValue) -> HeaderValue {
        if self.any_origin && !self.credentials {
            HeaderValue::from_static("*")
        } else {
            origin.clone()
        }
    }
}

fn forbidden(message: &str) -> Answer {
    Answer::error(StatusCode::FORBIDDEN, "cors_forbidden", message)
}

#[async_trait]
impl Plugin for Cors {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Cors
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let Some(origin) = req.headers.get(header::ORIGIN).cloned() else {
            return Flow::Continue;
        };
        let allowed = origin.to_str().is_ok_and(|o| self.origin_allowed(o));
        let preflight_method = req
            .headers
            .get(header::ACCESS_CONTROL_REQUEST_METHOD)
            .cloned();
        let is_preflight = req.method == Method::OPTIONS && preflight_method.is_some();
        if !allowed {
            return if is_preflight {
                Flow::Respond(forbidden("origin not allowed"))
            } else {
                Flow::Continue
            };
        }
        ctx.extensions
            .insert(AllowedOrigin(self.allow_origin_value(&origin)));
        if !is_preflight {
            return Flow::Continue;
        }
        let method_ok = preflight_method
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        if !method_ok {
            return Flow::Respond(forbidden("method not allowed by CORS"));
        }
        let mut answer = Answer {
            status: StatusCode::NO_CONTENT,
            headers: vec![
                (
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    self.methods_value.clone(),
                ),
                (header::ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
            ],
            body: Bytes::new(),
            code: None,
        };
        // Without a configured list, allow what the browser asks for (Kong's behaviour).
        let allow_headers = self.headers_value.clone().or_else(|| {
            req.headers
                .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
                .cloned()
        });
        if let Some(h) = allow_headers {
            answer
                .headers
                .push((header::ACCESS_CONTROL_ALLOW_HEADERS, h));
        }
        Flow::Respond(answer)
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        let _ = resp.append_header(header::VARY, HeaderValue::from_static("Origin"));
        let Some(AllowedOrigin(value)) = ctx.extensions.get::<AllowedOrigin>().cloned() else {
            return;
        };
        let _ = resp.insert_header(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
        if self.credentials {
            let _ = resp.insert_header(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(e) = &self.exposed_value {
            let _ = resp.insert_header(header::ACCESS_CONTROL_EXPOSE_HEADERS, e.clone());
        }
    }
}
