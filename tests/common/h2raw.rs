//! A minimal HTTP/2 client for raw-frame tests (h2c prior knowledge): the preface,
//! SETTINGS and their ACK, HEADERS encoded with HPACK *literal without indexing* (so any
//! bytes, duplicates and odd names can be sent), DATA, and reading frames back with a
//! small HPACK decoder (static + dynamic table, Huffman).

use super::*;

/// Decoded header fields: (name, value) pairs.
type Fields = Vec<(Vec<u8>, Vec<u8>)>;

pub const FRAME_DATA: u8 = 0;
pub const FRAME_HEADERS: u8 = 1;
pub const FRAME_RST_STREAM: u8 = 3;
pub const FRAME_SETTINGS: u8 = 4;
pub const FRAME_PING: u8 = 6;
pub const FRAME_GOAWAY: u8 = 7;
pub const FRAME_WINDOW_UPDATE: u8 = 8;
pub const FRAME_CONTINUATION: u8 = 9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone)]
pub struct Frame {
    pub typ: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct H2Response {
    pub status: u16,
    /// Lower-case names as sent, pseudo-headers excluded.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl H2Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// How waiting for a stream's response ended.
#[derive(Debug, Clone)]
pub enum H2End {
    Response(H2Response),
    /// RST_STREAM with this error code.
    Reset(u32),
    /// GOAWAY (error code, debug data), then the connection ended without a response.
    GoAway(u32, String),
    /// The connection closed without a response.
    Closed,
    Timeout,
    /// The peer sent something this client cannot decode.
    Broken(String),
}

pub struct H2Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    decoder: HpackDecoder,
    next_stream: u32,
    goaway: Option<(u32, String)>,
}

impl H2Conn {
    /// Connect and send the preface and an empty SETTINGS frame.
    pub fn connect(addr: SocketAddr) -> io::Result<H2Conn> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        let mut c = H2Conn {
            stream: s,
            buf: Vec::new(),
            decoder: HpackDecoder::new(),
            next_stream: 1,
            goaway: None,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&frame_bytes(FRAME_SETTINGS, 0, 0, &[]));
        c.stream.write_all(&hello)?;
        Ok(c)
    }

    pub fn write_frame(
        &mut self,
        typ: u8,
        flags: u8,
        stream: u32,
        payload: &[u8],
    ) -> io::Result<()> {
        self.stream
            .write_all(&frame_bytes(typ, flags, stream, payload))
    }

    /// A HEADERS frame (END_HEADERS set) with every field as a literal without indexing.
    pub fn send_headers(
        &mut self,
        stream: u32,
        fields: &[(&[u8], &[u8])],
        end_stream: bool,
    ) -> io::Result<()> {
        let mut block = Vec::new();
        for (n, v) in fields {
            block.extend_from_slice(&hpack_literal(n, v));
        }
        let flags = FLAG_END_HEADERS | if end_stream { FLAG_END_STREAM } else { 0 };
        self.write_frame(FRAME_HEADERS, flags, stream, &block)
    }

    pub fn send_data(&mut self, stream: u32, data: &[u8], end_stream: bool) -> io::Result<()> {
        self.write_frame(
            FRAME_DATA,
            if end_stream { FLAG_END_STREAM } else { 0 },
            stream,
            data,
        )
    }

    /// The next client stream id (1, 3, 5, ...).
    pub fn new_stream(&mut self) -> u32 {
        let id = self.next_stream;
        self.next_stream += 2;
        id
    }

    /// Send a request (`fields` including the pseudo-headers) with an optional body, and
    /// wait for its response.
    pub fn request(
        &mut self,
        fields: &[(&[u8], &[u8])],
        body: Option<&[u8]>,
        timeout: Duration,
    ) -> H2End {
        let id = self.new_stream();
        if self.send_headers(id, fields, body.is_none()).is_err() {
            return H2End::Closed;
        }
        if let Some(b) = body {
            if self.send_data(id, b, true).is_err() {
                return H2End::Closed;
            }
        }
        self.read_response(id, timeout)
    }

