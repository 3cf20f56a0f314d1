//! The process log: `env_logger`'s format and filters, behind a wrapper that makes every line
//! safe to keep and cheap under attack, whoever writes it (tollgate or Pingora):
//!
//! - **no secrets**: query strings are cut from anything that looks like a URL or path
//!   (`/t?apikey=…` → `/t?…`), and the values of credential headers in header dumps
//!   (`"authorization": "…"`) are replaced;
//! - **no floods**: each call site writes at most one line a second at `info` and above; the
//!   next line it writes says how many were left out, and
//!   `tollgate_log_lines_suppressed_total{target}` counts them. `debug` and `trace` are not
//!   limited (they are for a developer looking at one request).

use crate::config::schema::LogFormat;
use crate::metrics::METRICS;
use log::{Level, LevelFilter, Log, Metadata, Record};
use regex::Regex;
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tollgate_plugins::sync::lock;

/// Lines a call site may write per this period (at `info` and above).
const PERIOD: Duration = Duration::from_secs(1);
/// Call sites remembered (they are finite; this only bounds a surprise).
const MAX_SITES: usize = 4096;

struct Site {
    last: Instant,
    suppressed: u64,
}

/// The wrapper (see the module documentation).
pub struct SafeLogger {
    inner: env_logger::Logger,
    query: Regex,
    credentials: Regex,
    sites: Mutex<HashMap<(String, u32), Site>>,
}

/// Set up logging: the config's level, unless `RUST_LOG` says otherwise, in `format`.
pub fn init(level: &str, format: LogFormat) {
    let mut b = env_logger::Builder::new();
    b.filter_level(level.parse().unwrap_or(LevelFilter::Info));
    if format == LogFormat::Json {
        b.format(|buf, record| {
            let line = json_line(
                &buf.timestamp_micros().to_string(),
                record.level(),
                record.target(),
                &record.args().to_string(),
            );
            writeln!(buf, "{line}")
        });
    }
    if let Ok(spec) = std::env::var("RUST_LOG") {
        b.parse_filters(&spec);
    }
    let inner = b.build();
    let max = inner.filter();
    let logger = SafeLogger::new(inner);
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(max);
    }
}

impl SafeLogger {
    fn new(inner: env_logger::Logger) -> Self {
        SafeLogger {
            inner,
            // A path (or URL) followed by a query: keep the path, drop the query.
            query: constant(
                r#"((?:[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#"',]*)?/[^\s?#"',]*)\?[^\s"',}]*"#,
            ),
            credentials: constant(
                r#"(?i)("(?:authorization|proxy-authorization|cookie|set-cookie|apikey|x-api-key|x-purge-token)"\s*:\s*)"[^"]*""#,
            ),
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// The text of `message` safe to write.
    pub fn redact(&self, message: &str) -> String {
        let once = self.query.replace_all(message, "$1?…");
        self.credentials
            .replace_all(&once, "$1\"<redacted>\"")
            .into_owned()
    }

    /// `Some(suppressed count)` when this call site may write now.
    fn admit(&self, record: &Record) -> Option<u64> {
        if record.level() > Level::Info {
            return Some(0);
        }
        let key = (
            record
                .file()
                .or(record.module_path())
                .unwrap_or(record.target())
                .to_string(),
            record.line().unwrap_or(0),
        );
        let now = Instant::now();
        let mut sites = lock(&self.sites);
        if sites.len() >= MAX_SITES && !sites.contains_key(&key) {
            sites.clear();
        }
        let site = sites.entry(key).or_insert(Site {
            last: now - PERIOD,
            suppressed: 0,
        });
        if now.duration_since(site.last) < PERIOD {
            site.suppressed += 1;
            METRICS
                .log_lines_suppressed
                .with_label_values(&[target_label(record.target())])
                .inc();
            return None;
        }
        site.last = now;
        Some(std::mem::take(&mut site.suppressed))
    }
}

/// One process-log line as JSON: `{"ts", "level", "target", "message"}` (the message already
/// redacted by [`SafeLogger`]).
fn json_line(ts: &str, level: Level, target: &str, message: &str) -> String {
    serde_json::json!({
        "ts": ts,
        "level": level.as_str(),
        "target": target,
        "message": message,
    })
    .to_string()
}

/// A regex written in this file (it cannot fail to compile; a test compiles each).
fn constant(re: &str) -> Regex {
    Regex::new(re).unwrap_or_else(|e| panic!("invalid constant regex: {e}"))
}

/// The metric label of a log target: its crate (bounded).
fn target_label(target: &str) -> &str {
    target.split("::").next().unwrap_or(target)
}

impl Log for SafeLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.inner.matches(record) {
            return;
        }
        let Some(suppressed) = self.admit(record) else {
            return;
        };
        let mut message = self.redact(&record.args().to_string());
        if suppressed > 0 {
            message.push_str(&format!(" ({suppressed} similar lines suppressed)"));
        }
        self.inner.log(
            &Record::builder()
                .args(format_args!("{message}"))
                .level(record.level())
                .target(record.target())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_lines_are_one_object() {
        let line = json_line(
            "2026-12-02T00:00:00.000000Z",
            Level::Warn,
            "tollgate::x",
            "a \"b\"\nc",
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["target"], "tollgate::x");
        assert_eq!(v["message"], "a \"b\"\nc");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn queries_and_credentials_are_cut() {
        let l = SafeLogger::new(env_logger::Builder::new().build());
        assert_eq!(
            l.redact("Fail to proxy: timeout, GET /t/slow?apikey=SECRET123, Host: x"),
            "Fail to proxy: timeout, GET /t/slow?…, Host: x"
        );
        assert_eq!(
            l.redact("uri: http://127.0.0.1:8080/t?apikey=S&b=2 }"),
            "uri: http://127.0.0.1:8080/t?… }"
        );
        assert_eq!(
            l.redact(r#"headers: {"Authorization": "Basic YWxp", "accept": "*/*"}"#),
            r#"headers: {"Authorization": "<redacted>", "accept": "*/*"}"#
        );
        assert_eq!(
            l.redact("is this a question? yes"),
            "is this a question? yes"
        );
    }
}
