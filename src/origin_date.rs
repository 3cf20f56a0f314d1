//! The origin's `Date` kept on HTTP/1 responses (RFC 9110 §6.6.1: a proxy passes it; it adds
//! one only when there is none). Pingora 0.9's HTTP/1 writer overwrites `Date` with its own
//! clock on every response, so the proxy carries the origin's value in a marker field whose
//! name holds a per-process secret, and the client connection's writer
//! ([`GuardedStream`](crate::connection::guard::GuardedStream)) puts it back in the `Date`
//! line and drops the marker while the head goes out. Only a write that starts a response
//! head and carries the marker is touched; an upstream cannot forge the marker's name.
//!
//! HTTP/2 responses keep Pingora's `Date` (its HPACK writer cannot be reached).

use http::header::{HeaderName, HeaderValue, DATE};
use pingora::http::ResponseHeader;
use std::time::SystemTime;

/// The marker and how to apply it; one per process, shared by the proxy and the listeners.
#[derive(Debug)]
pub struct OriginDate {
    name: HeaderName,
    /// A searcher for the marker's name, built once (building one costs more than a search).
    finder: memchr::memmem::Finder<'static>,
}

impl Default for OriginDate {
    fn default() -> Self {
        Self::new()
    }
}

impl OriginDate {
    /// A marker with a fresh random name.
    pub fn new() -> Self {
        let secret = tollgate_plugins::RequestId::generate();
        let name = format!("x-tollgate-origin-date-{}", secret.as_str()).to_ascii_lowercase();
        let name = HeaderName::from_bytes(name.as_bytes())
            .unwrap_or_else(|_| HeaderName::from_static("x-tollgate-origin-date"));
        let finder = memchr::memmem::Finder::new(name.as_str().as_bytes()).into_owned();
        OriginDate { name, finder }
    }

    /// Before an HTTP/1 response head is written: carry its `Date` (made canonical, an
    /// IMF-fixdate) in the marker. A missing or invalid `Date` is left to Pingora, which
    /// writes the time the response is sent.
    pub fn mark(&self, resp: &mut ResponseHeader) {
        let Some(value) = resp.headers.get(DATE) else {
            return;
        };
        // A live origin dates its answer this second, as Pingora will: nothing to carry.
        if value == pingora::protocols::http::date::get_cached_date() {
            return;
        }
        let carried = if is_imf_fixdate(value.as_bytes()) {
            value.clone()
        } else {
            let Some(date) = value
                .to_str()
                .ok()
                .and_then(|v| httpdate::parse_http_date(v).ok())
            else {
                return;
            };
            match HeaderValue::from_str(&fmt(date)) {
                Ok(v) => v,
                Err(_) => return,
            }
        };
        let _ = resp.insert_header(self.name.clone(), carried);
    }

    /// Like [`OriginDate::mark`], for a response made from a stored head whose `Date` was
    /// `stored` and was made the IMF-fixdate `fixdate` when it was stored, so no parsing is
    /// needed. When a response hook changed `Date` since, this is [`OriginDate::mark`].
    pub fn carry(
        &self,
        resp: &mut ResponseHeader,
        stored: Option<&HeaderValue>,
        fixdate: &HeaderValue,
    ) {
        if resp.headers.get(DATE) != stored {
            return self.mark(resp);
        }
        if fixdate != pingora::protocols::http::date::get_cached_date() {
            let _ = resp.insert_header(self.name.clone(), fixdate.clone());
        }
    }

    /// A response head as written by Pingora, with the marker's value as its `Date` and
    /// without the marker; `None` when `buf` is not a marked response head.
    pub fn rewrite_head(&self, buf: &[u8]) -> Option<Vec<u8>> {
        if !buf.starts_with(b"HTTP/1.") {
            return None;
        }
        // Pingora writes the marker's name as given (lower case) at the start of a line.
        let marker = self.name.as_str().as_bytes();
        let at = self.finder.find(buf)?;
        let end = head_end(buf)?;
        if at >= end || buf.get(at.wrapping_sub(2)..at) != Some(b"\r\n") {
            return None;
        }
        let line_end = at + crlf(&buf[at..end])?;
        let value = trim(buf[at..line_end].get(marker.len() + 1..)?);
        // The Date line Pingora wrote (exactly one: it inserts its own).
        let date_at = find_header_line(&buf[..end], b"date")?;
        let date_end = date_at + crlf(&buf[date_at..end])?;
        let mut out = Vec::with_capacity(buf.len());
        let (first, second) = if date_at < at {
            ((date_at, date_end), (at, line_end + 2))
        } else {
            ((at, line_end + 2), (date_at, date_end))
        };
        out.extend_from_slice(&buf[..first.0]);
        if first.0 == date_at {
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&buf[first.1..second.0]);
        if second.0 == date_at {
            out.extend_from_slice(b"Date: ");
            out.extend_from_slice(value);
        }
        out.extend_from_slice(&buf[second.1..]);
        Some(out)
    }
}

