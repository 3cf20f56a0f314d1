//! The request target made canonical before anything decides on it: the target form, the
//! host (`Host`, absolute-form authority, HTTP/2 `:authority`) and the path
//! (`[server.path_normalization]`). The canonical form is what routing matches, plugins see,
//! the cache keys and the upstream receives, so no spelling of a path or host reaches a
//! backend that the gateway did not route as that backend will read it.
//!
//! Most requests are already canonical: one pass over the target's bytes finds that out
//! without allocating, and only the others are rebuilt.

use crate::config::schema::{DotSegments, EscapedSlashes, PathNormalizationSection, Semicolons};
use http::{header, HeaderValue, Version};
use pingora::http::RequestHeader;
use pingora::protocols::http::authority::{raw_target_authority, RawTargetAuthority};

/// Why a target cannot be made canonical (each answered 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetError {
    /// Neither origin-form nor an `http`/`https` absolute-form target.
    Form,
    /// HTTP/1.1 without `Host`.
    MissingHost,
    /// Several `Host` headers, or one that is not a valid host.
    InvalidHost,
    /// `Host` disagrees with the target's authority.
    HostMismatch,
    /// A path that cannot be normalized safely.
    Path(&'static str),
}

impl TargetError {
    /// The message of the 400 answer.
    pub fn message(self) -> &'static str {
        match self {
            TargetError::Form => "the request target must be a path (or an http/https URL)",
            TargetError::MissingHost => "an HTTP/1.1 request needs a Host header",
            TargetError::InvalidHost => "the Host header is repeated or not a valid host",
            TargetError::HostMismatch => "the Host header disagrees with the request target",
            TargetError::Path(why) => why,
        }
    }
}

/// Make `req`'s target canonical in place (see the module documentation).
pub fn canonicalize(
    req: &mut RequestHeader,
    rules: &PathNormalizationSection,
) -> Result<(), TargetError> {
    let raw = req.raw_path();
    let mut https = req.uri.scheme_str() == Some("https");
    let (authority, path_and_query) = match raw.first() {
        Some(b'/') => (None, raw),
        _ => match raw_target_authority(raw) {
            RawTargetAuthority::Absolute {
                scheme,
                authority,
                path_and_query,
            } => {
                if !(scheme.eq_ignore_ascii_case(b"http") || scheme.eq_ignore_ascii_case(b"https"))
                {
                    return Err(TargetError::Form);
                }
                https = scheme.eq_ignore_ascii_case(b"https");
                // Checked here; kept as sent for the Host header.
                host_of(authority, https)?;
                (Some(authority.to_vec()), path_and_query)
            }
            _ => return Err(TargetError::Form),
        },
    };
    let (path, query) = match path_and_query.iter().position(|b| *b == b'?') {
        Some(i) => (&path_and_query[..i], Some(&path_and_query[i + 1..])),
        None => (path_and_query, None),
    };
    if !path.is_empty() && path[0] != b'/' {
        return Err(TargetError::Form);
    }
    let new_path = normalize_path(if path.is_empty() { b"/" } else { path }, rules)?;
    let new_query = match query {
        Some(q) => encode_query(q)?,
        None => None,
    };

    let host = check_host(req, authority.as_deref(), https)?;
    let absolute = authority.is_some();
    if new_path.is_none() && new_query.is_none() && !absolute {
        return Ok(());
    }
    let mut target = new_path.unwrap_or_else(|| path.to_vec());
    if let Some(q) = new_query.as_deref().or(query) {
        target.push(b'?');
        target.extend_from_slice(q);
    }
    let pq = http::uri::PathAndQuery::try_from(target).map_err(|_| TargetError::Path(BAD_PATH))?;
    let mut parts = http::uri::Parts::default();
    // HTTP/2 keeps its scheme and authority (Pingora builds `:authority` from them);
    // HTTP/1 goes on in origin-form.
    if req.version == Version::HTTP_2 {
        parts.scheme = req.uri.scheme().cloned();
        parts.authority = req.uri.authority().cloned();
    }
    parts.path_and_query = Some(pq);
    let uri = http::Uri::from_parts(parts).map_err(|_| TargetError::Path(BAD_PATH))?;
    req.set_uri(uri);
    if let (true, Some(h)) = (absolute, host) {
        req.insert_header(header::HOST, h)
            .map_err(|_| TargetError::InvalidHost)?;
    }
    Ok(())
}

const BAD_PATH: &str = "the path cannot be normalized";

