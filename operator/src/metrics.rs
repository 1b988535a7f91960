//! The operator's Prometheus metrics (names from `ferry_api::names::metric`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use ferry_api::RequestPhase;
use ferry_api::names::metric;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set `{error}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// [`crate::Error::metric_label`].
    pub error: String,
}

/// Label set `{phase}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// A [`RequestPhase`] name.
    pub phase: String,
}

/// The operator's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    /// `ferry_reconcile_duration_seconds`.
    pub reconcile_duration: Histogram,
    /// `ferry_reconcile_errors_total{error}`.
    pub errors: Family<ErrorLabels, Counter>,
    /// `ferry_requests{phase}`.
    pub requests: Family<PhaseLabels, Gauge>,
    /// `ferry_migration_downtime_seconds`.
    pub downtime: Histogram,
    /// The last phase seen per request (`namespace/name`), behind `requests`.
    phases: Mutex<HashMap<String, RequestPhase>>,
    registry: Registry,
}

/// Buckets from 1 ms to about 65 s.
fn reconcile_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

/// Buckets from 10 ms to about 10 min.
fn downtime_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.01, 2.0, 17)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::default();
        let reconcile_duration = Histogram::new(reconcile_buckets());
        let errors = Family::<ErrorLabels, Counter>::default();
        let requests = Family::<PhaseLabels, Gauge>::default();
        let downtime = Histogram::new(downtime_buckets());
        // prometheus-client appends `_total` to counters and takes the unit separately.
        registry.register(
            metric::RECONCILE_DURATION_SECONDS,
            "Seconds of one CheckpointRequest reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            metric::RECONCILE_ERRORS_TOTAL.trim_end_matches("_total"),
            "Reconciles that returned an error, by error",
            errors.clone(),
        );
        registry.register(
            metric::REQUESTS,
            "CheckpointRequests by phase",
            requests.clone(),
        );
        registry.register(
            metric::MIGRATION_DOWNTIME_SECONDS,
            "Seconds a migrated workload was frozen (checkpoint freeze to restored pod running)",
            downtime.clone(),
        );
        Metrics {
            reconcile_duration,
            errors,
            requests,
            downtime,
            phases: Mutex::default(),
            registry,
        }
    }
}

impl Metrics {
    /// Starts timing a reconcile; the time is recorded when the guard drops.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            began: Instant::now(),
        }
    }

    /// Counts a failed reconcile.
    pub fn count_error(&self, error: &crate::Error) {
        self.errors
            .get_or_create(&ErrorLabels {
                error: error.metric_label().to_string(),
            })
            .inc();
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
        let gauge = |p: RequestPhase| {
            self.requests.get_or_create(&PhaseLabels {
                phase: p.as_str().to_string(),
            })
        };
        if let Some(p) = old {
            gauge(p).dec();
        }
        if let Some(p) = phase {
            gauge(p).inc();
        }
    }

    /// The metrics in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
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
        let m = Metrics::default();
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
