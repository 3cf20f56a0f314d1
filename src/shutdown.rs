//! How the process ends, the way Kubernetes and load balancers expect:
//!
//! - **SIGTERM**: `/readyz` turns 503 at once (`/healthz` stays 200) and every response says
//!   `Connection: close`; the listeners keep accepting for `shutdown_grace_period_seconds`,
//!   so a load balancer notices; then they stop, idle keep-alive connections are closed, and
//!   requests, streams and WebSockets in flight get up to `shutdown_timeout_seconds` to
//!   finish. The process exits 0 as soon as the last connection ends, or when the timeout
//!   passes.
//! - **SIGQUIT** (graceful upgrade): the listening sockets go to the new process (Pingora),
//!   then the same drain.
//! - **SIGINT**: fast shutdown.
//!
//! Pingora runs its own timers after the watcher returns (a fixed wait, then the runtimes
//! are dropped): [`DrainingShutdown`] returns only once the grace period is over, and a
//! watchdog thread ends the process as soon as the drain is done.

use crate::lifecycle::Lifecycle;
use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, SignalKind};

/// How often the watchdog looks at the open connections.
const POLL: Duration = Duration::from_millis(50);
/// Pingora's pause between handing the sockets over and closing its listeners on upgrade.
const UPGRADE_CLOSE: Duration = Duration::from_secs(5);

/// The shutdown signal watcher given to Pingora (see the module documentation).
pub struct DrainingShutdown {
    /// Shared flags and the connection count.
    pub lifecycle: Arc<Lifecycle>,
    /// `shutdown_grace_period_seconds`.
    pub grace: Duration,
    /// `shutdown_timeout_seconds`.
    pub timeout: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingShutdown {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot listen for shutdown signals; waiting forever");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => ShutdownSignal::FastShutdown,
            _ = term.recv() => {
                self.lifecycle.set_draining();
                log::info!(
                    "SIGTERM: not ready; still accepting for {:?}, then draining for up to {:?}",
                    self.grace,
                    self.timeout
                );
                tokio::select! {
                    _ = tokio::time::sleep(self.grace) => {}
                    _ = int.recv() => return ShutdownSignal::FastShutdown,
                }
                // Connections the kernel completed but nobody accepted yet are reset when a
                // listener closes: shrink the queues first and let the accept loops take
                // what is in them, so a request sent on such a connection is not lost.
                let quieted = quiet_listeners();
                if quieted > 0 {
                    tokio::time::sleep(QUEUE_DRAIN).await;
                }
                log::info!("grace period over: listeners close, in-flight requests finish");
                watch_drain(self.lifecycle.clone(), Duration::ZERO, self.timeout);
                ShutdownSignal::GracefulTerminate
            }
            _ = quit.recv() => {
                self.lifecycle.set_draining();
                log::info!("SIGQUIT: handing the sockets over, then draining");
                watch_drain(self.lifecycle.clone(), UPGRADE_CLOSE, self.timeout);
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// How long the accept loops get to empty the shrunk accept queues before the listeners
/// close.
const QUEUE_DRAIN: Duration = Duration::from_millis(300);

/// Set the backlog of every listening TCP socket of the process to the minimum, so new
/// connections wait in SYN retries (and then find the port closed: a connect error the
/// client can retry elsewhere) instead of queueing on a listener about to close. Returns how
/// many listeners it found.
#[cfg(target_os = "linux")]
fn quiet_listeners() -> usize {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut n = 0;
    for entry in dir.flatten() {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|f| f.parse::<std::os::fd::RawFd>().ok())
        else {
            continue;
        };
        // Files, pipes and the directory's own descriptor are in the list too.
        let is_socket = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        if !is_socket {
            continue;
        }
        let listening = socket_option(fd, libc::SO_ACCEPTCONN) == Some(1);
        let inet = matches!(
            socket_option(fd, libc::SO_DOMAIN),
            Some(libc::AF_INET | libc::AF_INET6)
        );
        if listening && inet {
            refuse_new_syns(fd);
            // SAFETY: re-listening on a listening socket only changes its backlog.
            if unsafe { libc::listen(fd, 0) } == 0 {
                n += 1;
            }
        }
    }
    n
}

/// An integer `SOL_SOCKET` option of `fd`; `None` when the call fails.
#[cfg(target_os = "linux")]
fn socket_option(fd: std::os::fd::RawFd, option: libc::c_int) -> Option<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the out-pointers are valid for the sizes given; a descriptor that is not open
    // (closed since it was listed) only makes the call fail.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(value)
}

/// Drop connection requests (TCP segments with SYN and without ACK) arriving on the
/// listening socket `fd`, with a classic BPF socket filter; the rest of a handshake already
/// under way passes, so those connections complete and are accepted. A client whose SYN was
/// dropped retries it after a second and finds the port closed.
#[cfg(target_os = "linux")]
fn refuse_new_syns(fd: std::os::fd::RawFd) {
    // The filter sees the TCP header at offset 0; byte 13 holds the flags.
    let mut program = [
        // ldb [13]
        libc::sock_filter {
            code: 0x30,
            jt: 0,
            jf: 0,
            k: 13,
        },
        // and #(SYN | ACK)
        libc::sock_filter {
            code: 0x54,
            jt: 0,
            jf: 0,
            k: 0x12,
        },
        // jeq #SYN ? next : skip one
        libc::sock_filter {
            code: 0x15,
            jt: 0,
            jf: 1,
            k: 0x02,
        },
        // ret #0: drop
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: 0,
        },
        // ret #-1: keep the whole segment
        libc::sock_filter {
            code: 0x06,
            jt: 0,
            jf: 0,
            k: u32::MAX,
        },
    ];
    let prog = libc::sock_fprog {
        len: program.len() as libc::c_ushort,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `program`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        log::debug!(
            "cannot filter new connections on fd {fd}: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn quiet_listeners() -> usize {
    0
}

/// After `delay` (while the listeners still close), end the process with code 0 once no
/// client connection is open, or when `timeout` has passed.
fn watch_drain(lifecycle: Arc<Lifecycle>, delay: Duration, timeout: Duration) {
    let spawned = std::thread::Builder::new()
        .name("drain".into())
        .spawn(move || {
            std::thread::sleep(delay);
            let start = Instant::now();
            loop {
                let open = lifecycle.connections();
                if open == 0 || start.elapsed() >= timeout {
                    if open > 0 {
                        log::warn!("shutdown timeout: {open} connection(s) still open, exiting");
                    } else {
                        log::info!("drained: every connection ended, exiting");
                    }
                    // Let the access log writer flush what is queued.
                    std::thread::sleep(POLL);
                    std::process::exit(0);
                }
                std::thread::sleep(POLL);
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the drain watchdog: {e}");
    }
}
