//! The echo upstream: an HTTP/1.1 backend that describes each request it gets.

use super::*;

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
        let stopping = shared.clone();
        let accept = accept_loop(
            listener,
            format!("upstream-{id}"),
            conns.clone(),
            move || stopping.stop.load(Ordering::SeqCst),
            move |stream| serve_connection(stream, &shared),
        );
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
