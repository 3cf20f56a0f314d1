//! A fake OpenAI-compatible inference server: `POST /v1/chat/completions` (and
//! `/v1/completions`), non-streaming JSON or SSE, with `usage`, and failure modes.

use super::*;

/// How the fake answers the next requests.
#[derive(Clone, Debug, PartialEq)]
pub enum AiMode {
    /// Answer normally.
    Ok,
    /// Answer this status with a JSON error body (429 gets `Retry-After: 1`).
    Status(u16),
    /// Wait this long before the response head, then answer normally.
    Slow(Duration),
    /// Read the request, then close the connection without answering.
    Drop,
    /// Send the head and the first SSE event (or half the JSON body), then close.
    DropMidBody,
}

/// What the fake received.
#[derive(Clone, Debug)]
pub struct AiRequest {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body as JSON, when it is.
    pub json: Option<Json>,
}

impl AiRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `model` field of the JSON body.
    pub fn model(&self) -> Option<String> {
        self.json.as_ref()?.get("model")?.as_str().map(String::from)
    }
}

struct AiState {
    id: String,
    mode: Mutex<AiMode>,
    received: Mutex<Vec<AiRequest>>,
    /// `usage.prompt_tokens` of every answer.
    prompt_tokens: AtomicUsize,
    /// `usage.completion_tokens` when the request has no `max_tokens`.
    completion_tokens: AtomicUsize,
    /// Content chunks of a streamed answer (each one SSE event).
    events: AtomicUsize,
    /// Pause between two SSE events, in milliseconds.
    event_gap_ms: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    stop: AtomicBool,
}

/// The fake server. Every answer carries `x-upstream-id: <id>` and `x-model-received: <the
/// request's model>`. Tokens: `prompt_tokens` (default 10) and, for completion, the request's
/// `max_tokens` or `completion_tokens` (default 20); the text has one word per completion
/// token. A streamed answer (`"stream": true`) sends `events` content events (default 3)
/// `event_gap` apart, then, when the request asked `stream_options.include_usage`, a last
/// event with `"choices": []` and `usage`, then `data: [DONE]`.
pub struct OpenAi {
    pub addr: SocketAddr,
    state: Arc<AiState>,
    accept: Option<JoinHandle<()>>,
}

impl OpenAi {
    pub fn start(id: &str) -> OpenAi {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind fake openai");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AiState {
            id: id.to_string(),
            mode: Mutex::new(AiMode::Ok),
            received: Mutex::new(Vec::new()),
            prompt_tokens: AtomicUsize::new(10),
            completion_tokens: AtomicUsize::new(20),
            events: AtomicUsize::new(3),
            event_gap_ms: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s = state.clone();
        let accept = thread::Builder::new()
            .name(format!("openai-{id}"))
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let s = s.clone();
                    let _ = thread::Builder::new()
                        .name("openai-conn".into())
                        .spawn(move || serve_ai(stream, &s));
                }
            })
            .expect("spawn fake openai");
        OpenAi {
            addr,
            state,
            accept: Some(accept),
        }
    }

    /// `"127.0.0.1:port"`.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn set_mode(&self, mode: AiMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn set_prompt_tokens(&self, n: usize) {
        self.state.prompt_tokens.store(n, Ordering::SeqCst);
    }

    pub fn set_completion_tokens(&self, n: usize) {
        self.state.completion_tokens.store(n, Ordering::SeqCst);
    }

    /// Content events of a streamed answer, and the pause between them.
    pub fn set_stream(&self, events: usize, gap: Duration) {
        self.state.events.store(events, Ordering::SeqCst);
        self.state
            .event_gap_ms
            .store(gap.as_millis() as usize, Ordering::SeqCst);
    }

    /// Every request received so far, in order.
    pub fn received(&self) -> Vec<AiRequest> {
        self.state.received.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.received.lock().unwrap().len()
    }

    /// The most requests it was answering at the same time.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }
}

impl Drop for OpenAi {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// A chat-completions request body.
pub fn chat_body(
    model: &str,
    stream: bool,
    include_usage: bool,
    max_tokens: Option<u64>,
) -> Vec<u8> {
    let mut v = serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Say hello."}],
    });
    if stream {
        v["stream"] = Json::Bool(true);
        if include_usage {
            v["stream_options"] = serde_json::json!({"include_usage": true});
        }
    }
    if let Some(m) = max_tokens {
        v["max_tokens"] = Json::from(m);
    }
    serde_json::to_vec(&v).unwrap()
}

