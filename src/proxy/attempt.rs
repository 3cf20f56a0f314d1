//! One request's dealings with its upstream, as guards that settle themselves.
//!
//! - [`BreakerTicket`]: the circuit breaker's admission of the request. Asked once per
//!   request; it records the request's outcome once, when the response header arrives, or on
//!   drop: as a failure if a backend was tried, or by giving a half-open probe slot back if
//!   none was (no backend left, deadline passed), so no path can wedge the breaker.
//! - [`Attempt`]: one try at one backend. It holds the backend's in-flight count and the
//!   breaker ticket; on drop it ends the in-flight count and reports a failure to passive
//!   health unless the attempt was reported (or forgiven) before. A retry replaces the
//!   attempt: the old one settles, the ticket moves on.

use super::error::GatewayError;
use crate::metrics::METRICS;
use crate::upstream::limit::Permit;
use crate::upstream::outlier::{Admission, Circuit};
use crate::upstream::UpstreamPool;
use pingora::protocols::l4::socket::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The circuit breaker's admission of one request (see the module documentation).
pub struct BreakerTicket {
    pool: Arc<UpstreamPool>,
    probe: bool,
    tried: bool,
    settled: bool,
}

impl BreakerTicket {
    /// Ask `pool`'s breaker to let a request through: `Ok(None)` when it has none,
    /// `Err(CircuitOpen)` when it refuses.
    pub fn admit(pool: &Arc<UpstreamPool>) -> Result<Option<Self>, GatewayError> {
        let Some(breaker) = &pool.breaker else {
            return Ok(None);
        };
        let probe = match breaker.admit() {
            Admission::Refused => return Err(GatewayError::CircuitOpen),
            Admission::Probe => true,
            Admission::Allowed => false,
        };
        Ok(Some(BreakerTicket {
            pool: pool.clone(),
            probe,
            tried: false,
            settled: false,
        }))
    }

    /// Give the breaker the request's outcome (once; later calls do nothing).
    pub fn settle(&mut self, ok: bool) {
        if self.settled {
            return;
        }
        self.settled = true;
        let Some(breaker) = &self.pool.breaker else {
            return;
        };
        if let Some(circuit) = breaker.record(self.probe, ok) {
            log::warn!("upstream {} circuit is now {circuit:?}", self.pool.name);
            let value = match circuit {
                Circuit::Closed => 0,
                Circuit::Open => 1,
                Circuit::HalfOpen => 2,
            };
            METRICS
                .circuit_state
                .with_label_values(&[&*self.pool.name])
                .set(value);
        }
    }
}

impl Drop for BreakerTicket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if self.tried {
            // A backend was tried and no response header came: the upstream failed.
            self.settle(false);
        } else if self.probe {
            if let Some(breaker) = &self.pool.breaker {
                breaker.release_probe();
            }
        }
    }
}

/// One try at one backend (see the module documentation).
pub struct Attempt {
    pool: Arc<UpstreamPool>,
    backend: usize,
    /// Passive health has this attempt's outcome (or it was forgiven).
    reported: bool,
    ticket: Option<BreakerTicket>,
    /// The upstream's concurrency slot (`max_concurrent_requests`), freed on drop.
    permit: Option<Permit>,
    /// When the backend was chosen.
    start: Instant,
    /// How the attempt ended, the `outcome` of `tollgate_upstream_attempt_duration_seconds`:
    /// `response` (a response head came), `connect_error`, `timeout`, `error`.
    pub outcome: &'static str,
}

impl Attempt {
    /// Start a try at backend `backend` of `pool`, carrying the request's breaker ticket.
    pub fn begin(
        pool: Arc<UpstreamPool>,
        backend: usize,
        ticket: Option<BreakerTicket>,
        permit: Option<Permit>,
        start: Instant,
    ) -> Self {
        pool.begin(backend);
        let ticket = ticket.map(|mut t| {
            t.tried = true;
            t
        });
        Attempt {
            pool,
            backend,
            reported: false,
            ticket,
            permit,
            start,
            outcome: "error",
        }
    }

    /// The pool this attempt is at.
    pub fn pool(&self) -> &Arc<UpstreamPool> {
        &self.pool
    }

    /// The backend's index in its pool.
    pub fn backend(&self) -> usize {
        self.backend
    }

    /// The backend's address.
    pub fn addr(&self) -> Option<&SocketAddr> {
        self.pool.addr(self.backend)
    }

    /// Tell passive health how this attempt went (once).
    pub fn report(&mut self, ok: bool) {
        if !self.reported {
            self.reported = true;
            self.pool.report(self.backend, ok);
        }
    }

    /// End without a verdict for passive health: the failure was not the backend's (a pooled
    /// connection it had closed while idle).
    pub fn forgive(&mut self) {
        self.reported = true;
    }

    /// The response header arrived: report it to passive health and the breaker.
    pub fn answered(&mut self, ok: bool) {
        self.report(ok);
        if let Some(t) = &mut self.ticket {
            t.settle(ok);
        }
    }

    /// End this attempt (settling it) and hand the breaker ticket and the concurrency slot
    /// to the next one (at the same upstream).
    pub fn into_parts(mut self) -> (Option<BreakerTicket>, Option<Permit>) {
        (self.ticket.take(), self.permit.take())
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        self.pool.end(self.backend);
        self.pool
            .attempt_duration(self.backend, self.outcome)
            .observe(self.start.elapsed().as_secs_f64());
        if !self.reported {
            self.pool.report(self.backend, false);
        }
    }
}
