//! A raw HTTP/1 client connection: write any bytes, read responses back one at a time (with
//! deadlines), tell a close from a timeout. For tests that must control every byte.

use super::*;

/// How reading a response ended without one.
#[derive(Debug, Clone)]
pub enum NoResponse {
    /// The server closed (EOF) before a whole response; `partial` is what came first.
    Closed { partial: Vec<u8> },
    /// The connection was reset (ECONNRESET / EPIPE) before a whole response.
    Reset { partial: Vec<u8> },
    /// Nothing complete arrived before the deadline.
    Timeout { partial: Vec<u8> },
    /// Bytes that are not an HTTP/1 response.
    Malformed { bytes: Vec<u8>, why: String },
}

impl NoResponse {
    /// Closed or reset (the server hung up), as opposed to a timeout or garbage.
    pub fn is_close(&self) -> bool {
        matches!(self, NoResponse::Closed { .. } | NoResponse::Reset { .. })
    }

    pub fn describe(&self) -> String {
        match self {
            NoResponse::Closed { partial } => {
                format!("connection closed (after {:?})", escape_bytes(partial))
            }
            NoResponse::Reset { partial } => {
                format!("connection reset (after {:?})", escape_bytes(partial))
            }
            NoResponse::Timeout { partial } => {
                format!("no response in time (got {:?})", escape_bytes(partial))
            }
            NoResponse::Malformed { bytes, why } => {
                format!("malformed response ({why}): {:?}", escape_bytes(bytes))
            }
        }
    }
}

/// Short description of a response for failure messages.
pub fn describe_response(r: &Response) -> String {
    let mut s = format!("{}", r.status);
    for (n, v) in &r.headers {
        s.push_str(&format!(" | {n}: {v}"));
    }
    s.push_str(&format!(" | body {:?}", tail_str(&r.text(), 400)));
    s
}

fn tail_str(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        let mut i = n;
        while !s.is_char_boundary(i) {
            i -= 1;
        }
        format!("{}...", &s[..i])
    }
}

pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
    reset: bool,
}

impl RawConn {
    pub fn try_connect(addr: SocketAddr) -> io::Result<RawConn> {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
        s.set_write_timeout(Some(IO_TIMEOUT))?;
        s.set_nodelay(true)?;
        Ok(RawConn {
            stream: s,
            buf: Vec::new(),
            eof: false,
            reset: false,
        })
    }

    pub fn connect(addr: SocketAddr) -> RawConn {
        RawConn::try_connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Write bytes; a failed write (the server closed) is returned, not a panic.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Read more bytes until `deadline`; false if nothing more can come (EOF, reset,
    /// timeout).
    fn fill(&mut self, deadline: Instant) -> bool {
        if self.eof || self.reset {
            return false;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        let _ = self
            .stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
        let mut tmp = [0u8; 16384];
        loop {
            match self.stream.read(&mut tmp) {
                Ok(0) => {
                    self.eof = true;
                    return false;
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&tmp[..n]);
                    return true;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    return false
                }
                Err(_) => {
                    self.reset = true;
                    return false;
                }
            }
        }
    }

    fn no_response(&self) -> NoResponse {
        let partial = self.buf.clone();
        if self.reset {
            NoResponse::Reset { partial }
        } else if self.eof {
            NoResponse::Closed { partial }
        } else {
            NoResponse::Timeout { partial }
        }
    }

    /// Read the next response (skipping 1xx), within `timeout`.
    pub fn read_response(&mut self, timeout: Duration) -> Result<Response, NoResponse> {
        self.read_response_to(timeout, false)
    }

    /// [`RawConn::read_response`] for a `HEAD` request (no body).
    pub fn read_head_response(&mut self, timeout: Duration) -> Result<Response, NoResponse> {
        self.read_response_to(timeout, true)
    }

    fn read_response_to(&mut self, timeout: Duration, head: bool) -> Result<Response, NoResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            match parse_response(&self.buf, head, self.eof) {
                Parsed::Done(resp, used) => {
                    self.buf.drain(..used);
                    if (100..200).contains(&resp.status) {
                        continue;
                    }
                    return Ok(resp);
                }
                Parsed::Bad(why) => {
                    return Err(NoResponse::Malformed {
                        bytes: self.buf.clone(),
                        why,
                    })
                }
                Parsed::Incomplete => {
                    if !self.fill(deadline) {
                        if let Parsed::Done(resp, used) = parse_response(&self.buf, head, true) {
                            if self.eof || self.reset {
                                self.buf.drain(..used);
                                return Ok(resp);
                            }
                        }
                        return Err(self.no_response());
                    }
                }
            }
        }
    }

    /// Wait until the server closes the connection (EOF or reset), up to `timeout`. Returns
    /// whether it closed, and any bytes that arrived meanwhile.
    pub fn wait_close(&mut self, timeout: Duration) -> (bool, Vec<u8>) {
        let deadline = Instant::now() + timeout;
        while self.fill(deadline) {}
        let bytes = std::mem::take(&mut self.buf);
        (self.eof || self.reset, bytes)
    }

    /// Bytes received but not yet parsed.
    pub fn leftover(&self) -> &[u8] {
        &self.buf
    }

    pub fn closed(&self) -> bool {
        self.eof || self.reset
    }
}

