//! The access log: one JSON line per request, written by a background thread so the request
//! path never blocks on I/O. When the writer falls behind, lines are dropped and counted.

use crate::metrics::METRICS;
use serde::Serialize;
use std::io::Write;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};

/// One request, as logged.
#[derive(Serialize)]
pub struct AccessRecord<'a> {
    /// RFC 3339 time the request started.
    pub time: String,
    /// Request id (also sent upstream and to the client).
    pub request_id: &'a str,
    /// Client IP.
    pub client_ip: String,
    /// Request method.
    pub method: &'a str,
    /// Request path (without query; queries may hold secrets).
    pub path: &'a str,
    /// Matched route, empty when none.
    pub route: &'a str,
    /// Upstream name, empty when none was used.
    pub upstream: &'a str,
    /// Backend address, empty when none was used.
    pub backend: String,
    /// Status sent (0 when the client went away first).
    pub status: u16,
    /// Response body bytes sent.
    pub bytes_sent: usize,
    /// Total time in milliseconds.
    pub duration_ms: f64,
    /// Time to the upstream's response header in milliseconds, if any.
    pub upstream_ms: Option<f64>,
    /// Error code when the gateway answered with an error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// The inference model, when token usage is known (`ai_usage`, `token_limit`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    /// Prompt tokens of the answer, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    /// Completion tokens of the answer, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
}

/// Lines queued for the writer thread before new ones are dropped.
const QUEUE_LINES: usize = 16 * 1024;
/// The writer's buffer.
const WRITE_BUFFER: usize = 64 * 1024;

/// A handle to the access log's writer thread; cheap to clone.
#[derive(Clone)]
pub struct AccessLog {
    tx: SyncSender<Vec<u8>>,
}

impl AccessLog {
    /// Start the writer thread; `path` is `-` for stdout or a file to append to.
    pub fn start(path: &str) -> std::io::Result<AccessLog> {
        let mut out: Box<dyn Write + Send> = if path == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                let mut buf = std::io::BufWriter::with_capacity(WRITE_BUFFER, &mut out);
                while let Ok(line) = rx.recv() {
                    let _ = buf.write_all(&line);
                    // Flush whenever the queue is empty, so lines appear promptly when idle.
                    while let Ok(l) = rx.try_recv() {
                        let _ = buf.write_all(&l);
                    }
                    let _ = buf.flush();
                }
            })?;
        Ok(AccessLog { tx })
    }

    /// Queue a record; never blocks.
    pub fn write(&self, record: &AccessRecord<'_>) {
        let mut line = Vec::with_capacity(320);
        if serde_json::to_writer(&mut line, record).is_err() {
            return;
        }
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = self.tx.try_send(line) {
            METRICS.access_log_dropped.inc();
        }
    }
}
