//! What the upstream is told about the request: the client's address (behind trusted
//! proxies), `X-Forwarded-*`, the `Host` header, the consumer's identity headers, and the
//! rewritten path.

use crate::router::PathMatch;
use crate::snapshot::{rewrite_path, PathRewrite, Route};
use crate::upstream::UpstreamPool;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::Result;
use std::net::IpAddr;
use tollgate_plugins::net::contains;
use tollgate_plugins::RequestCtx;

/// Header carrying the request id upstream and back to the client.
pub const REQUEST_ID: &str = "x-request-id";

// Names looked up on every request, built once: a `&str` name is parsed on each lookup.
pub(super) static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Identity headers the upstream may trust: whatever the client sent under these names (in
/// any spelling, `_` for `-` included) is removed, then they are set from the authenticated
/// identity, if any.
pub const IDENTITY_HEADERS: [&str; 6] = [
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-consumer-groups",
    "x-credential-identifier",
    "x-anonymous-consumer",
];

/// Headers that describe the client's connection: believed only from a trusted proxy, and
/// removed when anyone else sends them. (`X-Forwarded-For` is the exception: the peer is
/// appended to it, as Kong, Envoy and nginx do; the client address tollgate acts on is read
/// from it only behind a trusted proxy.)
pub const FORWARDING_HEADERS: [&str; 6] = [
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "forwarded",
];

/// A `X-Forwarded-For` entry that is not an address, where the client's address should be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadForwardedFor;

/// The client's address: the socket peer unless it is a trusted proxy, in which case the
/// last `X-Forwarded-For` entry that is not a trusted proxy (the leftmost if all are). An
/// entry that is not an address met on the way is an error: the client cannot be known,
/// and the proxy's own address must not stand in for it.
pub fn real_client_ip(
    peer: Option<IpAddr>,
    req: &RequestHeader,
    trusted: &[ipnet::IpNet],
) -> Result<Option<IpAddr>, BadForwardedFor> {
    let Some(peer) = peer else {
        return Ok(None);
    };
    if trusted.is_empty() || !contains(trusted, peer) {
        return Ok(Some(peer));
    }
    let mut client = peer;
    for value in req.headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let text = value.to_str().map_err(|_| BadForwardedFor)?;
        for part in text.rsplit(',') {
            let ip = part.trim().parse::<IpAddr>().map_err(|_| BadForwardedFor)?;
            client = ip;
            if !contains(trusted, ip) {
                return Ok(Some(ip));
            }
        }
    }
    Ok(Some(client))
}

/// Remove what the client may not say about itself: identity headers in any spelling, the
/// forwarding headers unless `peer_trusted`, and headers with `_` in their name unless the
/// route allows them. One pass over the names (the usual request has none of these).
pub fn strip_client_headers(req: &mut RequestHeader, peer_trusted: bool, allow_underscores: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in req.headers.keys() {
        let n = name.as_str();
        let underscore = n.contains('_');
        let spelled = if underscore {
            std::borrow::Cow::Owned(n.replace('_', "-"))
        } else {
            std::borrow::Cow::Borrowed(n)
        };
        let forwarding = FORWARDING_HEADERS.contains(&&*spelled);
        let remove = IDENTITY_HEADERS.contains(&&*spelled)
            || (!peer_trusted && forwarding)
            // An `_` spelling of a header tollgate sets is never the real thing.
            || (underscore
                && (!allow_underscores || forwarding || &*spelled == "x-forwarded-for"));
        if remove && !doomed.contains(name) {
            doomed.push(name.clone());
        }
    }
    for name in doomed {
        req.remove_header(&name);
    }
}

/// The URI to send upstream when the route rewrites the path (`None`: the client's, as is).
/// `matched` is the route's path matcher that matched; the query is kept.
pub fn rewritten_uri(
    route: &Route,
    matched: &PathMatch,
    uri: &http::Uri,
) -> Option<Result<http::Uri, ()>> {
    if route.rewrite == PathRewrite::Keep {
        return None;
    }
    let new_path = rewrite_path(&route.rewrite, matched, uri.path())?;
    let new_uri = match uri.query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path.into_owned(),
    };
    Some(new_uri.parse::<http::Uri>().map_err(|_| ()))
}

