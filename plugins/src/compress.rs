//! `compress`: response compression negotiated with the request's `Accept-Encoding`.
//!
//! The request hook picks the coding (the client's highest q-value among `algorithms`, ties
//! going to the order of `algorithms`; `q=0` refuses a coding, `*` stands for every coding
//! not named) and keeps it in the request's extensions. The response hook decides whether the
//! response is compressed: it has a body, no `Content-Encoding`, no
//! `Cache-Control: no-transform`, a listed media type and, when its length is known, at least
//! `min_size` bytes. Such a response gets `Vary: Accept-Encoding` (whatever the client
//! accepted, so caches keep the codings apart); when a coding was chosen it also gets
//! `Content-Encoding`, loses `Content-Length` and `Accept-Ranges`, and a strong `ETag` becomes
//! weak. The body hook compresses each chunk as it arrives and flushes the encoder after it,
//! so a streamed response (server-sent events) still reaches the client chunk by chunk.
//!
//! The codecs are the ones Pingora's compression module wraps (`flate2` with zlib-ng,
//! `brotli`, `zstd`), called directly: Pingora's encoders emit output only when their buffers
//! fill or the body ends, which would hold streamed events back.

use crate::config_error::ConfigError;
use crate::media::{self, MediaTypes};
use crate::metrics::METRICS;
use crate::sync::lock;
use crate::{Flow, Phase, Plugin, RequestCtx};
use async_trait::async_trait;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use serde::Deserialize;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

/// Registered name.
pub const NAME: &str = "compress";

/// Smallest body compressed by default, in bytes (when its length is known).
pub const DEFAULT_MIN_SIZE: u64 = 1024;

/// Media types compressed when `content_types` is not set. `text/event-stream` is left out
/// even though `text/*` matches it; list it to compress event streams.
pub const DEFAULT_CONTENT_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "*/*+json",
    "application/javascript",
    "application/x-javascript",
    "application/xml",
    "*/*+xml",
    "application/wasm",
    "application/x-ndjson",
    "application/graphql-response+json",
    "image/svg+xml",
    "image/x-icon",
    "font/ttf",
    "font/otf",
];

/// A content coding this plugin produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Brotli (`br`).
    Brotli,
    /// `gzip`.
    Gzip,
    /// Zstandard (`zstd`).
    Zstd,
}

impl Algorithm {
    /// The coding's token in `Accept-Encoding` and `Content-Encoding`.
    pub fn token(self) -> &'static str {
        match self {
            Algorithm::Brotli => "br",
            Algorithm::Gzip => "gzip",
            Algorithm::Zstd => "zstd",
        }
    }

    fn parse(s: &str) -> Option<Algorithm> {
        match s {
            "br" => Some(Algorithm::Brotli),
            "gzip" => Some(Algorithm::Gzip),
            "zstd" => Some(Algorithm::Zstd),
            _ => None,
        }
    }

    /// Does `coding` (from `Accept-Encoding`, lower case) name this algorithm?
    fn is_named(self, coding: &str) -> bool {
        coding == self.token() || (self == Algorithm::Gzip && coding == "x-gzip")
    }

    fn default_level(self) -> u32 {
        match self {
            Algorithm::Brotli => 4,
            Algorithm::Gzip => 6,
            Algorithm::Zstd => 3,
        }
    }
}

/// q-values in thousandths (`q=0.5` → 500).
fn parse_q(params: &str) -> Option<u16> {
    let mut q = 1000;
    for p in params.split(';') {
        let Some((k, v)) = p.split_once('=') else {
            if p.trim().is_empty() {
                continue;
            }
            return None;
        };
        if !k.trim().eq_ignore_ascii_case("q") {
            continue;
        }
        let v = v.trim();
        let (int, frac) = v.split_once('.').unwrap_or((v, ""));
        if frac.len() > 3 || !frac.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let frac_value: u16 = format!("{frac:0<3}").parse().ok()?;
        q = match int {
            "0" => frac_value,
            "1" if frac_value == 0 => 1000,
            _ => return None,
        };
    }
    Some(q)
}

