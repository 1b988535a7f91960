//! Transferring and Restoring, one entry ([`run`]) for both: a reconcile may see the pull
//! reported and the restore finished at once. The children come from
//! [`transferring::ensure`]; then the Restore task and the restored pod decide ([`decide`],
//! pure): the task reporting its pull moves the request to Restoring, the task Succeeded
//! with the restored pod settled ([`settle`]: every container running, ready and never
//! restarted for the settle period) completes the migration, and only then is the source pod
//! deleted (with `deleteSource`), by the UID that was checkpointed ([`identity`]).

use ferry_api::names::{condition, reason};
use ferry_api::{
    CheckpointRequest, CheckpointRequestStatus, NodeTask, RequestPhase, StepTimings, TaskPhase,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};

use super::api::{self, Deletion};
use super::conditions::{set_condition, succeed, timings};
use super::identity::SourceFate;
use super::settle::{self, Health};
use super::step::{Failure, Step, task_message};
use super::transferring::{self, Children, Plan};
use crate::Result;
use crate::controller::children::names::checkpoint_task_name;
use crate::controller::context::Context;

/// Where the restore is, from the Restore task and the restored pod.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// The image has arrived and the request is still Transferring: move to Restoring.
    pub enter_restoring: bool,
    /// The task Succeeded and the restored pod has settled: the migration is done.
    pub restored: bool,
}

/// Decides from the request's phase, the Restore task on `target` and whether the restored
/// pod has settled ([`settle::judge`]). A failed task fails the request: `TransferFailed`
/// before the pull was reported, `RestoreFailed` after.
pub fn decide(
    phase: Option<RequestPhase>,
    task: &NodeTask,
    restored_settled: bool,
    target: &str,
) -> Result<Progress, Failure> {
    let result = task
        .status
        .as_ref()
        .and_then(|s| s.result.clone())
        .unwrap_or_default();
    let pulled = result.transfer.is_some()
        || result
            .timings
            .as_ref()
            .and_then(|t| t.steps.transfer_ms)
            .is_some();
    let task_phase = task.phase();
    if task_phase == TaskPhase::Failed {
        let why = if pulled {
            reason::RESTORE_FAILED
        } else {
            reason::TRANSFER_FAILED
        };
        return Err(Failure::new(
            why,
            format!("restore on node {target} failed: {}", task_message(task)),
        ));
    }
    let succeeded = task_phase == TaskPhase::Succeeded;
    Ok(Progress {
        enter_restoring: (pulled || succeeded) && phase == Some(RequestPhase::Transferring),
        restored: succeeded && restored_settled,
    })
}

