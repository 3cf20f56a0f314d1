//! `response_transform`: change response bodies on their way to the client.
//!
//! JSON bodies (`application/json`, `*/*+json`): `json.remove` then `json.set`, at dotted
//! paths into objects. Every matched body (JSON included, after the JSON operations):
//! `regex` replacements, in order, on the whole body. The body is buffered (at most
//! `max_body_bytes`) and sent once transformed, without `Content-Length`.
//!
//! Passed through unchanged: a body over `max_body_bytes` (never truncated), a JSON body that
//! does not parse, a body with a `Content-Encoding`, `text/event-stream` (a stream, not a
//! document), statuses not selected (2xx except 206 by default), `HEAD` responses.

use crate::config_error::ConfigError;
use crate::media::{self, MediaTypes};
use crate::metrics::METRICS;
use crate::{Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use regex::bytes::Regex;
use serde::Deserialize;
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Registered name.
pub const NAME: &str = "response_transform";

/// Largest body buffered by default (1 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;

/// The media types transformed when `content_types` is not set.
pub const DEFAULT_CONTENT_TYPES: &[&str] = &["application/json", "*/*+json", "text/*"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    json: JsonConfig,
    #[serde(default)]
    regex: Vec<RegexConfig>,
    content_types: Option<Vec<String>>,
    #[serde(default = "default_max")]
    max_body_bytes: usize,
    statuses: Option<Vec<u16>>,
}

fn default_max() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JsonConfig {
    #[serde(default)]
    set: BTreeMap<String, toml::Value>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegexConfig {
    pattern: String,
    #[serde(default)]
    replace: String,
}

/// The compiled `response_transform` plugin.
pub struct ResponseTransform {
    remove: Vec<Vec<String>>,
    set: Vec<(Vec<String>, Value)>,
    regex: Vec<(Regex, String)>,
    types: MediaTypes,
    max_body_bytes: usize,
    /// `None`: every 2xx but 206.
    statuses: Option<Vec<u16>>,
}

/// Set by the request hook: the request phase reached this plugin.
#[derive(Clone, Copy)]
struct Seen {
    head: bool,
}

/// A body being buffered.
#[derive(Clone)]
struct Pending {
    buf: Vec<u8>,
    json: bool,
    /// Over the bound: the rest flows through untouched.
    passthrough: bool,
}

/// Constructor for the registry.
pub fn build(
    value: &toml::Value,
    _ctx: &crate::BuildCtx,
) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: Config = crate::parse_config_all(value)?;
    let mut errors = Vec::new();
    let mut remove = Vec::new();
    for (i, p) in cfg.json.remove.iter().enumerate() {
        match json_path(p) {
            Some(path) => remove.push(path),
            None => errors.push(ConfigError::new(
                format!("json.remove[{i}]"),
                format!("{p:?} is not a dotted path of object keys (a.b.c)"),
            )),
        }
    }
    let mut set = Vec::new();
    for (p, v) in &cfg.json.set {
        let at = format!("json.set.{}", toml_key(p));
        match (json_path(p), to_json(v)) {
            (Some(path), Ok(v)) => set.push((path, v)),
            (None, _) => errors.push(ConfigError::new(
                at,
                "not a dotted path of object keys (a.b.c)",
            )),
            (_, Err(why)) => errors.push(ConfigError::new(at, why)),
        }
    }
    let mut regex = Vec::new();
    for (i, r) in cfg.regex.iter().enumerate() {
        match Regex::new(&r.pattern) {
            Ok(re) => regex.push((re, r.replace.clone())),
            Err(e) => errors.push(ConfigError::new(
                format!("regex[{i}].pattern"),
                format!("not a valid regular expression: {e}"),
            )),
        }
    }
    let types = MediaTypes::from_config(
        cfg.content_types.as_deref(),
        DEFAULT_CONTENT_TYPES,
        "content_types",
        &mut errors,
    );
    if cfg.max_body_bytes == 0 {
        errors.push(ConfigError::new("max_body_bytes", "must be at least 1"));
    }
    if let Some(list) = &cfg.statuses {
        for (i, s) in list.iter().enumerate() {
            if !(200..=599).contains(s) || matches!(s, 204 | 206 | 304) {
                errors.push(ConfigError::new(
                    format!("statuses[{i}]"),
                    format!(
                        "{s}: must be 200-599, and a status with a whole body (not 204, 206, 304)"
                    ),
                ));
            }
        }
    }
    if cfg.json.set.is_empty() && cfg.json.remove.is_empty() && cfg.regex.is_empty() {
        errors.push(ConfigError::new(
            "",
            "the response_transform plugin needs at least one of json.set, json.remove or regex",
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(ResponseTransform {
        remove,
        set,
        regex,
        types,
        max_body_bytes: cfg.max_body_bytes,
        statuses: cfg.statuses,
    }))
}

/// A key as written in a TOML path (quoted when it is not a bare key).
fn toml_key(k: &str) -> String {
    let bare = !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

/// `a.b.c` → `["a", "b", "c"]`; `None` when a segment is empty.
fn json_path(p: &str) -> Option<Vec<String>> {
    let segs: Vec<String> = p.split('.').map(str::to_string).collect();
    (!segs.iter().any(String::is_empty)).then_some(segs)
}

/// A TOML value as JSON (a date-time becomes its RFC 3339 text).
fn to_json(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(i) => Value::from(*i),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(Value::Number)
            .ok_or_else(|| format!("{f} has no JSON form"))?,
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.iter().map(to_json).collect::<Result<_, _>>()?),
        toml::Value::Table(t) => Value::Object(
            t.iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<Map<_, _>, String>>()?,
        ),
    })
}

/// Set `value` at `path`, making missing objects on the way; false when a value on the
/// way is not an object.
fn set_at(root: &mut Value, path: &[String], value: Value) -> bool {
    let Some((last, init)) = path.split_last() else {
        return false;
    };
    let mut cur = root;
    for seg in init {
        let Value::Object(map) = cur else {
            return false;
        };
        cur = map
            .entry(seg.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    match cur {
        Value::Object(map) => {
            map.insert(last.clone(), value);
            true
        }
        _ => false,
    }
}

/// Remove the value at `path`, if there is one.
fn remove_at(root: &mut Value, path: &[String]) {
    let Some((last, init)) = path.split_last() else {
        return;
    };
    let mut cur = root;
    for seg in init {
        match cur {
            Value::Object(map) => match map.get_mut(seg) {
                Some(next) => cur = next,
                None => return,
            },
            _ => return,
        }
    }
    if let Value::Object(map) = cur {
        map.remove(last);
    }
}

impl ResponseTransform {
    fn has_json_ops(&self) -> bool {
        !self.set.is_empty() || !self.remove.is_empty()
    }

    fn status_selected(&self, status: u16) -> bool {
        match &self.statuses {
            Some(list) => list.contains(&status),
            None => (200..300).contains(&status) && !matches!(status, 204 | 206),
        }
    }

    /// Should this response's body be buffered and transformed? `Some(is_json)` if so.
    fn selects(&self, resp: &ResponseHeader) -> Option<bool> {
        if !self.status_selected(resp.status.as_u16()) || media::is_encoded(resp) {
            return None;
        }
        let mt = media::media_type(resp)?;
        if mt == "text/event-stream" || !self.types.matches(&mt) {
            return None;
        }
        let json = media::is_json(&mt);
        (self.has_json_ops() && json || !self.regex.is_empty()).then_some(json)
    }

    /// The transformed body, or `None` when it must go out as it came.
    fn apply(&self, body: &[u8], json: bool) -> Option<Vec<u8>> {
        let mut out: Cow<'_, [u8]> = Cow::Borrowed(body);
        if json && self.has_json_ops() {
            let mut v: Value = serde_json::from_slice(body).ok()?;
            for p in &self.remove {
                remove_at(&mut v, p);
            }
            for (p, value) in &self.set {
                set_at(&mut v, p, value.clone());
            }
            out = Cow::Owned(serde_json::to_vec(&v).ok()?);
        }
        for (re, rep) in &self.regex {
            if let Cow::Owned(o) = re.replace_all(&out, rep.as_bytes()) {
                out = Cow::Owned(o);
            }
        }
        Some(out.into_owned())
    }
}

fn count(route: &str, result: &str) {
    METRICS
        .response_transforms
        .with_label_values(&[route, result])
        .inc();
}

#[async_trait]
impl Plugin for ResponseTransform {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Transform
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> crate::Flow {
        ctx.extensions.insert(Seen {
            head: req.method == http::Method::HEAD,
        });
        crate::Flow::Continue
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        if resp.status.is_informational() {
            return;
        }
        if ctx.extensions.get::<Seen>().is_none_or(|s| s.head) {
            return;
        }
        let Some(json) = self.selects(resp) else {
            return;
        };
        let known = media::content_length(resp);
        if known.is_some_and(|n| n > self.max_body_bytes as u64) {
            count(&ctx.route, "too_large");
            return;
        }
        media::body_changes(resp);
        let capacity = known.map_or(0, |n| n as usize);
        ctx.extensions.insert(Pending {
            buf: Vec::with_capacity(capacity),
            json,
            passthrough: false,
        });
    }

    fn wants_response_body(&self) -> bool {
        true
    }

    fn response_body(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        let Some(p) = ctx.extensions.get_mut::<Pending>() else {
            return;
        };
        if p.passthrough {
            return;
        }
        if let Some(chunk) = body.take() {
            if p.buf.len() + chunk.len() > self.max_body_bytes {
                // Over the bound: what was held goes out first, then everything as it comes.
                let mut out = std::mem::take(&mut p.buf);
                out.extend_from_slice(&chunk);
                p.passthrough = true;
                *body = Some(Bytes::from(out));
                count(&ctx.route, "too_large");
                return;
            }
            p.buf.extend_from_slice(&chunk);
        }
        if !end_of_stream {
            return;
        }
        let held = std::mem::take(&mut p.buf);
        let json = p.json;
        p.passthrough = true;
        match self.apply(&held, json) {
            Some(out) => {
                *body = Some(Bytes::from(out));
                count(&ctx.route, "transformed");
            }
            None => {
                *body = Some(Bytes::from(held));
                count(&ctx.route, "invalid");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;

    fn plugin(text: &str) -> Arc<dyn Plugin> {
        let v: toml::Value = toml::from_str(text).unwrap();
        match build(&v, &Default::default()) {
            Ok(p) => p,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn errors(text: &str) -> Vec<String> {
        let v: toml::Value = toml::from_str(text).unwrap();
        match build(&v, &Default::default()) {
            Ok(_) => panic!("accepted {text}"),
            Err(e) => e.iter().map(|e| e.path.clone()).collect(),
        }
    }

    /// Run request, response and body hooks over `chunks`; the head and what the client gets.
    fn run(
        p: &Arc<dyn Plugin>,
        method: &str,
        mut resp: ResponseHeader,
        chunks: &[&[u8]],
    ) -> (ResponseHeader, Vec<u8>) {
        let mut ctx = RequestCtx::new("r".into(), None, RequestId::generate());
        let req = RequestHeader::build(method, b"/", None).unwrap();
        futures_lite(p.request(&req, &mut ctx));
        p.response(&mut resp, &mut ctx);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut b = Some(Bytes::copy_from_slice(c));
            p.response_body(&mut b, i + 1 == chunks.len(), &mut ctx);
            if let Some(b) = b {
                out.extend_from_slice(&b);
            }
        }
        (resp, out)
    }

    /// Poll a future that never waits.
    fn futures_lite<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(f)
    }

    fn json_resp(len: Option<usize>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", "application/json; charset=utf-8")
            .unwrap();
        if let Some(n) = len {
            r.insert_header("content-length", n).unwrap();
        }
        r.insert_header("etag", "\"v1\"").unwrap();
        r
    }

    #[test]
    fn json_set_and_remove_at_paths() {
        let p = plugin(
            "json.set = { \"a.b\" = 1, \"new.deep.x\" = \"y\", top = [true] }\njson.remove = [\"secret\", \"a.c\", \"missing.x\"]",
        );
        let body = br#"{"a":{"b":0,"c":2,"d":3},"secret":"s","keep":1}"#;
        let (resp, out) = run(
            &p,
            "GET",
            json_resp(Some(body.len())),
            &[&body[..10], &body[10..]],
        );
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":{"b":1,"d":3},"keep":1,"new":{"deep":{"x":"y"}},"top":[true]})
        );
        assert!(resp.headers.get("content-length").is_none());
        assert_eq!(resp.headers.get("etag").unwrap(), "W/\"v1\"");
    }

    #[test]
    fn paths_through_non_objects_are_left_alone() {
        let mut v = serde_json::json!({"a": 1, "l": [1]});
        assert!(!set_at(&mut v, &["a".into(), "b".into()], Value::Null));
        remove_at(&mut v, &["l".into(), "0".into()]);
        assert_eq!(v, serde_json::json!({"a": 1, "l": [1]}));
        let mut top = serde_json::json!([1]);
        assert!(!set_at(&mut top, &["a".into()], Value::Null));
    }

    #[test]
    fn regex_on_text_and_bounds() {
        let p = plugin("max_body_bytes = 16\n[[regex]]\npattern = 'wor(ld)'\nreplace = 'WOR$1!'");
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", "text/plain").unwrap();
        let (_, out) = run(&p, "GET", r.clone(), &[b"hello ", b"world"]);
        assert_eq!(out, b"hello WORld!");
        // Over the bound: everything passes, unchanged and whole.
        let (_, out) = run(&p, "GET", r.clone(), &[b"hello world ", b"world world"]);
        assert_eq!(out, b"hello world world world");
        // Known to be too large: untouched, Content-Length kept.
        r.insert_header("content-length", "20").unwrap();
        let (resp, _) = run(&p, "GET", r, &[b"x"]);
        assert_eq!(resp.headers.get("content-length").unwrap(), "20");
    }

    #[test]
    fn passes_through_what_it_must_not_touch() {
        let p = plugin("json.remove = [\"a\"]");
        let body = br#"{"a":1}"#;
        // Not JSON although it says so.
        let (_, out) = run(&p, "GET", json_resp(None), &[b"{not json"]);
        assert_eq!(out, b"{not json");
        // Compressed.
        let mut r = json_resp(Some(body.len()));
        r.insert_header("content-encoding", "gzip").unwrap();
        let (resp, out) = run(&p, "GET", r, &[body]);
        assert_eq!(out, body);
        assert!(resp.headers.get("content-length").is_some());
        // Not a 2xx, a HEAD, an event stream, text without regex rules.
        let mut r = json_resp(Some(body.len()));
        r.set_status(404).unwrap();
        assert_eq!(run(&p, "GET", r, &[body]).1, body);
        let (resp, _) = run(&p, "HEAD", json_resp(Some(7)), &[]);
        assert!(resp.headers.get("content-length").is_some());
        for ct in ["text/event-stream", "text/plain"] {
            let mut r = ResponseHeader::build(200, None).unwrap();
            r.insert_header("content-type", ct).unwrap();
            assert_eq!(run(&p, "GET", r, &[body]).1, body);
        }
    }

    #[test]
    fn config_errors_carry_paths() {
        assert_eq!(
            errors(
                "[[regex]]\npattern = '('\n[[regex]]\npattern = 'ok'\n[[regex]]\npattern = '[z-a]'"
            ),
            ["regex[0].pattern", "regex[2].pattern"]
        );
        assert_eq!(
            errors("json.remove = ['a..b']\njson.set = { '.x' = 1 }"),
            ["json.remove[0]", "json.set.\".x\""]
        );
        assert_eq!(
            errors("json.remove = ['a']\nstatuses = [200, 304]\nmax_body_bytes = 0\ncontent_types = ['nope']"),
            ["content_types[0]", "max_body_bytes", "statuses[1]"]
        );
        assert_eq!(errors(""), [""]);
        assert_eq!(errors("json.remove = ['a']\nbogus = 1"), ["bogus"]);
    }
}
