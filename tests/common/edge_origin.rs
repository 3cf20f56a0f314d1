//! Backends for the edge tests (std threads, HTTP/1.1 keep-alive):
//!
//! - [`StreamOrigin`]: `/sse` (10 events 300 ms apart, then the end), `/ws` (WebSocket
//!   handshake, then echoes bytes), `/slow/<ms>` (a 64 KiB body after a delay), anything else
//!   200 `ok`;
//! - [`IpEcho`]: answers its id, bound to a chosen loopback address (127.0.0.1 and 127.0.0.2
//!   on one port, for DNS tests);
//! - [`SwitchBackend`]: status of normal requests and of `/health` switchable at run time.

use super::*;
use std::net::IpAddr;

/// One request read off a backend connection.
pub struct BackendRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl BackendRequest {
    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn wants_close(&self) -> bool {
        find_header(&self.headers, "connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"))
    }
}

/// Read one request (`None` on a clean close or any error).
pub fn read_backend_request<R: BufRead>(r: &mut R) -> Option<BackendRequest> {
    let line = loop {
        match read_line_crlf(r).ok()? {
            None => return None,
            Some(l) if l.is_empty() => continue,
            Some(l) => break l,
        }
    };
    let mut parts = line.split(' ');
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let headers = read_headers(r).ok()?;
    let body = read_body(r, &headers, false).ok()?;
    Some(BackendRequest {
        method,
        target,
        headers,
        body,
    })
}

/// Size of the body `/slow/<ms>` answers with.
pub const SLOW_BODY_BYTES: usize = 65536;
/// Events `/sse` sends.
pub const SSE_EVENTS: usize = 10;
/// Time between two events of `/sse`.
pub const SSE_INTERVAL: Duration = Duration::from_millis(300);

/// The body of `/slow/<ms>` answers.
pub fn slow_body() -> Vec<u8> {
    (0..SLOW_BODY_BYTES)
        .map(|i| b'a' + (i % 26) as u8)
        .collect()
}

pub struct StreamOrigin {
    pub addr: SocketAddr,
    /// Paths of the requests received, in order.
    seen: Arc<Mutex<Vec<String>>>,
    /// `/sse` streams that sent their last chunk.
    pub sse_done: Arc<AtomicUsize>,
}

impl StreamOrigin {
    pub fn start() -> StreamOrigin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind stream origin");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sse_done = Arc::new(AtomicUsize::new(0));
        let (sn, sd) = (seen.clone(), sse_done.clone());
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let (sn, sd) = (sn.clone(), sd.clone());
                thread::spawn(move || serve_stream_origin(s, &sn, &sd));
            }
        });
        StreamOrigin {
            addr,
            seen,
            sse_done,
        }
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Has a request for `path` arrived?
    pub fn has_seen(&self, path: &str) -> bool {
        self.seen.lock().unwrap().iter().any(|p| p == path)
    }
}

