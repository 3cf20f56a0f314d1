//! The access log: one JSON line per request, written by a background thread so the request
//! path never blocks on I/O. When the writer falls behind, lines are dropped and counted.

use crate::metrics::METRICS;
use serde::Serialize;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// The fields of a line, in the order they are written; `[server.access_log] fields` names a
/// subset of these.
pub const FIELDS: &[&str] = &[
    "time",
    "request_id",
    "client_ip",
    "method",
    "host",
    "path",
    "protocol",
    "user_agent",
    "route",
    "consumer",
    "upstream",
    "backend",
    "status",
    "upstream_status",
    "retries",
    "request_bytes",
    "bytes_sent",
    "duration_ms",
    "upstream_ms",
    "error",
    "trace_id",
    "model",
    "prompt_tokens",
    "completion_tokens",
];

/// Which of [`FIELDS`] are written: bit `i` for `FIELDS[i]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldSet(u32);

impl FieldSet {
    /// Every field.
    pub const ALL: FieldSet = FieldSet(u32::MAX);

    /// The set of `names`, or the first name that is not a field.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<FieldSet, &'a str> {
        let mut bits = 0u32;
        for n in names {
            match FIELDS.iter().position(|f| *f == n) {
                Some(i) => bits |= 1 << i,
                None => return Err(n),
            }
        }
        Ok(FieldSet(bits))
    }

    fn has(self, i: u32) -> bool {
        self.0 & (1 << i) != 0
    }
}

/// One request, as logged.
pub struct AccessRecord<'a> {
    /// RFC 3339 time the request started.
    pub time: String,
    /// Request id (also sent upstream and to the client).
    pub request_id: &'a str,
    /// Client IP.
    pub client_ip: String,
    /// Request method.
    pub method: &'a str,
    /// The request's host (authority or `Host` header, without a port), empty when none.
    pub host: &'a str,
    /// Request path (without query; queries may hold secrets).
    pub path: &'a str,
    /// `HTTP/1.0`, `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// `User-Agent`, empty when none (or not UTF-8).
    pub user_agent: &'a str,
    /// Matched route, empty when none.
    pub route: &'a str,
    /// Authenticated consumer's username, empty when none.
    pub consumer: &'a str,
    /// Upstream name, empty when none was used.
    pub upstream: &'a str,
    /// Backend address, empty when none was used.
    pub backend: String,
    /// Status sent (0 when the client went away first).
    pub status: u16,
    /// Status of the (last) upstream response, if one came.
    pub upstream_status: Option<u16>,
    /// Retries made (connect, status, timeout), not counting fallbacks.
    pub retries: u32,
    /// Request body bytes received.
    pub request_bytes: usize,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    /// Total time in milliseconds, rounded to microseconds.
    pub duration_ms: f64,
    /// Time to the upstream's response header in milliseconds (rounded to microseconds), if
    /// any.
    pub upstream_ms: Option<f64>,
    /// Error code when the gateway answered with an error.
    pub error: Option<&'a str>,
    /// The trace id of a valid W3C `traceparent` request header.
    pub trace_id: Option<&'a str>,
    /// The inference model, when token usage is known (`ai_usage`, `token_limit`).
    pub model: Option<&'a str>,
    /// Prompt tokens of the answer, when known.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens of the answer, when known.
    pub completion_tokens: Option<u64>,
}

/// Milliseconds rounded to microseconds: three decimals at most.
fn micros(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

/// A record with the fields a config chose.
struct Selected<'r, 'a>(&'r AccessRecord<'a>, FieldSet);

impl Serialize for Selected<'_, '_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let (r, set) = (self.0, self.1);
        let mut m = s.serialize_map(None)?;
        macro_rules! field {
            ($i:literal, $name:literal, $v:expr) => {
                debug_assert_eq!(FIELDS[$i], $name);
                if set.has($i) {
                    m.serialize_entry($name, &$v)?;
                }
            };
            (opt $i:literal, $name:literal, $v:expr) => {
                debug_assert_eq!(FIELDS[$i], $name);
                if let Some(v) = $v {
                    if set.has($i) {
                        m.serialize_entry($name, &v)?;
                    }
                }
            };
        }
        field!(0, "time", r.time);
        field!(1, "request_id", r.request_id);
        field!(2, "client_ip", r.client_ip);
        field!(3, "method", r.method);
        field!(4, "host", r.host);
        field!(5, "path", r.path);
        field!(6, "protocol", r.protocol);
        field!(7, "user_agent", r.user_agent);
        field!(8, "route", r.route);
        field!(9, "consumer", r.consumer);
        field!(10, "upstream", r.upstream);
        field!(11, "backend", r.backend);
        field!(12, "status", r.status);
        field!(13, "upstream_status", r.upstream_status);
        field!(14, "retries", r.retries);
        field!(15, "request_bytes", r.request_bytes);
        field!(16, "bytes_sent", r.bytes_sent);
        field!(17, "duration_ms", micros(r.duration_ms));
        field!(18, "upstream_ms", r.upstream_ms.map(micros));
        field!(opt 19, "error", r.error);
        field!(opt 20, "trace_id", r.trace_id);
        field!(opt 21, "model", r.model);
        field!(opt 22, "prompt_tokens", r.prompt_tokens);
        field!(opt 23, "completion_tokens", r.completion_tokens);
        m.end()
    }
}

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 16 * 1024;
/// The writer's buffer.
const WRITE_BUFFER: usize = 64 * 1024;