    /// Read one frame (None on EOF/reset/timeout).
    pub fn read_frame(&mut self, deadline: Instant) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let f = Frame {
                        typ: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes([
                            self.buf[5],
                            self.buf[6],
                            self.buf[7],
                            self.buf[8],
                        ]) & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(f);
                }
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let _ = self.stream.set_read_timeout(Some(deadline - now));
            let mut tmp = [0u8; 16384];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }

    /// Whether the server closes the connection within `timeout` (frames are discarded).
    pub fn wait_close(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() >= deadline {
                return false;
            }
            let _ = self.stream.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ));
            let mut tmp = [0u8; 4096];
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Read frames until stream `id` has a complete response (or is reset).
    pub fn read_response(&mut self, id: u32, timeout: Duration) -> H2End {
        let deadline = Instant::now() + timeout;
        let mut status: Option<u16> = None;
        let mut headers = Vec::new();
        let mut body = Vec::new();
        let mut block: Vec<u8> = Vec::new();
        let mut block_stream = 0u32;
        let mut block_end_stream = false;
        loop {
            let Some(f) = self.read_frame(deadline) else {
                if Instant::now() >= deadline {
                    return H2End::Timeout;
                }
                return match self.goaway.clone() {
                    Some((code, dbg)) => H2End::GoAway(code, dbg),
                    None => H2End::Closed,
                };
            };
            match f.typ {
                FRAME_SETTINGS if f.flags & FLAG_ACK == 0 => {
                    let _ = self.write_frame(FRAME_SETTINGS, FLAG_ACK, 0, &[]);
                }
                FRAME_PING if f.flags & FLAG_ACK == 0 => {
                    let _ = self.write_frame(FRAME_PING, FLAG_ACK, 0, &f.payload);
                }
                FRAME_GOAWAY => {
                    let code = f
                        .payload
                        .get(4..8)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    let dbg =
                        String::from_utf8_lossy(f.payload.get(8..).unwrap_or(&[])).into_owned();
                    self.goaway = Some((code, dbg));
                }
                FRAME_RST_STREAM if f.stream == id => {
                    let code = f
                        .payload
                        .get(0..4)
                        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    return H2End::Reset(code);
                }
                FRAME_HEADERS | FRAME_CONTINUATION => {
                    let mut p: &[u8] = &f.payload;
                    if f.typ == FRAME_HEADERS {
                        let mut pad = 0usize;
                        if f.flags & FLAG_PADDED != 0 {
                            pad = usize::from(p[0]);
                            p = &p[1..];
                        }
                        if f.flags & FLAG_PRIORITY != 0 {
                            p = &p[5..];
                        }
                        p = &p[..p.len().saturating_sub(pad)];
                        block.clear();
                        block_stream = f.stream;
                        block_end_stream = f.flags & FLAG_END_STREAM != 0;
                    }
                    block.extend_from_slice(p);
                    if f.flags & FLAG_END_HEADERS != 0 {
                        let fields = match self.decoder.decode(&block) {
                            Ok(v) => v,
                            Err(e) => return H2End::Broken(format!("HPACK: {e}")),
                        };
                        if block_stream == id {
                            for (n, v) in fields {
                                let n = String::from_utf8_lossy(&n).into_owned();
                                let v = String::from_utf8_lossy(&v).into_owned();
                                if n == ":status" {
                                    status = v.parse().ok();
                                } else if status.is_some() && !(100..200).contains(&status.unwrap())
                                {
                                    headers.push((n, v));
                                }
                            }
                            if let Some(s) = status {
                                if (100..200).contains(&s) {
                                    status = None;
                                }
                            }
                            if block_end_stream {
                                if let Some(s) = status {
                                    return H2End::Response(H2Response {
                                        status: s,
                                        headers,
                                        body,
                                    });
                                }
                            }
                        }
                    }
                }
                FRAME_DATA if f.stream == id => {
                    let mut p: &[u8] = &f.payload;
                    if f.flags & FLAG_PADDED != 0 && !p.is_empty() {
                        let pad = usize::from(p[0]);
                        p = &p[1..p.len().saturating_sub(pad)];
                    }
                    body.extend_from_slice(p);
                    if !f.payload.is_empty() {
                        let inc = (f.payload.len() as u32).to_be_bytes();
                        let _ = self.write_frame(FRAME_WINDOW_UPDATE, 0, 0, &inc);
                        let _ = self.write_frame(FRAME_WINDOW_UPDATE, 0, id, &inc);
                    }
                    if f.flags & FLAG_END_STREAM != 0 {
                        return match status {
                            Some(s) => H2End::Response(H2Response {
                                status: s,
                                headers,
                                body,
                            }),
                            None => H2End::Broken("DATA with END_STREAM before any HEADERS".into()),
                        };
                    }
                }
                _ => {}
            }
        }
    }
}

