//! Checkpointing: wait for the Checkpoint task, then record the image (and, for a checkpoint
//! only, succeed; for a migration, move on to Transferring).

use ferry_api::names::{condition, reason};
use ferry_api::{
    CheckpointInfo, CheckpointRequest, CheckpointRequestStatus, NodeTask, RequestPhase, TaskPhase,
    TaskResult,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};

use super::api;
use super::conditions::{set_condition, succeed, timings};
use super::start::ensure_checkpoint_task;
use super::step::{Failure, Step, task_message};
use crate::Result;
use crate::controller::children::names::{checkpoint_task_name, image_location};
use crate::controller::context::Context;

/// What the Checkpoint task's state calls for.
#[derive(Clone, Debug, PartialEq)]
pub enum Next {
    /// The task is missing (the operator stopped between the status write and the task
    /// creation): create it again, if the pod is still there.
    CreateTask,
    /// The agent has not finished.
    Wait,
    /// The checkpoint failed.
    Fail(Failure),
    /// The checkpoint is done: record its result.
    Checkpointed(Box<TaskResult>),
}

/// Decides from the Checkpoint task (if it exists), run on `source`. A checkpoint without a
/// well-formed image digest fails: the digest is the image's identity, which the target pins
/// when it pulls (finding 2: a missing one must not turn the pin off).
pub fn decide(task: Option<&NodeTask>, source: &str) -> Next {
    let Some(task) = task else {
        return Next::CreateTask;
    };
    match task.phase() {
        TaskPhase::Failed => Next::Fail(Failure::new(
            reason::CHECKPOINT_FAILED,
            format!("checkpoint on node {source} failed: {}", task_message(task)),
        )),
        TaskPhase::Succeeded => {
            let result = task
                .status
                .as_ref()
                .and_then(|s| s.result.clone())
                .unwrap_or_default();
            match digest_problem(result.image.sha256.as_deref()) {
                None => Next::Checkpointed(Box::new(result)),
                Some(problem) => Next::Fail(Failure::new(
                    reason::CHECKPOINT_FAILED,
                    format!(
                        "checkpoint on node {source} reported {problem}; an image without its SHA-256 cannot be verified, so it is not used"
                    ),
                )),
            }
        }
        TaskPhase::Pending | TaskPhase::Running => Next::Wait,
    }
}

/// What is wrong with the image digest a Checkpoint task reported, if anything.
pub fn digest_problem(sha256: Option<&str>) -> Option<String> {
    match sha256 {
        None => Some("no image digest".to_string()),
        Some(d) if !ferry_api::agent_lease::is_sha256_hex(d) => {
            // Bounded: the agent's string is echoed into the condition.
            let shown: String = d.chars().take(80).collect();
            Some(format!(
                "a malformed image digest {shown:?} (want 64 lowercase hex digits)"
            ))
        }
        Some(_) => None,
    }
}

/// Runs the Checkpointing phase.
pub async fn run(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &mut CheckpointRequestStatus,
) -> Result<Step> {
    let ns = api::namespace(req)?;
    let source = st.source_node.clone().unwrap_or_default();
    let tasks: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    let task = tasks
        .get_opt(&checkpoint_task_name(&req.name_any()))
        .await?;
    match decide(task.as_ref(), &source) {
        Next::CreateTask => {
            let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
            Ok(match pods.get_opt(&req.spec.pod_name).await? {
                Some(pod) => {
                    ensure_checkpoint_task(req, ctx, &source, &pod).await?;
                    Step::Wait
                }
                None => Step::Fail(Failure::new(
                    reason::POD_NOT_FOUND,
                    format!(
                        "pod {ns}/{} disappeared before its checkpoint",
                        req.spec.pod_name
                    ),
                )),
            })
        }
        Next::Wait => Ok(Step::Wait),
        Next::Fail(f) => Ok(Step::Fail(f)),
        Next::Checkpointed(result) => {
            record_checkpoint(req, st, &source, &result, Timestamp::now());
            Ok(Step::Advanced)
        }
    }
}

