//! Model fallback: a route's ordered targets (`fallback`), what moves a request to the next
//! one (`fallback_on`), and the rewrite of the JSON body's `model` for a target.

use crate::config::schema::FallbackTargetSection;
use crate::upstream::UpstreamPool;
use bytes::Bytes;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_plugins::ConfigError;

/// One target of the list.
pub struct Target {
    /// Where the request goes.
    pub upstream: Arc<UpstreamPool>,
    /// The `model` written into the JSON body for this target, as a JSON string.
    pub model: Option<Bytes>,
}

/// What moves a request to the next target.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Triggers {
    /// A connect failure (after the upstream's own `retries`), no backend left, an open
    /// circuit, a concurrency limit's refusal.
    pub connect: bool,
    /// No response byte within the attempt's read timeout or `first_byte_timeout_ms`.
    pub timeout: bool,
    /// A 429 answer.
    pub too_many: bool,
    /// Any 5xx answer.
    pub any_5xx: bool,
    /// These 5xx answers.
    pub statuses: Vec<u16>,
}

impl Triggers {
    /// Does an answer with `status` move the request on?
    pub fn status(&self, status: u16) -> bool {
        (status == 429 && self.too_many)
            || ((500..600).contains(&status) && (self.any_5xx || self.statuses.contains(&status)))
    }
}

/// The compiled fallback of a route.
pub struct Fallback {
    /// The targets in order; the first is the route's default target.
    pub targets: Vec<Target>,
    /// `fallback_on`.
    pub on: Triggers,
    /// Send `X-Tollgate-Upstream`.
    pub header: bool,
    /// Some target rewrites `model`, so the body must be read ahead.
    pub rewrites: bool,
}

/// The metric label of a status trigger.
pub fn status_cause(status: u16) -> &'static str {
    if status == 429 {
        "429"
    } else {
        "5xx"
    }
}

impl Fallback {
    /// Compile `targets` and `on` (at `at` = `routes[i]`) against the known upstreams.
    pub fn compile(
        targets: &[FallbackTargetSection],
        on: &[String],
        header: bool,
        at: &str,
        upstreams: &HashMap<String, Arc<UpstreamPool>>,
        errors: &mut Vec<ConfigError>,
    ) -> Option<Fallback> {
        if targets.is_empty() {
            return None;
        }
        let mut out = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            let model = match &t.model {
                Some(m) if m.is_empty() => {
                    errors.push(ConfigError::new(
                        format!("{at}.fallback[{i}].model"),
                        "must not be empty",
                    ));
                    None
                }
                Some(m) => serde_json::to_vec(m).ok().map(Bytes::from),
                None => None,
            };
            match upstreams.get(&t.upstream) {
                Some(u) => out.push(Target {
                    upstream: u.clone(),
                    model,
                }),
                None => errors.push(ConfigError::new(
                    format!("{at}.fallback[{i}].upstream"),
                    format!(
                        "no upstream named {:?} (define it in [[upstreams]])",
                        t.upstream
                    ),
                )),
            }
        }
        let mut triggers = Triggers::default();
        for (i, c) in on.iter().enumerate() {
            match c.as_str() {
                "connect" => triggers.connect = true,
                "timeout" => triggers.timeout = true,
                "429" => triggers.too_many = true,
                "5xx" => triggers.any_5xx = true,
                s => match s.parse::<u16>() {
                    Ok(n) if (500..600).contains(&n) => triggers.statuses.push(n),
                    _ => errors.push(ConfigError::new(
                        format!("{at}.fallback_on[{i}]"),
                        format!("{s:?}: expected connect, timeout, 429, 5xx or a 5xx status"),
                    )),
                },
            }
        }
        Some(Fallback {
            rewrites: out.iter().any(|t| t.model.is_some()),
            targets: out,
            on: triggers,
            header,
        })
    }
}

/// `body` with its top-level `model` string replaced by `model` (a JSON string), every other
/// byte as it was. `None` when the body is not a JSON object with exactly one `model`
/// string: it is then sent unchanged.
pub fn rewrite_model(body: &[u8], model: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(body).ok()?;
    let mut de = serde_json::Deserializer::from_str(text);
    let span = de.deserialize_map(ModelSpan { base: text }).ok()??;
    de.end().ok()?;
    let (start, end) = span;
    let mut out = Vec::with_capacity(body.len() - (end - start) + model.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(model);
    out.extend_from_slice(&body[end..]);
    Some(Bytes::from(out))
}

/// Finds the byte span of the top-level `model` string in the text at `base`.
struct ModelSpan<'a> {
    base: &'a str,
}

impl<'de> Visitor<'de> for ModelSpan<'de> {
    type Value = Option<(usize, usize)>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut span = None;
        let mut seen = 0;
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let value: &'de RawValue = map.next_value()?;
            if key == "model" {
                seen += 1;
                let raw = value.get();
                if raw.starts_with('"') {
                    let start = raw.as_ptr() as usize - self.base.as_ptr() as usize;
                    span = Some((start, start + raw.len()));
                }
            }
        }
        // Two `model` keys: backends disagree on which counts; do not guess.
        Ok(if seen == 1 { span } else { None })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_only_the_model_bytes() {
        let body =
            br#"{ "messages": [{"role":"user","content":"model"}], "model" : "gpt-4o", "n":1}"#;
        let out = rewrite_model(body, br#""llama-3-70b""#);
        assert_eq!(
            out.as_deref(),
            Some(
                &br#"{ "messages": [{"role":"user","content":"model"}], "model" : "llama-3-70b", "n":1}"#[..]
            )
        );
    }

    #[test]
    fn leaves_other_bodies_alone() {
        assert_eq!(rewrite_model(b"not json", b"\"m\""), None);
        assert_eq!(rewrite_model(br#"{"n":1}"#, b"\"m\""), None);
        assert_eq!(rewrite_model(br#"{"model":1}"#, b"\"m\""), None);
        assert_eq!(
            rewrite_model(br#"{"model":"a","model":"b"}"#, b"\"m\""),
            None
        );
        assert_eq!(rewrite_model(br#"["model"]"#, b"\"m\""), None);
        assert_eq!(rewrite_model(br#"{"model":"a"} x"#, b"\"m\""), None);
    }

    #[test]
    fn triggers_by_status() {
        let t = Triggers {
            too_many: true,
            statuses: vec![503],
            ..Triggers::default()
        };
        assert!(t.status(429) && t.status(503));
        assert!(!t.status(500) && !t.status(404));
    }
}