/// The coding to use for a request with these `Accept-Encoding` values, among `algorithms`
/// (the server's preference order): the highest q-value wins, ties go to the earlier
/// algorithm; a coding not named gets the q of `*`, if given. `None`: send it as it is.
pub fn negotiate<'a>(
    accept_encoding: impl Iterator<Item = &'a HeaderValue>,
    algorithms: &[Algorithm],
) -> Option<Algorithm> {
    // (coding, q) for every well-formed item; a malformed one is ignored.
    let mut items: Vec<(String, u16)> = Vec::new();
    for v in accept_encoding {
        let Ok(s) = v.to_str() else { continue };
        for item in s.split(',') {
            let (coding, params) = item.split_once(';').unwrap_or((item, ""));
            let coding = coding.trim().to_ascii_lowercase();
            if coding.is_empty() {
                continue;
            }
            if let Some(q) = parse_q(params) {
                items.push((coding, q));
            }
        }
    }
    let star = items.iter().find(|(c, _)| c == "*").map(|(_, q)| *q);
    let mut best: Option<(Algorithm, u16)> = None;
    for &a in algorithms {
        let named = items
            .iter()
            .filter(|(c, _)| a.is_named(c))
            .map(|(_, q)| *q)
            .max();
        let q = named.or(star).unwrap_or(0);
        if q > 0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((a, q));
        }
    }
    best.map(|(a, _)| a)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    algorithms: Option<Vec<String>>,
    #[serde(default = "default_min_size")]
    min_size: u64,
    content_types: Option<Vec<String>>,
    level: Option<u32>,
}

fn default_min_size() -> u64 {
    DEFAULT_MIN_SIZE
}

/// The compiled `compress` plugin.
pub struct Compress {
    algorithms: Vec<Algorithm>,
    min_size: u64,
    types: MediaTypes,
    level: Option<u32>,
}

/// Constructor for the registry.
pub fn build(
    value: &toml::Value,
    _ctx: &crate::BuildCtx,
) -> Result<Arc<dyn Plugin>, Vec<ConfigError>> {
    let cfg: Config = crate::parse_config_all(value)?;
    let mut errors = Vec::new();
    let mut algorithms = Vec::new();
    match &cfg.algorithms {
        Some(list) if list.is_empty() => errors.push(ConfigError::new(
            "algorithms",
            "must list at least one of \"br\", \"gzip\", \"zstd\"",
        )),
        Some(list) => {
            for (i, name) in list.iter().enumerate() {
                match Algorithm::parse(name) {
                    Some(a) if algorithms.contains(&a) => errors.push(ConfigError::new(
                        format!("algorithms[{i}]"),
                        format!("{name:?} is listed twice"),
                    )),
                    Some(a) => algorithms.push(a),
                    None => errors.push(ConfigError::new(
                        format!("algorithms[{i}]"),
                        format!("{name:?}: expected \"br\", \"gzip\" or \"zstd\""),
                    )),
                }
            }
        }
        None => algorithms = vec![Algorithm::Brotli, Algorithm::Gzip],
    }
    let types = MediaTypes::from_config(
        cfg.content_types.as_deref(),
        DEFAULT_CONTENT_TYPES,
        "content_types",
        &mut errors,
    );
    if let Some(l) = cfg.level.filter(|l| !(1..=9).contains(l)) {
        errors.push(ConfigError::new(
            "level",
            format!("{l}: must be 1-9 (valid for every algorithm)"),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Arc::new(Compress {
        algorithms,
        min_size: cfg.min_size,
        types,
        level: cfg.level,
    }))
}

/// What the request hook found.
#[derive(Clone, Copy)]
struct Negotiated {
    head: bool,
    chosen: Option<Algorithm>,
}

/// A streaming encoder whose output is taken after every chunk.
enum Encoder {
    Gzip(flate2::write::GzEncoder<Vec<u8>>),
    Brotli(Box<brotli::CompressorWriter<Vec<u8>>>),
    Zstd(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

/// Window of the brotli encoder (2^19 bytes, as Pingora's).
const BROTLI_LGWIN: u32 = 19;
/// Input buffer of the brotli encoder.
const BROTLI_BUFFER: usize = 4096;

impl Encoder {
    fn new(a: Algorithm, level: u32) -> io::Result<Encoder> {
        Ok(match a {
            Algorithm::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                Vec::new(),
                flate2::Compression::new(level),
            )),
            Algorithm::Brotli => Encoder::Brotli(Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BROTLI_BUFFER,
                level,
                BROTLI_LGWIN,
            ))),
            Algorithm::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(Vec::new(), level as i32)?)
            }
        })
    }

    /// Compress `input` and flush, returning every byte produced so far.
    fn chunk(&mut self, input: &[u8]) -> io::Result<Vec<u8>> {
        let w: &mut dyn Write = match self {
            Encoder::Gzip(e) => e,
            Encoder::Brotli(e) => e.as_mut(),
            Encoder::Zstd(e) => e,
        };
        w.write_all(input)?;
        w.flush()?;
        Ok(std::mem::take(match self {
            Encoder::Gzip(e) => e.get_mut(),
            Encoder::Brotli(e) => e.get_mut(),
            Encoder::Zstd(e) => e.get_mut(),
        }))
    }

    /// Compress `input` and end the stream.
    fn finish(self, input: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Encoder::Gzip(mut e) => {
                e.write_all(input)?;
                e.finish()
            }
            Encoder::Brotli(mut e) => {
                e.write_all(input)?;
                Ok(e.into_inner())
            }
            Encoder::Zstd(mut e) => {
                e.write_all(input)?;
                e.finish()
            }
        }
    }
}