/// `Host` for the upstream when the route does not preserve the client's.
pub fn set_host(
    upstream_request: &mut RequestHeader,
    pool: &UpstreamPool,
    backend: usize,
) -> Result<()> {
    if let Some(h) = pool.host_header(backend) {
        upstream_request.insert_header(header::HOST, h.clone())?;
    }
    Ok(())
}

/// `X-Forwarded-For` (the peer appended), `-Proto` and `-Host` (a trusted proxy's, else this
/// connection's scheme and the canonical host: [`strip_client_headers`] removed the client's
/// own when the peer is not trusted).
pub fn set_forwarded_headers(
    upstream_request: &mut RequestHeader,
    client_request: &RequestHeader,
    peer: Option<IpAddr>,
    tls: bool,
) -> Result<()> {
    if let Some(ip) = peer {
        let prev = upstream_request.headers.get(&X_FORWARDED_FOR);
        if let Some(xff) = forwarded_for(prev.map(|v| v.as_bytes()), ip) {
            upstream_request.insert_header("x-forwarded-for", xff)?;
        }
    }
    if !upstream_request.headers.contains_key(&X_FORWARDED_PROTO) {
        let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
        upstream_request.insert_header("x-forwarded-proto", proto)?;
    }
    if !upstream_request.headers.contains_key(&X_FORWARDED_HOST) {
        // The client's host: its Host header (left as is by the upstream Host rewrite, which
        // happens on the upstream request), or HTTP/2's `:authority`.
        let host = client_request
            .headers
            .get(header::HOST)
            .cloned()
            .or_else(|| {
                client_request
                    .uri
                    .authority()
                    .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            });
        if let Some(h) = host {
            upstream_request.insert_header("x-forwarded-host", h)?;
        }
    }
    Ok(())
}

/// Set the identity headers from the authenticated identity, if any (the client's copies
/// were removed by [`strip_client_headers`]).
pub fn set_identity_headers(req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    let Some(id) = &ctx.identity else {
        return Ok(());
    };
    let h = &id.consumer.headers;
    req.insert_header("x-consumer-id", h.id.clone())?;
    req.insert_header("x-consumer-username", h.username.clone())?;
    if let Some(c) = &h.custom_id {
        req.insert_header("x-consumer-custom-id", c.clone())?;
    }
    if let Some(g) = &h.groups {
        req.insert_header("x-consumer-groups", g.clone())?;
    }
    if let Some(c) = &id.credential {
        req.insert_header("x-credential-identifier", c.clone())?;
    }
    if id.anonymous {
        req.insert_header("x-anonymous-consumer", "true")?;
    }
    Ok(())
}

/// Headers that are about one connection, never forwarded (RFC 9110 §7.6.1), besides those
/// the `Connection` header names. `Upgrade` stays on a 101.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

/// Remove the hop-by-hop headers of an upstream response: the standard ones and every
/// header its `Connection` names. One pass over the names when there are none (the usual
/// case).
pub fn strip_hop_by_hop(resp: &mut ResponseHeader) {
    let upgrade = resp.status == http::StatusCode::SWITCHING_PROTOCOLS;
    if !resp
        .headers
        .keys()
        .any(|k| HOP_BY_HOP.contains(&k.as_str()))
    {
        return;
    }
    let mut doomed: Vec<HeaderName> = Vec::new();
    if !upgrade {
        for v in resp.headers.get_all(header::CONNECTION) {
            for name in v.to_str().unwrap_or("").split(',') {
                if let Ok(n) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    doomed.push(n);
                }
            }
        }
    }
    for name in HOP_BY_HOP {
        if upgrade && (name == "connection" || name == "upgrade") {
            continue;
        }
        doomed.push(HeaderName::from_static(name));
    }
    for n in doomed {
        resp.remove_header(&n);
    }
}

