//! The per-request state that plugins read and write.

use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

/// A request id: at most [`RequestId::MAX_LEN`] visible ASCII bytes, stored inline so that
/// making one costs no allocation.
#[derive(Clone, Copy)]
pub struct RequestId {
    buf: [u8; RequestId::MAX_LEN],
    len: u8,
}

impl RequestId {
    /// Longest id accepted from a client; a longer one is replaced by a generated id.
    pub const MAX_LEN: usize = 64;

    /// A fresh random id in UUID v4 form (hyphenated, lower case). The bits come from a
    /// thread-local generator seeded once, not a system call per request: ids must be
    /// unique, not secret.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bits = fastrand::u128(..).to_be_bytes();
        bits[6] = (bits[6] & 0x0f) | 0x40; // version 4
        bits[8] = (bits[8] & 0x3f) | 0x80; // RFC 4122 variant
        let mut buf = [0u8; Self::MAX_LEN];
        let mut n = 0;
        for (i, b) in bits.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                buf[n] = b'-';
                n += 1;
            }
            buf[n] = HEX[(b >> 4) as usize];
            buf[n + 1] = HEX[(b & 0xf) as usize];
            n += 2;
        }
        RequestId { buf, len: n as u8 }
    }

    /// Take the client's id when it is short and printable (so it is safe in headers and logs).
    pub fn from_client(value: &[u8]) -> Option<Self> {
        if value.is_empty()
            || value.len() > Self::MAX_LEN
            || !value.iter().all(|b| b.is_ascii_graphic())
        {
            return None;
        }
        let mut buf = [0u8; Self::MAX_LEN];
        buf[..value.len()].copy_from_slice(value);
        Some(RequestId {
            buf,
            len: value.len() as u8,
        })
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII graphic bytes or a UUID ever get in, so this never fails.
        std::str::from_utf8(&self.buf[..self.len as usize]).unwrap_or("")
    }
}

impl fmt::Debug for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What plugins know about the request besides the headers they are handed.
#[derive(Debug)]
pub struct RequestCtx {
    /// Name of the matched route.
    pub route: Arc<str>,
    /// The client's address: the socket peer, or, when the peer is a trusted proxy
    /// (`[server] trusted_proxies`), the last untrusted address in `X-Forwarded-For`.
    pub client_ip: Option<IpAddr>,
    /// The socket peer's address.
    pub peer_ip: Option<IpAddr>,
    /// The request id sent upstream and echoed to the client.
    pub request_id: RequestId,
    /// Who the request was authenticated as, once an authentication plugin succeeded.
    pub identity: Option<crate::consumer::Identity>,
    /// Plugin-private per-request state, keyed by type (allocates only when used).
    pub extensions: http::Extensions,
}

impl RequestCtx {
    /// A context for a request on `route`.
    pub fn new(route: Arc<str>, client_ip: Option<IpAddr>, request_id: RequestId) -> Self {
        RequestCtx {
            route,
            client_ip,
            peer_ip: client_ip,
            request_id,
            identity: None,
            extensions: http::Extensions::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids() {
        let g = RequestId::generate();
        assert_eq!(g.as_str().len(), 36);
        let parts: Vec<&str> = g.as_str().split('-').collect();
        assert_eq!(
            parts.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [8, 4, 4, 4, 12]
        );
        assert!(parts[2].starts_with('4'), "version 4: {}", g.as_str());
        assert_ne!(g.as_str(), RequestId::generate().as_str());
        assert_eq!(RequestId::from_client(b"abc-1").unwrap().as_str(), "abc-1");
        assert!(RequestId::from_client(b"").is_none());
        assert!(RequestId::from_client(b"has space").is_none());
        assert!(RequestId::from_client(&[b'a'; 65]).is_none());
    }
}
