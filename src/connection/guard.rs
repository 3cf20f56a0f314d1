//! [`GuardedStream`]: a client connection whose request heads are timed and sized. Each
//! head must arrive whole within the header timeout, counted from its first byte (the first
//! head of a connection: from the accept), and be no larger than the head limit; otherwise
//! the client gets a JSON 408 or 431 on HTTP/1 (nothing on HTTP/2) and the connection ends.
//!
//! The timer costs nothing on the usual request: it is armed only when a read finds no data
//! while a head is incomplete.

use super::head::{HeadTracker, Phase};
use crate::origin_date::OriginDate;
use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long writing a refusal after a timed-out peek may take.
const REFUSAL_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadRefusal {
    /// Not complete within the header timeout.
    Timeout,
    /// Larger than the head limit.
    TooLarge,
}

impl HeadRefusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            HeadRefusal::Timeout => "header_timeout",
            HeadRefusal::TooLarge => "header_too_large",
        }
    }

    /// The HTTP/1 answer written before the connection closes.
    fn response(self) -> Vec<u8> {
        let (status, reason, code, message) = match self {
            HeadRefusal::Timeout => (
                408,
                "Request Timeout",
                "request_timeout",
                "the request head was not received in time",
            ),
            HeadRefusal::TooLarge => (
                431,
                "Request Header Fields Too Large",
                "headers_too_large",
                "the request headers are too large",
            ),
        };
        let body = format!(r#"{{"error":"{code}","message":"{message}","status":{status}}}"#);
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n\r\n{body}",
            body.len(),
            tollgate_plugins::RequestId::generate().as_str()
        )
        .into_bytes()
    }
}

/// Called once when a head is refused (metrics, rate-limited log).
pub type OnRefusal = Arc<dyn Fn(HeadRefusal) + Send + Sync>;

enum Refusing {
    No,
    /// Writing the answer: bytes left.
    Writing(Vec<u8>, usize),
    Done,
}

/// A client stream with its request heads guarded (see the module documentation).
pub struct GuardedStream {
    inner: Stream,
    tracker: HeadTracker,
    timeout: Duration,
    max_head: usize,
    /// When the current head began (the accept, for the first).
    head_started: Instant,
    /// No head has started yet: the clock runs from the accept.
    first: bool,
    timer: Option<Pin<Box<Sleep>>>,
    http1: bool,
    refusing: Refusing,
    refusal: Option<HeadRefusal>,
    on_refusal: OnRefusal,
    /// Puts the origin's `Date` back into HTTP/1 response heads.
    origin_date: Option<Arc<OriginDate>>,
    /// A rewritten response head being written: bytes, how many went out, and the length
    /// of the head as Pingora wrote it (what the write reports once all went out).
    rewritten: Option<(Vec<u8>, usize, usize)>,
}

impl std::fmt::Debug for GuardedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedStream")
            .field("inner", &self.inner)
            .field("phase", &self.tracker.phase())
            .finish()
    }
}

impl GuardedStream {
    /// Guard `inner`, accepted at `accepted`.
    pub fn new(
        inner: Stream,
        accepted: Instant,
        timeout: Duration,
        max_head: usize,
        on_refusal: OnRefusal,
        origin_date: Option<Arc<OriginDate>>,
    ) -> Self {
        let http1 = !matches!(inner.selected_alpn_proto(), Some(ALPN::H2));
        GuardedStream {
            inner,
            tracker: HeadTracker::new(),
            timeout,
            max_head,
            head_started: accepted,
            first: true,
            timer: None,
            http1,
            refusing: Refusing::No,
            refusal: None,
            on_refusal,
            origin_date: origin_date.filter(|_| http1),
            rewritten: None,
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self.tracker.phase() {
            // Between requests the keep-alive timeout applies; the first head is timed from
            // the accept, so a connection that never sends a byte is covered too.
            Phase::Idle if self.first => Some(self.head_started + self.timeout),
            Phase::Head { .. } => Some(self.head_started + self.timeout),
            _ => None,
        }
    }

    fn refuse(&mut self, why: HeadRefusal) {
        if self.refusal.is_some() {
            return;
        }
        self.refusal = Some(why);
        (self.on_refusal)(why);
        self.tracker.pass_through();
        self.refusing = if self.http1 {
            Refusing::Writing(why.response(), 0)
        } else {
            Refusing::Done
        };
    }

    /// Write the refusal, then fail the read.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            match &mut self.refusing {
                Refusing::No => return Poll::Ready(Ok(())),
                Refusing::Writing(bytes, at) => {
                    if *at >= bytes.len() {
                        let _ = Pin::new(&mut self.inner).poll_flush(cx);
                        self.refusing = Refusing::Done;
                        continue;
                    }
                    match Pin::new(&mut self.inner).poll_write(cx, &bytes[*at..]) {
                        Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => self.refusing = Refusing::Done,
                        Poll::Ready(Ok(n)) => *at += n,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                Refusing::Done => {
                    let why = self.refusal.map_or("refused", HeadRefusal::label);
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
                }
            }
        }
    }
}

