//! What the upstream is told about the request: the client's address (behind trusted
//! proxies), `X-Forwarded-*`, the `Host` header, the consumer's identity headers, and the
//! rewritten path.

use crate::router::PathMatch;
use crate::snapshot::{rewrite_path, PathRewrite, Route};
use crate::upstream::UpstreamPool;
use bytes::Bytes;
use http::{header, HeaderName, HeaderValue};
use pingora::http::RequestHeader;
use pingora::Result;
use std::net::IpAddr;
use tollgate_plugins::net::contains;
use tollgate_plugins::RequestCtx;

/// Header carrying the request id upstream and back to the client.
pub const REQUEST_ID: &str = "x-request-id";

// Names looked up on every request, built once: a `&str` name is parsed on each lookup.
pub(super) static REQUEST_ID_NAME: HeaderName = HeaderName::from_static(REQUEST_ID);
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");

/// Identity headers the upstream may trust: whatever the client sent under these names is
/// removed on every request, then set from the authenticated identity, if any.
pub const IDENTITY_HEADERS: [&str; 6] = [
    "x-consumer-id",
    "x-consumer-username",
    "x-consumer-custom-id",
    "x-consumer-groups",
    "x-credential-identifier",
    "x-anonymous-consumer",
];

/// The client's address: the socket peer unless it is a trusted proxy, in which case the
/// last `X-Forwarded-For` entry that is not a trusted proxy (the leftmost if all are).
pub fn real_client_ip(
    peer: Option<IpAddr>,
    req: &RequestHeader,
    trusted: &[ipnet::IpNet],
) -> Option<IpAddr> {
    let peer = peer?;
    if trusted.is_empty() || !contains(trusted, peer) {
        return Some(peer);
    }
    let mut client = peer;
    for value in req.headers.get_all(&X_FORWARDED_FOR).iter().rev() {
        let Ok(text) = value.to_str() else {
            return Some(client);
        };
        for part in text.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                // A garbled entry: trust nothing further left.
                return Some(client);
            };
            client = ip;
            if !contains(trusted, ip) {
                return Some(ip);
            }
        }
    }
    Some(client)
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

/// `X-Forwarded-For` (the peer appended), `-Proto` and `-Host` (the client's `Host`).
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
    let proto = HeaderValue::from_static(if tls { "https" } else { "http" });
    upstream_request.insert_header("x-forwarded-proto", proto)?;
    // The client's Host: the downstream header, which the Host rewrite leaves as is.
    if let Some(h) = client_request.headers.get(header::HOST) {
        upstream_request.insert_header("x-forwarded-host", h.clone())?;
    }
    Ok(())
}

/// Remove every identity header the client sent, then set them from the authenticated
/// identity, if any.
pub fn set_identity_headers(req: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
    // Usually none is present: one pass over the names the client sent is cheaper than a
    // lookup per identity header (each parses and hashes a name).
    let spoofed = req
        .headers
        .keys()
        .any(|k| IDENTITY_HEADERS.contains(&k.as_str()));
    if spoofed {
        for h in IDENTITY_HEADERS {
            req.remove_header(h);
        }
    }
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
