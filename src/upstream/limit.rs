//! An upstream's concurrency limit (`max_concurrent_requests`): at most `max` requests in
//! flight, the others wait in a bounded FIFO queue for at most `timeout`.
//!
//! A [`Permit`] is a slot; dropping it hands the slot to the oldest waiter, or frees it. A
//! waiter that gives up (timeout, or its request went away) leaves the queue; if the slot
//! was handed to it in the meantime, it passes the slot on, so no path leaks one.

use prometheus::IntGauge;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tollgate_plugins::sync::lock;

/// Why a request got no slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The queue was full: refused at once.
    QueueFull,
    /// It waited `queue_timeout_ms` without getting a slot.
    QueueTimeout,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::QueueFull => "queue_full",
            Refusal::QueueTimeout => "queue_timeout",
        }
    }
}

struct State {
    active: usize,
    next_id: u64,
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// The limit of one upstream pool.
pub struct ConcurrencyLimit {
    max: usize,
    queue_size: usize,
    timeout: Duration,
    state: Mutex<State>,
    /// `tollgate_upstream_queued_requests{upstream}`.
    queued: IntGauge,
}

/// One slot of a [`ConcurrencyLimit`]; dropping it releases the slot.
pub struct Permit {
    limit: Arc<ConcurrencyLimit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.limit.release();
    }
}

/// A queued request; dropped before it got its slot, it leaves the queue (or passes on a
/// slot handed to it meanwhile).
struct Waiter<'a> {
    limit: &'a Arc<ConcurrencyLimit>,
    id: u64,
    /// Kept until the drop, so a slot sent while it gives up is never lost.
    rx: oneshot::Receiver<()>,
    done: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.limit.queued.dec();
        if self.done {
            return;
        }
        let mut st = lock(&self.limit.state);
        if let Some(pos) = st.waiters.iter().position(|(id, _)| *id == self.id) {
            st.waiters.remove(pos);
        } else {
            // Handed a slot under the lock after it stopped waiting: pass it on.
            drop(st);
            self.limit.release();
        }
    }
}

impl ConcurrencyLimit {
    /// A limit of `max` (at least 1) in flight, `queue_size` waiting at most `timeout`.
    pub fn new(max: usize, queue_size: usize, timeout: Duration, upstream: &str) -> Self {
        ConcurrencyLimit {
            max: max.max(1),
            queue_size,
            timeout,
            state: Mutex::new(State {
                active: 0,
                next_id: 0,
                waiters: VecDeque::new(),
            }),
            queued: crate::metrics::METRICS
                .queued
                .with_label_values(&[upstream]),
        }
    }

    /// A slot: at once when one is free and nobody waits, else after the requests queued
    /// before this one; refused when the queue is full or the wait times out.
    pub async fn acquire(self: &Arc<Self>) -> Result<Permit, Refusal> {
        let (id, rx) = {
            let mut st = lock(&self.state);
            if st.active < self.max && st.waiters.is_empty() {
                st.active += 1;
                return Ok(Permit {
                    limit: self.clone(),
                });
            }
            if st.waiters.len() >= self.queue_size {
                return Err(Refusal::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_id;
            st.next_id += 1;
            st.waiters.push_back((id, tx));
            (id, rx)
        };
        self.queued.inc();
        let mut waiter = Waiter {
            limit: self,
            id,
            rx,
            done: false,
        };
        match tokio::time::timeout(self.timeout, &mut waiter.rx).await {
            Ok(Ok(())) => {
                waiter.done = true;
                Ok(Permit {
                    limit: self.clone(),
                })
            }
            // Timed out (or the sender vanished): the waiter's drop leaves the queue or
            // passes on a slot that arrived just now.
            _ => Err(Refusal::QueueTimeout),
        }
    }

    /// Requests in flight now.
    pub fn active(&self) -> usize {
        lock(&self.state).active
    }

    fn release(&self) {
        let mut st = lock(&self.state);
        // The slot goes to the oldest waiter still waiting; it stays counted in `active`.
        while let Some((_, tx)) = st.waiters.pop_front() {
            if tx.send(()).is_ok() {
                return;
            }
        }
        st.active = st.active.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(max: usize, queue: usize, ms: u64) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit::new(
            max,
            queue,
            Duration::from_millis(ms),
            "limit-test",
        ))
    }

    #[tokio::test]
    async fn full_queue_refuses_and_release_hands_over_in_order() {
        let l = limit(1, 1, 1_000);
        let first = l.acquire().await;
        assert!(first.is_ok());
        let l2 = l.clone();
        let waiting = tokio::spawn(async move { l2.acquire().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(l.acquire().await.err(), Some(Refusal::QueueFull));
        drop(first);
        assert_eq!(waiting.await.ok(), Some(Ok(())));
        assert_eq!(l.active(), 0);
    }

    #[tokio::test]
    async fn a_wait_times_out_and_leaves_no_slot_behind() {
        let l = limit(1, 4, 50);
        let first = l.acquire().await;
        assert!(first.is_ok());
        assert_eq!(l.acquire().await.err(), Some(Refusal::QueueTimeout));
        drop(first);
        assert_eq!(l.active(), 0);
        let again = l.acquire().await;
        assert!(again.is_ok());
        drop(again);
        assert_eq!(l.active(), 0);
    }
}