/// The `Host` value for a request, checked against the target's authority: `Some` when the
/// header must be (re)set to the authority.
fn check_host(
    req: &RequestHeader,
    authority: Option<&[u8]>,
    https: bool,
) -> Result<Option<HeaderValue>, TargetError> {
    let mut hosts = req.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(TargetError::InvalidHost);
    }
    // HTTP/2 carries the authority in `:authority`.
    let h2_authority = (req.version == Version::HTTP_2)
        .then(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
        .flatten();
    let target = authority.or(h2_authority);
    match (first, target) {
        (None, None) if req.version == Version::HTTP_11 => Err(TargetError::MissingHost),
        (None, None) => Ok(None),
        (Some(h), None) => {
            host_of(h.as_bytes(), https)?;
            Ok(None)
        }
        // RFC 9112 §3.2: an HTTP/1.1 client sends Host even with an absolute-form target.
        (None, Some(_)) if req.version == Version::HTTP_11 && authority.is_some() => {
            Err(TargetError::MissingHost)
        }
        (None, Some(t)) => Ok(HeaderValue::from_bytes(t).ok()),
        (Some(h), Some(t)) => {
            if same_host(h.as_bytes(), t, https)? {
                Ok(authority.and_then(|a| HeaderValue::from_bytes(a).ok()))
            } else {
                Err(TargetError::HostMismatch)
            }
        }
    }
}

/// Do two authorities name the same host and port (case-insensitive; a missing port is the
/// scheme's default)?
fn same_host(a: &[u8], b: &[u8], https: bool) -> Result<bool, TargetError> {
    let a = host_of(a, https)?;
    let b = host_of(b, https)?;
    Ok(a.eq_ignore_ascii_case(&b))
}

/// An authority (`host[:port]`) checked and normalized: lower-case, no userinfo, the port
/// dropped when it is the default one.
fn host_of(authority: &[u8], https: bool) -> Result<Vec<u8>, TargetError> {
    if authority.is_empty() || authority.contains(&b'@') {
        return Err(TargetError::InvalidHost);
    }
    let (host, port) = match authority.iter().rposition(|b| *b == b':') {
        // An IPv6 literal's colons are inside brackets.
        Some(i) if !authority[i..].contains(&b']') => (&authority[..i], Some(&authority[i + 1..])),
        _ => (authority, None),
    };
    let valid_host = host.iter().all(|b| {
        b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'[' | b']' | b':' | b'%')
    });
    if host.is_empty() || !valid_host {
        return Err(TargetError::InvalidHost);
    }
    let mut out = host.to_ascii_lowercase();
    match port {
        None => {}
        Some(p) if p.is_empty() || !p.iter().all(u8::is_ascii_digit) || p.len() > 5 => {
            return Err(TargetError::InvalidHost)
        }
        Some(p) if (p == b"80" && !https) || (p == b"443" && https) => {}
        Some(p) => {
            out.push(b':');
            out.extend_from_slice(p);
        }
    }
    Ok(out)
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escaped(out: &mut Vec<u8>, v: u8) {
    out.extend_from_slice(&[b'%', HEX[(v >> 4) as usize], HEX[(v & 15) as usize]]);
}

/// Would this path come out of [`normalize_path`] unchanged? (The common case; checked
/// without allocating.)
fn already_canonical(path: &[u8], rules: &PathNormalizationSection) -> bool {
    let mut prev = 0u8;
    for (i, &b) in path.iter().enumerate() {
        let plain = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b'='
                    | b':'
                    | b'@'
            );
        match b {
            _ if plain => {}
            b'/' if rules.merge_slashes && prev == b'/' => return false,
            b'/' => {}
            // A dot may start a `.` or `..` segment: let the full pass decide.
            b'.' if prev == b'/' && matches!(path.get(i + 1), None | Some(b'/' | b'.')) => {
                return false
            }
            b'.' => {}
            _ => return false,
        }
        prev = b;
    }
    true
}