struct InFlight<'a>(&'a AiState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn serve_ai(stream: TcpStream, s: &AiState) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    let _ = stream.set_nodelay(true);
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    loop {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        let line = match read_line_crlf(&mut r) {
            Ok(Some(l)) if !l.is_empty() => l,
            Ok(Some(_)) => continue,
            _ => return,
        };
        let mut parts = line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let path = parts.next().unwrap_or("").to_string();
        let Ok(headers) = read_headers(&mut r) else {
            return;
        };
        let Ok(body) = read_body(&mut r, &headers, false) else {
            return;
        };
        let json: Option<Json> = serde_json::from_slice(&body).ok();
        let req = AiRequest {
            method,
            path,
            headers,
            body,
            json,
        };
        let n = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(n, Ordering::SeqCst);
        let _guard = InFlight(s);
        s.received.lock().unwrap().push(req.clone());
        let mode = s.mode.lock().unwrap().clone();
        if !answer(&mut w, s, &req, &mode) {
            return;
        }
    }
}

/// Write one answer; false when the connection must close.
fn answer(w: &mut TcpStream, s: &AiState, req: &AiRequest, mode: &AiMode) -> bool {
    let model = req.model().unwrap_or_default();
    let common = format!("x-upstream-id: {}\r\nx-model-received: {}\r\n", s.id, model);
    match mode {
        AiMode::Drop => return false,
        AiMode::Status(code) => {
            let body =
                format!(r#"{{"error":{{"message":"fake {code}","type":"fake","code":{code}}}}}"#);
            let extra = if *code == 429 {
                "retry-after: 1\r\n"
            } else {
                ""
            };
            let head = format!(
                "HTTP/1.1 {code} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{common}{extra}\r\n",
                body.len()
            );
            return w.write_all(head.as_bytes()).is_ok() && w.write_all(body.as_bytes()).is_ok();
        }
        AiMode::Slow(d) => thread::sleep(*d),
        AiMode::Ok | AiMode::DropMidBody => {}
    }
    let json = req.json.clone().unwrap_or(Json::Null);
    let prompt = s.prompt_tokens.load(Ordering::SeqCst) as u64;
    let completion = json
        .get("max_tokens")
        .and_then(Json::as_u64)
        .unwrap_or(s.completion_tokens.load(Ordering::SeqCst) as u64);
    let usage = serde_json::json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    let stream = json.get("stream").and_then(Json::as_bool) == Some(true);
    if !stream {
        let words = vec!["hi"; completion as usize].join(" ");
        let body = serde_json::to_vec(&serde_json::json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .unwrap();
        let head = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{common}\r\n",
            body.len()
        );
        if *mode == AiMode::DropMidBody {
            let _ = w.write_all(head.as_bytes());
            let _ = w.write_all(&body[..body.len() / 2]);
            return false;
        }
        return w.write_all(head.as_bytes()).is_ok() && w.write_all(&body).is_ok();
    }
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n{common}\r\n"
    );
    if w.write_all(head.as_bytes()).is_err() {
        return false;
    }
    let chunk = |w: &mut TcpStream, data: &str| -> bool {
        let event = format!("data: {data}\n\n");
        w.write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
            .and_then(|_| w.flush())
            .is_ok()
    };
    let events = s.events.load(Ordering::SeqCst);
    let gap = Duration::from_millis(s.event_gap_ms.load(Ordering::SeqCst) as u64);
    for i in 0..events {
        if i > 0 && !gap.is_zero() {
            thread::sleep(gap);
        }
        let delta = serde_json::json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
            "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}],
        });
        if !chunk(w, &delta.to_string()) {
            return false;
        }
        if *mode == AiMode::DropMidBody {
            return false;
        }
    }
    let include_usage = json
        .pointer("/stream_options/include_usage")
        .and_then(Json::as_bool)
        == Some(true);
    if include_usage {
        let last = serde_json::json!({
            "id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model,
            "choices": [], "usage": usage,
        });
        if !chunk(w, &last.to_string()) {
            return false;
        }
    }
    chunk(w, "[DONE]") && w.write_all(b"0\r\n\r\n").is_ok()
}