pub fn frame_bytes(typ: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, typ, flags];
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an `n`-bit prefix; `first` holds the bits above the prefix.
pub fn hpack_int(value: usize, n: u8, first: u8) -> Vec<u8> {
    let max = (1usize << n) - 1;
    if value < max {
        return vec![first | value as u8];
    }
    let mut out = vec![first | max as u8];
    let mut v = value - max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
    out
}

/// A header field as "literal without indexing, new name", no Huffman.
pub fn hpack_literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend_from_slice(&hpack_int(name.len(), 7, 0));
    out.extend_from_slice(name);
    out.extend_from_slice(&hpack_int(value.len(), 7, 0));
    out.extend_from_slice(value);
    out
}

const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

struct HpackDecoder {
    dynamic: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    size: usize,
    max: usize,
}

impl HpackDecoder {
    fn new() -> HpackDecoder {
        HpackDecoder {
            dynamic: Default::default(),
            size: 0,
            max: 4096,
        }
    }

    fn get(&self, idx: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
        if idx == 0 {
            return Err("index 0".into());
        }
        if idx <= 61 {
            let (n, v) = STATIC_TABLE[idx - 1];
            return Ok((n.as_bytes().to_vec(), v.as_bytes().to_vec()));
        }
        self.dynamic
            .get(idx - 62)
            .cloned()
            .ok_or_else(|| format!("index {idx} out of range"))
    }

    fn evict(&mut self) {
        while self.size > self.max {
            match self.dynamic.pop_back() {
                Some((n, v)) => self.size -= n.len() + v.len() + 32,
                None => break,
            }
        }
    }

    fn insert(&mut self, n: Vec<u8>, v: Vec<u8>) {
        self.size += n.len() + v.len() + 32;
        self.dynamic.push_front((n, v));
        self.evict();
    }

    fn decode(&mut self, mut b: &[u8]) -> Result<Fields, String> {
        let mut out = Vec::new();
        while !b.is_empty() {
            let first = b[0];
            if first & 0x80 != 0 {
                let (idx, rest) = read_int(b, 7)?;
                b = rest;
                out.push(self.get(idx)?);
            } else if first & 0x40 != 0 {
                let (idx, rest) = read_int(b, 6)?;
                b = rest;
                let name = if idx == 0 {
                    let (n, rest) = read_str(b)?;
                    b = rest;
                    n
                } else {
                    self.get(idx)?.0
                };
                let (v, rest) = read_str(b)?;
                b = rest;
                self.insert(name.clone(), v.clone());
                out.push((name, v));
            } else if first & 0x20 != 0 {
                let (size, rest) = read_int(b, 5)?;
                b = rest;
                self.max = size;
                self.evict();
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                let (idx, rest) = read_int(b, 4)?;
                b = rest;
                let name = if idx == 0 {
                    let (n, rest) = read_str(b)?;
                    b = rest;
                    n
                } else {
                    self.get(idx)?.0
                };
                let (v, rest) = read_str(b)?;
                b = rest;
                out.push((name, v));
            }
        }
        Ok(out)
    }
}

fn read_int(b: &[u8], n: u8) -> Result<(usize, &[u8]), String> {
    let max = (1usize << n) - 1;
    let mut v = usize::from(b[0]) & max;
    let mut i = 1;
    if v == max {
        let mut shift = 0;
        loop {
            let byte = *b.get(i).ok_or("truncated integer")?;
            i += 1;
            v += usize::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
            if shift > 28 {
                return Err("integer too large".into());
            }
        }
    }
    Ok((v, &b[i..]))
}