/// The canonical form of `path` (which starts with `/`), `None` when it already is, or why
/// it cannot be made canonical.
pub fn normalize_path(
    path: &[u8],
    rules: &PathNormalizationSection,
) -> Result<Option<Vec<u8>>, TargetError> {
    if already_canonical(path, rules) {
        return Ok(None);
    }
    // 1. Bytes: decode what is safe to decode, refuse what backends read differently.
    let mut out = Vec::with_capacity(path.len() + 8);
    let mut i = 0;
    while i < path.len() {
        let b = path[i];
        match b {
            b'%' => {
                let (Some(h), Some(l)) = (
                    path.get(i + 1).copied().and_then(hex_value),
                    path.get(i + 2).copied().and_then(hex_value),
                ) else {
                    return Err(TargetError::Path("the path has a malformed percent-escape"));
                };
                let v = h << 4 | l;
                i += 3;
                if v < 0x20 || v == 0x7f {
                    return Err(TargetError::Path(
                        "the path has an encoded control character",
                    ));
                }
                if v == b'/' || v == b'\\' {
                    match rules.escaped_slashes {
                        EscapedSlashes::Reject => {
                            return Err(TargetError::Path("the path has an encoded '/' or '\\'"))
                        }
                        EscapedSlashes::Keep => push_escaped(&mut out, v),
                    }
                } else if rules.decode_unreserved && is_unreserved(v) {
                    out.push(v);
                } else {
                    push_escaped(&mut out, v);
                }
                continue;
            }
            b'\\' => return Err(TargetError::Path("the path has a '\\'")),
            b';' if rules.semicolons == Semicolons::Reject => {
                return Err(TargetError::Path("the path has a ';'"))
            }
            0..=0x20 | 0x7f => return Err(TargetError::Path("the path has a control character")),
            0x80..=0xff => push_escaped(&mut out, b),
            b'/' if rules.merge_slashes && out.last() == Some(&b'/') => {}
            _ => out.push(b),
        }
        i += 1;
    }
    // 2. Segments: trailing encoded whitespace and dot segments.
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut dots = false;
    for seg in out.split(|b| *b == b'/').skip(1) {
        let upper = seg.to_ascii_uppercase();
        if upper.ends_with(b"%20") || upper.ends_with(b"%09") {
            return Err(TargetError::Path(
                "a path segment ends in encoded whitespace",
            ));
        }
        // `..;x` is `..` to a Java backend.
        let name = match seg.iter().position(|b| *b == b';') {
            Some(p) => &upper[..p],
            None => &upper[..],
        };
        let dot = matches!(name, b"." | b".." | b"%2E" | b"%2E%2E" | b".%2E" | b"%2E.");
        dots |= dot;
        segments.push(seg);
    }
    if dots {
        if rules.dot_segments == DotSegments::Reject {
            return Err(TargetError::Path("path contains a '.' or '..' segment"));
        }
        out = remove_dot_segments(&segments)?;
    }
    Ok((out != path).then_some(out))
}

