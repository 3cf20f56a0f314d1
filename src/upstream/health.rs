//! Active health checks for every upstream of the running config, in one background task.
//!
//! Pools are taken from the current snapshot at each tick, so a reload that adds, changes or
//! removes an upstream is followed without restarting anything; a pool that survived the
//! reload keeps its health state.

use crate::metrics::METRICS;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the task looks for checks that are due.
const TICK: Duration = Duration::from_millis(100);

/// The background service that runs health checks and exports backend health.
pub struct HealthChecker {
    config: Arc<ArcSwap<Snapshot>>,
}

impl HealthChecker {
    /// Check the upstreams of whatever `config` holds.
    pub fn new(config: Arc<ArcSwap<Snapshot>>) -> Self {
        HealthChecker { config }
    }

    async fn tick(&self, epoch: Instant) {
        let snap = self.config.load_full();
        let now_ms = epoch.elapsed().as_millis() as u64 + 1;
        for pool in &snap.upstreams {
            let before: Vec<bool> = pool
                .backends
                .iter()
                .map(|(_, b)| pool.is_healthy(b))
                .collect();
            pool.health_check_if_due(now_ms).await;
            let now = pool.clock.now_ms();
            for (i, (label, _)) in pool.backends.iter().enumerate() {
                if pool.states[i].take_return(now) {
                    log::warn!(
                        "upstream {} backend {label} returns after ejection",
                        pool.name
                    );
                }
            }
            for ((label, b), was) in pool.backends.iter().zip(before) {
                let healthy = pool.is_healthy(b);
                if healthy != was {
                    log::warn!(
                        "upstream {} backend {label} is now {}",
                        pool.name,
                        if healthy { "healthy" } else { "unhealthy" }
                    );
                }
                METRICS
                    .upstream_health
                    .with_label_values(&[&*pool.name, label.as_str()])
                    .set(healthy as i64);
            }
        }
    }
}

#[async_trait]
impl BackgroundService for HealthChecker {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let epoch = Instant::now();
        let mut interval = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = interval.tick() => self.tick(epoch).await,
            }
        }
    }
}
