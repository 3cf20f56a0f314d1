//! Time in a shared cache (RFC 9111 §4.2): a response's age when it arrives and its
//! freshness lifetime, from `Age`, `Date`, `Expires`, `Cache-Control` and (opt-in)
//! `Last-Modified`. Pure functions of the response and the clock, so they are tested here and
//! the policy only decides which lifetime applies.

use http::header;
use pingora::cache::cache_control::CacheControl;
use pingora::http::ResponseHeader;
use std::time::{Duration, SystemTime};

/// The `Age` of a response (§5.1): the first value of the first `Age` line; a value that is
/// not a non-negative integer makes the field invalid, and an invalid `Age` is ignored.
pub fn age_header(resp: &ResponseHeader) -> Option<Duration> {
    let first = resp.headers.get(header::AGE)?.to_str().ok()?;
    let value = first.split(',').next()?.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // A value too large for u64 is "a very large age" (§1.2.2: 2^31 is enough).
    Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX >> 2)))
}

/// The response's `Date`, if exactly one valid one is present.
pub fn date(resp: &ResponseHeader) -> Option<SystemTime> {
    let mut all = resp.headers.get_all(header::DATE).iter();
    let v = all.next()?;
    if all.next().is_some() {
        return None;
    }
    httpdate::parse_http_date(v.to_str().ok()?).ok()
}

/// `corrected_initial_age` (§4.2.3): the larger of the age implied by `Date` and the `Age`
/// the origin (or a cache before it) gave, plus the time the response took to arrive.
pub fn initial_age(resp: &ResponseHeader, now: SystemTime, response_delay: Duration) -> Duration {
    let apparent = date(resp)
        .and_then(|d| now.duration_since(d).ok())
        .unwrap_or_default();
    let corrected = age_header(resp).map_or(Duration::ZERO, |a| a.saturating_add(response_delay));
    apparent.max(corrected)
}

/// Where a freshness lifetime came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifetime {
    /// `s-maxage`, `max-age` or `Expires` (§4.2.1).
    Explicit(Duration),
    /// The response gives none.
    None,
}

/// The explicit freshness lifetime (§4.2.1): `s-maxage`, else `max-age`, else
/// `Expires − Date` (`Date` missing: the time it arrived). An invalid `Expires` (or several)
/// means "already expired".
pub fn explicit_lifetime(
    resp: &ResponseHeader,
    cc: Option<&CacheControl>,
    now: SystemTime,
) -> Lifetime {
    let directive = cc.and_then(|cc| match cc.s_maxage() {
        Ok(Some(s)) => Some(s),
        _ => cc.max_age().ok().flatten(),
    });
    if let Some(secs) = directive {
        return Lifetime::Explicit(Duration::from_secs(u64::from(secs)));
    }
    let mut all = resp.headers.get_all(header::EXPIRES).iter();
    let Some(first) = all.next() else {
        return Lifetime::None;
    };
    if all.next().is_some() {
        return Lifetime::Explicit(Duration::ZERO);
    }
    let Some(expires) = first
        .to_str()
        .ok()
        .and_then(|v| httpdate::parse_http_date(v).ok())
    else {
        return Lifetime::Explicit(Duration::ZERO);
    };
    let base = date(resp).unwrap_or(now);
    Lifetime::Explicit(expires.duration_since(base).unwrap_or_default())
}

