//! A tiny HTTP/1.1 client, and raw-bytes exchanges for malformed input.

use super::*;

/// A response as read off the wire.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    /// Header names lower-cased, in order, one entry per header line.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a header, one per header line.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the whole response if it is not.
    pub fn json(&self) -> Json {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {self:?} / {}",
                self.text()
            )
        })
    }

    /// For echo-upstream answers: the header the upstream received (values joined by ", ").
    pub fn upstream_header(&self, name: &str) -> Option<String> {
        self.json()["headers"][name.to_ascii_lowercase()]
            .as_str()
            .map(str::to_string)
    }

    /// For echo-upstream answers: the id of the upstream server that answered.
    pub fn upstream_id(&self) -> String {
        self.json()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("not an echo answer: {} {}", self.status, self.text()))
            .to_string()
    }

    /// For echo-upstream answers: path (with query) the upstream received.
    pub fn upstream_path(&self) -> String {
        self.json()["path"]
            .as_str()
            .unwrap_or_else(|| panic!("not an echo answer: {} {}", self.status, self.text()))
            .to_string()
    }
}

pub(crate) fn read_line_crlf<R: BufRead>(r: &mut R) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = r.read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    while buf.last() == Some(&b'\n') || buf.last() == Some(&b'\r') {
        buf.pop();
    }
    Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
}

pub(crate) fn read_headers<R: BufRead>(r: &mut R) -> io::Result<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let line = read_line_crlf(r)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in headers"))?;
        if line.is_empty() {
            return Ok(headers);
        }
        let (n, v) = line.split_once(':').ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad header line {line:?}"),
            )
        })?;
        headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
}

pub(crate) fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

fn read_chunked<R: BufRead>(r: &mut R) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = read_line_crlf(r)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in chunk size"))?;
        let size_str = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_str, 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad chunk size {line:?}"),
            )
        })?;
        if size == 0 {
            // Trailers, then the empty line.
            while let Some(l) = read_line_crlf(r)? {
                if l.is_empty() {
                    break;
                }
            }
            return Ok(body);
        }
        let start = body.len();
        body.resize(start + size, 0);
        r.read_exact(&mut body[start..])?;
        read_line_crlf(r)?;
    }
}

/// Read a message body framed by `headers` (Content-Length, chunked, or `to_eof`).
pub(crate) fn read_body<R: BufRead>(
    r: &mut R,
    headers: &[(String, String)],
    to_eof: bool,
) -> io::Result<Vec<u8>> {
    if find_header(headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    {
        return read_chunked(r);
    }
    if let Some(cl) = find_header(headers, "content-length") {
        let n: usize = cl.trim().parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad content-length {cl:?}"),
            )
        })?;
        let mut body = vec![0; n];
        r.read_exact(&mut body)?;
        return Ok(body);
    }
    let mut body = Vec::new();
    if to_eof {
        r.read_to_end(&mut body)?;
    }
    Ok(body)
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Send one request on a fresh connection (`Connection: close`) and read the response.
/// `Host` defaults to `addr` unless given in `headers`; `Content-Length` is added when there
/// is a body or the method usually has one.
pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<Response> {
    let mut stream = connect(addr)?;
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host")) {
        req.push_str(&format!("Host: {addr}\r\n"));
    }
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("Connection: close\r\n\r\n");
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    stream.write_all(&bytes)?;
    stream.flush()?;
    let mut r = BufReader::new(stream);
    loop {
        let status_line = read_line_crlf(&mut r)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed before a response",
            )
        })?;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("");
        if !version.starts_with("HTTP/1.") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            ));
        }
        let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad status line {status_line:?}"),
            )
        })?;
        let headers = read_headers(&mut r)?;
        if (100..200).contains(&status) {
            continue; // interim response
        }
        let no_body = method == "HEAD" || status == 204 || status == 304;
        let body = if no_body {
            Vec::new()
        } else {
            read_body(&mut r, &headers, true)?
        };
        return Ok(Response {
            status,
            headers,
            body,
        });
    }
}