fn serve_stream_origin(s: TcpStream, seen: &Mutex<Vec<String>>, sse_done: &AtomicUsize) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let _ = s.set_nodelay(true);
    let Ok(mut out) = s.try_clone() else { return };
    let mut r = BufReader::new(s);
    while let Some(req) = read_backend_request(&mut r) {
        let path = req.path().to_string();
        seen.lock().unwrap().push(path.clone());
        if path == "/sse" {
            let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";
            if out.write_all(head.as_bytes()).is_err() {
                return;
            }
            for i in 0..SSE_EVENTS {
                let ev = format!("id: {i}\ndata: event {i}\n\n");
                if out
                    .write_all(format!("{:x}\r\n{ev}\r\n", ev.len()).as_bytes())
                    .and_then(|_| out.flush())
                    .is_err()
                {
                    return;
                }
                thread::sleep(SSE_INTERVAL);
            }
            if out
                .write_all(b"0\r\n\r\n")
                .and_then(|_| out.flush())
                .is_err()
            {
                return;
            }
            sse_done.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        if path == "/ws" {
            let _ = out.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
            );
            let _ = out.flush();
            // Echo whatever is already buffered, then the rest of the stream.
            let pending = r.buffer().to_vec();
            if !pending.is_empty() && out.write_all(&pending).is_err() {
                return;
            }
            let mut s = r.into_inner();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => {
                        let _ = out.shutdown(Shutdown::Both);
                        return;
                    }
                    Ok(n) => {
                        if out.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let body = if let Some(ms) = path
            .strip_prefix("/slow/")
            .and_then(|s| s.parse::<u64>().ok())
        {
            thread::sleep(Duration::from_millis(ms));
            slow_body()
        } else {
            b"ok".to_vec()
        };
        let close = req.wants_close();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n",
            body.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if out
            .write_all(head.as_bytes())
            .and_then(|_| out.write_all(&body))
            .and_then(|_| out.flush())
            .is_err()
        {
            return;
        }
        if close {
            let _ = out.shutdown(Shutdown::Both);
            return;
        }
    }
}

/// An HTTP/1.1 backend on a given address answering `200` with its id as the body (and in
/// `x-upstream-id`), counting requests.
pub struct IpEcho {
    pub id: String,
    pub addr: SocketAddr,
    pub count: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl IpEcho {
    pub fn bind(id: &str, addr: SocketAddr) -> io::Result<IpEcho> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let count = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, st, idc) = (count.clone(), stop.clone(), id.to_string());
        thread::spawn(move || {
            for s in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(s) = s else { continue };
                let (c, idc) = (c.clone(), idc.clone());
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                    let Ok(mut out) = s.try_clone() else { return };
                    let mut r = BufReader::new(s);
                    while let Some(req) = read_backend_request(&mut r) {
                        c.fetch_add(1, Ordering::SeqCst);
                        let close = req.wants_close();
                        let head = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nx-upstream-id: {idc}\r\ncontent-length: {}\r\n{}\r\n{idc}",
                            idc.len(),
                            if close { "connection: close\r\n" } else { "" }
                        );
                        if out.write_all(head.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Ok(IpEcho {
            id: id.to_string(),
            addr,
            count,
            stop,
        })
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    /// Two backends on one port: `127.0.0.1:P` (`id1`) and `127.0.0.2:P` (`id2`).
    pub fn pair(id1: &str, id2: &str) -> (IpEcho, IpEcho) {
        for _ in 0..50 {
            let a = IpEcho::bind(id1, "127.0.0.1:0".parse().unwrap()).expect("bind 127.0.0.1");
            let p = a.addr.port();
            let b_addr = SocketAddr::new(IpAddr::from([127, 0, 0, 2]), p);
            if let Ok(b) = IpEcho::bind(id2, b_addr) {
                return (a, b);
            }
        }
        panic!("could not bind 127.0.0.1:P and 127.0.0.2:P on one port");
    }
}

impl Drop for IpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(300));
    }
}

/// A backend whose answer to normal requests (`status`) and to `GET /health` (`healthy`)
/// can be switched while it runs. Connections are kept alive.
pub struct SwitchBackend {
    pub addr: SocketAddr,
    pub status: Arc<std::sync::atomic::AtomicU16>,
    pub healthy: Arc<AtomicBool>,
    /// Normal (non-`/health`) requests.
    pub count: Arc<AtomicUsize>,
    pub health_checks: Arc<AtomicUsize>,
}

impl SwitchBackend {
    pub fn start(status: u16) -> SwitchBackend {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind switch backend");
        let addr = listener.local_addr().unwrap();
        let b = SwitchBackend {
            addr,
            status: Arc::new(std::sync::atomic::AtomicU16::new(status)),
            healthy: Arc::new(AtomicBool::new(true)),
            count: Arc::new(AtomicUsize::new(0)),
            health_checks: Arc::new(AtomicUsize::new(0)),
        };
        let (st, he, ct, hc) = (
            b.status.clone(),
            b.healthy.clone(),
            b.count.clone(),
            b.health_checks.clone(),
        );
        thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { continue };
                let (st, he, ct, hc) = (st.clone(), he.clone(), ct.clone(), hc.clone());
                thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
                    let Ok(mut out) = s.try_clone() else { return };
                    let mut r = BufReader::new(s);
                    while let Some(req) = read_backend_request(&mut r) {
                        let code = if req.path() == "/health" {
                            hc.fetch_add(1, Ordering::SeqCst);
                            if he.load(Ordering::SeqCst) {
                                200
                            } else {
                                503
                            }
                        } else {
                            ct.fetch_add(1, Ordering::SeqCst);
                            st.load(Ordering::SeqCst)
                        };
                        let close = req.wants_close();
                        let head = format!(
                            "HTTP/1.1 {code} X\r\ncontent-length: 2\r\n{}\r\nok",
                            if close { "connection: close\r\n" } else { "" }
                        );
                        if out.write_all(head.as_bytes()).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        b
    }

    pub fn set_status(&self, code: u16) {
        self.status.store(code, Ordering::SeqCst);
    }

    pub fn set_healthy(&self, on: bool) {
        self.healthy.store(on, Ordering::SeqCst);
    }

    pub fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }
}