/// Heuristic freshness (§4.2.2): a tenth of the time since `Last-Modified` (as of `Date`, or
/// now), at most `cap`; `None` without a valid `Last-Modified`.
pub fn heuristic_lifetime(
    resp: &ResponseHeader,
    now: SystemTime,
    cap: Duration,
) -> Option<Duration> {
    let lm = resp.headers.get(header::LAST_MODIFIED)?.to_str().ok()?;
    let lm = httpdate::parse_http_date(lm).ok()?;
    let base = date(resp).unwrap_or(now);
    let since = base.duration_since(lm).ok()?;
    Some((since / 10).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, String)]) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), v.as_str()).unwrap();
        }
        r
    }

    fn fmt(t: SystemTime) -> String {
        httpdate::fmt_http_date(t)
    }

    #[test]
    fn age_uses_the_first_value_and_ignores_invalid() {
        assert_eq!(
            age_header(&resp(&[("age", "30".into())])),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            age_header(&resp(&[("age", "7200,0".into())])),
            Some(Duration::from_secs(7200))
        );
        assert_eq!(
            age_header(&resp(&[("age", "5".into()), ("age", "900".into())])),
            Some(Duration::from_secs(5))
        );
        assert_eq!(age_header(&resp(&[("age", "abc".into())])), None);
        assert_eq!(age_header(&resp(&[("age", "-1".into())])), None);
        assert_eq!(age_header(&resp(&[])), None);
        assert!(age_header(&resp(&[("age", "99999999999999999999999".into())])).is_some());
    }

    #[test]
    fn initial_age_is_the_larger_of_date_and_age() {
        let now = SystemTime::now();
        let old = now - Duration::from_secs(100);
        let r = resp(&[("date", fmt(old)), ("age", "30".into())]);
        let a = initial_age(&r, now, Duration::from_secs(1));
        assert!(
            a >= Duration::from_secs(99) && a <= Duration::from_secs(101),
            "{a:?}"
        );
        let r = resp(&[("date", fmt(now)), ("age", "30".into())]);
        assert_eq!(
            initial_age(&r, now, Duration::from_secs(2)),
            Duration::from_secs(32)
        );
        // A Date in the future implies no age.
        let r = resp(&[("date", fmt(now + Duration::from_secs(400)))]);
        assert_eq!(initial_age(&r, now, Duration::ZERO), Duration::ZERO);
    }

    #[test]
    fn expires_counts_from_date_not_from_now() {
        let now = SystemTime::now();
        let r = resp(&[
            ("date", fmt(now + Duration::from_secs(400))),
            ("expires", fmt(now + Duration::from_secs(300))),
        ]);
        assert_eq!(
            explicit_lifetime(&r, None, now),
            Lifetime::Explicit(Duration::ZERO)
        );
        let r = resp(&[
            ("date", fmt(now - Duration::from_secs(1000))),
            ("expires", fmt(now + Duration::from_secs(1000))),
        ]);
        let Lifetime::Explicit(l) = explicit_lifetime(&r, None, now) else {
            panic!("no lifetime")
        };
        assert!(l >= Duration::from_secs(1999) && l <= Duration::from_secs(2001));
        let r = resp(&[("expires", "0".into())]);
        assert_eq!(
            explicit_lifetime(&r, None, now),
            Lifetime::Explicit(Duration::ZERO)
        );
        assert_eq!(explicit_lifetime(&resp(&[]), None, now), Lifetime::None);
    }

    #[test]
    fn directives_win_over_expires() {
        let now = SystemTime::now();
        let r = resp(&[
            ("cache-control", "max-age=10, s-maxage=20".into()),
            ("expires", fmt(now + Duration::from_secs(300))),
        ]);
        let cc = CacheControl::from_resp_headers(&r);
        assert_eq!(
            explicit_lifetime(&r, cc.as_ref(), now),
            Lifetime::Explicit(Duration::from_secs(20))
        );
    }

    #[test]
    fn heuristic_is_a_tenth_capped() {
        let now = SystemTime::now();
        let r = resp(&[
            ("date", fmt(now)),
            ("last-modified", fmt(now - Duration::from_secs(1000))),
        ]);
        let h = heuristic_lifetime(&r, now, Duration::from_secs(86400)).unwrap();
        assert!(h >= Duration::from_secs(99) && h <= Duration::from_secs(101));
        assert_eq!(
            heuristic_lifetime(&r, now, Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            heuristic_lifetime(&resp(&[]), now, Duration::from_secs(1)),
            None
        );
    }
}
