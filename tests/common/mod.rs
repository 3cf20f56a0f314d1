//! Test harness shared by the integration test binaries: a gateway process, echo upstreams,
//! a tiny HTTP/1.1 client and a Prometheus text parser. Standard library only (plus
//! `serde_json` for the echo bodies).
//!
//! Every network read has a timeout, so a gateway bug fails a test instead of hanging the
//! suite.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use serde_json::Value as Json;

/// Timeout of every client read and write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a gateway gets to become ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Path of the gateway binary built by cargo for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_tollgate");

// ---------------------------------------------------------------------------------------
// Small utilities
// ---------------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1.
///
/// Ports are taken *below* the kernel's ephemeral range (read from
/// `/proc/sys/net/ipv4/ip_local_port_range`), walking up from a random start with a
/// process-wide counter. Outgoing connections and `bind(:0)` (used by the echo upstreams)
/// only ever get ephemeral ports, so a port handed out here cannot be taken by another test
/// of the same run between this check and the gateway's own bind.
pub fn free_port() -> u16 {
    static NEXT: OnceLock<AtomicU16> = OnceLock::new();
    static RANGE: OnceLock<(u16, u16)> = OnceLock::new();
    let (lo, hi) = *RANGE.get_or_init(|| {
        let eph_lo = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| {
                s.split_whitespace()
                    .next()
                    .and_then(|p| p.parse::<u16>().ok())
            })
            .unwrap_or(32768);
        if eph_lo > 12_000 {
            (eph_lo - 10_000, eph_lo)
        } else {
            (0, 0)
        }
    });
    if lo == 0 {
        // No room below the ephemeral range: fall back to the kernel's choice.
        return TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind 127.0.0.1:0")
            .port();
    }
    let next = NEXT.get_or_init(|| {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
            ^ std::process::id().wrapping_mul(2_654_435_761);
        AtomicU16::new(lo + (seed % u32::from(hi - lo)) as u16)
    });
    for _ in 0..(hi - lo) {
        let mut p = next.fetch_add(1, Ordering::Relaxed);
        if p < lo || p >= hi {
            p = lo + (p % (hi - lo));
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", p)) {
            drop(l);
            return p;
        }
    }
    panic!("no free port in {lo}..{hi}");
}

/// Poll `f` every 50 ms until it returns true or `timeout` passes; returns its last answer.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A directory under the system temp dir, unique per call; removed on drop unless the
/// thread is panicking (then it is kept, and its path printed, for a post-mortem).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-test-{}-{}-{}-{}",
            tag,
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        ));
        fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("test files kept in {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

// ---------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------

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

fn read_line_crlf<R: BufRead>(r: &mut R) -> io::Result<Option<String>> {
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

fn read_headers<R: BufRead>(r: &mut R) -> io::Result<Vec<(String, String)>> {
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

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
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
fn read_body<R: BufRead>(
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

// ---------------------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------------------

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut name = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            name.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => {}
                },
                '"' => break,
                c => value.push(c),
            }
        }
        out.push((name.trim().to_string(), value));
    }
}

/// Every series of metric `name` as `(labels, value)`.
pub fn metric_series(text: &str, name: &str) -> Vec<(Vec<(String, String)>, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, rest)) => (m, parse_labels(rest.trim_end_matches('}'))),
            None => (series, Vec::new()),
        };
        if metric != name {
            continue;
        }
        if let Ok(v) = value.trim().parse::<f64>() {
            out.push((labels, v));
        }
    }
    out
}

