//! The operator's Prometheus metrics (names from `ferry_api::names::metric`), in the same
//! crate and text format as the agent's (`ferry-service` serves them).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use ferry_api::RequestPhase;
use ferry_api::names::metric;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    /// `ferry_reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `ferry_reconcile_errors_total{error}`.
    pub errors: IntCounterVec,
    /// `ferry_requests{phase}`.
    pub requests: IntGaugeVec,
    /// `ferry_migration_downtime_seconds`.
    pub downtime: Histogram,
    /// The last phase seen per request (`namespace/name`), behind `requests`.
    phases: Mutex<HashMap<String, RequestPhase>>,
    registry: Registry,
}

/// Buckets from 1 ms to about 65 s.
fn reconcile_buckets() -> Vec<f64> {
    exponential(0.001, 17)
}

/// Buckets from 10 ms to about 10 min.
fn downtime_buckets() -> Vec<f64> {
    exponential(0.01, 17)
}

/// `count` buckets doubling from `start`.
fn exponential(start: f64, count: i32) -> Vec<f64> {
    (0..count).map(|i| start * 2f64.powi(i)).collect()
}

impl Metrics {
    /// Registers every metric in a fresh registry. Fails only on an invalid metric definition
    /// (a programming error the unit test catches).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let reconcile_duration = Histogram::with_opts(
            HistogramOpts::new(
                metric::RECONCILE_DURATION_SECONDS,
                "Seconds of one CheckpointRequest reconcile",
            )
            .buckets(reconcile_buckets()),
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                metric::RECONCILE_ERRORS_TOTAL,
                "Reconciles that returned an error, by error",
            ),
            &["error"],
        )?;
        let requests = IntGaugeVec::new(
            Opts::new(metric::REQUESTS, "CheckpointRequests by phase"),
            &["phase"],
        )?;
        let downtime = Histogram::with_opts(
            HistogramOpts::new(
                metric::MIGRATION_DOWNTIME_SECONDS,
                "Seconds a migrated workload was frozen (checkpoint freeze to restored pod running)",
            )
            .buckets(downtime_buckets()),
        )?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(downtime.clone()))?;
        Ok(Metrics {
            reconcile_duration,
            errors,
            requests,
            downtime,
            phases: Mutex::default(),
            registry,
        })
    }

    /// Starts timing a reconcile; the time is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            began: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn count_error(&self, error: &crate::Error) {
        self.errors.with_label_values(&[error.metric_label()]).inc();
    }

    /// Records `key`'s phase (`None`: the request is gone) and updates `ferry_requests`.
    pub fn set_phase(&self, key: &str, phase: Option<RequestPhase>) {
        let Ok(mut phases) = self.phases.lock() else {
            return;
        };
        let old = match phase {
            Some(p) => phases.insert(key.to_string(), p),
            None => phases.remove(key),
        };
        if old == phase {
            return;
        }
        let gauge = |p: RequestPhase| self.requests.with_label_values(&[p.as_str()]);
        if let Some(p) = old {
            gauge(p).dec();
        }
        if let Some(p) = phase {
            gauge(p).inc();
        }
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        if let Err(e) = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl ferry_service::Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

/// Records a reconcile's duration on drop.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    began: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .observe(self.began.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_gauge_moves_a_request_between_phases() {
        let m = Metrics::new().unwrap();
        m.set_phase("ns/a", Some(RequestPhase::Pending));
        m.set_phase("ns/a", Some(RequestPhase::Checkpointing));
        m.set_phase("ns/b", Some(RequestPhase::Checkpointing));
        let text = m.encode();
        assert!(
            text.contains("ferry_requests{phase=\"Pending\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("ferry_requests{phase=\"Checkpointing\"} 2"),
            "{text}"
        );
        m.count_error(&crate::Error::CleanupPending("x".into()));
        let text = m.encode();
        assert!(
            text.contains("ferry_reconcile_errors_total{error=\"cleanup_pending\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ferry_reconcile_duration_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains("ferry_migration_downtime_seconds_bucket"),
            "{text}"
        );
    }
}