/// Runs the Transferring and Restoring phases.
pub async fn run(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &mut CheckpointRequestStatus,
) -> Result<Step> {
    let uid = transferring::uid(req)?;
    let plan = match transferring::plan(req, st, &uid) {
        Ok(p) => p,
        Err(f) => return Ok(Step::Fail(f)),
    };
    st.restored_pod_name = Some(plan.restored_name.clone());
    let (restored, task) = match transferring::ensure(req, ctx, &mut *st, &plan).await? {
        Children::Ready { restored, task } => (restored, task),
        Children::Pending(step) => return Ok(step),
    };
    let now = Timestamp::now();
    let health = settle::judge(&restored, ctx.config.restore_settle, now);
    let settled = health == Health::Settled;
    let progress = match decide(st.phase, &task, settled, &plan.target) {
        Ok(p) => p,
        Err(f) => return Ok(Step::Fail(f)),
    };
    let task_timings = task
        .status
        .as_ref()
        .and_then(|s| s.result.as_ref())
        .and_then(|r| r.timings.clone())
        .unwrap_or_default();
    if progress.enter_restoring {
        record_transferred(
            req,
            st,
            &plan,
            task_timings.steps.transfer_ms,
            Timestamp::now(),
        );
    }
    let ns = api::namespace(req)?;
    if task.phase() == TaskPhase::Succeeded {
        if let Health::Broken(why) = &health {
            return Ok(Step::Fail(Failure::new(
                reason::RESTORE_FAILED,
                format!(
                    "restored pod {} on node {} {why}; the restore did not hold",
                    plan.restored_name, plan.target
                ),
            )));
        }
        // Downtime runs from the source's freeze to the first time the operator sees every
        // restored container running (an operator restart in between adds to it); the
        // settle period after that is not downtime.
        if health.running()
            && st.timings.as_ref().and_then(|t| t.downtime_ms).is_none()
            && let Some(frozen) = frozen_at(ctx, &ns, &req.name_any()).await?
        {
            let ms = downtime(frozen, now);
            #[allow(clippy::cast_precision_loss)]
            ctx.metrics.downtime.observe(ms as f64 / 1000.0);
            timings(st).downtime_ms = Some(ms);
        }
    }
    if !progress.restored {
        return Ok(match health {
            _ if progress.enter_restoring => Step::Advanced,
            Health::Settling(left) if task.phase() == TaskPhase::Succeeded => Step::Recheck(left),
            _ => Step::Wait,
        });
    }
    // Restored and settled: only now, and only the pod that was checkpointed (its UID).
    let delete_source = req.spec.migrate.as_ref().is_some_and(|m| m.delete_source);
    let fate = match (delete_source, &st.source_pod_uid) {
        (false, _) => SourceFate::KeptRunning,
        (true, None) => SourceFate::UidUnknown,
        (true, Some(uid)) => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            match api::delete_with_uid(&pods, &req.spec.pod_name, uid).await? {
                Deletion::Deleted | Deletion::Gone => SourceFate::Deleted,
                Deletion::Replaced => SourceFate::Replaced,
            }
        }
    };
    record_restored(req, st, &plan, &task_timings.steps, fate, now);
    Ok(Step::Advanced)
}

/// Milliseconds from the freeze to `now` (0 if the clocks disagree).
pub fn downtime(frozen: Timestamp, now: Timestamp) -> i64 {
    let ms = now.duration_since(frozen).as_millis().max(0);
    i64::try_from(ms).unwrap_or(i64::MAX)
}

/// Records the image's arrival: Restoring, `transferMs`, Transferred.
pub fn record_transferred(
    req: &CheckpointRequest,
    st: &mut CheckpointRequestStatus,
    plan: &Plan,
    transfer_ms: Option<i64>,
    now: Timestamp,
) {
    let Plan {
        target,
        restored_name,
        ..
    } = plan;
    st.phase = Some(RequestPhase::Restoring);
    timings(st).steps.transfer_ms = transfer_ms;
    let on_target = format!("the image is on node {target}");
    set_condition(
        req,
        st,
        condition::TRANSFERRED,
        true,
        "Transferred",
        on_target,
        now,
    );
    let restoring = format!("restoring pod {restored_name} on node {target}");
    set_condition(
        req,
        st,
        condition::RESTORED,
        false,
        "Restoring",
        restoring,
        now,
    );
    let ready = "restoring".to_string();
    set_condition(req, st, condition::READY, false, "InProgress", ready, now);
}

/// Records the migration's end: the restore's timings, Restored, and Succeeded with what
/// happened to the source pod (`fate`).
pub fn record_restored(
    req: &CheckpointRequest,
    st: &mut CheckpointRequestStatus,
    plan: &Plan,
    task: &StepTimings,
    fate: SourceFate,
    now: Timestamp,
) {
    let Plan {
        source,
        target,
        restored_name,
    } = plan;
    let t = timings(st);
    t.steps.transfer_ms = t.steps.transfer_ms.or(task.transfer_ms);
    t.steps.restore_ms = task.restore_ms;
    t.steps.host_restore_ms = task.host_restore_ms;
    t.steps.gpu_restore_ms = task.gpu_restore_ms;
    let runs = format!("pod {restored_name} runs on node {target}");
    set_condition(req, st, condition::RESTORED, true, "Restored", runs, now);
    let message = format!(
        "pod {} migrated from node {source} to node {target} as {restored_name}{}",
        req.spec.pod_name,
        fate.note()
    );
    succeed(req, st, message, now);
}

