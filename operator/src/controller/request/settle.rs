//! Whether a restored pod has proven itself enough for its source pod to be deleted
//! (docs/security.md, "Finding 6"), as a pure function of the pod and the clock.
//!
//! Phase `Running` is not enough: a pod is Running with one container of several up, or with
//! a container that is crash-looping. A migration deletes the source only when every
//! container of the restored pod runs, is ready and has never restarted, and the last of them
//! started at least the settle period ago. A restored container that restarted or stopped
//! means the restore did not hold: the migration fails and the source keeps running.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;

use super::deadlines::{signed, unsigned};

/// What the restored pod's containers say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Every container has run, ready and without a restart, for the settle period.
    Settled,
    /// Every container runs, ready, without a restart; the settle period ends in this long.
    Settling(Duration),
    /// Not every container runs and is ready yet (what is missing).
    Waiting(String),
    /// The restore did not hold: a container restarted or stopped, or the pod ended.
    Broken(String),
}

impl Health {
    /// Whether every container runs now (settled or not): the moment the workload is back.
    pub fn running(&self) -> bool {
        matches!(self, Health::Settled | Health::Settling(_))
    }
}

/// Judges `pod` at `now` against a settle period of `settle`.
pub fn judge(pod: &Pod, settle: Duration, now: Timestamp) -> Health {
    if pod.metadata.deletion_timestamp.is_some() {
        return Health::Broken("is being deleted".into());
    }
    let status = pod.status.as_ref();
    match status.and_then(|s| s.phase.as_deref()) {
        Some("Running") => {}
        Some(phase @ ("Succeeded" | "Failed")) => {
            return Health::Broken(format!("ended in phase {phase}"));
        }
        phase => return Health::Waiting(format!("is {}", phase.unwrap_or("without a phase"))),
    }
    let statuses = status
        .and_then(|s| s.container_statuses.as_deref())
        .unwrap_or_default();
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    let mut last_start: Option<Timestamp> = None;
    for container in containers.unwrap_or_default() {
        let name = &container.name;
        let Some(cs) = statuses.iter().find(|cs| &cs.name == name) else {
            return Health::Waiting(format!("has no status for container {name} yet"));
        };
        if cs.restart_count > 0 {
            return Health::Broken(format!(
                "container {name} restarted {} time(s)",
                cs.restart_count
            ));
        }
        let state = cs.state.as_ref();
        if let Some(t) = state.and_then(|s| s.terminated.as_ref()) {
            return Health::Broken(format!(
                "container {name} terminated ({}, exit code {})",
                t.reason.as_deref().unwrap_or("no reason"),
                t.exit_code
            ));
        }
        let Some(started) = state
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
        else {
            let why = state
                .and_then(|s| s.waiting.as_ref())
                .and_then(|w| w.reason.clone())
                .unwrap_or_else(|| "not running".into());
            return Health::Waiting(format!("container {name} is waiting ({why})"));
        };
        if !cs.ready {
            return Health::Waiting(format!("container {name} is not ready"));
        }
        last_start = last_start.max(Some(started.0));
    }
    let Some(last_start) = last_start else {
        return Health::Waiting("has no containers".into());
    };
    let settled_at = last_start + signed(settle);
    if settled_at <= now {
        Health::Settled
    } else {
        Health::Settling(unsigned(settled_at.duration_since(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    const T0: Timestamp = Timestamp::UNIX_EPOCH;

    fn time(secs: i64) -> String {
        (T0 + SignedDuration::from_secs(secs))
            .strftime("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    /// A pod with containers `a` and `b` in `phase`, and `statuses` for them.
    fn pod(phase: &str, statuses: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-restored"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": phase, "containerStatuses": statuses},
        }))
        .unwrap()
    }

    fn running(name: &str, started: i64, ready: bool, restarts: i32) -> serde_json::Value {
        serde_json::json!({"name": name, "image": "i", "imageID": "", "ready": ready,
            "restartCount": restarts, "state": {"running": {"startedAt": time(started)}}})
    }

    #[test]
    fn only_every_container_running_ready_and_unrestarted_for_the_period_settles() {
        let settle = Duration::from_secs(5);
        let waiting = serde_json::json!({"name": "b", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"waiting": {"reason": "ErrImageNeverPull"}}});
        let crashed = serde_json::json!({"name": "b", "image": "i", "imageID": "", "ready": false,
            "restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "Error"}}});
        // (pod, now in s, expected)
        let table = [
            (
                pod(
                    "Running",
                    serde_json::json!([running("a", 0, true, 0), running("b", 2, true, 0)]),
                ),
                10,
                Health::Settled,
            ),
            // The last container to start decides when the period ends.
            (
                pod(
                    "Running",
                    serde_json::json!([running("a", 0, true, 0), running("b", 2, true, 0)]),
                ),
                4,
                Health::Settling(Duration::from_secs(3)),
            ),
            // Running with one container of two up is not enough.
            (
                pod(
                    "Running",
                    serde_json::json!([running("a", 0, true, 0), waiting]),
                ),
                60,
                Health::Waiting("container b is waiting (ErrImageNeverPull)".into()),
            ),
            (
                pod("Running", serde_json::json!([running("a", 0, true, 0)])),
                60,
                Health::Waiting("has no status for container b yet".into()),
            ),
            (
                pod(
                    "Running",
                    serde_json::json!([running("a", 0, true, 0), running("b", 0, false, 0)]),
                ),
                60,
                Health::Waiting("container b is not ready".into()),
            ),
            // A container that restarted (crash-looping, or killed by a probe) breaks it, even
            // running again and ready.
            (
                pod(
                    "Running",
                    serde_json::json!([running("a", 0, true, 0), running("b", 0, true, 1)]),
                ),
                60,
                Health::Broken("container b restarted 1 time(s)".into()),
            ),
            (
                pod(
                    "Running",
                    serde_json::json!([running("a", 0, true, 0), crashed]),
                ),
                60,
                Health::Broken("container b terminated (Error, exit code 137)".into()),
            ),
            (
                pod("Pending", serde_json::json!([])),
                60,
                Health::Waiting("is Pending".into()),
            ),
            (
                pod("Failed", serde_json::json!([])),
                60,
                Health::Broken("ended in phase Failed".into()),
            ),
        ];
        for (i, (p, now, expected)) in table.into_iter().enumerate() {
            let got = judge(&p, settle, T0 + SignedDuration::from_secs(now));
            assert_eq!(got, expected, "case {i}");
            assert_eq!(
                got.running(),
                matches!(expected, Health::Settled | Health::Settling(_))
            );
        }
        let mut deleting = pod(
            "Running",
            serde_json::json!([running("a", 0, true, 0), running("b", 0, true, 0)]),
        );
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(T0));
        assert_eq!(
            judge(&deleting, settle, T0 + SignedDuration::from_secs(60)),
            Health::Broken("is being deleted".into())
        );
    }
}