/// `X-Forwarded-For` with `ip` appended to what the client (or a proxy before us) sent.
/// IPv4 is formatted by hand: `Display` for addresses costs more than the rest of this.
fn forwarded_for(prev: Option<&[u8]>, ip: IpAddr) -> Option<HeaderValue> {
    let prev = prev.filter(|p| !p.is_empty());
    let mut out = Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 40);
    if let Some(p) = prev {
        out.extend_from_slice(p);
        out.extend_from_slice(b", ");
    }
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            let _ = write!(out, "{v6}");
        }
    }
    HeaderValue::from_maybe_shared(Bytes::from(out)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_headers_that_lie_are_removed() {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (n, v) in [
            ("x_consumer_username", "root"),
            ("X-Consumer-ID", "x"),
            ("x-forwarded-host", "evil.test"),
            ("x_forwarded_for", "1.2.3.4"),
            ("my_header", "1"),
            ("accept", "*/*"),
        ] {
            r.append_header(n, v).unwrap();
        }
        let mut trusted = r.clone();
        strip_client_headers(&mut r, false, false);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["accept"]);
        let mut xff = RequestHeader::build("GET", b"/", None).unwrap();
        xff.insert_header("x-forwarded-for", "10.1.2.3").unwrap();
        strip_client_headers(&mut xff, false, false);
        assert!(
            xff.headers.contains_key("x-forwarded-for"),
            "appended to, not removed"
        );
        strip_client_headers(&mut trusted, true, true);
        let mut left: Vec<&str> = trusted.headers.keys().map(|k| k.as_str()).collect();
        left.sort();
        assert_eq!(left, ["accept", "my_header", "x-forwarded-host"]);
    }

    #[test]
    fn hop_by_hop_response_headers_go() {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (n, v) in [
            ("connection", "x-a, X-B"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-ok", "1"),
        ] {
            r.append_header(n, v).unwrap();
        }
        strip_hop_by_hop(&mut r);
        let left: Vec<&str> = r.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-ok"]);
        let mut up = ResponseHeader::build(101, None).unwrap();
        up.append_header("connection", "upgrade").unwrap();
        up.append_header("upgrade", "websocket").unwrap();
        strip_hop_by_hop(&mut up);
        assert_eq!(up.headers.len(), 2, "a 101 keeps its upgrade");
    }

    #[test]
    fn garbled_forwarded_for_is_an_error() {
        let nets = [ipnet::IpNet::from(IpAddr::from([127, 0, 0, 1]))];
        let peer = Some(IpAddr::from([127, 0, 0, 1]));
        let with = |xff: &str| {
            let mut r = RequestHeader::build("GET", b"/", None).unwrap();
            r.insert_header("x-forwarded-for", xff).unwrap();
            real_client_ip(peer, &r, &nets)
        };
        assert_eq!(with("10.9.9.9"), Ok(Some(IpAddr::from([10, 9, 9, 9]))));
        assert_eq!(with("10.9.9.9, garbage"), Err(BadForwardedFor));
        assert_eq!(
            with("garbage, 10.9.9.9"),
            Ok(Some(IpAddr::from([10, 9, 9, 9])))
        );
        assert_eq!(with("garbage, 127.0.0.1"), Err(BadForwardedFor));
    }

    #[test]
    fn forwarded_for_appends_the_peer() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        for v4 in ["1.2.3.4", "10.0.100.255", "0.0.0.0", "192.168.9.99"] {
            assert_eq!(forwarded_for(None, ip(v4)).unwrap(), v4);
        }
        assert_eq!(
            forwarded_for(Some(b"203.0.113.7"), ip("127.0.0.1")).unwrap(),
            "203.0.113.7, 127.0.0.1"
        );
        assert_eq!(forwarded_for(Some(b""), ip("::1")).unwrap(), "::1");
        assert_eq!(
            forwarded_for(Some(b"a"), ip("2001:db8::1")).unwrap(),
            "a, 2001:db8::1"
        );
    }
}