/// A handle to the access log's writer thread; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
    fields: FieldSet,
    /// Set by [`AccessLog::reopen`]; the writer reopens its file before the next line.
    reopen: Arc<AtomicBool>,
}

/// Where lines go: standard output, or a file that can be reopened at its path.
enum Output {
    Stdout(std::io::Stdout),
    File(String, std::fs::File),
}

impl Output {
    fn open(path: &str) -> std::io::Result<Output> {
        if path == "-" {
            return Ok(Output::Stdout(std::io::stdout()));
        }
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Output::File(path.to_string(), f))
    }

    /// Open the path again (after logrotate renamed the file); stdout is kept as it is. When
    /// the path cannot be opened, lines keep going to the old file.
    fn reopen(&mut self) {
        if let Output::File(path, f) = self {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&*path)
            {
                Ok(new) => *f = new,
                Err(e) => log::error!("access log: cannot reopen {path}: {e}"),
            }
        }
    }
}

impl Write for Output {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        match self {
            Output::Stdout(o) => o.write(b),
            Output::File(_, f) => f.write(b),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Output::Stdout(o) => o.flush(),
            Output::File(_, f) => f.flush(),
        }
    }
}

impl AccessLog {
    /// Start the writer thread; `path` is `-` for stdout or a file to append to; `fields`
    /// says which fields lines have.
    pub fn start(path: &str, fields: FieldSet) -> std::io::Result<AccessLog> {
        let mut out = Output::open(path)?;
        let reopen = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        let flag = reopen.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::with_capacity(WRITE_BUFFER, &mut out);
                while let Ok(line) = rx.recv() {
                    if flag.swap(false, Ordering::AcqRel) {
                        let _ = buf.flush();
                        buf.get_mut().reopen();
                    }
                    let _ = buf.write_all(&line);
                    // Flush whenever the queue is empty, so lines appear promptly when idle.
                    while let Ok(l) = rx.try_recv() {
                        let _ = buf.write_all(&l);
                    }
                    let _ = buf.flush();
                }
            })?;
        Ok(AccessLog { tx, fields, reopen })
    }

    /// Queue a record; never blocks.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(&mut line, &Selected(record, self.fields)).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            METRICS.access_log_dropped.inc();
        }
    }

    /// Reopen the file at the configured path before the next line (SIGUSR1, for logrotate).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Release);
        // An empty line wakes the writer, so an idle log is reopened at once.
        let _ = self.tx.try_send(Vec::new());
    }
}

/// The background service that reopens the access log on `SIGUSR1`. It runs also without a
/// log file (stdout, or the log disabled), so the signal never ends the process.
pub struct Reopener {
    /// The log to reopen, if any.
    pub log: Option<AccessLog>,
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Reopener {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        use tokio::signal::unix::{signal, SignalKind};
        let mut usr1 = match signal(SignalKind::user_defined1()) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cannot listen for SIGUSR1, the access log is not reopened: {e}");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                Some(()) = usr1.recv() => match &self.log {
                    Some(log) => {
                        log::info!("SIGUSR1: reopening the access log");
                        log.reopen();
                    }
                    None => log::info!("SIGUSR1 ignored: no access log"),
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn micros_round() {
        assert_eq!(micros(0.15757600000000002).to_string(), "0.158");
        assert_eq!(micros(157.5764).to_string(), "157.576");
    }

    #[test]
    fn field_sets() {
        assert_eq!(FieldSet::from_names(["status", "nope"]), Err("nope"));
        let s = FieldSet::from_names(["status"]).unwrap_or(FieldSet::ALL);
        assert!(s.has(12) && !s.has(0));
        assert!(FIELDS.len() <= 32);
    }
}