fn read_str(b: &[u8]) -> Result<(Vec<u8>, &[u8]), String> {
    if b.is_empty() {
        return Err("truncated string".into());
    }
    let huffman = b[0] & 0x80 != 0;
    let (len, rest) = read_int(b, 7)?;
    if rest.len() < len {
        return Err("truncated string".into());
    }
    let (s, rest) = rest.split_at(len);
    let s = if huffman {
        huffman_decode(s)?
    } else {
        s.to_vec()
    };
    Ok((s, rest))
}

fn huffman_decode(b: &[u8]) -> Result<Vec<u8>, String> {
    static MAP: OnceLock<std::collections::HashMap<(u8, u32), u8>> = OnceLock::new();
    let map = MAP.get_or_init(|| {
        (0..256usize)
            .map(|i| ((HUFFMAN_LENGTHS[i], HUFFMAN_CODES[i]), i as u8))
            .collect()
    });
    let mut out = Vec::new();
    let mut code = 0u32;
    let mut len = 0u8;
    for &byte in b {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if let Some(&c) = map.get(&(len, code)) {
                out.push(c);
                code = 0;
                len = 0;
            } else if len > 30 {
                return Err("bad Huffman code".into());
            }
        }
    }
    // Padding: at most 7 one-bits.
    if len > 7 || code != (1u32 << len) - 1 {
        return Err("bad Huffman padding".into());
    }
    Ok(out)
}

// The Huffman code of RFC 7541 Appendix B (codes, then their lengths in bits).
const HUFFMAN_CODES: [u32; 256] = [
    0x1ff8, 0x7fffd8, 0xfffffe2, 0xfffffe3, 0xfffffe4, 0xfffffe5, 0xfffffe6, 0xfffffe7, 0xfffffe8,
    0xffffea, 0x3ffffffc, 0xfffffe9, 0xfffffea, 0x3ffffffd, 0xfffffeb, 0xfffffec, 0xfffffed,
    0xfffffee, 0xfffffef, 0xffffff0, 0xffffff1, 0xffffff2, 0x3ffffffe, 0xffffff3, 0xffffff4,
    0xffffff5, 0xffffff6, 0xffffff7, 0xffffff8, 0xffffff9, 0xffffffa, 0xffffffb, 0x14, 0x3f8,
    0x3f9, 0xffa, 0x1ff9, 0x15, 0xf8, 0x7fa, 0x3fa, 0x3fb, 0xf9, 0x7fb, 0xfa, 0x16, 0x17, 0x18,
    0x0, 0x1, 0x2, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f, 0x5c, 0xfb, 0x7ffc, 0x20, 0xffb,
    0x3fc, 0x1ffa, 0x21, 0x5d, 0x5e, 0x5f, 0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68,
    0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f, 0x70, 0x71, 0x72, 0xfc, 0x73, 0xfd, 0x1ffb, 0x7fff0,
    0x1ffc, 0x3ffc, 0x22, 0x7ffd, 0x3, 0x23, 0x4, 0x24, 0x5, 0x25, 0x26, 0x27, 0x6, 0x74, 0x75,
    0x28, 0x29, 0x2a, 0x7, 0x2b, 0x76, 0x2c, 0x8, 0x9, 0x2d, 0x77, 0x78, 0x79, 0x7a, 0x7b, 0x7ffe,
    0x7fc, 0x3ffd, 0x1ffd, 0xffffffc, 0xfffe6, 0x3fffd2, 0xfffe7, 0xfffe8, 0x3fffd3, 0x3fffd4,
    0x3fffd5, 0x7fffd9, 0x3fffd6, 0x7fffda, 0x7fffdb, 0x7fffdc, 0x7fffdd, 0x7fffde, 0xffffeb,
    0x7fffdf, 0xffffec, 0xffffed, 0x3fffd7, 0x7fffe0, 0xffffee, 0x7fffe1, 0x7fffe2, 0x7fffe3,
    0x7fffe4, 0x1fffdc, 0x3fffd8, 0x7fffe5, 0x3fffd9, 0x7fffe6, 0x7fffe7, 0xffffef, 0x3fffda,
    0x1fffdd, 0xfffe9, 0x3fffdb, 0x3fffdc, 0x7fffe8, 0x7fffe9, 0x1fffde, 0x7fffea, 0x3fffdd,
    0x3fffde, 0xfffff0, 0x1fffdf, 0x3fffdf, 0x7fffeb, 0x7fffec, 0x1fffe0, 0x1fffe1, 0x3fffe0,
    0x1fffe2, 0x7fffed, 0x3fffe1, 0x7fffee, 0x7fffef, 0xfffea, 0x3fffe2, 0x3fffe3, 0x3fffe4,
    0x7ffff0, 0x3fffe5, 0x3fffe6, 0x7ffff1, 0x3ffffe0, 0x3ffffe1, 0xfffeb, 0x7fff1, 0x3fffe7,
    0x7ffff2, 0x3fffe8, 0x1ffffec, 0x3ffffe2, 0x3ffffe3, 0x3ffffe4, 0x7ffffde, 0x7ffffdf,
    0x3ffffe5, 0xfffff1, 0x1ffffed, 0x7fff2, 0x1fffe3, 0x3ffffe6, 0x7ffffe0, 0x7ffffe1, 0x3ffffe7,
    0x7ffffe2, 0xfffff2, 0x1fffe4, 0x1fffe5, 0x3ffffe8, 0x3ffffe9, 0xffffffd, 0x7ffffe3, 0x7ffffe4,
    0x7ffffe5, 0xfffec, 0xfffff3, 0xfffed, 0x1fffe6, 0x3fffe9, 0x1fffe7, 0x1fffe8, 0x7ffff3,
    0x3fffea, 0x3fffeb, 0x1ffffee, 0x1ffffef, 0xfffff4, 0xfffff5, 0x3ffffea, 0x7ffff4, 0x3ffffeb,
    0x7ffffe6, 0x3ffffec, 0x3ffffed, 0x7ffffe7, 0x7ffffe8, 0x7ffffe9, 0x7ffffea, 0x7ffffeb,
    0xffffffe, 0x7ffffec, 0x7ffffed, 0x7ffffee, 0x7ffffef, 0x7fffff0, 0x3ffffee,
];