/// RFC 3986 §5.2.4 on a path split into segments (after the leading `/`); `..` above the
/// root is refused.
fn remove_dot_segments(segments: &[&[u8]]) -> Result<Vec<u8>, TargetError> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let last = segments.len().saturating_sub(1);
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let upper = seg.to_ascii_uppercase();
        let name = match seg.iter().position(|b| *b == b';') {
            Some(p) => &upper[..p],
            None => &upper[..],
        };
        match name {
            b"." | b"%2E" => trailing_slash = i == last,
            b".." | b"%2E%2E" | b".%2E" | b"%2E." => {
                if kept.pop().is_none() {
                    return Err(TargetError::Path("the path climbs above the root"));
                }
                trailing_slash = i == last;
            }
            _ => {
                kept.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut out = Vec::new();
    for seg in &kept {
        out.push(b'/');
        out.extend_from_slice(seg);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    Ok(out)
}

/// The query with non-ASCII bytes percent-encoded (`None`: unchanged); control characters
/// are refused.
fn encode_query(q: &[u8]) -> Result<Option<Vec<u8>>, TargetError> {
    if q.iter().all(|b| (0x21..0x7f).contains(b)) {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(q.len() + 8);
    for &b in q {
        match b {
            0..=0x20 | 0x7f => return Err(TargetError::Path("the query has a control character")),
            0x80..=0xff => push_escaped(&mut out, b),
            _ => out.push(b),
        }
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> PathNormalizationSection {
        PathNormalizationSection::default()
    }

    fn norm(p: &str, r: &PathNormalizationSection) -> Result<String, TargetError> {
        normalize_path(p.as_bytes(), r).map(|o| match o {
            Some(v) => String::from_utf8(v).unwrap(),
            None => p.to_string(),
        })
    }

    #[test]
    fn canonical_paths_are_left_alone() {
        for p in [
            "/",
            "/a/b",
            "/a.b/c..d/",
            "/x-y_z~1/:@!$&'()*+,=",
            "/.well-known/x",
        ] {
            assert!(
                normalize_path(p.as_bytes(), &rules()).unwrap().is_none(),
                "{p}"
            );
        }
    }

    #[test]
    fn decodes_merges_and_refuses() {
        let r = rules();
        assert_eq!(norm("/%61dmin", &r).unwrap(), "/admin");
        assert_eq!(norm("//admin//x", &r).unwrap(), "/admin/x");
        assert_eq!(norm("/%7Euser", &r).unwrap(), "/~user");
        assert_eq!(norm("/a%3ab", &r).unwrap(), "/a%3Ab");
        assert_eq!(norm("/caf\u{e9}", &r).unwrap(), "/caf%C3%A9");
        assert_eq!(norm("/files/my%20doc", &r).unwrap(), "/files/my%20doc");
        for bad in [
            "/%2fadmin",
            "/admin%2f",
            "/admin%5c",
            "/a\\b",
            "/admin;x",
            "/admin%20",
            "/admin%20/x",
            "/adm%00in",
            "/bad%zz",
            "/bad%4",
            "/public/..%2fadmin",
            "/public/%2e%2e%2fadmin",
            "/public/.%2e%2fadmin",
            "/public/../admin",
            "/public/./x",
            "/public/%2E/x",
            "/public/%2e%2e/admin",
        ] {
            assert!(norm(bad, &r).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn configurable_rules() {
        let mut r = rules();
        r.escaped_slashes = EscapedSlashes::Keep;
        r.semicolons = Semicolons::Keep;
        r.dot_segments = DotSegments::Resolve;
        r.merge_slashes = false;
        assert_eq!(norm("/a%2fb", &r).unwrap(), "/a%2Fb");
        assert_eq!(norm("/a;x=1", &r).unwrap(), "/a;x=1");
        assert_eq!(norm("/x/../admin", &r).unwrap(), "/admin");
        assert_eq!(norm("/x/./y/", &r).unwrap(), "/x/y/");
        assert_eq!(norm("/x/..", &r).unwrap(), "/");
        assert_eq!(norm("/a/b/..;x/c", &r).unwrap(), "/a/c");
        assert_eq!(norm("/a//b", &r).unwrap(), "/a//b");
        assert!(norm("/../etc", &r).is_err(), "above the root");
        r.decode_unreserved = false;
        assert_eq!(norm("/%61", &r).unwrap(), "/%61");
        assert!(
            norm("/x/%2e%2e/y", &r).is_ok(),
            "resolved even when encoded"
        );
    }

    fn req(raw: &str, host: Option<&str>, version: Version) -> RequestHeader {
        let mut r = RequestHeader::build("GET", raw.as_bytes(), None).unwrap();
        r.set_version(version);
        if let Some(h) = host {
            r.insert_header("host", h).unwrap();
        }
        r
    }

    #[test]
    fn targets_and_hosts() {
        let r = rules();
        let mut a = req(
            "http://Internal.Test/nph/x?q=1",
            Some("internal.test"),
            Version::HTTP_11,
        );
        canonicalize(&mut a, &r).unwrap();
        assert_eq!(a.raw_path(), b"/nph/x?q=1");
        assert_eq!(a.headers["host"], "Internal.Test");
        let mut b = req("HTTP://INTERNAL.TEST:80/", None, Version::HTTP_10);
        canonicalize(&mut b, &r).unwrap();
        assert_eq!(b.raw_path(), b"/");
        assert_eq!(b.headers["host"], "INTERNAL.TEST:80");
        let mut c = req("http://internal.test/x", None, Version::HTTP_11);
        assert_eq!(canonicalize(&mut c, &r), Err(TargetError::MissingHost));
        let mut d = req(
            "http://internal.test/x",
            Some("other.test"),
            Version::HTTP_11,
        );
        assert_eq!(canonicalize(&mut d, &r), Err(TargetError::HostMismatch));
        let mut e = req(
            "foo://internal.test/x",
            Some("internal.test"),
            Version::HTTP_11,
        );
        assert_eq!(canonicalize(&mut e, &r), Err(TargetError::Form));
        let mut f = req("/x", None, Version::HTTP_11);
        assert_eq!(canonicalize(&mut f, &r), Err(TargetError::MissingHost));
        let mut g = req("/x", None, Version::HTTP_10);
        assert_eq!(canonicalize(&mut g, &r), Ok(()));
        let mut h = req("/x", Some("a b"), Version::HTTP_11);
        assert_eq!(canonicalize(&mut h, &r), Err(TargetError::InvalidHost));
        let mut i = req(
            "http://h.test:8080/x",
            Some("H.TEST:8080"),
            Version::HTTP_11,
        );
        assert_eq!(canonicalize(&mut i, &r), Ok(()));
    }
}
