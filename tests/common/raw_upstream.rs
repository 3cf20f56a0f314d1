//! The raw recording upstream: an HTTP/1.1 backend that keeps exactly the bytes of every
//! request it receives and answers a configurable canned response (keep-alive).
//!
//! It is a *strict* parser on purpose: anything a lenient backend could frame differently
//! than the gateway did (both `Content-Length` and `Transfer-Encoding`, a list or a duplicate
//! `Content-Length`, a coding other than `chunked`, obs-fold, bare LF, CTL bytes, bad chunk
//! sizes, bytes left over after a request) is recorded as an [`Anomaly`] instead of a
//! request, and the connection is dropped. A test that expects "the upstream saw nothing"
//! checks both lists.

use super::*;

/// One request as the upstream received it.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// Accept order of the connection it came on (0-based).
    pub conn: usize,
    /// Order among all requests of this upstream (0-based, not reset by [`RawUpstream::clear`]).
    pub seq: usize,
    /// Exact bytes: request line, headers, empty line, body as framed on the wire.
    pub raw: Vec<u8>,
    /// Request line and headers up to and including the empty line.
    pub head: Vec<u8>,
    pub method: String,
    /// The request target exactly as sent (bytes above 0x7e kept as `\xNN` escapes by
    /// [`Recorded::target_escaped`]; this field is the lossy UTF-8 view).
    pub target: String,
    pub target_bytes: Vec<u8>,
    pub version: String,
    /// Header names lower-cased, values with surrounding OWS trimmed; one entry per line.
    pub headers: Vec<(String, String)>,
    /// Decoded body.
    pub body: Vec<u8>,
    pub chunked: bool,
    /// When the first byte of this request was read.
    pub first_byte_at: Instant,
    /// When its last byte was read.
    pub complete_at: Instant,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn request_line(&self) -> String {
        format!("{} {} {}", self.method, self.target, self.version)
    }

    /// Path without the query.
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn target_escaped(&self) -> String {
        escape_bytes(&self.target_bytes)
    }
}

/// Something the upstream received that is not a well-framed request.
#[derive(Clone, Debug)]
pub enum Anomaly {
    /// Bytes it could not parse (the connection was then dropped).
    Garbage {
        conn: usize,
        why: String,
        bytes: Vec<u8>,
    },
    /// The connection closed in the middle of a request (an aborted upload: not a request).
    Aborted { conn: usize, bytes: Vec<u8> },
}

impl Anomaly {
    pub fn is_garbage(&self) -> bool {
        matches!(self, Anomaly::Garbage { .. })
    }
}

/// What the upstream answers to one request.
pub enum Reply {
    /// Write these bytes (a whole response), keep the connection.
    Bytes(Vec<u8>),
    /// Never answer; keep the connection open (until the upstream is dropped).
    Hang,
    /// Close the connection without answering.
    Close,
}

pub type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// A whole response with `content-length`.
pub fn http_reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} Canned\r\n");
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
    let mut out = out.into_bytes();
    out.extend_from_slice(body);
    out
}

/// Printable form of arbitrary bytes (`\r`, `\n`, `\xNN` escaped).
pub fn escape_bytes(b: &[u8]) -> String {
    let mut s = String::new();
    for &c in b {
        match c {
            b'\r' => s.push_str("\\r"),
            b'\n' => s.push_str("\\n"),
            b'\t' => s.push_str("\\t"),
            b'\\' => s.push_str("\\\\"),
            0x20..=0x7e => s.push(c as char),
            _ => s.push_str(&format!("\\x{c:02x}")),
        }
    }
    s
}

fn printable(s: &str) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .collect()
}

/// The default answer: 200, `x-upstream-seq`, `x-upstream-target`, body
/// `upstream seq=<n> <method> <target>`.
pub fn default_reply(r: &Recorded) -> Reply {
    let seq = r.seq.to_string();
    let target = printable(&r.target);
    let body = format!("upstream seq={} {} {}", r.seq, r.method, target);
    Reply::Bytes(http_reply(
        200,
        &[
            ("content-type", "text/plain"),
            ("x-upstream-seq", &seq),
            ("x-upstream-target", &target),
        ],
        body.as_bytes(),
    ))
}

