//! The background exporter: finished traces come through a bounded queue, are turned into
//! OTLP spans (`opentelemetry-proto`'s types, protobuf-encoded by `prost`) and POSTed to the
//! collector in batches (every 100 ms once shutdown begins). Requests never wait for it: when
//! the queue is full the trace is dropped and counted ([`super::Tracer::submit`]); a failed
//! export is counted and not retried.

use super::span::{Event, Finished};
use crate::metrics::METRICS;
use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use pingora::http::RequestHeader;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use prost::Message;
use std::time::Duration;
use tokio::sync::mpsc::Receiver;
use tollgate_plugins::external::Service;

/// How often spans are sent once the gateway is shutting down.
const DRAIN_FLUSH: Duration = Duration::from_millis(100);

/// The exporter's settings and its end of the queue.
pub struct Exporter {
    pub(super) queue: tokio::sync::Mutex<Option<Receiver<Finished>>>,
    pub(super) service: Service,
    pub(super) headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub(super) resource: Resource,
    pub(super) batch_spans: usize,
    pub(super) flush_interval: Duration,
}

#[async_trait]
impl BackgroundService for Exporter {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let Some(mut queue) = self.queue.lock().await.take() else {
            return;
        };
        let mut batch: Vec<Finished> = Vec::new();
        let mut spans = 0usize;
        let mut tick = tokio::time::interval(self.flush_interval);
        let mut draining = false;
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                item = queue.recv() => {
                    let Some(f) = item else { break };
                    spans += f.trace.span_count() as usize;
                    batch.push(f);
                    if spans >= self.batch_spans {
                        self.export(&mut batch).await;
                        spans = 0;
                    }
                }
                _ = tick.tick() => {
                    if !batch.is_empty() {
                        self.export(&mut batch).await;
                        spans = 0;
                    }
                }
                _ = shutdown.changed(), if !draining => {
                    // Requests still finish while connections drain: their spans go out at a
                    // short interval until the process ends.
                    draining = true;
                    tick = tokio::time::interval(DRAIN_FLUSH);
                    if !batch.is_empty() {
                        self.export(&mut batch).await;
                        spans = 0;
                    }
                }
            }
        }
    }
}

impl Exporter {
    /// Send the spans of `batch` (emptied), `batch_spans` at most per request.
    async fn export(&self, batch: &mut Vec<Finished>) {
        let mut spans = Vec::with_capacity(batch.len() * 2);
        for f in batch.drain(..) {
            push_spans(&f, &mut spans);
        }
        while !spans.is_empty() {
            let rest = spans.split_off(spans.len().min(self.batch_spans));
            self.send(std::mem::replace(&mut spans, rest)).await;
        }
    }

