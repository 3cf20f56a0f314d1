//! A JWKS fetched from a URL in the background with Pingora's HTTP client, kept across
//! reloads, refreshed when due and used stale for a bounded time when the URL fails.

use super::keys::{parse_jwks, KeyMap};
use crate::state::SharedState;
use arc_swap::ArcSwapOption;
use pingora::http::RequestHeader;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Longest a whole fetch (connect, request, body) may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// A JWKS fetched from a URL, shared (through the [`SharedState`]) by every plugin instance
/// using that URL, so a reload neither refetches nor forgets it.
pub(super) struct RemoteJwks {
    url: http::Uri,
    /// The last good copy and when it was fetched.
    pub(super) keys: ArcSwapOption<(Instant, KeyMap)>,
    refreshing: AtomicBool,
}

impl RemoteJwks {
    /// The fetcher for `url` (one per URL in the process).
    pub(super) fn get(state: &SharedState, url: &str) -> Result<Arc<Self>, String> {
        let uri: http::Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
        if !matches!(uri.scheme_str(), Some("http") | Some("https")) || uri.host().is_none() {
            return Err(format!("{url:?} must be an http:// or https:// URL"));
        }
        Ok(state.get_or_insert(url, || RemoteJwks {
            url: uri,
            keys: ArcSwapOption::empty(),
            refreshing: AtomicBool::new(false),
        }))
    }

    /// Fetch the document now (at most one fetch at a time; bounded by [`FETCH_TIMEOUT`]).
    /// A failed fetch keeps the last good copy.
    pub(super) async fn refresh(&self) {
        if self.refreshing.swap(true, Ordering::AcqRel) {
            return;
        }
        match tokio::time::timeout(FETCH_TIMEOUT, fetch(&self.url)).await {
            Ok(Ok(text)) => match parse_jwks(&text) {
                Ok(keys) => {
                    self.keys.store(Some(Arc::new((Instant::now(), keys))));
                }
                Err(e) => log::warn!("JWKS from {} rejected: {e}", self.url),
            },
            Ok(Err(e)) => log::warn!("JWKS fetch from {} failed: {e}", self.url),
            Err(_) => log::warn!("JWKS fetch from {} timed out", self.url),
        }
        self.refreshing.store(false, Ordering::Release);
    }
}

async fn fetch(url: &http::Uri) -> Result<String, String> {
    use pingora::connectors::http::Connector;
    use pingora::upstreams::peer::HttpPeer;
    let tls = url.scheme_str() == Some("https");
    let host = url.host().unwrap_or_default();
    let port = url.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let addr = tokio::net::lookup_host((host.trim_matches(['[', ']']), port))
        .await
        .map_err(|e| e.to_string())?
        .next()
        .ok_or("no address")?;
    let mut peer = HttpPeer::new(addr, tls, host.to_string());
    peer.options.connection_timeout = Some(Duration::from_secs(2));
    peer.options.read_timeout = Some(Duration::from_secs(3));
    let connector = Connector::new(None);
    let (mut session, _) = connector
        .get_http_session(&peer)
        .await
        .map_err(|e| e.to_string())?;
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let mut req = RequestHeader::build("GET", path.as_bytes(), None).map_err(|e| e.to_string())?;
    req.insert_header("host", host).map_err(|e| e.to_string())?;
    req.insert_header("accept", "application/json")
        .map_err(|e| e.to_string())?;
    session
        .write_request_header(Box::new(req))
        .await
        .map_err(|e| e.to_string())?;
    session
        .finish_request_body()
        .await
        .map_err(|e| e.to_string())?;
    session
        .read_response_header()
        .await
        .map_err(|e| e.to_string())?;
    let status = session.response_header().map_or(0, |r| r.status.as_u16());
    if status != 200 {
        return Err(format!("status {status}"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| e.to_string())?
    {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_JWKS_BYTES {
            return Err("JWKS larger than 1 MiB".to_string());
        }
    }
    String::from_utf8(body).map_err(|_| "not UTF-8".to_string())
}