#[derive(Default)]
struct State {
    requests: Vec<Recorded>,
    anomalies: Vec<Anomaly>,
    /// Bytes of a request in progress, per connection.
    pending: BTreeMap<usize, Vec<u8>>,
    seq: usize,
}

struct RawShared {
    state: Mutex<State>,
    responder: Responder,
    stop: AtomicBool,
    accepted: AtomicUsize,
    conns: Mutex<Vec<TcpStream>>,
}

pub struct RawUpstream {
    pub addr: SocketAddr,
    shared: Arc<RawShared>,
    accept: Option<JoinHandle<()>>,
}

impl RawUpstream {
    /// An upstream answering [`default_reply`].
    pub fn start() -> RawUpstream {
        RawUpstream::with(default_reply)
    }

    /// An upstream answering `f(request)`.
    pub fn with(f: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind raw upstream");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(RawShared {
            state: Mutex::new(State::default()),
            responder: Arc::new(f),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = thread::Builder::new()
            .name("raw-upstream".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if sh.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = sh.accepted.fetch_add(1, Ordering::SeqCst);
                    if let Ok(c) = stream.try_clone() {
                        sh.conns.lock().unwrap().push(c);
                    }
                    let sh = sh.clone();
                    let _ = thread::Builder::new()
                        .name("raw-upstream-conn".into())
                        .spawn(move || serve_raw(stream, conn, &sh));
                }
            })
            .expect("spawn raw upstream");
        RawUpstream {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Complete requests received so far (since the last [`RawUpstream::clear`]).
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    pub fn count(&self) -> usize {
        self.shared.state.lock().unwrap().requests.len()
    }

    pub fn anomalies(&self) -> Vec<Anomaly> {
        self.shared.state.lock().unwrap().anomalies.clone()
    }

    /// Requests in progress: (connection, bytes so far), for connections with some.
    pub fn pending(&self) -> Vec<(usize, Vec<u8>)> {
        self.shared
            .state
            .lock()
            .unwrap()
            .pending
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(c, b)| (*c, b.clone()))
            .collect()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Forget recorded requests and anomalies (not connections or pending bytes).
    pub fn clear(&self) {
        let mut st = self.shared.state.lock().unwrap();
        st.requests.clear();
        st.anomalies.clear();
    }

    /// Wait until at least `n` requests were recorded; false on timeout.
    pub fn wait_count(&self, n: usize, timeout: Duration) -> bool {
        wait_until(timeout, || self.count() >= n)
    }

    /// Everything it saw, for failure messages.
    pub fn summary(&self) -> String {
        let st = self.shared.state.lock().unwrap();
        let mut s = format!(
            "upstream saw {} request(s), {} anomaly(ies)",
            st.requests.len(),
            st.anomalies.len()
        );
        for r in &st.requests {
            s.push_str(&format!(
                "\n  request #{} (conn {}): {}",
                r.seq,
                r.conn,
                escape_bytes(&r.raw)
            ));
        }
        for a in &st.anomalies {
            match a {
                Anomaly::Garbage { conn, why, bytes } => s.push_str(&format!(
                    "\n  GARBAGE (conn {conn}): {why}: {}",
                    escape_bytes(bytes)
                )),
                Anomaly::Aborted { conn, bytes } => s.push_str(&format!(
                    "\n  aborted request (conn {conn}): {}",
                    escape_bytes(bytes)
                )),
            }
        }
        for (c, b) in st.pending.iter().filter(|(_, b)| !b.is_empty()) {
            s.push_str(&format!(
                "\n  PENDING incomplete request (conn {c}): {}",
                escape_bytes(b)
            ));
        }
        s
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Ok(list) = self.shared.conns.lock() {
            for s in list.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Why reading a request stopped.
enum Stop {
    /// Clean close between requests.
    Eof,
    /// Closed mid-request.
    Aborted,
    /// Not a well-framed request.
    Bad(String),
    /// The upstream is being dropped.
    Shutdown,
}

struct RawConnReader<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Start of the current request in `buf`.
    start: usize,
    /// Parse position.
    pos: usize,
    conn: usize,
    shared: &'a RawShared,
    first_byte_at: Option<Instant>,
}

impl RawConnReader<'_> {
    /// Make sure `buf[pos..]` has at least `n` bytes.
    fn need(&mut self, n: usize) -> Result<(), Stop> {
        while self.buf.len() - self.pos < n {
            self.fill()?;
        }
        Ok(())
    }

    fn fill(&mut self) -> Result<(), Stop> {
        let mut tmp = [0u8; 16384];
        loop {
            if self.shared.stop.load(Ordering::SeqCst) {
                return Err(Stop::Shutdown);
            }
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    return Err(if self.buf.len() > self.start {
                        Stop::Aborted
                    } else {
                        Stop::Eof
                    })
                }
                Ok(n) => {
                    if self.first_byte_at.is_none() {
                        self.first_byte_at = Some(Instant::now());
                    }
                    self.buf.extend_from_slice(&tmp[..n]);
                    let mut st = self.shared.state.lock().unwrap();
                    st.pending
                        .insert(self.conn, self.buf[self.start..].to_vec());
                    return Ok(());
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    return Err(if self.buf.len() > self.start {
                        Stop::Aborted
                    } else {
                        Stop::Eof
                    })
                }
            }
        }
    }

    /// One line ending in CRLF (a bare LF is an error); returns it without the CRLF.
    fn line(&mut self, max: usize) -> Result<Vec<u8>, Stop> {
        loop {
            if let Some(i) = self.buf[self.pos..].iter().position(|&b| b == b'\n') {
                let end = self.pos + i;
                if end == self.pos || self.buf[end - 1] != b'\r' {
                    return Err(Stop::Bad("line ends in a bare LF".into()));
                }
                let line = self.buf[self.pos..end - 1].to_vec();
                self.pos = end + 1;
                if line.contains(&b'\r') {
                    return Err(Stop::Bad("bare CR inside a line".into()));
                }
                return Ok(line);
            }
            if self.buf.len() - self.pos > max {
                return Err(Stop::Bad(format!("line longer than {max} bytes")));
            }
            self.fill()?;
        }
    }

    fn read_request(&mut self) -> Result<Recorded, Stop> {
        self.first_byte_at = if self.buf.len() > self.start {
            Some(Instant::now())
        } else {
            None
        };
        let request_line = self.line(65536)?;
        let rl = String::from_utf8_lossy(&request_line).into_owned();
        let parts: Vec<&[u8]> = request_line.split(|&b| b == b' ').collect();
        if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) {
            return Err(Stop::Bad(format!("bad request line {rl:?}")));
        }
        let method = String::from_utf8_lossy(parts[0]).into_owned();
        let target_bytes = parts[1].to_vec();
        let version = String::from_utf8_lossy(parts[2]).into_owned();
        if !method.bytes().all(is_tchar) {
            return Err(Stop::Bad(format!("bad method in {rl:?}")));
        }
        if version != "HTTP/1.1" && version != "HTTP/1.0" {
            return Err(Stop::Bad(format!("bad version in {rl:?}")));
        }
        let mut headers = Vec::new();
        loop {
            let line = self.line(65536)?;
            if line.is_empty() {
                break;
            }
            let text = escape_bytes(&line);
            if line[0] == b' ' || line[0] == b'\t' {
                return Err(Stop::Bad(format!("obs-fold line {text:?}")));
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Err(Stop::Bad(format!("header line without colon {text:?}")));
            };
            let name = &line[..colon];
            if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
                return Err(Stop::Bad(format!("bad header name in {text:?}")));
            }
            let value = &line[colon + 1..];
            if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                return Err(Stop::Bad(format!("CTL byte in header value {text:?}")));
            }
            let value = String::from_utf8_lossy(value)
                .trim_matches(|c| c == ' ' || c == '\t')
                .to_string();
            headers.push((String::from_utf8_lossy(name).to_ascii_lowercase(), value));
        }
        let head_end = self.pos;
        let cls: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == "content-length")
            .map(|(_, v)| v.as_str())
            .collect();
        let tes: Vec<&str> = headers
            .iter()
            .filter(|(n, _)| n == "transfer-encoding")
            .map(|(_, v)| v.as_str())
            .collect();
        if !cls.is_empty() && !tes.is_empty() {
            return Err(Stop::Bad(
                "both Content-Length and Transfer-Encoding".into(),
            ));
        }
        let mut body = Vec::new();
        let mut chunked = false;
        if !tes.is_empty() {
            if tes.len() != 1 || !tes[0].eq_ignore_ascii_case("chunked") {
                return Err(Stop::Bad(format!(
                    "Transfer-Encoding other than exactly `chunked`: {tes:?}"
                )));
            }
            chunked = true;
            loop {
                let line = self.line(4096)?;
                let size_part = line.split(|&b| b == b';').next().unwrap_or(&[]);
                if size_part.is_empty()
                    || size_part.len() > 15
                    || !size_part.iter().all(|b| b.is_ascii_hexdigit())
                {
                    return Err(Stop::Bad(format!(
                        "bad chunk size line {:?}",
                        escape_bytes(&line)
                    )));
                }
                let size = usize::from_str_radix(std::str::from_utf8(size_part).unwrap(), 16)
                    .map_err(|_| Stop::Bad("chunk size".into()))?;
                if size > 64 << 20 {
                    return Err(Stop::Bad(format!("chunk size {size} too large")));
                }
                if size == 0 {
                    loop {
                        let t = self.line(65536)?;
                        if t.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                self.need(size + 2)?;
                body.extend_from_slice(&self.buf[self.pos..self.pos + size]);
                self.pos += size;
                if &self.buf[self.pos..self.pos + 2] != b"\r\n" {
                    return Err(Stop::Bad("chunk data not followed by CRLF".into()));
                }
                self.pos += 2;
            }
        } else if !cls.is_empty() {
            if cls.len() != 1 {
                return Err(Stop::Bad(format!(
                    "{} Content-Length lines: {cls:?}",
                    cls.len()
                )));
            }
            let v = cls[0];
            if v.is_empty() || v.len() > 18 || !v.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Stop::Bad(format!("bad Content-Length {v:?}")));
            }
            let n: usize = v.parse().unwrap();
            self.need(n)?;
            body.extend_from_slice(&self.buf[self.pos..self.pos + n]);
            self.pos += n;
        }
        let raw = self.buf[self.start..self.pos].to_vec();
        let head = self.buf[self.start..head_end].to_vec();
        let now = Instant::now();
        Ok(Recorded {
            conn: self.conn,
            seq: 0,
            raw,
            head,
            method,
            target: String::from_utf8_lossy(&target_bytes).into_owned(),
            target_bytes,
            version,
            headers,
            body,
            chunked,
            first_byte_at: self.first_byte_at.unwrap_or(now),
            complete_at: now,
        })
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn serve_raw(stream: TcpStream, conn: usize, shared: &RawShared) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut r = RawConnReader {
        stream,
        buf: Vec::new(),
        start: 0,
        pos: 0,
        conn,
        shared,
        first_byte_at: None,
    };
    loop {
        // Drop consumed bytes.
        r.buf.drain(..r.start);
        r.pos -= r.start;
        r.start = 0;
        match r.read_request() {
            Ok(mut req) => {
                let close = req
                    .header_all("connection")
                    .iter()
                    .any(|v| v.to_ascii_lowercase().contains("close"));
                {
                    let mut st = shared.state.lock().unwrap();
                    req.seq = st.seq;
                    st.seq += 1;
                    st.requests.push(req.clone());
                    st.pending.insert(conn, r.buf[r.pos..].to_vec());
                }
                r.start = r.pos;
                match (shared.responder)(&req) {
                    Reply::Bytes(b) => {
                        if writer.write_all(&b).and_then(|_| writer.flush()).is_err() {
                            return;
                        }
                    }
                    Reply::Hang => {
                        while !shared.stop.load(Ordering::SeqCst) {
                            thread::sleep(Duration::from_millis(50));
                        }
                        return;
                    }
                    Reply::Close => {
                        let _ = writer.shutdown(Shutdown::Both);
                        return;
                    }
                }
                if close {
                    let _ = writer.shutdown(Shutdown::Both);
                    return;
                }
            }
            Err(stop) => {
                let mut st = shared.state.lock().unwrap();
                let bytes = r.buf[r.start..].to_vec();
                st.pending.remove(&conn);
                match stop {
                    Stop::Eof | Stop::Shutdown => {}
                    Stop::Aborted => st.anomalies.push(Anomaly::Aborted { conn, bytes }),
                    Stop::Bad(why) => st.anomalies.push(Anomaly::Garbage { conn, why, bytes }),
                }
                drop(st);
                let _ = writer.shutdown(Shutdown::Both);
                return;
            }
        }
    }
}
