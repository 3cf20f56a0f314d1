//! Upstream connections that tell the wait for a response's first byte from the silence
//! between two pieces of it (routes with `first_byte_timeout_ms` / `idle_timeout_ms`).
//!
//! Pingora 0.9 applies one read timeout to every read of an attempt, head and body alike,
//! and no hook can change it once the head arrived. So these routes connect through
//! [`TimedConnect`] (a custom L4 connector): its socket arms the first-byte timer when a
//! request byte is written and the idle timer once a response byte was read. A timer that
//! fires fails the read with [`std::io::ErrorKind::TimedOut`] and a [`StreamTimeout`]
//! message, which [`stream_timeout`] finds in the Pingora error.
//!
//! Pooled connections are kept apart by the peer's group key (the two timeouts), so a
//! connection made for one pair of timeouts is never reused with another.

use async_trait::async_trait;
use pingora::connectors::L4Connect;
use pingora::protocols::l4::socket::SocketAddr;
use pingora::protocols::l4::stream::Stream;
use pingora::protocols::l4::virt::{VirtualSockOpt, VirtualSocket, VirtualSocketStream};
use pingora::{Error, ErrorType, Result};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Sleep;

/// Which timer failed a read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTimeout {
    /// No response byte within `first_byte_timeout_ms` of the request's last byte.
    FirstByte,
    /// The response went silent for `idle_timeout_ms`.
    Idle,
}

impl StreamTimeout {
    /// The metric label (and the io error's message).
    pub fn label(self) -> &'static str {
        match self {
            StreamTimeout::FirstByte => "first_byte",
            StreamTimeout::Idle => "idle",
        }
    }
}

/// Did one of [`TimedConnect`]'s timers end this Pingora error?
pub fn stream_timeout(e: &Error) -> Option<StreamTimeout> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = e
        .cause
        .as_deref()
        .map(|c| c as &(dyn std::error::Error + 'static));
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            if io.kind() == io::ErrorKind::TimedOut {
                return match io.to_string().as_str() {
                    "first_byte" => Some(StreamTimeout::FirstByte),
                    "idle" => Some(StreamTimeout::Idle),
                    _ => None,
                };
            }
        }
        // Pingora nests its errors as `Error` or (through `Into`) as `Box<Error>`.
        if let Some(pe) = c.downcast_ref::<Error>() {
            return stream_timeout(pe);
        }
        if let Some(pe) = c.downcast_ref::<Box<Error>>() {
            return stream_timeout(pe);
        }
        cause = c.source();
    }
    None
}

/// The L4 connector of a route with stream timeouts.
#[derive(Debug)]
pub struct TimedConnect {
    /// Connect timeout (the upstream's, or the route's override).
    pub connect: Option<Duration>,
    /// `first_byte_timeout_ms`.
    pub first_byte: Option<Duration>,
    /// `idle_timeout_ms`.
    pub idle: Option<Duration>,
}

impl TimedConnect {
    /// The pool group key of connections made with these timeouts.
    pub fn group_key(&self) -> u64 {
        let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
        // Never 0 (the key of ordinary connections).
        (ms(self.first_byte) << 32 ^ ms(self.idle)) | 1 << 63
    }
}

#[async_trait]
impl L4Connect for TimedConnect {
    async fn connect(&self, addr: &SocketAddr) -> Result<Stream> {
        let SocketAddr::Inet(inet) = addr else {
            return Error::e_explain(ErrorType::SocketError, "stream timeouts need a TCP backend");
        };
        let connect = TcpStream::connect(*inet);
        let tcp = match self.connect {
            Some(t) => match tokio::time::timeout(t, connect).await {
                Ok(r) => r,
                Err(_) => {
                    return Error::e_explain(
                        ErrorType::ConnectTimedout,
                        format!("timeout {t:?} connecting to {inet}"),
                    )
                }
            },
            None => connect.await,
        };
        let tcp = tcp.map_err(|e| {
            let kind = if e.kind() == io::ErrorKind::ConnectionRefused {
                ErrorType::ConnectRefused
            } else {
                ErrorType::ConnectError
            };
            Error::because(kind, format!("connecting to {inet}"), e)
        })?;
        let _ = tcp.set_nodelay(true);
        let socket = TimedSocket {
            tcp,
            first_byte: self.first_byte,
            idle: self.idle,
            awaiting_first: false,
            timer: None,
        };
        Ok(Stream::from(VirtualSocketStream::new(Box::new(socket))))
    }
}

#[derive(Debug)]
struct TimedSocket {
    tcp: TcpStream,
    first_byte: Option<Duration>,
    idle: Option<Duration>,
    /// A request byte was written and no response byte read since.
    awaiting_first: bool,
    timer: Option<Pin<Box<Sleep>>>,
}

impl VirtualSocket for TimedSocket {
    fn set_socket_option(&self, opt: VirtualSockOpt) -> io::Result<()> {
        match opt {
            VirtualSockOpt::NoDelay => self.tcp.set_nodelay(true),
            _ => Ok(()),
        }
    }
}

impl AsyncRead for TimedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.tcp).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.awaiting_first = false;
                }
                this.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let (limit, kind) = if this.awaiting_first {
                    (this.first_byte, StreamTimeout::FirstByte)
                } else {
                    (this.idle, StreamTimeout::Idle)
                };
                let Some(limit) = limit else {
                    return Poll::Pending;
                };
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if timer.as_mut().poll(cx).is_ready() {
                    this.timer = None;
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, kind.label())));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for TimedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.tcp).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            // The first-byte wait counts from the request's last byte written.
            this.awaiting_first = true;
            this.timer = None;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
