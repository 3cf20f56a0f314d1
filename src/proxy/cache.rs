//! The gateway's side of the response cache: turning Pingora's cache on for a request,
//! `PURGE`, and the `X-Cache-Status` / `Cache-Status` headers. What is cacheable, the key
//! and freshness are the route's [`CachePolicy`]'s business.

use crate::metrics::METRICS;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use pingora::cache::key::HashBinary;
use pingora::cache::{CacheOptionOverrides, CachePhase, NoCacheReason};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use tollgate_plugins::cache::{CachePolicy, RequestUse, CACHE_STATUS, HIT_STATUS, X_CACHE_STATUS};
use tollgate_plugins::{Answer, RequestCtx};

/// Most times a request waiting on another's fetch retries the lock before going to the
/// origin itself.
const MAX_LOCK_RETRIES: usize = 2;

/// Turn Pingora's cache phases on for this request, with the route's store and limits.
pub fn enable(session: &mut Session, policy: &CachePolicy) {
    let store = policy.store();
    let mut overrides = CacheOptionOverrides::default();
    overrides.wait_timeout = Some(policy.lock_timeout);
    overrides.max_lock_retries = Some(MAX_LOCK_RETRIES);
    session.cache.enable(
        policy.storage(),
        policy.eviction(),
        None,
        Some(store.lock.as_ref()),
        Some(overrides),
    );
    session
        .cache
        .set_max_file_size_bytes(policy.max_object_bytes);
}

/// `PURGE` on a cached route: drop every stored variant of the URL.
pub async fn purge(policy: &CachePolicy, req: &RequestHeader, ctx: &RequestCtx) -> Answer {
    if !policy.purge_enabled() {
        return Answer::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "PURGE is not enabled on this route",
        );
    }
    if !policy.purge_allowed(req, ctx) {
        return Answer::error(
            StatusCode::FORBIDDEN,
            "purge_forbidden",
            "not allowed to purge",
        );
    }
    let n = match policy.purge_urls(&[policy.url_hash(req)]).await {
        Ok(n) => n,
        Err(_) => {
            // The storage counted and logged the failure.
            return Answer::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "cache_unavailable",
                "the cache storage could not be reached; nothing was purged",
            );
        }
    };
    let status = if n > 0 {
        StatusCode::OK
    } else {
        StatusCode::NOT_FOUND
    };
    Answer {
        status,
        headers: vec![(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body: Bytes::from(format!("{{\"purged\":{n}}}")),
        code: None,
    }
}

/// `X-Cache-Status` (Kong/APISIX style) and RFC 9211 `Cache-Status` on responses of cached
/// routes; counts the status. Returns the URLs a successful unsafe request invalidates, for
/// the caller to [`invalidate`].
#[must_use]
pub fn set_status(
    session: &Session,
    resp: &mut ResponseHeader,
    cache_use: Option<RequestUse>,
    stored: bool,
    policy: &CachePolicy,
    route: &str,
) -> Vec<HashBinary> {
    let phase = session.cache.phase();
    let mut invalidated = Vec::new();
    let (x, rfc) = match (cache_use, phase) {
        (Some(RequestUse::Invalidate), _) => {
            if resp.status.is_success() || resp.status.is_redirection() {
                invalidated = policy.invalidated_urls(session.req_header(), resp);
            }
            ("BYPASS", "tollgate; fwd=method")
        }
        (_, CachePhase::Hit) => HIT_STATUS,
        (_, CachePhase::Stale) | (_, CachePhase::StaleUpdating) => {
            ("STALE", "tollgate; hit; fwd=stale")
        }
        (_, CachePhase::Revalidated) | (_, CachePhase::RevalidatedNoCache(_)) => {
            ("REVALIDATED", "tollgate; fwd=stale; fwd-status=304")
        }
        (_, CachePhase::Expired) if stored => ("EXPIRED", "tollgate; fwd=stale; stored"),
        (_, CachePhase::Expired) => ("EXPIRED", "tollgate; fwd=stale"),
        (_, CachePhase::Miss) if stored => ("MISS", "tollgate; fwd=uri-miss; stored"),
        (_, CachePhase::Miss) => ("MISS", "tollgate; fwd=uri-miss"),
        // Looked up, then the response turned out not to be storable (Kong calls it Bypass).
        (Some(RequestUse::Cache), CachePhase::Disabled(NoCacheReason::OriginNotCache))
        | (Some(RequestUse::Cache), CachePhase::Disabled(NoCacheReason::ResponseTooLarge)) => {
            ("BYPASS", "tollgate; fwd=uri-miss")
        }
        // Looked up and missed, then the origin failed: the gateway's error answers it.
        (
            Some(RequestUse::Cache | RequestUse::CacheBody),
            CachePhase::Disabled(NoCacheReason::UpstreamError),
        ) => ("MISS", "tollgate; fwd=uri-miss"),
        _ => ("BYPASS", "tollgate; fwd=bypass"),
    };
    if served_from_cache(phase) {
        // RFC 9111 §4.2.3: the age it arrived with plus the time it has been stored.
        if let Some(meta) = session.cache.maybe_cache_meta() {
            let _ = resp.insert_header(header::AGE, meta.age().as_secs());
        }
    }
    label(resp, x, rfc, policy, route);
    invalidated
}

/// Put the cache status `x` (`X-Cache-Status`) and `rfc` (`Cache-Status`) on `resp` and
/// count it.
fn label(
    resp: &mut ResponseHeader,
    x: &'static str,
    rfc: &'static str,
    policy: &CachePolicy,
    route: &str,
) {
    let _ = resp.insert_header(X_CACHE_STATUS, HeaderValue::from_static(x));
    let _ = resp.insert_header(CACHE_STATUS, HeaderValue::from_static(rfc));
    // The metric's label is the status in lower case.
    let status = match x {
        "HIT" => "hit",
        "MISS" => "miss",
        "EXPIRED" => "expired",
        "STALE" => "stale",
        "REVALIDATED" => "revalidated",
        _ => "bypass",
    };
    count(policy, route, status);
}

/// Count one response of `route` in the cache metric; `status` is the metric's label.
pub fn count(policy: &CachePolicy, route: &str, status: &str) {
    METRICS
        .cache_requests
        .with_label_values(&[route, status, policy.storage_name()])
        .inc();
}

/// Drop what an unsafe request invalidated. A storage failure is the storage's to count
/// and log; the client's answer does not depend on it.
pub async fn invalidate(policy: &CachePolicy, urls: Vec<HashBinary>) {
    if !urls.is_empty() {
        let _ = policy.purge_urls(&urls).await;
    }
}

/// Is the response body the stored one (fresh, stale, or revalidated by a 304)?
fn served_from_cache(phase: CachePhase) -> bool {
    matches!(
        phase,
        CachePhase::Hit
            | CachePhase::Stale
            | CachePhase::StaleUpdating
            | CachePhase::Revalidated
            | CachePhase::RevalidatedNoCache(_)
    )
}
