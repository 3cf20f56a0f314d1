//! `headers`: remove, set and add request and response headers.
//!
//! Order within each direction is fixed: `remove`, then `set` (replace all values), then `add`
//! (append a value). Request changes apply to the request sent upstream, so the client's
//! original headers are still what other plugins saw.

use crate::{ConfigError, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use http::{HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "headers";

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeadersConfig {
    #[serde(default)]
    request: Ops,
    #[serde(default)]
    response: Ops,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Ops {
    #[serde(default)]
    remove: Vec<String>,
    #[serde(default)]
    set: BTreeMap<String, String>,
    #[serde(default)]
    add: BTreeMap<String, String>,
}

/// One direction's compiled operations.
#[derive(Default)]
struct CompiledOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledOps {
    fn compile(ops: &Ops, path: &str, errors: &mut Vec<ConfigError>) -> Self {
        let mut out = CompiledOps::default();
        for (i, n) in ops.remove.iter().enumerate() {
            match HeaderName::from_bytes(n.as_bytes()) {
                Ok(n) => out.remove.push(n),
                Err(_) => errors.push(ConfigError::new(
                    format!("{path}.remove[{i}]"),
                    format!("{n:?} is not a valid header name"),
                )),
            }
        }
        for (kind, map, dst) in [
            ("set", &ops.set, &mut out.set),
            ("add", &ops.add, &mut out.add),
        ] {
            for (k, v) in map {
                match (
                    HeaderName::from_bytes(k.as_bytes()),
                    HeaderValue::from_str(v),
                ) {
                    (Ok(n), Ok(v)) => dst.push((n, v)),
                    _ => errors.push(ConfigError::new(
                        format!("{path}.{kind}.{k}"),
                        "not a valid header name and value",
                    )),
                }
            }
        }
        out
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// The compiled `headers` plugin.
pub struct Headers {
    request: CompiledOps,
    response: CompiledOps,
}

/// Constructor for the registry.
pub fn build(
    value: &toml::Value,
    _ctx: &crate::BuildCtx,
) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: HeadersConfig = crate::parse_config_all(value)?;
    let mut errors = Vec::new();
    let request = CompiledOps::compile(&cfg.request, "request", &mut errors);
    let response = CompiledOps::compile(&cfg.response, "response", &mut errors);
    if request.is_empty() && response.is_empty() && errors.is_empty() {
        errors.push(ConfigError::new(
            "",
            "the headers plugin needs at least one of request.{remove,set,add} or response.{remove,set,add}",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(Headers { request, response }))
}

// Both header types expose the same three operations; a macro keeps one body for both.
macro_rules! apply_ops {
    ($ops:expr, $h:expr) => {{
        for n in &$ops.remove {
            $h.remove_header(n);
        }
        for (n, v) in &$ops.set {
            // Names and values were validated at load, so these cannot fail.
            let _ = $h.insert_header(n.clone(), v.clone());
        }
        for (n, v) in &$ops.add {
            let _ = $h.append_header(n.clone(), v.clone());
        }
    }};
}

#[async_trait]
impl Plugin for Headers {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Transform
    }

    fn upstream_request(&self, req: &mut RequestHeader, _ctx: &mut RequestCtx) {
        apply_ops!(self.request, req);
    }

    fn response(&self, resp: &mut ResponseHeader, _ctx: &mut RequestCtx) {
        apply_ops!(self.response, resp);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;

    #[test]
    fn remove_set_add_in_order() {
        let v: toml::Value = toml::from_str(
            "[response]\nremove = [\"server\"]\nset = { x-a = \"1\" }\nadd = { x-a = \"2\", x-b = \"3\" }",
        )
        .unwrap();
        let p = build(&v, &Default::default()).ok().unwrap();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("server", "up").unwrap();
        resp.insert_header("x-a", "0").unwrap();
        let mut ctx = RequestCtx::new("r".into(), None, RequestId::generate());
        p.response(&mut resp, &mut ctx);
        assert!(resp.headers.get("server").is_none());
        let xa: Vec<_> = resp.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(resp.headers.get("x-b").unwrap(), "3");
    }

    #[test]
    fn rejects_empty_and_bad_names() {
        assert!(build(&toml::Value::Table(Default::default()), &Default::default()).is_err());
        let v: toml::Value = toml::from_str("[request]\nremove = [\"a b\"]").unwrap();
        assert_eq!(
            build(&v, &Default::default()).err().unwrap()[0].path,
            "request.remove[0]"
        );
    }
}
