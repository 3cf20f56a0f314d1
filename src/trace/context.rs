//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): reading an incoming
//! `traceparent`, making new ids, writing the `traceparent` sent upstream.

use http::HeaderValue;
use rand::Rng;

/// A 16-byte trace id.
pub type TraceId = [u8; 16];
/// An 8-byte span id.
pub type SpanId = [u8; 8];

/// What a valid `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parent {
    /// The trace the request belongs to.
    pub trace_id: TraceId,
    /// The caller's span: the parent of the gateway's server span.
    pub span_id: SpanId,
    /// Bit 0 of the trace flags: the caller records this trace.
    pub sampled: bool,
}

/// Parse a `traceparent` value: `<version>-<32 hex>-<16 hex>-<2 hex>`, lowercase hex,
/// neither id all zeros, version not `ff`; version `00` has exactly these four fields, a
/// later version may add more after a `-` (the specification's forward compatibility).
pub fn parse(value: &[u8]) -> Option<Parent> {
    let v = std::str::from_utf8(value).ok()?.trim_matches([' ', '\t']);
    let mut parts = v.splitn(5, '-');
    let (version, trace, parent, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let extra = parts.next();
    if !is_hex(version, 2) || version == "ff" || (version == "00" && extra.is_some()) {
        return None;
    }
    if !(is_hex(trace, 32) && is_hex(parent, 16) && is_hex(flags, 2)) {
        return None;
    }
    let mut trace_id = [0u8; 16];
    let mut span_id = [0u8; 8];
    decode_hex(trace, &mut trace_id);
    decode_hex(parent, &mut span_id);
    let mut f = [0u8; 1];
    decode_hex(flags, &mut f);
    if trace_id == [0; 16] || span_id == [0; 8] {
        return None;
    }
    Some(Parent {
        trace_id,
        span_id,
        sampled: f[0] & 1 == 1,
    })
}

fn is_hex(s: &str, n: usize) -> bool {
    s.len() == n
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Decode lowercase hex already checked by [`is_hex`] into `out` (`s.len() == 2 * out.len()`).
fn decode_hex(s: &str, out: &mut [u8]) {
    let nibble = |b: u8| if b <= b'9' { b - b'0' } else { b - b'a' + 10 };
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        *o = (nibble(pair[0]) << 4) | nibble(pair[1]);
    }
}

/// Lowercase hex of `bytes` into `out` (`out.len() == 2 * bytes.len()`).
fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 15) as usize];
    }
}

/// A trace id as 32 lowercase hex digits (for the access log).
pub fn trace_hex(id: &TraceId) -> [u8; 32] {
    let mut out = [0u8; 32];
    encode_hex(id, &mut out);
    out
}

/// A new random trace id (never all zeros).
pub fn new_trace_id() -> TraceId {
    let mut rng = rand::thread_rng();
    loop {
        let id: u128 = rng.gen();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// A new random span id (never all zeros).
pub fn new_span_id() -> SpanId {
    let mut rng = rand::thread_rng();
    loop {
        let id: u64 = rng.gen();
        if id != 0 {
            return id.to_be_bytes();
        }
    }
}

/// The `traceparent` (version 00) naming `span` of `trace` as the parent.
pub fn traceparent(trace: &TraceId, span: &SpanId, sampled: bool) -> HeaderValue {
    let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
    encode_hex(trace, &mut out[3..35]);
    encode_hex(span, &mut out[36..52]);
    if sampled {
        out[54] = b'1';
    }
    // Only ASCII hex and `-`: always a valid header value.
    HeaderValue::from_bytes(&out).unwrap_or(HeaderValue::from_static(""))
}

/// Whether a new trace is sampled at `ratio`: the low 63 bits of its id against the ratio's
/// share of them (as OpenTelemetry's `TraceIdRatioBased` does), so every gateway that sees
/// the same id decides alike.
pub fn sampled_at(trace: &TraceId, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let mut low = [0u8; 8];
    low.copy_from_slice(&trace[8..]);
    let x = u64::from_be_bytes(low) >> 1;
    x < (ratio * (1u64 << 63) as f64) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn parses_valid_values_only() {
        let p = parse(format!("00-{ID}-00f067aa0ba902b7-01").as_bytes()).expect("valid");
        assert_eq!(&trace_hex(&p.trace_id), ID.as_bytes());
        assert_eq!(p.span_id, [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]);
        assert!(p.sampled);
        let p = parse(format!("00-{ID}-00f067aa0ba902b7-00").as_bytes()).expect("valid");
        assert!(!p.sampled);
        // A later version may carry more fields.
        assert!(parse(format!("01-{ID}-00f067aa0ba902b7-01-x").as_bytes()).is_some());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_string(),
            format!("00-{ID}-0000000000000000-01"),
            format!("ff-{ID}-00f067aa0ba902b7-01"),
            format!("00-{}-00f067aa0ba902b7-01", ID.to_uppercase()),
            format!("00-{ID}-00f067aa0ba902b7-01-x"),
            format!("00-{ID}-00f067aa0ba902b7-1"),
            format!("00-{ID}-00f067aa0ba902b7"),
            "garbage".to_string(),
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn writes_what_it_reads() {
        let trace = new_trace_id();
        let span = new_span_id();
        let v = traceparent(&trace, &span, true);
        let p = parse(v.as_bytes()).expect("valid");
        assert_eq!((p.trace_id, p.span_id, p.sampled), (trace, span, true));
        assert!(v
            .to_str()
            .is_ok_and(|s| s.ends_with("-01") && s.len() == 55));
        assert!(
            !parse(traceparent(&trace, &span, false).as_bytes())
                .expect("valid")
                .sampled
        );
    }

    #[test]
    fn ratio_sampling_follows_the_id() {
        let n = 20_000;
        let kept = (0..n).filter(|_| sampled_at(&new_trace_id(), 0.25)).count();
        assert!((4_000..6_000).contains(&kept), "{kept}");
        let id = new_trace_id();
        assert!(sampled_at(&id, 1.0) && !sampled_at(&id, 0.0));
        assert_eq!(sampled_at(&id, 0.5), sampled_at(&id, 0.5));
    }
}
