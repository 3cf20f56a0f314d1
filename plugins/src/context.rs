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

    /// A fresh random id (UUID v4, hyphenated, lower case).
    pub fn generate() -> Self {
        let mut buf = [0u8; Self::MAX_LEN];
        let s = uuid::Uuid::new_v4();
        let len = s.hyphenated().encode_lower(&mut buf[..]).len();
        RequestId {
            buf,
            len: len as u8,
        }
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
        assert_ne!(g.as_str(), RequestId::generate().as_str());
        assert_eq!(RequestId::from_client(b"abc-1").unwrap().as_str(), "abc-1");
        assert!(RequestId::from_client(b"").is_none());
        assert!(RequestId::from_client(b"has space").is_none());
        assert!(RequestId::from_client(&[b'a'; 65]).is_none());
    }
}