impl AsyncRead for GuardedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !matches!(this.refusing, Refusing::No) {
            return this.poll_refusal(cx);
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    return Poll::Ready(Ok(()));
                }
                if this.tracker.feed(new) {
                    if this.first {
                        this.first = false;
                    } else {
                        this.head_started = Instant::now();
                    }
                    this.timer = None;
                }
                if let Phase::Head { bytes } = this.tracker.phase() {
                    if bytes > this.max_head {
                        buf.set_filled(before);
                        this.refuse(HeadRefusal::TooLarge);
                        return this.poll_refusal(cx);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => {
                let Some(deadline) = this.deadline() else {
                    return Poll::Pending;
                };
                let deadline = tokio::time::Instant::from_std(deadline);
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if timer.deadline() != deadline {
                    timer.as_mut().reset(deadline);
                }
                ready!(timer.as_mut().poll(cx));
                this.refuse(HeadRefusal::Timeout);
                this.poll_refusal(cx)
            }
            other => other,
        }
    }
}

impl AsyncWrite for GuardedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.rewritten.is_none() {
            if let Some(head) = this.origin_date.as_ref().and_then(|d| d.rewrite_head(buf)) {
                this.rewritten = Some((head, 0, buf.len()));
            }
        }
        let Some((bytes, at, reported)) = &mut this.rewritten else {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        };
        // The caller retries the same buffer until it is reported written (write_all), so
        // the rewritten head is finished before the write is acknowledged, whole.
        while *at < bytes.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &bytes[*at..]) {
                Poll::Ready(Ok(0)) => {
                    this.rewritten = None;
                    return Poll::Ready(Ok(0));
                }
                Poll::Ready(Ok(n)) => *at += n,
                Poll::Ready(Err(e)) => {
                    this.rewritten = None;
                    return Poll::Ready(Err(e));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = *reported;
        this.rewritten = None;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for GuardedStream {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for GuardedStream {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for GuardedStream {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for GuardedStream {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for GuardedStream {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for GuardedStream {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

#[async_trait]
impl Peek for GuardedStream {
    /// Peeking (Pingora looks for the HTTP/2 preface this way) is bounded by the head's
    /// deadline too: a connection sending fewer bytes than it waits for is timed out.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        match self.deadline() {
            Some(d) => {
                let d = tokio::time::Instant::from_std(d);
                match tokio::time::timeout_at(d, self.inner.try_peek(buf)).await {
                    Ok(r) => r,
                    Err(_) => {
                        self.refusal = Some(HeadRefusal::Timeout);
                        (self.on_refusal)(HeadRefusal::Timeout);
                        if self.http1 {
                            use tokio::io::AsyncWriteExt;
                            let answer = HeadRefusal::Timeout.response();
                            let _ = tokio::time::timeout(REFUSAL_WRITE_TIMEOUT, async {
                                self.inner.write_all(&answer).await?;
                                self.inner.flush().await
                            })
                            .await;
                        }
                        Err(io::Error::new(io::ErrorKind::TimedOut, "header_timeout"))
                    }
                }
            }
            None => self.inner.try_peek(buf).await,
        }
    }
}