/// When the Checkpoint task froze the source, as the agent reported it.
async fn frozen_at(ctx: &Context, ns: &str, name: &str) -> Result<Option<Timestamp>> {
    let api: Api<NodeTask> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .get_opt(&checkpoint_task_name(name))
        .await?
        .and_then(|t| t.status?.result?.timings?.frozen_at)
        .map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{
        CheckpointRequestSpec, MigrateSpec, NodeTaskStatus, TaskResult, TaskTimings, TransferStats,
    };
    use jiff::SignedDuration;

    /// A Restore task in `phase` whose result reports the pull (`transferMs`, or transfer
    /// stats) or not.
    fn task(phase: TaskPhase, transfer_ms: bool, stats: bool) -> NodeTask {
        let spec: ferry_api::NodeTaskSpec = serde_json::from_value(serde_json::json!({
            "nodeName": "b", "operation": "Restore", "checkpointRequest": "r",
            "pod": {"namespace": "ns", "name": "p-restored-x"},
            "image": {"storage": {}, "location": "ns/r"},
        }))
        .unwrap();
        let mut t = NodeTask::new("r-restore", spec);
        t.status = Some(NodeTaskStatus {
            phase: Some(phase),
            message: Some("criu restore: exit 1".into()),
            result: Some(TaskResult {
                timings: transfer_ms.then(|| TaskTimings {
                    steps: StepTimings {
                        transfer_ms: Some(300),
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                transfer: stats.then(TransferStats::default),
                ..Default::default()
            }),
            ..Default::default()
        });
        t
    }

    #[test]
    fn the_restore_task_and_the_restored_pod_decide_the_next_step() {
        use RequestPhase::{Restoring, Transferring};
        use TaskPhase::{Failed, Pending, Running, Succeeded};
        let go = |enter_restoring, restored| {
            Ok(Progress {
                enter_restoring,
                restored,
            })
        };
        // (request phase, task phase, pull reported by transferMs, by stats, restored pod
        // Running, decision)
        let table = [
            (Transferring, Pending, false, false, false, go(false, false)),
            (Transferring, Running, false, false, false, go(false, false)),
            (Transferring, Running, true, false, false, go(true, false)),
            (Transferring, Running, false, true, false, go(true, false)),
            (Restoring, Running, true, false, false, go(false, false)),
            // Succeeded without a reported pull (a local restore) still enters Restoring.
            (
                Transferring,
                Succeeded,
                false,
                false,
                false,
                go(true, false),
            ),
            (Transferring, Succeeded, false, false, true, go(true, true)),
            (Restoring, Succeeded, true, false, false, go(false, false)),
            (Restoring, Succeeded, true, false, true, go(false, true)),
            (Restoring, Running, true, false, true, go(false, false)),
            (
                Transferring,
                Failed,
                false,
                false,
                false,
                Err(reason::TRANSFER_FAILED),
            ),
            (
                Transferring,
                Failed,
                true,
                false,
                false,
                Err(reason::RESTORE_FAILED),
            ),
            (
                Restoring,
                Failed,
                false,
                true,
                true,
                Err(reason::RESTORE_FAILED),
            ),
        ];
        for (i, (phase, task_phase, ms, stats, running, expected)) in table.into_iter().enumerate()
        {
            let got = decide(Some(phase), &task(task_phase, ms, stats), running, "b");
            match (got, expected) {
                (Ok(p), Ok(want)) => assert_eq!(p, want, "case {i}"),
                (Err(f), Err(why)) => {
                    assert_eq!(f.reason, why, "case {i}");
                    assert_eq!(f.message, "restore on node b failed: criu restore: exit 1");
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    fn plan() -> Plan {
        Plan {
            source: "a".into(),
            target: "b".into(),
            restored_name: "p-restored-x".into(),
        }
    }

    #[test]
    fn the_images_arrival_moves_to_restoring() {
        let req = CheckpointRequest::new("r", CheckpointRequestSpec::for_pod("p"));
        let mut st = CheckpointRequestStatus::default();
        record_transferred(&req, &mut st, &plan(), Some(300), Timestamp::UNIX_EPOCH);
        assert_eq!(st.phase, Some(RequestPhase::Restoring));
        assert_eq!(
            st.timings.as_ref().and_then(|t| t.steps.transfer_ms),
            Some(300)
        );
        assert_eq!(st.condition(condition::TRANSFERRED).unwrap().status, "True");
        assert_eq!(
            st.condition(condition::RESTORED).unwrap().message,
            "restoring pod p-restored-x on node b"
        );
    }

    #[test]
    fn the_migrations_end_records_timings_once_and_says_where_the_source_is() {
        let task = StepTimings {
            transfer_ms: Some(5),
            restore_ms: Some(7),
            host_restore_ms: Some(3),
            gpu_restore_ms: Some(4),
            ..Default::default()
        };
        // (deleteSource, what happened to the source, transferMs already recorded, downtime
        // recorded when the pod was first seen running, transferMs after, message end)
        let table = [
            (
                true,
                SourceFate::Deleted,
                None,
                Some(1500),
                Some(5),
                "; the source pod is deleted",
            ),
            (
                false,
                SourceFate::KeptRunning,
                Some(300),
                Some(1500),
                Some(300),
                "; the source pod keeps running",
            ),
            (
                true,
                SourceFate::Deleted,
                Some(300),
                Some(900),
                Some(300),
                "; the source pod is deleted",
            ),
            (
                true,
                SourceFate::Replaced,
                None,
                None,
                Some(5),
                "; the source pod was already replaced by a new pod of its name (another UID), which is left alone",
            ),
            (
                true,
                SourceFate::UidUnknown,
                None,
                None,
                Some(5),
                "; the source pod is not deleted: the status recorded no UID to delete it by",
            ),
        ];
        for (i, (delete_source, fate, transfer, downtime, transfer_after, end)) in
            table.into_iter().enumerate()
        {
            let mut spec = CheckpointRequestSpec::for_pod("p");
            spec.migrate = Some(MigrateSpec {
                delete_source,
                ..Default::default()
            });
            let req = CheckpointRequest::new("r", spec);
            let mut st = CheckpointRequestStatus {
                timings: Some(ferry_api::RequestTimings {
                    steps: StepTimings {
                        transfer_ms: transfer,
                        ..Default::default()
                    },
                    downtime_ms: downtime,
                }),
                ..Default::default()
            };
            record_restored(&req, &mut st, &plan(), &task, fate, Timestamp::UNIX_EPOCH);
            let t = st.timings.clone().unwrap();
            assert_eq!(t.steps.transfer_ms, transfer_after, "case {i}");
            assert_eq!(
                t.downtime_ms, downtime,
                "case {i}: the downtime is kept as recorded"
            );
            assert_eq!(
                (
                    t.steps.restore_ms,
                    t.steps.host_restore_ms,
                    t.steps.gpu_restore_ms
                ),
                (Some(7), Some(3), Some(4))
            );
            assert_eq!(st.phase, Some(RequestPhase::Succeeded));
            assert_eq!(st.condition(condition::RESTORED).unwrap().status, "True");
            let ready = st.condition(condition::READY).unwrap();
            assert!(
                ready
                    .message
                    .starts_with("pod p migrated from node a to node b as p-restored-x")
            );
            assert!(ready.message.ends_with(end), "case {i}: {}", ready.message);
        }
    }

    #[test]
    fn downtime_is_the_milliseconds_since_the_freeze() {
        let frozen = Timestamp::UNIX_EPOCH;
        // (now after the freeze in ms, downtime)
        let table = [(1500, 1500), (0, 0), (-20, 0)];
        for (after, expected) in table {
            let now = frozen + SignedDuration::from_millis(after);
            assert_eq!(downtime(frozen, now), expected);
        }
    }
}
