//! OpenTelemetry tracing (`[tracing]`): W3C Trace Context in and out, one server span per
//! request with a child span per upstream attempt, head sampling, OTLP/HTTP export from a
//! background task (docs/operations.md, "Tracing").
//!
//! - [`context`]: `traceparent` parsing and writing, ids, the ratio sampler.
//! - [`span`]: what a request's trace gathers while it runs.
//! - [`export`]: the queue's far end, batching and the OTLP request.
//!
//! The request path does little: ids and `Instant`s while the request runs, and for an
//! exported trace one [`span::Finished`] with a few copied strings, handed over without
//! waiting. Encoding and sending happen in the exporter.

pub mod context;
pub mod export;
pub mod span;

use crate::config::tracing::TracingSection;
use crate::metrics::METRICS;
use export::Exporter;
use pingora::http::RequestHeader;
use span::{Finished, RequestTrace};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::{error::TrySendError, Sender};
use tollgate_plugins::external::{Endpoint, FailureMode, Limits, Service};
use tollgate_plugins::state::SharedState;

/// The sampler and the near end of the export queue.
pub struct Tracer {
    ratio: f64,
    sample_errors: bool,
    queue: Sender<Finished>,
}

impl Tracer {
    /// A tracer for a checked `[tracing]` section and the exporter that sends its spans
    /// (a background service to add to the server).
    pub fn start(
        section: &TracingSection,
        state: &SharedState,
    ) -> Result<(Tracer, Exporter), String> {
        let endpoint = Endpoint::parse(&section.endpoint)?;
        let timeout = Duration::from_millis(section.timeout_ms);
        let limits = Limits {
            connect: timeout,
            total: timeout,
            max_answer_bytes: 64 * 1024,
        };
        let service = Service::new("tracing", endpoint, state, limits, FailureMode::Allow);
        let mut headers = Vec::new();
        for (k, v) in &section.headers {
            let name =
                http::HeaderName::try_from(k.as_str()).map_err(|_| format!("header {k:?}"))?;
            let value = http::HeaderValue::try_from(v.as_str())
                .map_err(|_| format!("header {k:?} value"))?;
            headers.push((name, value));
        }
        let extra: Vec<(String, String)> = section
            .resource
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let (tx, rx) = tokio::sync::mpsc::channel(section.queue_size.max(1));
        let exporter = Exporter {
            queue: tokio::sync::Mutex::new(Some(rx)),
            service,
            headers,
            resource: export::resource(&section.service_name, &extra),
            batch_spans: section.batch_size.max(1),
            flush_interval: Duration::from_millis(section.flush_interval_ms.max(1)),
        };
        let tracer = Tracer {
            ratio: section.sample_ratio,
            sample_errors: section.sample_errors,
            queue: tx,
        };
        Ok((tracer, exporter))
    }

    /// The trace of a request with head `req`: the caller's when exactly one valid
    /// `traceparent` came (its sampled flag decides), else a new one sampled at the ratio.
    pub fn begin(&self, req: &RequestHeader) -> RequestTrace {
        let mut values = req.headers.get_all("traceparent").iter();
        let parent = match (values.next(), values.next()) {
            (Some(v), None) => context::parse(v.as_bytes()),
            _ => None,
        };
        match parent {
            Some(p) => RequestTrace::new(
                p.trace_id,
                Some(p.span_id),
                p.sampled,
                p.sampled || self.sample_errors,
            ),
            None => {
                let id = context::new_trace_id();
                let sampled = context::sampled_at(&id, self.ratio);
                RequestTrace::new(id, None, sampled, sampled || self.sample_errors)
            }
        }
    }

    /// Whether a request that ended with `status` (0: none) is exported.
    pub fn exports(&self, trace: &RequestTrace, status: u16) -> bool {
        trace.sampled || (self.sample_errors && span::is_error(status))
    }

    /// Hand a finished trace to the exporter, or drop and count it when the queue is full.
    pub fn submit(&self, finished: Finished) {
        let spans = finished.trace.span_count();
        match self.queue.try_send(finished) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => METRICS
                .spans_dropped
                .with_label_values(&["queue_full"])
                .inc_by(spans),
        }
    }
}

/// A shared tracer, as the gateway holds it.
pub type SharedTracer = Arc<Tracer>;
