//! Small readers of request parts shared by the router, plugins and the proxy. They borrow
//! from the request and allocate nothing.

use pingora::http::RequestHeader;

/// The host a request is for: the `Host` header (or the URI authority for HTTP/2), without
/// port or trailing dot.
pub fn host(req: &RequestHeader) -> &str {
    let raw = req
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("");
    let h = if raw.starts_with('[') {
        // IPv6 literal: keep the brackets' content.
        match raw.find(']') {
            Some(i) => &raw[1..i],
            None => raw,
        }
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    h.strip_suffix('.').unwrap_or(h)
}

/// Raw values of query parameter `name` in `query` (not percent-decoded).
pub fn query_values<'a, 'b>(query: &'a str, name: &'b str) -> impl Iterator<Item = &'a str> + 'b
where
    'a: 'b,
{
    query.split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// The first raw value of query parameter `name`.
pub fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

/// `query` without parameter `name`.
pub fn query_without(query: &str, name: &str) -> String {
    query
        .split('&')
        .filter(|pair| pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect::<Vec<_>>()
        .join("&")
}

/// Remove query parameter `name` from the request's URI, if present (`hide_credentials`).
pub fn strip_query_param(req: &mut RequestHeader, name: &str) {
    let Some(q) = req.uri.query() else {
        return;
    };
    if query_value(q, name).is_none() {
        return;
    }
    let rest = query_without(q, name);
    let uri = if rest.is_empty() {
        req.uri.path().to_string()
    } else {
        format!("{}?{rest}", req.uri.path())
    };
    if let Ok(u) = uri.parse() {
        req.set_uri(u);
    }
}

/// The request's `Content-Length`: `None` when there is none, `Some(Err(()))` when it is not
/// a number.
pub fn content_length(req: &RequestHeader) -> Option<Result<u64, ()>> {
    let v = req.headers.get(http::header::CONTENT_LENGTH)?;
    Some(
        v.to_str()
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or(()),
    )
}

/// The value of cookie `name` (all `Cookie` headers are searched).
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a [u8]> {
    cookies(req, name).next()
}

/// Every value of cookie `name`, in order (a cookie may be sent twice).
pub fn cookies<'a, 'b>(req: &'a RequestHeader, name: &'b str) -> impl Iterator<Item = &'a [u8]> + 'b
where
    'a: 'b,
{
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            (&pair[..eq] == name.as_bytes()).then(|| &pair[eq + 1..])
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readers() {
        let mut r = RequestHeader::build("GET", b"/p?a=1&k=v&k=w&flag", None).unwrap();
        r.insert_header("host", "Example.com.:8080").unwrap();
        r.append_header("cookie", "a=1; session=abc").unwrap();
        r.append_header("cookie", "b=2").unwrap();
        assert_eq!(host(&r), "Example.com");
        let q = r.uri.query().unwrap();
        assert_eq!(query_values(q, "k").collect::<Vec<_>>(), ["v", "w"]);
        assert_eq!(query_value(q, "flag"), Some(""));
        assert_eq!(query_value(q, "none"), None);
        assert_eq!(cookie(&r, "session"), Some(&b"abc"[..]));
        assert_eq!(cookie(&r, "b"), Some(&b"2"[..]));
        assert_eq!(cookie(&r, "sess"), None);
        r.append_header("cookie", "session=def").unwrap();
        assert_eq!(cookies(&r, "session").count(), 2);
        assert_eq!(query_without("a=1&apikey=k&b", "apikey"), "a=1&b");
        strip_query_param(&mut r, "k");
        assert_eq!(r.uri.query(), Some("a=1&flag"));
        assert_eq!(content_length(&r), None);
        r.insert_header("content-length", " 12 ").unwrap();
        assert_eq!(content_length(&r), Some(Ok(12)));
        r.insert_header("content-length", "1x").unwrap();
        assert_eq!(content_length(&r), Some(Err(())));
        let mut v6 = RequestHeader::build("GET", b"/", None).unwrap();
        v6.insert_header("host", "[::1]:80").unwrap();
        assert_eq!(host(&v6), "::1");
    }
}
