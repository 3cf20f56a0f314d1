//! The client connection before Pingora sees it: [`GuardedApp`] wraps the proxy's
//! `ServerApp`, bounds the number of open connections (per listener, per client address)
//! and hands Pingora a [`guard::GuardedStream`] whose request heads are timed
//! and sized, so a slow or oversized head (slowloris) costs a connection slot for at most
//! `header_timeout_ms` and at most about `max_header_bytes` of memory.

pub mod guard;
pub mod head;
pub mod limits;

use crate::lifecycle::Lifecycle;
use crate::metrics::METRICS;
use crate::origin_date::OriginDate;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use guard::{GuardedStream, HeadRefusal, OnRefusal};
use limits::{ConnectionLimits, Overflow};
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tollgate_plugins::net::contains;

/// Head bytes allowed beyond `max_header_bytes` before the guard refuses a head itself
/// (up to there the proxy answers 431 with the route's headers).
const HEAD_SLACK: usize = 1024;
/// How long writing the "too many connections" answer may take.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// The proxy's `ServerApp` behind connection limits and head guards.
pub struct GuardedApp<A> {
    inner: Arc<A>,
    lifecycle: Arc<Lifecycle>,
    limits: Arc<ConnectionLimits>,
    config: Arc<ArcSwap<Snapshot>>,
    on_refusal: OnRefusal,
    origin_date: Option<Arc<OriginDate>>,
}

impl<A> GuardedApp<A> {
    /// Guard `inner` with the limits of `config`'s `[server]` (read when each connection
    /// is accepted, so a reload applies to new connections).
    pub fn new(inner: A, config: Arc<ArcSwap<Snapshot>>, lifecycle: Arc<Lifecycle>) -> Self {
        let process = &config.load().server.process;
        let limits = ConnectionLimits::new(process.max_connections, process.max_connections_per_ip);
        GuardedApp {
            inner: Arc::new(inner),
            lifecycle,
            limits,
            config,
            on_refusal: Arc::new(|why: HeadRefusal| {
                METRICS
                    .request_heads_refused
                    .with_label_values(&[why.label()])
                    .inc();
                log::warn!("request head refused: {}", why.label());
            }),
            origin_date: None,
        }
    }

    /// Put the origin's `Date` back into the HTTP/1 response heads the proxy marked with
    /// `origin_date` (see [`crate::origin_date`]).
    pub fn with_origin_date(mut self, origin_date: Arc<OriginDate>) -> Self {
        self.origin_date = Some(origin_date);
        self
    }
}

#[async_trait]
impl<A> ServerApp for GuardedApp<A>
where
    A: ServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let accepted = Instant::now();
        let digest = stream.get_socket_digest();
        let peer = digest
            .as_ref()
            .and_then(|d| d.peer_addr())
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let listener = digest.as_ref().and_then(|d| d.local_addr()).cloned();
        let (timeout, max_head, exempt) = {
            let snap = self.config.load();
            let live = &snap.server.live;
            (
                Duration::from_millis(live.header_timeout_ms),
                live.max_header_bytes + HEAD_SLACK,
                peer.is_some_and(|p| contains(&snap.trusted_proxies, p)),
            )
        };
        let permit = match self.limits.admit(listener, peer, exempt) {
            Ok(p) => p,
            Err(why) => {
                METRICS
                    .connections_refused
                    .with_label_values(&[why.label()])
                    .inc();
                log::warn!(
                    "connection from {} refused: too many connections ({})",
                    peer.map_or_else(|| "?".to_string(), |p| p.to_string()),
                    why.label()
                );
                refuse(stream, why).await;
                return None;
            }
        };
        METRICS.downstream_connections.inc();
        self.lifecycle.connection_opened();
        let guarded = GuardedStream::new(
            stream,
            accepted,
            timeout,
            max_head,
            self.on_refusal.clone(),
            self.origin_date.clone(),
        );
        // The HTTP app serves every request of the connection before it returns.
        let _ = ServerApp::process_new(&self.inner, Box::new(guarded), shutdown).await;
        METRICS.downstream_connections.dec();
        self.lifecycle.connection_closed();
        drop(permit);
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Answer a connection over the limits: a JSON 503 with `Connection: close` on HTTP/1
/// (best effort, bounded in time), then close. HTTP/2 connections are just closed.
async fn refuse(mut stream: Stream, why: Overflow) {
    if !matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        let body = format!(
            r#"{{"error":"too_many_connections","message":"too many open connections ({})","status":503}}"#,
            why.label()
        );
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nx-request-id: {}\r\nconnection: close\r\n\r\n{body}",
            body.len(),
            tollgate_plugins::RequestId::generate().as_str()
        );
        let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
            stream.write_all(answer.as_bytes()).await?;
            stream.flush().await
        })
        .await;
    }
    let _ = stream.shutdown().await;
}