/// Is `v` an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the form HTTP requires?
fn is_imf_fixdate(v: &[u8]) -> bool {
    v.len() == 29
        && v.ends_with(b" GMT")
        && v[3] == b','
        && httpdate::parse_http_date(std::str::from_utf8(v).unwrap_or("")).is_ok()
}

/// Where the first `\r\n` of `b` is.
fn crlf(b: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let i = from + memchr::memchr(b'\r', &b[from..])?;
        if b.get(i + 1) == Some(&b'\n') {
            return Some(i);
        }
        from = i + 1;
    }
}

/// Where the head in `buf` ends (just after its empty line).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    loop {
        let i = from + crlf(&buf[from..])?;
        if buf.get(i + 2..i + 4) == Some(b"\r\n") {
            return Some(i + 4);
        }
        from = i + 2;
    }
}

/// Where the line of header `name` (any case) starts in `head`.
fn find_header_line(head: &[u8], name: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = crlf(&head[from..]) {
        let start = from + i + 2;
        let line = &head[start..];
        if line.len() > name.len()
            && line[..name.len()].eq_ignore_ascii_case(name)
            && line[name.len()] == b':'
        {
            return Some(start);
        }
        from = start;
    }
    None
}

fn fmt(t: SystemTime) -> String {
    httpdate::fmt_http_date(t)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &v[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marked_date_replaces_pingoras_and_the_marker_goes() {
        let od = OriginDate::new();
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("date", "Sun, 06 Nov 1994 08:49:37 GMT")
            .unwrap();
        od.mark(&mut resp);
        let marker = od.name.as_str().to_string();
        let written = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Tue, 01 Dec 2026 21:00:00 GMT\r\n{marker}: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: keep-alive\r\n\r\nok"
        );
        let out = od.rewrite_head(written.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: keep-alive\r\n\r\nok"
        );
    }

    #[test]
    fn the_marker_may_come_before_the_date() {
        let od = OriginDate::new();
        let marker = od.name.as_str().to_string();
        let written = format!(
            "HTTP/1.1 200 OK\r\n{marker}: Sun, 06 Nov 1994 08:49:37 GMT\r\nx-a: 1\r\ndate: Tue, 01 Dec 2026 21:00:00 GMT\r\n\r\n"
        );
        let out = od.rewrite_head(written.as_bytes()).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nx-a: 1\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n"
        );
    }

    #[test]
    fn unmarked_heads_bodies_and_forged_markers_are_left_alone() {
        let od = OriginDate::new();
        let plain = b"HTTP/1.1 200 OK\r\nDate: Tue, 01 Dec 2026 21:00:00 GMT\r\n\r\n";
        assert!(od.rewrite_head(plain).is_none());
        let body = format!("{}: x\r\n\r\n", od.name.as_str());
        assert!(od.rewrite_head(body.as_bytes()).is_none());
        let forged =
            b"HTTP/1.1 200 OK\r\nx-tollgate-origin-date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\r\n";
        assert!(od.rewrite_head(forged).is_none());
    }

    #[test]
    fn invalid_origin_dates_are_not_carried_and_obsolete_forms_are_made_canonical() {
        let od = OriginDate::new();
        let mut bad = ResponseHeader::build(200, None).unwrap();
        bad.insert_header("date", "yesterday").unwrap();
        od.mark(&mut bad);
        assert!(!bad.headers.contains_key(&od.name));
        let mut old = ResponseHeader::build(200, None).unwrap();
        old.insert_header("date", "Sunday, 06-Nov-94 08:49:37 GMT")
            .unwrap();
        od.mark(&mut old);
        assert_eq!(
            old.headers.get(&od.name).unwrap(),
            "Sun, 06 Nov 1994 08:49:37 GMT"
        );
    }
}
