//! Where the process is in its life: starting, ready, draining. One [`Lifecycle`] is shared
//! by the proxy (responses close their connections while draining), the admin listener
//! (`/readyz`) and the server (signals, readiness probe).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// The process's lifecycle flags.
#[derive(Debug, Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    reload_armed: AtomicBool,
    connections: AtomicUsize,
}

impl Lifecycle {
    /// The proxy listener accepts connections and reloads are armed.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Mark the process ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// SIGQUIT (graceful upgrade) or SIGTERM arrived: from then on every response closes its
    /// connection, so keep-alive clients reconnect (to the new process, during an upgrade)
    /// instead of being cut off when this process stops.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Start draining.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// The reload task listens for SIGHUP. Readiness waits for it, because a SIGHUP before
    /// that would end the process (the default action).
    pub fn reload_armed(&self) -> bool {
        self.reload_armed.load(Ordering::Acquire)
    }

    /// Mark reloads armed.
    pub fn set_reload_armed(&self) {
        self.reload_armed.store(true, Ordering::Release);
    }

    /// A client connection opened (the proxy listeners only).
    pub fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::AcqRel);
    }

    /// A client connection closed.
    pub fn connection_closed(&self) {
        self.connections.fetch_sub(1, Ordering::AcqRel);
    }

    /// Client connections open: what a drain waits for.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }
}
