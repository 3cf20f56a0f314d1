//! Response-head helpers shared by the plugins that change response bodies
//! (`response_transform`, `compress`): media types and the lists that select them, and the
//! headers a changed body invalidates.

use crate::config_error::ConfigError;
use http::header::{self, HeaderValue};
use pingora::http::ResponseHeader;

/// The response's media type (`type/subtype`), lower case, without parameters.
pub fn media_type(resp: &ResponseHeader) -> Option<String> {
    let v = resp.headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mt = v.split(';').next().unwrap_or("").trim();
    (!mt.is_empty()).then(|| mt.to_ascii_lowercase())
}

/// `application/json` or any `*/*+json`.
pub fn is_json(media_type: &str) -> bool {
    media_type == "application/json" || media_type.ends_with("+json")
}

/// One entry of a `content_types` list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    /// `type/subtype`.
    Exact(String),
    /// `type/*`.
    Type(String),
    /// `*/*+suffix`: any structured-syntax suffix (`*/*+json`).
    Suffix(String),
}

/// A `content_types` list: media types (`application/json`), whole types (`text/*`) and
/// structured-syntax suffixes (`*/*+json`), compared without case and parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaTypes(Vec<Pattern>);

impl MediaTypes {
    /// A plugin's `content_types` key: the configured list (not empty; errors carry
    /// `path[i]`), or `default` when the key is absent.
    pub fn from_config(
        list: Option<&[String]>,
        default: &[&str],
        path: &str,
        errors: &mut Vec<ConfigError>,
    ) -> MediaTypes {
        match list {
            Some([]) => {
                errors.push(ConfigError::new(path, "must list at least one media type"));
                MediaTypes::of(&[])
            }
            Some(list) => MediaTypes::parse(list, path, errors),
            None => MediaTypes::of(default),
        }
    }

    /// Parse `list`; errors carry `path[i]`.
    pub fn parse(list: &[String], path: &str, errors: &mut Vec<ConfigError>) -> MediaTypes {
        let mut out = Vec::new();
        for (i, raw) in list.iter().enumerate() {
            let s = raw.trim().to_ascii_lowercase();
            let bad =
                |why: &str| ConfigError::new(format!("{path}[{i}]"), format!("{raw:?}: {why}"));
            let Some((ty, sub)) = s.split_once('/') else {
                errors.push(bad("not a media type (type/subtype, type/* or */*+suffix)"));
                continue;
            };
            let token = |t: &str| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
            };
            if ty == "*" {
                match sub.strip_prefix("*+") {
                    Some(suffix) if token(suffix) => {
                        out.push(Pattern::Suffix(format!("+{suffix}")))
                    }
                    _ => errors.push(bad("only */*+suffix may start with *")),
                }
            } else if !token(ty) {
                errors.push(bad("bad type"));
            } else if sub == "*" {
                out.push(Pattern::Type(format!("{ty}/")));
            } else if token(sub) {
                out.push(Pattern::Exact(s.clone()));
            } else {
                errors.push(bad("bad subtype"));
            }
        }
        MediaTypes(out)
    }

    /// A list of constant, valid patterns.
    pub fn of(list: &[&str]) -> MediaTypes {
        let owned: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        MediaTypes::parse(&owned, "", &mut Vec::new())
    }

    /// Does `media_type` (lower case, no parameters) match an entry?
    pub fn matches(&self, media_type: &str) -> bool {
        self.0.iter().any(|p| match p {
            Pattern::Exact(e) => e == media_type,
            Pattern::Type(t) => media_type.starts_with(t.as_str()),
            Pattern::Suffix(s) => media_type.ends_with(s.as_str()),
        })
    }

    /// Is `media_type` listed exactly (not through `type/*` or a suffix)?
    pub fn lists_exactly(&self, media_type: &str) -> bool {
        self.0
            .iter()
            .any(|p| matches!(p, Pattern::Exact(e) if e == media_type))
    }
}

/// The body is about to change: a strong `ETag` becomes weak (`W/"..."`), an invalid one is
/// dropped (as nginx's gzip filter does), and byte ranges of the original no longer apply.
pub fn body_changes(resp: &mut ResponseHeader) {
    resp.remove_header(&header::CONTENT_LENGTH);
    resp.remove_header(&header::ACCEPT_RANGES);
    let Some(etag) = resp.headers.get(header::ETAG) else {
        return;
    };
    let bytes = etag.as_bytes();
    if bytes.starts_with(b"W/") {
        return;
    }
    let weak = bytes
        .starts_with(b"\"")
        .then(|| HeaderValue::from_bytes(&[b"W/", bytes].concat()).ok())
        .flatten();
    match weak {
        Some(v) => {
            let _ = resp.insert_header(header::ETAG, v);
        }
        None => {
            resp.remove_header(&header::ETAG);
        }
    }
}

/// The `Content-Length` of `resp`, when it has one valid value.
pub fn content_length(resp: &ResponseHeader) -> Option<u64> {
    let mut values = resp.headers.get_all(header::CONTENT_LENGTH).iter();
    let v = values.next()?;
    if values.next().is_some() {
        return None;
    }
    v.to_str().ok()?.trim().parse().ok()
}

/// The response carries a content coding (other than `identity`).
pub fn is_encoded(resp: &ResponseHeader) -> bool {
    resp.headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"identity"))
}

/// `Cache-Control: no-transform` (RFC 9111 §5.2.2.6): no intermediary may change the body.
pub fn no_transform(resp: &ResponseHeader) -> bool {
    resp.headers.get_all(header::CACHE_CONTROL).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-transform"))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let mut errors = Vec::new();
        let list: Vec<String> = ["text/*", "Application/JSON", "*/*+json", "bad", "*/x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = MediaTypes::parse(&list, "content_types", &mut errors);
        assert_eq!(
            errors.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(),
            ["content_types[3]", "content_types[4]"]
        );
        assert!(m.matches("text/html"));
        assert!(m.matches("application/json"));
        assert!(m.matches("application/problem+json"));
        assert!(!m.matches("image/png"));
        assert!(!m.matches("texts/x"));
    }

    #[test]
    fn etags_weakened() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("etag", "\"abc\"").unwrap();
        r.insert_header("content-length", "9").unwrap();
        body_changes(&mut r);
        assert_eq!(r.headers.get("etag").unwrap(), "W/\"abc\"");
        assert!(r.headers.get("content-length").is_none());
        body_changes(&mut r);
        assert_eq!(r.headers.get("etag").unwrap(), "W/\"abc\"");
        r.insert_header("etag", "abc").unwrap();
        body_changes(&mut r);
        assert!(r.headers.get("etag").is_none());
    }

    #[test]
    fn head_readers() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", "Text/HTML; charset=utf-8")
            .unwrap();
        r.insert_header("cache-control", "public, No-Transform")
            .unwrap();
        r.insert_header("content-encoding", "identity").unwrap();
        assert_eq!(media_type(&r).as_deref(), Some("text/html"));
        assert!(no_transform(&r));
        assert!(!is_encoded(&r));
        r.insert_header("content-encoding", "gzip").unwrap();
        assert!(is_encoded(&r));
    }
}