/// [`try_request`], panicking (with the request) on any I/O error.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} http://{addr}{path} {headers:?} failed: {e}"))
}

/// `GET path` with no extra headers.
pub fn get(addr: SocketAddr, path: &str) -> Response {
    request(addr, "GET", path, &[], b"")
}

/// Records every byte read through it.
struct Tee<R> {
    inner: R,
    log: Vec<u8>,
}

impl<R: Read> Read for Tee<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.log.extend_from_slice(&buf[..n]);
        Ok(n)
    }
}

fn raw_exchange(addr: SocketAddr, bytes: &[u8], half_close: bool) -> Vec<u8> {
    let mut stream = connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // The server may close before reading everything; a failed write is not a failure.
    let _ = stream.write_all(bytes);
    let _ = stream.flush();
    if half_close {
        let _ = stream.shutdown(Shutdown::Write);
    }
    let mut r = BufReader::new(Tee {
        inner: stream,
        log: Vec::new(),
    });
    let hang = |r: &BufReader<Tee<TcpStream>>, e: &io::Error| -> ! {
        panic!(
            "raw request to {addr}: the server neither answered nor closed ({e}); got so far: {:?}",
            String::from_utf8_lossy(&r.get_ref().log)
        )
    };
    // One response (framed by its headers), else whatever arrives until the close.
    let parsed: io::Result<()> = (|| {
        let Some(status_line) = read_line_crlf(&mut r)? else {
            return Ok(());
        };
        if !status_line.starts_with("HTTP/1.") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "not HTTP"));
        }
        let headers = read_headers(&mut r)?;
        let has_framing = find_header(&headers, "content-length").is_some()
            || find_header(&headers, "transfer-encoding").is_some();
        if has_framing {
            read_body(&mut r, &headers, false)?;
        } else {
            let mut rest = Vec::new();
            r.read_to_end(&mut rest)?;
        }
        Ok(())
    })();
    match parsed {
        Ok(()) => {}
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            hang(&r, &e)
        }
        Err(_) => {
            // Not a well-formed response: read what else comes until the close.
            let mut rest = Vec::new();
            if let Err(e) = r.read_to_end(&mut rest) {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    hang(&r, &e);
                }
            }
        }
    }
    r.into_inner().log
}

/// Write raw bytes on a fresh connection and return what comes back: one response (read by
/// its own framing, so a kept-alive connection does not matter), or nothing if the server
/// closes first. Panics if the server neither answers nor closes within [`IO_TIMEOUT`] (a
/// hang is a bug too).
pub fn raw(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    raw_exchange(addr, bytes, false)
}

/// [`raw`], but the client half-closes the connection after writing (it will send nothing
/// more), for requests that are incomplete on purpose.
pub fn raw_half_close(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    raw_exchange(addr, bytes, true)
}

/// Send `total` requests from `clients` threads started at once (each thread sends, one after
/// another, until `total` were started), `send` making one and returning its status; the
/// counts of 200, 429 and anything else.
pub fn burst_of(
    clients: usize,
    total: usize,
    send: impl Fn() -> u16 + Send + Sync + 'static,
) -> (usize, usize, usize) {
    let next = Arc::new(AtomicUsize::new(0));
    let counts = Arc::new([
        AtomicUsize::new(0),
        AtomicUsize::new(0),
        AtomicUsize::new(0),
    ]);
    let send = Arc::new(send);
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (next, counts, send) = (next.clone(), counts.clone(), send.clone());
            thread::spawn(move || {
                while next.fetch_add(1, Ordering::SeqCst) < total {
                    let slot = match send() {
                        200 => 0,
                        429 => 1,
                        _ => 2,
                    };
                    counts[slot].fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let [ok, limited, other] = &*counts;
    (
        ok.load(Ordering::SeqCst),
        limited.load(Ordering::SeqCst),
        other.load(Ordering::SeqCst),
    )
}
