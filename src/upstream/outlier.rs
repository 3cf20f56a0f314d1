//! Per-backend and per-upstream failure tracking: in-flight counts (for least-request),
//! passive health (consecutive failures eject a backend for a growing time), and the
//! circuit breaker (an upstream that keeps failing is refused fast, then probed).

use crate::config::schema::{CircuitBreakerSection, PassiveHealthSection};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tollgate_plugins::sync::lock;

/// A monotonic millisecond clock from when its owner (a pool, a breaker) was made; times
/// kept in atomics are readings of it.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    /// A clock starting now.
    pub fn new() -> Self {
        Clock(Instant::now())
    }

    /// Milliseconds since the clock started, never 0 (0 means "never" in the atomics).
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64 + 1
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Live counters of one backend.
#[derive(Default, Debug)]
pub struct BackendState {
    /// Requests in flight to this backend.
    pub inflight: AtomicUsize,
    consecutive_failures: AtomicU32,
    ejections: AtomicU32,
    /// Ejected until this time (`now_ms` clock); 0 when never ejected.
    ejected_until: AtomicU64,
}

impl BackendState {
    /// Is the backend ejected at `now`?
    pub fn ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Was it ejected once and is its time over (for the "returned" log line)?
    pub fn take_return(&self, now: u64) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0
            && until <= now
            && self
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Passive health settings, compiled.
#[derive(Debug, Clone, Copy)]
pub struct PassiveHealth {
    consecutive_failures: u32,
    base_ejection: Duration,
    max_ejection: Duration,
    max_ejected_percent: u32,
}

impl From<&PassiveHealthSection> for PassiveHealth {
    fn from(s: &PassiveHealthSection) -> Self {
        PassiveHealth {
            consecutive_failures: s.consecutive_failures.max(1),
            base_ejection: Duration::from_millis(s.base_ejection_ms),
            max_ejection: Duration::from_millis(s.max_ejection_ms.max(s.base_ejection_ms)),
            max_ejected_percent: s.max_ejected_percent.min(100),
        }
    }
}

impl PassiveHealth {
    /// Record an outcome at `now` (the pool's clock); returns the ejection time when this
    /// failure ejected the backend.
    pub fn record(
        &self,
        b: &BackendState,
        all: &[BackendState],
        ok: bool,
        now: u64,
    ) -> Option<Duration> {
        if ok {
            b.consecutive_failures.store(0, Ordering::Relaxed);
            return None;
        }
        let n = b.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.consecutive_failures || b.ejected(now) {
            return None;
        }
        // Never eject more than the allowed share (at least one backend stays).
        let ejected = all.iter().filter(|s| s.ejected(now)).count() as u32;
        let allowed = (all.len() as u32 * self.max_ejected_percent / 100).min(all.len() as u32 - 1);
        if ejected >= allowed {
            return None;
        }
        let times = b.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let time = (self.base_ejection * times).min(self.max_ejection);
        b.ejected_until
            .store(now + time.as_millis() as u64, Ordering::Relaxed);
        b.consecutive_failures.store(0, Ordering::Relaxed);
        Some(time)
    }
}

/// Circuit breaker state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Circuit {
    /// Requests flow; failures are counted.
    Closed,
    /// Requests are refused until the open time is over.
    Open,
    /// A few probe requests decide whether to close or open again.
    HalfOpen,
}

#[derive(Debug)]
struct BreakerState {
    circuit: Circuit,
    window_start: u64,
    requests: u32,
    failures: u32,
    consecutive: u32,
    opened_at: u64,
    probes_in_flight: u32,
    probe_successes: u32,
}

/// A circuit breaker for one upstream.
#[derive(Debug)]
pub struct Breaker {
    failure_ratio: f64,
    consecutive_failures: u32,
    min_requests: u32,
    window_ms: u64,
    open_ms: u64,
    half_open_requests: u32,
    clock: Clock,
    state: Mutex<BreakerState>,
}

/// What the breaker says about a new request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Allowed,
    /// Go ahead as a half-open probe (its outcome decides the circuit).
    Probe,
    /// Refuse at once.
    Refused,
}

impl Breaker {
    /// A closed breaker with these settings.
    pub fn new(s: &CircuitBreakerSection) -> Self {
        Breaker {
            failure_ratio: s.failure_ratio,
            consecutive_failures: s.consecutive_failures,
            min_requests: s.min_requests.max(1),
            window_ms: s.window_ms.max(1),
            open_ms: s.open_ms,
            half_open_requests: s.half_open_requests.max(1),
            clock: Clock::new(),
            state: Mutex::new(BreakerState {
                circuit: Circuit::Closed,
                window_start: 0,
                requests: 0,
                failures: 0,
                consecutive: 0,
                opened_at: 0,
                probes_in_flight: 0,
                probe_successes: 0,
            }),
        }
    }

    /// The current circuit.
    pub fn circuit(&self) -> Circuit {
        lock(&self.state).circuit
    }