    /// Send `spans` in one request; count the outcome.
    async fn send(&self, spans: Vec<Span>) {
        let n = spans.len() as u64;
        let body = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource.clone()),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "tollgate".to_string(),
                        version: env!("CARGO_PKG_VERSION").to_string(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        }
        .encode_to_vec();
        let outcome = match self.request() {
            Some(req) => match self.service.call(req, &body).await {
                Ok(reply) if reply.head.status.is_success() => Ok(()),
                Ok(reply) => Err(format!("status {}", reply.head.status.as_u16())),
                Err(failure) => Err(failure.label().to_string()),
            },
            None => Err("request".to_string()),
        };
        match outcome {
            Ok(()) => METRICS.spans_exported.inc_by(n),
            Err(why) => {
                METRICS
                    .spans_dropped
                    .with_label_values(&["export_failed"])
                    .inc_by(n);
                // The endpoint without its query; never the configured headers.
                log::warn!(
                    "tracing: export of {n} spans to {} failed ({why})",
                    self.service.endpoint.path.split('?').next().unwrap_or("")
                );
            }
        }
    }

    fn request(&self) -> Option<RequestHeader> {
        let mut req =
            RequestHeader::build("POST", self.service.endpoint.path.as_bytes(), None).ok()?;
        req.insert_header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .ok()?;
        for (name, value) in &self.headers {
            req.insert_header(name.clone(), value.clone()).ok()?;
        }
        Some(req)
    }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn kv_str(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn kv_int(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

/// A resource of `service.name`, `service.version` and the configured attributes.
pub fn resource(service_name: &str, extra: &[(String, String)]) -> Resource {
    let mut attributes = vec![
        kv_str("service.name", service_name),
        kv_str("service.version", env!("CARGO_PKG_VERSION")),
    ];
    attributes.extend(extra.iter().map(|(k, v)| kv_str(k, v.as_str())));
    Resource {
        attributes,
        ..Default::default()
    }
}

/// The server span of `f` and its attempts' spans.
fn push_spans(f: &Finished, out: &mut Vec<Span>) {
    let t = &f.trace;
    let trace_id = t.trace_id.to_vec();
    let flags = 0x100 | u32::from(t.sampled);
    let name = match &f.route {
        Some(r) => format!("{} {r}", f.method),
        None => f.method.to_string(),
    };
    let mut attributes = vec![
        kv_str("http.request.method", f.method.as_str()),
        kv_str("url.path", f.path.as_str()),
        kv_str("url.scheme", f.scheme),
        kv_str("server.address", f.host.as_str()),
        kv_str("network.protocol.version", f.protocol),
        kv_str("tollgate.request_id", f.request_id.as_str()),
        kv_int("tollgate.retries", i64::from(f.retries)),
        kv_int("http.request.body.size", f.body_bytes.0 as i64),
        kv_int("http.response.body.size", f.body_bytes.1 as i64),
    ];
    if let Some(ip) = f.client {
        attributes.push(kv_str("client.address", ip.to_string()));
    }
    if let Some(ua) = &f.user_agent {
        attributes.push(kv_str("user_agent.original", ua.as_str()));
    }
    if f.status > 0 {
        attributes.push(kv_int("http.response.status_code", i64::from(f.status)));
    }
    if let Some(r) = &f.route {
        attributes.push(kv_str("tollgate.route", &**r));
    }
    if let Some(u) = &f.upstream {
        attributes.push(kv_str("tollgate.upstream", &**u));
    }
    if let Some(c) = &f.consumer {
        attributes.push(kv_str("tollgate.consumer", c.as_str()));
    }
    if let Some(p) = t.answered_by {
        attributes.push(kv_str("tollgate.answered_by", p));
    }
    if let Some(e) = f.error {
        attributes.push(kv_str("error.type", e));
    }
    let events = t
        .events
        .iter()
        .map(|e| match e {
            Event::Retry { at, cause } => span::Event {
                time_unix_nano: f.unix_nanos(*at),
                name: "retry".to_string(),
                attributes: vec![kv_str("tollgate.retry.cause", *cause)],
                ..Default::default()
            },
            Event::Fallback {
                at,
                from,
                to,
                cause,
            } => span::Event {
                time_unix_nano: f.unix_nanos(*at),
                name: "fallback".to_string(),
                attributes: vec![
                    kv_str("tollgate.fallback.from", &**from),
                    kv_str("tollgate.fallback.to", &**to),
                    kv_str("tollgate.fallback.cause", *cause),
                ],
                ..Default::default()
            },
        })
        .collect();
    let status = Status {
        code: if f.is_error() {
            StatusCode::Error as i32
        } else {
            StatusCode::Unset as i32
        },
        message: String::new(),
    };
    out.push(Span {
        trace_id: trace_id.clone(),
        span_id: t.span_id.to_vec(),
        parent_span_id: t.parent.map(|p| p.to_vec()).unwrap_or_default(),
        flags: flags | if t.parent.is_some() { 0x200 } else { 0 },
        name,
        kind: SpanKind::Server as i32,
        start_time_unix_nano: f.unix_nanos(f.start),
        end_time_unix_nano: f.end_unix_nanos,
        attributes,
        events,
        status: Some(status),
        ..Default::default()
    });
    for a in &t.attempts {
        let mut attributes = vec![
            kv_str("tollgate.upstream", &*a.upstream),
            kv_int("tollgate.attempt", i64::from(a.number)),
        ];
        if let Some(b) = a.backend {
            attributes.push(kv_str("server.address", b.ip().to_string()));
            attributes.push(kv_int("server.port", i64::from(b.port())));
        }
        if let Some(s) = a.status {
            attributes.push(kv_int("http.response.status_code", i64::from(s)));
        }
        if let Some(e) = a.error {
            attributes.push(kv_str("error.type", e));
        }
        let failed = a.error.is_some() || a.status.is_some_and(|s| s >= 500);
        out.push(Span {
            trace_id: trace_id.clone(),
            span_id: a.span_id.to_vec(),
            parent_span_id: t.span_id.to_vec(),
            // Bit 8: the parent is known; bit 9: it is remote (it is not: it is ours).
            flags: flags & 0x1 | 0x100,
            name: format!("upstream {}", a.upstream),
            kind: SpanKind::Client as i32,
            start_time_unix_nano: f.unix_nanos(a.start),
            end_time_unix_nano: f.unix_nanos(a.end.unwrap_or(f.end)),
            attributes,
            status: Some(Status {
                code: if failed {
                    StatusCode::Error as i32
                } else {
                    StatusCode::Unset as i32
                },
                message: String::new(),
            }),
            ..Default::default()
        });
    }
}