/// Sum of the series of metric `name` whose labels include all of `labels`; `None` when no
/// series matches.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = metric_series(text, name)
        .into_iter()
        .filter(|(ls, _)| {
            labels
                .iter()
                .all(|(k, v)| ls.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|(_, v)| v)
        .collect();
    if matching.is_empty() {
        None
    } else {
        Some(matching.iter().sum())
    }
}

// ---------------------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------------------

/// How to start a gateway; see [`Gateway::start`] for the common case.
pub struct GatewayBuilder {
    body: String,
    env: Vec<(String, String)>,
    rust_log: Option<String>,
    threads: usize,
    symlinked: bool,
}

impl GatewayBuilder {
    /// Set an environment variable for the gateway process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    /// Set `RUST_LOG` (unset by default, so the config's `log_level` = info applies).
    pub fn rust_log(mut self, spec: &str) -> Self {
        self.rust_log = Some(spec.to_string());
        self
    }

    pub fn threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Pass the gateway a symlink `tollgate.toml -> versions/v1.toml` instead of a plain
    /// file. The gateway watches the link's target, so [`Gateway::swap_config`] (which points
    /// the link at a new file) changes the config *without* a file-change event: only a
    /// SIGHUP makes the gateway see it.
    pub fn symlinked(mut self) -> Self {
        self.symlinked = true;
        self
    }

    pub fn start(self) -> Gateway {
        let mut last_err = String::new();
        for attempt in 0..3 {
            match Gateway::try_start(&self) {
                Ok(g) => return g,
                Err(StartError::PortCollision(msg)) => {
                    eprintln!("gateway start attempt {attempt}: port collision, retrying: {msg}");
                    last_err = msg;
                }
                Err(StartError::Fatal(msg)) => panic!("{msg}"),
            }
        }
        panic!("gateway could not get free ports: {last_err}");
    }
}

enum StartError {
    PortCollision(String),
    Fatal(String),
}

/// A running `tollgate run` process with its own temp dir, config file and ports.
///
/// The config given to [`Gateway::start`] is the file *minus* its `[server]` table: the
/// harness writes `[server]` itself (listen address, admin address, threads) and appends the
/// body, so a body may add `[server.access_log]` but not `[server]`. The whole file is
/// [`Gateway::config_text`].
pub struct Gateway {
    child: Mutex<Child>,
    pub pid: u32,
    pub dir: TempDir,
    /// The path given to `tollgate run -c`.
    pub config_path: PathBuf,
    /// Proxy listener.
    pub addr: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
    threads: usize,
    versions: AtomicUsize,
}

impl Gateway {
    /// Start a gateway with `body` (the config without `[server]`), wait until `/readyz`
    /// answers 200. Panics with the gateway's stderr if it exits or is not ready in time.
    pub fn start(body: &str) -> Gateway {
        Gateway::builder(body).start()
    }

    pub fn builder(body: &str) -> GatewayBuilder {
        GatewayBuilder {
            body: body.to_string(),
            env: Vec::new(),
            rust_log: None,
            threads: 2,
            symlinked: false,
        }
    }

    fn server_section(addr: SocketAddr, admin: SocketAddr, threads: usize) -> String {
        format!(
            "[server]\nlisten = [\"{addr}\"]\nadmin_listen = \"{admin}\"\nthreads = {threads}\nshutdown_timeout_seconds = 1\n\n"
        )
    }

    fn try_start(b: &GatewayBuilder) -> Result<Gateway, StartError> {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let text = format!(
            "{}{}",
            Gateway::server_section(addr, admin, b.threads),
            b.body
        );
        let gw = Gateway::spawn(b, &text, addr, admin)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = gw.exit_status() {
                let err = gw.stderr();
                if err.contains("in use") {
                    return Err(StartError::PortCollision(err));
                }
                return Err(StartError::Fatal(format!(
                    "gateway exited ({status}) before it was ready; stderr:\n{err}\nconfig:\n{}",
                    gw.config_text()
                )));
            }
            if let Ok(r) = try_request(admin, "GET", "/readyz", &[], b"") {
                if r.status == 200 {
                    break;
                }
            }
            if Instant::now() >= deadline {
                return Err(StartError::Fatal(format!(
                    "gateway not ready within {START_TIMEOUT:?}; stderr:\n{}",
                    gw.stderr()
                )));
            }
            thread::sleep(Duration::from_millis(50));
        }
        // `/readyz` only proves that *something* accepts on the proxy port (see the
        // readiness test in operations.rs); if the gateway could not bind it, it says so.
        if gw.stderr().contains("is in use") {
            return Err(StartError::PortCollision(gw.stderr()));
        }
        Ok(gw)
    }

    /// Write `text` (a whole config file) and start `tollgate run` on it, without waiting
    /// for anything. `addr` and `admin` must be the addresses `text` configures.
    pub fn spawn_unchecked(text: &str, addr: SocketAddr, admin: SocketAddr) -> Gateway {
        let b = Gateway::builder("");
        match Gateway::spawn(&b, text, addr, admin) {
            Ok(g) => g,
            Err(StartError::Fatal(m)) | Err(StartError::PortCollision(m)) => panic!("{m}"),
        }
    }

    fn spawn(
        b: &GatewayBuilder,
        text: &str,
        addr: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Gateway, StartError> {
        let dir = TempDir::new("gw");
        let config_path = dir.path().join("tollgate.toml");
        if b.symlinked {
            let versions = dir.path().join("versions");
            fs::create_dir_all(&versions).unwrap();
            let v1 = versions.join("v1.toml");
            fs::write(&v1, text).unwrap();
            std::os::unix::fs::symlink(&v1, &config_path).unwrap();
        } else {
            fs::write(&config_path, text).unwrap();
        }
        let stdout = fs::File::create(dir.path().join("stdout.log")).unwrap();
        let stderr = fs::File::create(dir.path().join("stderr.log")).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(&config_path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .env_remove("RUST_LOG");
        if let Some(spec) = &b.rust_log {
            cmd.env("RUST_LOG", spec);
        }
        for (k, v) in &b.env {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| StartError::Fatal(format!("spawn {BIN}: {e}")))?;
        Ok(Gateway {
            pid: child.id(),
            child: Mutex::new(child),
            dir,
            config_path,
            addr,
            admin,
            threads: b.threads,
            versions: AtomicUsize::new(1),
        })
    }

    /// The whole config file currently in place (through the symlink, if any).
    pub fn config_text(&self) -> String {
        fs::read_to_string(&self.config_path).unwrap_or_default()
    }

    /// The full file text the harness writes for `body`.
    pub fn full_config(&self, body: &str) -> String {
        format!(
            "{}{}",
            Gateway::server_section(self.addr, self.admin, self.threads),
            body
        )
    }

    /// Overwrite the config file in place (same `[server]` table, new body). The gateway
    /// notices the change by itself; call [`Gateway::reload`] to force a reload.
    pub fn rewrite_config(&self, body: &str) {
        fs::write(&self.config_path, self.full_config(body)).unwrap();
    }

    /// Overwrite the config file with exactly `text` (no `[server]` table added).
    pub fn rewrite_config_raw(&self, text: &str) {
        fs::write(&self.config_path, text).unwrap();
    }

    /// Symlinked gateways only: write `body` to a new file and atomically point the config
    /// symlink at it. The watched file does not change, so only SIGHUP makes it visible.
    pub fn swap_config(&self, body: &str) {
        let n = self.versions.fetch_add(1, Ordering::Relaxed) + 1;
        let versions = self.dir.path().join("versions");
        let target = versions.join(format!("v{n}.toml"));
        fs::write(&target, self.full_config(body)).unwrap();
        let tmp = self.dir.path().join("tollgate.toml.tmp-link");
        let _ = fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&target, &tmp).unwrap();
        fs::rename(&tmp, &self.config_path).unwrap();
    }

    /// Has the process an inotify instance (the config file watcher) open? Read from the
    /// links in `/proc/<pid>/fd`.
    pub fn has_file_watcher(&self) -> bool {
        let Ok(fds) = fs::read_dir(format!("/proc/{}/fd", self.pid)) else {
            return false;
        };
        fds.filter_map(|e| e.ok())
            .filter_map(|e| fs::read_link(e.path()).ok())
            .any(|l| l.to_string_lossy().contains("inotify"))
    }

    /// Wait (up to 5 s) until the gateway watches its config file, so that a change made
    /// now cannot be missed. Panics otherwise.
    pub fn wait_file_watcher(&self) {
        assert!(
            wait_until(Duration::from_secs(5), || self.has_file_watcher()),
            "gateway has no inotify watch on its config; stderr:\n{}",
            self.stderr()
        );
    }

    /// Is SIGHUP caught by the process (its reload task has installed its handler)? Read
    /// from `SigCgt` in /proc, bit 0 = signal 1.
    pub fn catches_sighup(&self) -> bool {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid)).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|mask| mask & 1 == 1)
    }

    /// Send SIGHUP. Panics if the gateway has not installed its SIGHUP handler within 5 s
    /// of the call (a SIGHUP before that would kill it: the default action is to exit).
    pub fn reload(&self) {
        assert!(
            wait_until(Duration::from_secs(5), || self.catches_sighup()),
            "gateway does not catch SIGHUP (yet); stderr:\n{}",
            self.stderr()
        );
        let ok = Command::new("kill")
            .args(["-HUP", &self.pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -HUP {} failed", self.pid);
    }

    /// Everything the gateway wrote to standard output (the access log with `path = "-"`).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path().join("stdout.log")).unwrap_or_default())
            .into_owned()
    }

    /// Everything the gateway wrote to standard error (its log).
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path().join("stderr.log")).unwrap_or_default())
            .into_owned()
    }

    /// Access log lines (stdout lines that parse as JSON objects).
    pub fn access_log(&self) -> Vec<Json> {
        self.stdout()
            .lines()
            .filter_map(|l| serde_json::from_str::<Json>(l).ok())
            .filter(|v| v.is_object())
            .collect()
    }

    /// The process's exit status if it has exited.
    pub fn exit_status(&self) -> Option<std::process::ExitStatus> {
        self.child.lock().unwrap().try_wait().ok().flatten()
    }

    pub fn is_running(&self) -> bool {
        self.exit_status().is_none()
    }

    /// `/metrics` from the admin listener.
    pub fn metrics(&self) -> String {
        let r = get(self.admin, "/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// One metric (summed over series whose labels include `labels`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics(), name, labels)
    }

    /// Poll until the metric equals `want` (within 5 s); returns the last value seen.
    pub fn wait_metric(&self, name: &str, labels: &[(&str, &str)], want: f64) -> Option<f64> {
        let mut last = None;
        wait_until(Duration::from_secs(5), || {
            last = self.metric(name, labels);
            last == Some(want)
        });
        last
    }

    /// `GET path` on the proxy listener.
    pub fn get(&self, path: &str) -> Response {
        get(self.addr, path)
    }

    /// A request on the proxy listener.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Response {
        request(self.addr, method, path, headers, body)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Ok(mut c) = self.child.lock() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!(
                "--- gateway stderr (last 4000 bytes) ---\n{}",
                tail(&self.stderr(), 4000)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

/// Run `tollgate <args>`, returning (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

// ---------------------------------------------------------------------------------------
// Echo upstream
// ---------------------------------------------------------------------------------------

/// An HTTP/1.1 backend on 127.0.0.1 (keep-alive, std threads) answering with a JSON
/// description of each request:
/// `{"id", "method", "path" (with query), "headers": {name: values joined by ", "},
///   "header_lines": [[name, value], ...], "body"}` plus headers `x-upstream-id: <id>` and
/// `x-echo: 1`.
///
/// Special paths (matched on the path without query, anywhere after the gateway's rewrite):
/// `/slow/<ms>` waits before answering; `/status/<code>` answers with that status;
/// `/health` answers 200 or 503 following [`Upstream::set_healthy`] (and is counted in
/// `health_checks`, not `requests`).
pub struct Upstream {
    pub id: String,
    pub addr: SocketAddr,
    /// Requests other than `/health`, counted when their header has been read.
    pub requests: Arc<AtomicUsize>,
    /// `/health` requests.
    pub health_checks: Arc<AtomicUsize>,
    pub healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    id: String,
    requests: Arc<AtomicUsize>,
    health_checks: Arc<AtomicUsize>,
    healthy: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    pub fn start(id: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let health_checks = Arc::new(AtomicUsize::new(0));
        let healthy = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared {
            id: id.to_string(),
            requests: requests.clone(),
            health_checks: health_checks.clone(),
            healthy: healthy.clone(),
            stop: stop.clone(),
        });
        let conns2 = conns.clone();
        let accept = thread::Builder::new()
            .name(format!("upstream-{id}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    if let Ok(c) = stream.try_clone() {
                        let mut list = conns2.lock().unwrap();
                        // Forget connections that are gone, so the list stays short.
                        list.retain(|s| s.peer_addr().is_ok());
                        list.push(c);
                    }
                    let shared = shared.clone();
                    let _ = thread::Builder::new()
                        .name("upstream-conn".into())
                        .spawn(move || serve_connection(stream, &shared));
                }
            })
            .expect("spawn upstream");
        Upstream {
            id: id.to_string(),
            addr,
            requests,
            health_checks,
            healthy,
            stop,
            conns,
            accept: Some(accept),
        }
    }

    pub fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::SeqCst);
    }

    /// Requests other than `/health` served (or being served) so far.
    pub fn count(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }

    /// `"127.0.0.1:port"`, as written in configs and metric labels.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop, then cut every open connection.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Ok(list) = self.conns.lock() {
            for s in list.iter() {
                let _ = s.shutdown(Shutdown::Both);
            }
        }
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