const HUFFMAN_LENGTHS: [u8; 256] = [
    13, 23, 28, 28, 28, 28, 28, 28, 28, 24, 30, 28, 28, 30, 28, 28, 28, 28, 28, 28, 28, 28, 30, 28,
    28, 28, 28, 28, 28, 28, 28, 28, 6, 10, 10, 12, 13, 6, 8, 11, 10, 10, 8, 11, 8, 6, 6, 6, 5, 5,
    5, 6, 6, 6, 6, 6, 6, 6, 7, 8, 15, 6, 12, 10, 13, 6, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7, 7,
    7, 7, 7, 7, 7, 7, 7, 7, 8, 7, 8, 13, 19, 13, 14, 6, 15, 5, 6, 5, 6, 5, 6, 6, 6, 5, 7, 7, 6, 6,
    6, 5, 6, 7, 6, 5, 5, 6, 7, 7, 7, 7, 7, 15, 11, 14, 13, 28, 20, 22, 20, 20, 22, 22, 22, 23, 22,
    23, 23, 23, 23, 23, 24, 23, 24, 24, 22, 23, 24, 23, 23, 23, 23, 21, 22, 23, 22, 23, 23, 24, 22,
    21, 20, 22, 22, 23, 23, 21, 23, 22, 22, 24, 21, 22, 23, 23, 21, 21, 22, 21, 23, 22, 23, 23, 20,
    22, 22, 22, 23, 22, 22, 23, 26, 26, 20, 19, 22, 23, 22, 25, 26, 26, 26, 27, 27, 26, 24, 25, 19,
    21, 26, 27, 27, 26, 27, 24, 21, 21, 26, 26, 28, 27, 27, 27, 20, 24, 20, 21, 22, 21, 21, 23, 22,
    22, 25, 25, 24, 24, 26, 23, 26, 27, 26, 26, 27, 27, 27, 27, 27, 28, 27, 27, 27, 27, 27, 26,
];
