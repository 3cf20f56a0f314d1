//! Message framing made canonical: a request reaches the upstream with at most one
//! `Content-Length`, so no backend can frame it differently than the gateway did.

use http::header;
use pingora::http::RequestHeader;

/// `Content-Length` values that disagree or are not numbers (RFC 9112 §6.3: 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadContentLength;

/// Collapse a `Content-Length` list (`5, 5`) or repeated header into one value, as
/// RFC 9112 §6.3 allows when all values are equal; refuse when they are not.
pub fn canonical_content_length(req: &mut RequestHeader) -> Result<(), BadContentLength> {
    let mut values = req.headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = values.next() else {
        return Ok(());
    };
    let single = values.next().is_none();
    if single && !first.is_empty() && first.as_bytes().iter().all(u8::is_ascii_digit) {
        // The usual case: one plain number.
        return Ok(());
    }
    let mut length: Option<u64> = None;
    for value in req.headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| BadContentLength)?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadContentLength);
            }
            let n: u64 = part.parse().map_err(|_| BadContentLength)?;
            match length {
                Some(l) if l != n => return Err(BadContentLength),
                _ => length = Some(n),
            }
        }
    }
    if let Some(n) = length {
        req.insert_header(header::CONTENT_LENGTH, n)
            .map_err(|_| BadContentLength)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(values: &[&str]) -> (Result<(), BadContentLength>, Vec<String>) {
        let mut r = RequestHeader::build("POST", b"/", None).unwrap();
        for v in values {
            r.append_header("content-length", *v).unwrap();
        }
        let res = canonical_content_length(&mut r);
        let left = r
            .headers
            .get_all("content-length")
            .iter()
            .map(|v| v.to_str().unwrap().to_string())
            .collect();
        (res, left)
    }

    #[test]
    fn equal_values_collapse_others_are_refused() {
        assert_eq!(with(&["5"]), (Ok(()), vec!["5".to_string()]));
        assert_eq!(with(&["5, 5"]), (Ok(()), vec!["5".to_string()]));
        assert_eq!(with(&["5", "5"]), (Ok(()), vec!["5".to_string()]));
        assert_eq!(with(&["5", " 5 "]).1, vec!["5".to_string()]);
        assert_eq!(with(&["5, 6"]).0, Err(BadContentLength));
        assert_eq!(with(&["5", "6"]).0, Err(BadContentLength));
        assert_eq!(with(&["+5"]).0, Err(BadContentLength));
        assert_eq!(with(&["5,"]).0, Err(BadContentLength));
        assert_eq!(with(&[]), (Ok(()), vec![]));
    }
}
