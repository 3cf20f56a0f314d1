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