enum Parsed {
    Done(Response, usize),
    Incomplete,
    Bad(String),
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_response(buf: &[u8], head_only: bool, eof: bool) -> Parsed {
    if buf.is_empty() {
        return Parsed::Incomplete;
    }
    if !b"HTTP/1.".starts_with(&buf[..buf.len().min(7)]) {
        return Parsed::Bad("does not start with HTTP/1.".into());
    }
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return Parsed::Incomplete;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = match status_line.split(' ').nth(1).and_then(|s| s.parse().ok()) {
        Some(s) => s,
        None => return Parsed::Bad(format!("bad status line {status_line:?}")),
    };
    let mut headers = Vec::new();
    for l in lines {
        let Some((n, v)) = l.split_once(':') else {
            return Parsed::Bad(format!("bad header line {l:?}"));
        };
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let body_start = end + 4;
    let rest = &buf[body_start..];
    let no_body = head_only || status == 204 || status == 304 || (100..200).contains(&status);
    if no_body {
        return Parsed::Done(
            Response {
                status,
                headers,
                body: Vec::new(),
            },
            body_start,
        );
    }
    let te = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    if te {
        let mut body = Vec::new();
        let mut p = 0;
        loop {
            let Some(le) = find(&rest[p..], b"\r\n") else {
                return Parsed::Incomplete;
            };
            let line = String::from_utf8_lossy(&rest[p..p + le]).into_owned();
            let size_s = line.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_s, 16) else {
                return Parsed::Bad(format!("bad chunk size {line:?}"));
            };
            p += le + 2;
            if size == 0 {
                // Trailers until the empty line.
                loop {
                    let Some(le) = find(&rest[p..], b"\r\n") else {
                        return Parsed::Incomplete;
                    };
                    p += le + 2;
                    if le == 0 {
                        break;
                    }
                }
                return Parsed::Done(
                    Response {
                        status,
                        headers,
                        body,
                    },
                    body_start + p,
                );
            }
            if rest.len() < p + size + 2 {
                return Parsed::Incomplete;
            }
            body.extend_from_slice(&rest[p..p + size]);
            p += size + 2;
        }
    }
    if let Some((_, cl)) = headers.iter().find(|(n, _)| n == "content-length") {
        let Ok(n) = cl.trim().parse::<usize>() else {
            return Parsed::Bad(format!("bad content-length {cl:?}"));
        };
        if rest.len() < n {
            return Parsed::Incomplete;
        }
        return Parsed::Done(
            Response {
                status,
                headers,
                body: rest[..n].to_vec(),
            },
            body_start + n,
        );
    }
    // Delimited by the close.
    if eof {
        Parsed::Done(
            Response {
                status,
                headers,
                body: rest.to_vec(),
            },
            buf.len(),
        )
    } else {
        Parsed::Incomplete
    }
}

/// Everything that came back on one connection.
#[derive(Debug)]
pub struct Exchange {
    pub responses: Vec<Response>,
    /// The server closed (EOF or reset).
    pub closed: bool,
    /// How reading stopped after the last response.
    pub end: NoResponse,
}

impl Exchange {
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for (i, r) in self.responses.iter().enumerate() {
            s.push_str(&format!("\n  response {}: {}", i + 1, describe_response(r)));
        }
        if self.responses.is_empty() {
            s.push_str("\n  no response");
        }
        s.push_str(&format!("\n  then: {}", self.end.describe()));
        s
    }
}

/// Write `bytes` on a new connection, then read responses until the server closes, nothing
/// more comes for `idle`, or `deadline` passes.
pub fn exchange(addr: SocketAddr, bytes: &[u8], idle: Duration, deadline: Duration) -> Exchange {
    let mut c = RawConn::connect(addr);
    let _ = c.send(bytes);
    let until = Instant::now() + deadline;
    let mut responses = Vec::new();
    loop {
        let left = until.saturating_duration_since(Instant::now());
        let wait = if responses.is_empty() {
            left
        } else {
            idle.min(left)
        };
        match c.read_response(wait) {
            Ok(r) => responses.push(r),
            Err(end) => {
                return Exchange {
                    responses,
                    closed: c.closed(),
                    end,
                }
            }
        }
    }
}

/// One request on a new connection: its response, or a panic naming what was sent.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> Response {
    try_send_raw(addr, bytes).unwrap_or_else(|e| {
        panic!(
            "sent {:?}\n  to {addr}: {}",
            escape_bytes(bytes),
            e.describe()
        )
    })
}

/// One request on a new connection: its response, or how it ended without one.
pub fn try_send_raw(addr: SocketAddr, bytes: &[u8]) -> Result<Response, NoResponse> {
    let mut c = RawConn::connect(addr);
    let _ = c.send(bytes);
    c.read_response(IO_TIMEOUT)
}

/// `VmRSS` (kB) of a process.
pub fn rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmRSS:")
}

/// `VmHWM` (peak RSS, kB) of a process.
pub fn peak_rss_kb(pid: u32) -> u64 {
    proc_status_kb(pid, "VmHWM:")
}

fn proc_status_kb(pid: u32, key: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Parse one whole response from `buf` (the connection has ended after it).
pub fn parse_response_bytes(buf: &[u8]) -> Result<Response, String> {
    match parse_response(buf, false, true) {
        Parsed::Done(r, _) => Ok(r),
        Parsed::Incomplete => Err(format!("incomplete response: {:?}", escape_bytes(buf))),
        Parsed::Bad(why) => Err(format!("{why}: {:?}", escape_bytes(buf))),
    }
}