/// Records the checkpoint on `source`: the image, its sizes and `checkpointMs`; then
/// Transferring (migration) or Succeeded (checkpoint only).
pub fn record_checkpoint(
    req: &CheckpointRequest,
    st: &mut CheckpointRequestStatus,
    source: &str,
    result: &TaskResult,
    now: Timestamp,
) {
    st.checkpoint = Some(CheckpointInfo {
        node: source.to_string(),
        location: image_location(req),
        image: result.image.clone(),
    });
    timings(st).steps.checkpoint_ms = result.timings.as_ref().and_then(|t| t.steps.checkpoint_ms);
    let checkpointed = format!("image {} on node {source}", image_location(req));
    set_condition(
        req,
        st,
        condition::CHECKPOINTED,
        true,
        "Checkpointed",
        checkpointed,
        now,
    );
    if req.spec.is_migration() {
        st.phase = Some(RequestPhase::Transferring);
        let pulls = format!(
            "node {} pulls the image from node {source}",
            st.target_node.as_deref().unwrap_or_default()
        );
        set_condition(
            req,
            st,
            condition::TRANSFERRED,
            false,
            "Transferring",
            pulls,
            now,
        );
        let ready = "transferring".to_string();
        set_condition(req, st, condition::READY, false, "InProgress", ready, now);
    } else {
        let message = format!(
            "checkpoint of pod {} is on node {source}",
            req.spec.pod_name
        );
        succeed(req, st, message, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{
        CheckpointRequestSpec, ImageSummary, MigrateSpec, NodeTaskStatus, StepTimings, TaskTimings,
    };

    fn task(
        phase: Option<TaskPhase>,
        message: Option<&str>,
        result: Option<TaskResult>,
    ) -> NodeTask {
        let spec: ferry_api::NodeTaskSpec = serde_json::from_value(serde_json::json!({
            "nodeName": "a", "operation": "Checkpoint", "checkpointRequest": "r",
            "pod": {"namespace": "ns", "name": "p"},
            "image": {"storage": {}, "location": "ns/r"},
        }))
        .unwrap();
        let mut t = NodeTask::new("r-checkpoint", spec);
        t.status = Some(NodeTaskStatus {
            phase,
            message: message.map(String::from),
            result,
            ..Default::default()
        });
        t
    }

    #[test]
    fn the_checkpoint_task_decides_the_next_step() {
        let result = TaskResult {
            image: ImageSummary {
                size_bytes: Some(4096),
                sha256: Some("0f".repeat(32)),
                ..Default::default()
            },
            ..Default::default()
        };
        let with_digest = |d: &str| {
            let mut r = result.clone();
            r.image.sha256 = Some(d.to_string());
            Some(r)
        };
        let no_digest = |why: &str| {
            Next::Fail(Failure::new(
                reason::CHECKPOINT_FAILED,
                format!(
                    "checkpoint on node a reported {why}; an image without its SHA-256 cannot be verified, so it is not used"
                ),
            ))
        };
        // (task, next)
        let table = [
            (None, Next::CreateTask),
            (Some(task(None, None, None)), Next::Wait),
            (Some(task(Some(TaskPhase::Pending), None, None)), Next::Wait),
            (
                Some(task(Some(TaskPhase::Running), Some("dumping"), None)),
                Next::Wait,
            ),
            (
                Some(task(
                    Some(TaskPhase::Failed),
                    Some("criu dump: exit 1"),
                    None,
                )),
                Next::Fail(Failure::new(
                    reason::CHECKPOINT_FAILED,
                    "checkpoint on node a failed: criu dump: exit 1",
                )),
            ),
            (
                Some(task(Some(TaskPhase::Failed), None, None)),
                Next::Fail(Failure::new(
                    reason::CHECKPOINT_FAILED,
                    "checkpoint on node a failed: the agent gave no message",
                )),
            ),
            // Fail closed: no digest, or one that is not a SHA-256, never turns the pin off.
            (
                Some(task(Some(TaskPhase::Succeeded), None, None)),
                no_digest("no image digest"),
            ),
            (
                Some(task(
                    Some(TaskPhase::Succeeded),
                    None,
                    Some(TaskResult::default()),
                )),
                no_digest("no image digest"),
            ),
            (
                Some(task(Some(TaskPhase::Succeeded), None, with_digest("abc"))),
                no_digest("a malformed image digest \"abc\" (want 64 lowercase hex digits)"),
            ),
            (
                Some(task(
                    Some(TaskPhase::Succeeded),
                    None,
                    with_digest(&"0F".repeat(32)),
                )),
                no_digest(&format!(
                    "a malformed image digest {:?} (want 64 lowercase hex digits)",
                    "0F".repeat(32)
                )),
            ),
            (
                Some(task(Some(TaskPhase::Succeeded), None, Some(result.clone()))),
                Next::Checkpointed(Box::new(result)),
            ),
        ];
        for (i, (t, expected)) in table.into_iter().enumerate() {
            assert_eq!(decide(t.as_ref(), "a"), expected, "case {i}");
        }
    }

    #[test]
    fn a_checkpoint_succeeds_a_checkpoint_only_request_and_moves_a_migration_on() {
        let result = TaskResult {
            image: ImageSummary {
                size_bytes: Some(4096),
                sha256: Some("ab".repeat(32)),
                archive_containers: vec!["main".into()],
                ..Default::default()
            },
            timings: Some(TaskTimings {
                steps: StepTimings {
                    checkpoint_ms: Some(120),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        // (migration, phase after, Ready status)
        let table = [
            (false, RequestPhase::Succeeded, "True"),
            (true, RequestPhase::Transferring, "False"),
        ];
        for (migrate, phase, ready) in table {
            let mut spec = CheckpointRequestSpec::for_pod("p");
            spec.migrate = migrate.then(MigrateSpec::default);
            let mut req = CheckpointRequest::new("r", spec);
            req.metadata.namespace = Some("ns".into());
            let mut st = CheckpointRequestStatus {
                target_node: migrate.then(|| "b".to_string()),
                ..Default::default()
            };
            record_checkpoint(&req, &mut st, "a", &result, Timestamp::UNIX_EPOCH);
            assert_eq!(st.phase, Some(phase), "migrate={migrate}");
            let info = st.checkpoint.clone().unwrap();
            assert_eq!((info.node.as_str(), info.location.as_str()), ("a", "ns/r"));
            assert_eq!(info.image.size_bytes, Some(4096));
            assert_eq!(info.image.archive_containers, ["main"]);
            assert_eq!(
                st.timings.as_ref().and_then(|t| t.steps.checkpoint_ms),
                Some(120)
            );
            assert_eq!(
                st.condition(condition::CHECKPOINTED).unwrap().status,
                "True"
            );
            assert_eq!(st.condition(condition::READY).unwrap().status, ready);
            assert_eq!(st.completion_time.is_some(), !migrate);
            if migrate {
                assert_eq!(
                    st.condition(condition::TRANSFERRED).unwrap().message,
                    "node b pulls the image from node a"
                );
            }
        }
    }
}