struct EchoRequest {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn read_request<R: BufRead>(r: &mut R) -> io::Result<Option<EchoRequest>> {
    let line = loop {
        match read_line_crlf(r)? {
            None => return Ok(None),
            Some(l) if l.is_empty() => continue, // stray CRLF between requests
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let headers = read_headers(r)?;
    let body = read_body(r, &headers, false)?;
    Ok(Some(EchoRequest {
        method,
        target,
        headers,
        body,
    }))
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Whatever",
    }
}

fn serve_connection(stream: TcpStream, shared: &Shared) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(120)));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let req = match read_request(&mut reader) {
            Ok(Some(r)) => r,
            _ => return,
        };
        let path_only = req.target.split('?').next().unwrap_or("").to_string();
        let mut status = 200u16;
        if path_only == "/health" {
            shared.health_checks.fetch_add(1, Ordering::SeqCst);
            if !shared.healthy.load(Ordering::SeqCst) {
                status = 503;
            }
        } else {
            shared.requests.fetch_add(1, Ordering::SeqCst);
        }
        if let Some(ms) = path_only
            .strip_prefix("/slow/")
            .and_then(|s| s.parse::<u64>().ok())
        {
            thread::sleep(Duration::from_millis(ms));
        }
        if let Some(code) = path_only
            .strip_prefix("/status/")
            .and_then(|s| s.parse::<u16>().ok())
        {
            status = code;
        }
        let mut joined: BTreeMap<String, String> = BTreeMap::new();
        for (n, v) in &req.headers {
            joined
                .entry(n.clone())
                .and_modify(|e| {
                    e.push_str(", ");
                    e.push_str(v);
                })
                .or_insert_with(|| v.clone());
        }
        let lines: Vec<Json> = req
            .headers
            .iter()
            .map(|(n, v)| Json::Array(vec![Json::from(n.as_str()), Json::from(v.as_str())]))
            .collect();
        let body = serde_json::json!({
            "id": shared.id,
            "method": req.method,
            "path": req.target,
            "headers": joined,
            "header_lines": lines,
            "body": String::from_utf8_lossy(&req.body),
        })
        .to_string();
        let close = find_header(&req.headers, "connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        let mut head = format!(
            "HTTP/1.1 {status} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-upstream-id: {}\r\nx-echo: 1\r\n",
            reason(status),
            body.len(),
            shared.id
        );
        if close {
            head.push_str("connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut out = head.into_bytes();
        if req.method != "HEAD" && status != 204 && status != 304 {
            out.extend_from_slice(body.as_bytes());
        }
        if writer.write_all(&out).and_then(|_| writer.flush()).is_err() {
            return;
        }
        if close {
            let _ = writer.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// An address where nothing listens (connections are refused).
pub fn dead_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}