/// The encoder of a response being compressed (in the request's extensions, which need
/// `Clone + Sync`; `None` once the body ended).
#[derive(Clone)]
struct Encoding(Arc<Mutex<Option<Encoder>>>);

/// Add `Accept-Encoding` to `Vary` unless it is there already (or `Vary: *`).
fn add_vary(resp: &mut ResponseHeader) {
    let present = resp.headers.get_all(header::VARY).iter().any(|v| {
        v.to_str().is_ok_and(|s| {
            s.split(',').any(|t| {
                let t = t.trim();
                t == "*" || t.eq_ignore_ascii_case("accept-encoding")
            })
        })
    });
    if !present {
        let _ = resp.append_header(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    }
}

impl Compress {
    /// Would this response be compressed for a client that accepts a coding?
    fn eligible(&self, resp: &ResponseHeader) -> bool {
        let status = resp.status.as_u16();
        if resp.status.is_informational() || matches!(status, 204 | 206 | 304) {
            return false;
        }
        if media::is_encoded(resp)
            || media::no_transform(resp)
            || resp.headers.contains_key(header::CONTENT_RANGE)
        {
            return false;
        }
        let Some(mt) = media::media_type(resp) else {
            return false;
        };
        if !self.types.matches(&mt) || (mt == "text/event-stream" && !self.types.lists_exactly(&mt))
        {
            return false;
        }
        media::content_length(resp).is_none_or(|n| n >= self.min_size)
    }
}

#[async_trait]
impl Plugin for Compress {
    fn name(&self) -> &'static str {
        NAME
    }

    fn phase(&self) -> Phase {
        Phase::Encode
    }

    async fn request(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Flow {
        let head = req.method == http::Method::HEAD;
        let chosen = negotiate(
            req.headers.get_all(header::ACCEPT_ENCODING).iter(),
            &self.algorithms,
        );
        ctx.extensions.insert(Negotiated { head, chosen });
        Flow::Continue
    }

    fn response(&self, resp: &mut ResponseHeader, ctx: &mut RequestCtx) {
        let Some(n) = ctx.extensions.get::<Negotiated>().copied() else {
            return;
        };
        if !self.eligible(resp) {
            return;
        }
        add_vary(resp);
        let Some(a) = n.chosen.filter(|_| !n.head) else {
            return;
        };
        let level = self.level.unwrap_or_else(|| a.default_level());
        let Ok(encoder) = Encoder::new(a, level) else {
            return;
        };
        let _ = resp.insert_header(
            header::CONTENT_ENCODING,
            HeaderValue::from_static(a.token()),
        );
        media::body_changes(resp);
        ctx.extensions
            .insert(Encoding(Arc::new(Mutex::new(Some(encoder)))));
        METRICS
            .compressed_responses
            .with_label_values(&[&ctx.route, a.token()])
            .inc();
    }

    fn wants_response_body(&self) -> bool {
        true
    }

    fn response_body(&self, body: &mut Option<Bytes>, end_of_stream: bool, ctx: &mut RequestCtx) {
        let Some(Encoding(slot)) = ctx.extensions.get::<Encoding>() else {
            return;
        };
        let mut slot = lock(slot);
        let input = body.take().unwrap_or_default();
        let out = if end_of_stream {
            match slot.take() {
                Some(e) => e.finish(&input),
                None => return,
            }
        } else {
            match slot.as_mut() {
                Some(_) if input.is_empty() => return,
                Some(e) => e.chunk(&input),
                None => return,
            }
        };
        match out {
            Ok(out) if out.is_empty() => {}
            Ok(out) => *body = Some(Bytes::from(out)),
            Err(e) => {
                // Encoding into memory does not fail; if it did, the body cannot be mended.
                *slot = None;
                log::warn!("route {}: compressing a response failed: {e}", ctx.route);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RequestId;
    use std::io::Read;

    const ALL: &[Algorithm] = &[Algorithm::Brotli, Algorithm::Gzip, Algorithm::Zstd];

    fn neg(ae: &str, algorithms: &[Algorithm]) -> Option<Algorithm> {
        let v = HeaderValue::from_str(ae).unwrap();
        negotiate(std::iter::once(&v), algorithms)
    }

    #[test]
    fn accept_encoding_negotiation() {
        use Algorithm::*;
        assert_eq!(neg("gzip, br", ALL), Some(Brotli));
        assert_eq!(neg("gzip, br", &[Gzip, Brotli]), Some(Gzip));
        assert_eq!(neg("gzip;q=1, br;q=0.5", ALL), Some(Gzip));
        assert_eq!(neg("gzip;q=0", &[Gzip]), None);
        assert_eq!(neg("GZIP ; Q=0.001", &[Gzip]), Some(Gzip));
        assert_eq!(neg("x-gzip", &[Brotli, Gzip]), Some(Gzip));
        assert_eq!(neg("identity", ALL), None);
        assert_eq!(neg("*", &[Gzip, Brotli]), Some(Gzip));
        assert_eq!(neg("*;q=0, gzip", ALL), Some(Gzip));
        assert_eq!(neg("br;q=0, *;q=0.3", &[Brotli, Gzip]), Some(Gzip));
        assert_eq!(neg("br;q=2, gzip;q=0.1234, zstd;q=0.5x", ALL), None);
        assert_eq!(neg("", ALL), None);
        assert_eq!(negotiate(std::iter::empty(), ALL), None);
    }

    fn plugin(text: &str) -> Arc<dyn Plugin> {
        let v: toml::Value = toml::from_str(text).unwrap();
        match build(&v, &Default::default()) {
            Ok(p) => p,
            Err(e) => panic!("{e:?}"),
        }
    }

    #[test]
    fn config_errors_carry_paths() {
        let v: toml::Value = toml::from_str(
            "algorithms = ['gzip', 'lz4', 'gzip']\nlevel = 12\ncontent_types = ['x']\nmin_size = -1",
        )
        .unwrap();
        let e = build(&v, &Default::default()).err().unwrap();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["min_size"]);
        let v: toml::Value = toml::from_str(
            "algorithms = ['gzip', 'lz4', 'gzip']\nlevel = 12\ncontent_types = ['x']",
        )
        .unwrap();
        let e = build(&v, &Default::default()).err().unwrap();
        let paths: Vec<_> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "algorithms[1]",
                "algorithms[2]",
                "content_types[0]",
                "level"
            ]
        );
        assert!(build(&toml::Value::Table(Default::default()), &Default::default()).is_ok());
    }

    fn exchange(
        p: &Arc<dyn Plugin>,
        method: &str,
        ae: &str,
        mut resp: ResponseHeader,
        chunks: &[&[u8]],
    ) -> (ResponseHeader, Vec<Vec<u8>>) {
        let mut ctx = RequestCtx::new("r".into(), None, RequestId::generate());
        let mut req = RequestHeader::build(method, b"/", None).unwrap();
        req.insert_header("accept-encoding", ae).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(p.request(&req, &mut ctx));
        p.response(&mut resp, &mut ctx);
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let mut b = Some(Bytes::copy_from_slice(c));
            p.response_body(&mut b, i + 1 == chunks.len(), &mut ctx);
            out.push(b.map(|b| b.to_vec()).unwrap_or_default());
        }
        (resp, out)
    }

    fn text(len: Option<usize>) -> ResponseHeader {
        let mut r = ResponseHeader::build(200, None).unwrap();
        r.insert_header("content-type", "text/html").unwrap();
        r.insert_header("etag", "\"e\"").unwrap();
        r.insert_header("vary", "Origin").unwrap();
        if let Some(n) = len {
            r.insert_header("content-length", n).unwrap();
        }
        r
    }

    #[test]
    fn gzip_streams_chunk_by_chunk() {
        let p = plugin("algorithms = ['gzip']\nmin_size = 1");
        let (resp, out) = exchange(&p, "GET", "gzip", text(None), &[b"first ", b"second", b""]);
        assert_eq!(resp.headers.get("content-encoding").unwrap(), "gzip");
        assert_eq!(resp.headers.get("etag").unwrap(), "W/\"e\"");
        let vary: Vec<_> = resp.headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["Origin", "Accept-Encoding"]);
        // Each chunk's output decodes to that chunk already (sync flush).
        let mut d = flate2::write::GzDecoder::new(Vec::new());
        d.write_all(&out[0]).unwrap();
        d.flush().unwrap();
        assert_eq!(d.get_ref().as_slice(), b"first ");
        let all: Vec<u8> = out.concat();
        let mut s = String::new();
        flate2::read::GzDecoder::new(&all[..])
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "first second");
    }

    #[test]
    fn brotli_and_zstd_round_trip() {
        let p = plugin("algorithms = ['br', 'zstd']\nmin_size = 1");
        let body = "hello ".repeat(100);
        let (resp, out) = exchange(&p, "GET", "br", text(Some(body.len())), &[body.as_bytes()]);
        assert_eq!(resp.headers.get("content-encoding").unwrap(), "br");
        assert!(resp.headers.get("content-length").is_none());
        let mut s = String::new();
        brotli::Decompressor::new(&out[0][..], 4096)
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, body);
        let (_, out) = exchange(&p, "GET", "zstd", text(None), &[b"ab", b"cd"]);
        assert_eq!(zstd::decode_all(&out.concat()[..]).unwrap(), b"abcd");
    }

    #[test]
    fn leaves_alone_what_it_must() {
        let p = plugin("");
        // Too small, already encoded, no-transform, 304, 206, HEAD, not a listed type.
        let (r, out) = exchange(&p, "GET", "gzip", text(Some(5)), &[b"small"]);
        assert!(r.headers.get("content-encoding").is_none());
        assert_eq!(out[0], b"small");
        let mut enc = text(None);
        enc.insert_header("content-encoding", "br").unwrap();
        assert_eq!(
            exchange(&p, "GET", "gzip", enc, &[b"x"])
                .0
                .headers
                .get("content-encoding")
                .unwrap(),
            "br"
        );
        let mut nt = text(None);
        nt.insert_header("cache-control", "no-transform").unwrap();
        assert!(exchange(&p, "GET", "gzip", nt, &[b"x"])
            .0
            .headers
            .get("content-encoding")
            .is_none());
        for s in [206, 304] {
            let mut r = text(None);
            r.set_status(s).unwrap();
            assert!(exchange(&p, "GET", "gzip", r, &[])
                .0
                .headers
                .get("content-encoding")
                .is_none());
        }
        let (r, _) = exchange(&p, "HEAD", "gzip", text(Some(4000)), &[]);
        assert!(r.headers.get("content-encoding").is_none());
        assert_eq!(r.headers.get("content-length").unwrap(), "4000");
        let mut img = text(None);
        img.insert_header("content-type", "image/png").unwrap();
        assert!(exchange(&p, "GET", "gzip", img, &[b"x"])
            .0
            .headers
            .get("content-encoding")
            .is_none());
        let mut sse = text(None);
        sse.insert_header("content-type", "text/event-stream")
            .unwrap();
        assert!(exchange(&p, "GET", "gzip", sse, &[b"x"])
            .0
            .headers
            .get("content-encoding")
            .is_none());
        // Not accepted: Vary still says the response depends on Accept-Encoding, once.
        let mut r = text(None);
        r.insert_header("vary", "accept-encoding").unwrap();
        let (r, _) = exchange(&p, "GET", "gzip;q=0", r, &[b"x"]);
        assert!(r.headers.get("content-encoding").is_none());
        assert_eq!(r.headers.get_all("vary").iter().count(), 1);
    }
}
