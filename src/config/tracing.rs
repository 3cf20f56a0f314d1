//! `[tracing]`: where spans are exported and how requests are sampled. Read at start only:
//! a reload that changes it warns and keeps the running tracer.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use tollgate_plugins::external::{is_reserved, Endpoint, MAX_TIMEOUT_MS};
use tollgate_plugins::{parse_config_all, ConfigError};

/// Most traces waiting for export.
const MAX_QUEUE: usize = 1_000_000;
/// Most spans in one export request.
const MAX_BATCH: usize = 100_000;

/// The `[tracing]` section (docs/config.md).
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSection {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    pub endpoint: String,
    /// The resource's `service.name`.
    pub service_name: String,
    /// Share of new traces (no valid incoming `traceparent`) that are recorded, 0 to 1.
    pub sample_ratio: f64,
    /// Export the spans of a request answered 5xx (or not at all) even when not sampled.
    pub sample_errors: bool,
    /// Finished requests' traces waiting for export; more are dropped and counted.
    pub queue_size: usize,
    /// Spans per export request, at most.
    pub batch_size: usize,
    /// Longest time a span waits for its batch.
    pub flush_interval_ms: u64,
    /// Deadline of one export request.
    pub timeout_ms: u64,
    /// Headers on every export request (API keys of hosted collectors: never logged).
    pub headers: BTreeMap<String, String>,
    /// More resource attributes (`deployment.environment`, ...).
    pub resource: BTreeMap<String, String>,
}

impl Default for TracingSection {
    fn default() -> Self {
        TracingSection {
            endpoint: String::new(),
            service_name: "tollgate".to_string(),
            sample_ratio: 0.01,
            sample_errors: false,
            queue_size: 2048,
            batch_size: 512,
            flush_interval_ms: 1000,
            timeout_ms: 5000,
            headers: BTreeMap::new(),
            resource: BTreeMap::new(),
        }
    }
}

impl fmt::Debug for TracingSection {
    // By hand: header values are credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracingSection")
            .field("endpoint", &self.endpoint)
            .field("service_name", &self.service_name)
            .field("sample_ratio", &self.sample_ratio)
            .field("sample_errors", &self.sample_errors)
            .field("queue_size", &self.queue_size)
            .field("batch_size", &self.batch_size)
            .field("flush_interval_ms", &self.flush_interval_ms)
            .field("timeout_ms", &self.timeout_ms)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("resource", &self.resource)
            .finish()
    }
}

/// Parse and check `[tracing]`; `None` when absent or wrong (the errors say why).
pub fn parse(value: Option<&toml::Value>, errors: &mut Vec<ConfigError>) -> Option<TracingSection> {
    let section = match parse_config_all::<TracingSection>(value?) {
        Ok(s) => s,
        Err(errs) => {
            errors.extend(errs.into_iter().map(|e| e.under("tracing")));
            return None;
        }
    };
    let before = errors.len();
    let mut err = |key: &str, message: String| {
        errors.push(ConfigError::new(format!("tracing.{key}"), message));
    };
    if section.endpoint.is_empty() {
        err(
            "endpoint",
            "required: the collector's OTLP/HTTP traces URL, e.g. \"http://127.0.0.1:4318/v1/traces\"".to_string(),
        );
    } else if let Err(e) = Endpoint::parse(&section.endpoint) {
        err("endpoint", e);
    }
    if !(0.0..=1.0).contains(&section.sample_ratio) {
        err(
            "sample_ratio",
            format!("{} is not between 0 and 1", section.sample_ratio),
        );
    }
    if section.service_name.is_empty() {
        err("service_name", "must not be empty".to_string());
    }
    if !(1..=MAX_QUEUE).contains(&section.queue_size) {
        err("queue_size", format!("must be between 1 and {MAX_QUEUE}"));
    }
    if !(1..=MAX_BATCH).contains(&section.batch_size) {
        err("batch_size", format!("must be between 1 and {MAX_BATCH}"));
    }
    if !(1..=60_000).contains(&section.flush_interval_ms) {
        err(
            "flush_interval_ms",
            "must be between 1 and 60000".to_string(),
        );
    }
    if !(1..=MAX_TIMEOUT_MS).contains(&section.timeout_ms) {
        err(
            "timeout_ms",
            format!("must be between 1 and {MAX_TIMEOUT_MS}"),
        );
    }
    for (k, v) in &section.headers {
        match http::HeaderName::try_from(k.as_str()) {
            Ok(name) if is_reserved(&name) || name == http::header::CONTENT_TYPE => err(
                &format!("headers.{k}"),
                "is set by tollgate and cannot be configured".to_string(),
            ),
            Ok(_) => {}
            Err(_) => err(&format!("headers.{k}"), "is not a header name".to_string()),
        }
        if http::HeaderValue::try_from(v.as_str()).is_err() {
            // Never the value: it is usually a credential.
            err(
                &format!("headers.{k}"),
                "the value is not a valid header value".to_string(),
            );
        }
    }
    (errors.len() == before).then_some(section)
}