    /// May a request go to the upstream? A [`Admission::Probe`] must be ended by
    /// [`Breaker::record`] or [`Breaker::release_probe`].
    pub fn admit(&self) -> Admission {
        let mut s = lock(&self.state);
        let now = self.clock.now_ms();
        match s.circuit {
            Circuit::Closed => Admission::Allowed,
            Circuit::Open if now.saturating_sub(s.opened_at) < self.open_ms => Admission::Refused,
            Circuit::Open => {
                s.circuit = Circuit::HalfOpen;
                s.probes_in_flight = 1;
                s.probe_successes = 0;
                Admission::Probe
            }
            Circuit::HalfOpen if s.probes_in_flight < self.half_open_requests => {
                s.probes_in_flight += 1;
                Admission::Probe
            }
            Circuit::HalfOpen => Admission::Refused,
        }
    }

    /// A probe ended without an outcome (no backend was tried): give its slot back.
    pub fn release_probe(&self) {
        let mut s = lock(&self.state);
        if s.circuit == Circuit::HalfOpen {
            s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
        }
    }

    /// Record the outcome of a request; returns the new circuit when it changed.
    pub fn record(&self, probe: bool, ok: bool) -> Option<Circuit> {
        let mut s = lock(&self.state);
        let now = self.clock.now_ms();
        let before = s.circuit;
        match s.circuit {
            Circuit::HalfOpen if probe => {
                s.probes_in_flight = s.probes_in_flight.saturating_sub(1);
                if !ok {
                    s.circuit = Circuit::Open;
                    s.opened_at = now;
                } else {
                    s.probe_successes += 1;
                    if s.probe_successes >= self.half_open_requests {
                        s.circuit = Circuit::Closed;
                        s.window_start = now;
                        s.requests = 0;
                        s.failures = 0;
                        s.consecutive = 0;
                    }
                }
            }
            Circuit::Closed => {
                if now.saturating_sub(s.window_start) >= self.window_ms {
                    s.window_start = now;
                    s.requests = 0;
                    s.failures = 0;
                }
                s.requests += 1;
                if ok {
                    s.consecutive = 0;
                } else {
                    s.failures += 1;
                    s.consecutive += 1;
                }
                let by_ratio = s.requests >= self.min_requests
                    && self.failure_ratio > 0.0
                    && s.failures as f64 / s.requests as f64 >= self.failure_ratio;
                let by_run =
                    self.consecutive_failures > 0 && s.consecutive >= self.consecutive_failures;
                if by_ratio || by_run {
                    s.circuit = Circuit::Open;
                    s.opened_at = now;
                }
            }
            _ => {}
        }
        (s.circuit != before).then_some(s.circuit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaker_opens_fails_fast_half_opens_and_closes() {
        let b = Breaker::new(&CircuitBreakerSection {
            failure_ratio: 0.5,
            consecutive_failures: 0,
            min_requests: 4,
            window_ms: 60_000,
            open_ms: 50,
            half_open_requests: 2,
        });
        for ok in [true, false, true] {
            assert_eq!(b.admit(), Admission::Allowed);
            assert_eq!(b.record(false, ok), None);
        }
        assert_eq!(b.record(false, false), Some(Circuit::Open), "2 of 4 failed");
        assert_eq!(b.admit(), Admission::Refused);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.admit(), Admission::Refused, "only two probes at once");
        assert_eq!(b.record(true, true), None);
        assert_eq!(b.record(true, true), Some(Circuit::Closed));
        assert_eq!(b.admit(), Admission::Allowed);
    }

    #[test]
    fn released_probes_free_their_slot() {
        let b = Breaker::new(&CircuitBreakerSection {
            failure_ratio: 0.0,
            consecutive_failures: 1,
            min_requests: 1,
            window_ms: 60_000,
            open_ms: 0,
            half_open_requests: 1,
        });
        assert_eq!(b.record(false, false), Some(Circuit::Open));
        for _ in 0..5 {
            // A probe that never reached a backend must not hold the only slot.
            assert_eq!(b.admit(), Admission::Probe);
            b.release_probe();
        }
        assert_eq!(b.admit(), Admission::Probe);
        assert_eq!(b.record(true, true), Some(Circuit::Closed));
    }

    #[test]
    fn ejection_grows_and_is_capped_by_share() {
        let ph = PassiveHealth {
            consecutive_failures: 2,
            base_ejection: Duration::from_millis(100),
            max_ejection: Duration::from_millis(250),
            max_ejected_percent: 50,
        };
        let all: Vec<BackendState> = (0..4).map(|_| BackendState::default()).collect();
        let now = 1_000;
        assert_eq!(ph.record(&all[0], &all, false, now), None);
        assert_eq!(
            ph.record(&all[0], &all, false, now),
            Some(Duration::from_millis(100))
        );
        assert!(all[0].ejected(now));
        assert!(!all[0].ejected(now + 100));
        ph.record(&all[1], &all, false, now);
        assert_eq!(
            ph.record(&all[1], &all, false, now),
            Some(Duration::from_millis(100))
        );
        ph.record(&all[2], &all, false, now);
        assert_eq!(
            ph.record(&all[2], &all, false, now),
            None,
            "at most half ejected"
        );
        // A success resets the run.
        ph.record(&all[3], &all, false, now);
        ph.record(&all[3], &all, true, now);
        assert_eq!(ph.record(&all[3], &all, false, now), None);
    }
}
