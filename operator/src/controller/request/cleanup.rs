//! Deletion (the finalizer): removes what a request created; for a request deleted mid-way
//! this aborts it, leaving the source pod as it is. Images are deleted through the agents
//! (Delete NodeTasks); deletion waits for them up to `cleanup_timeout`, and not at all for a
//! node without a ready agent. Which nodes hold an image and what each Delete task's state
//! means are pure functions ([`image_holders`], [`judge`]).

use std::time::Duration;

use ferry_api::{
    CheckpointRequest, CheckpointRequestStatus, NodeTask, PodReference, RequestPhase,
    TaskOperation, TaskPhase,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use super::deadlines::signed;
use super::{abort, api, events};
use crate::controller::children::names::{
    checkpoint_task_name, delete_task_name, restore_task_name,
};
use crate::controller::children::node_task::node_task;
use crate::controller::children::transfer_secret::grant_name;
use crate::controller::context::Context;
use crate::{Error, Result};

/// A node that may hold an image of the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    /// The target node (a restore's image), else the source (the checkpoint's).
    pub target: bool,
    /// The node.
    pub node: String,
}

/// The nodes that may hold an image: the source once a checkpoint started, the target once
/// the restore started (a restored pod was named).
pub fn image_holders(phase: RequestPhase, st: &CheckpointRequestStatus) -> Vec<Holder> {
    let mut holders = Vec::new();
    if let (Some(source), Some(_)) = (&st.source_node, &st.start_time)
        && phase != RequestPhase::Pending
    {
        holders.push(Holder {
            target: false,
            node: source.clone(),
        });
    }
    if let (Some(target), Some(_)) = (&st.target_node, &st.restored_pod_name) {
        holders.push(Holder {
            target: true,
            node: target.clone(),
        });
    }
    holders
}

/// Whether deletion stops waiting for the agents: `timeout` after the deletion began
/// (`deleting_since`; now if unknown).
pub fn gives_up(deleting_since: Option<Timestamp>, timeout: Duration, now: Timestamp) -> bool {
    deleting_since.unwrap_or(now) + signed(timeout) < now
}

/// What one node's image deletion came to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Deleted.
    Deleted,
    /// Left on the node (the deletion failed, or took too long): a Warning Event with this
    /// reason and note; deletion does not wait.
    Left(&'static str, String),
    /// Still being deleted: wait.
    Pending,
}

/// The Warning for a node whose image nobody can delete (no ready agent, no Delete task).
pub fn unattended(node: &str) -> Outcome {
    Outcome::Left(
        "ImageLeft",
        format!("no ready ferry agent on node {node}; its image of this request stays there"),
    )
}

/// What the Delete task on `node` says, waiting at most until `give_up`.
pub fn judge(node: &str, task: &NodeTask, give_up: bool, timeout: Duration) -> Outcome {
    match task.phase() {
        TaskPhase::Succeeded => Outcome::Deleted,
        TaskPhase::Failed => Outcome::Left(
            "ImageDeleteFailed",
            format!(
                "deleting the image on node {node} failed: {}",
                task.status
                    .as_ref()
                    .and_then(|s| s.message.clone())
                    .unwrap_or_default()
            ),
        ),
        _ if give_up => Outcome::Left(
            "ImageLeft",
            format!("the agent on node {node} did not delete the image within {timeout:?}"),
        ),
        TaskPhase::Pending | TaskPhase::Running => Outcome::Pending,
    }
}

/// Cleans up after `req` (see the module docs); [`Error::CleanupPending`] while an agent is
/// still deleting an image.
pub async fn cleanup(req: std::sync::Arc<CheckpointRequest>, ctx: &Context) -> Result<Action> {
    let ns = api::namespace(&req)?;
    let name = req.name_any();
    let st = req.status.clone().unwrap_or_default();
    let phase = req.phase();
    if phase != RequestPhase::Succeeded {
        abort::run(&req, ctx, &st).await?;
    }
    let tasks: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    for task in [checkpoint_task_name(&name), restore_task_name(&name)] {
        api::delete_ignoring_missing(&tasks, &task).await?;
    }
    // The grant lives in the agents' namespace (no ownerReference across namespaces).
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.agent_namespace);
    api::delete_ignoring_missing(&secrets, &grant_name(&req)).await?;

    let deleting_since = req.meta().deletion_timestamp.as_ref().map(|t| t.0);
    let timeout = ctx.config.cleanup_timeout;
    let give_up = gives_up(deleting_since, timeout, Timestamp::now());
    let mut pending = Vec::new();
    for Holder { target, node } in image_holders(phase, &st) {
        let task_name = delete_task_name(&name, target);
        let existing = tasks.get_opt(&task_name).await?;
        let outcome = match existing {
            None if !ctx.agent_ready(&node) => unattended(&node),
            Some(task) => judge(&node, &task, give_up, timeout),
            None => {
                let pod = PodReference {
                    namespace: ns.clone(),
                    name: req.spec.pod_name.clone(),
                    uid: None,
                };
                let task = node_task(&req, task_name, &node, TaskOperation::Delete, pod, None);
                api::apply_node_task(&tasks, &task).await?;
                judge(&node, &task, give_up, timeout)
            }
        };
        match outcome {
            Outcome::Deleted => {}
            Outcome::Left(why, note) => {
                events::event(ctx, &req, EventType::Warning, why, note).await;
            }
            Outcome::Pending => pending.push(node),
        }
    }
    if !pending.is_empty() {
        return Err(Error::CleanupPending(pending.join(", ")));
    }
    for target in [false, true] {
        api::delete_ignoring_missing(&tasks, &delete_task_name(&name, target)).await?;
    }
    ctx.metrics.set_phase(&api::key(&req), None);
    info!("request cleaned up");
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::NodeTaskStatus;
    use jiff::SignedDuration;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    #[test]
    fn the_source_holds_an_image_once_checkpointing_and_the_target_once_restoring() {
        let status =
            |source: bool, started: bool, target: bool, restored: bool| CheckpointRequestStatus {
                source_node: source.then(|| "a".to_string()),
                start_time: started.then_some(Time(Timestamp::UNIX_EPOCH)),
                target_node: target.then(|| "b".to_string()),
                restored_pod_name: restored.then(|| "p-restored-x".to_string()),
                ..Default::default()
            };
        let source = Holder {
            target: false,
            node: "a".into(),
        };
        let target = Holder {
            target: true,
            node: "b".into(),
        };
        // (phase, status, holders)
        let table = [
            (
                RequestPhase::Pending,
                status(false, false, false, false),
                vec![],
            ),
            (
                RequestPhase::Pending,
                status(true, true, false, false),
                vec![],
            ),
            (
                RequestPhase::Checkpointing,
                status(true, false, false, false),
                vec![],
            ),
            (
                RequestPhase::Checkpointing,
                status(true, true, true, false),
                vec![source.clone()],
            ),
            (
                RequestPhase::Failed,
                status(true, true, false, false),
                vec![source.clone()],
            ),
            (
                RequestPhase::Restoring,
                status(true, true, true, true),
                vec![source.clone(), target.clone()],
            ),
            (
                RequestPhase::Succeeded,
                status(true, true, true, true),
                vec![source, target],
            ),
        ];
        for (i, (phase, st, expected)) in table.into_iter().enumerate() {
            assert_eq!(image_holders(phase, &st), expected, "case {i}");
        }
    }

    #[test]
    fn deletion_gives_up_after_the_timeout() {
        let t0 = Timestamp::UNIX_EPOCH;
        let timeout = Duration::from_secs(60);
        // (deleting since, now, gives up)
        let table = [
            (Some(t0), 59, false),
            (Some(t0), 60, false),
            (Some(t0), 61, true),
            (None, 1000, false),
        ];
        for (since, now, expected) in table {
            let now = t0 + SignedDuration::from_secs(now);
            assert_eq!(gives_up(since, timeout, now), expected, "{since:?} {now}");
        }
    }

    fn delete_task(phase: Option<TaskPhase>, message: Option<&str>) -> NodeTask {
        let spec: ferry_api::NodeTaskSpec = serde_json::from_value(serde_json::json!({
            "nodeName": "a", "operation": "Delete", "checkpointRequest": "r",
            "pod": {"namespace": "ns", "name": "p"},
            "image": {"storage": {}, "location": "ns/r"},
        }))
        .unwrap();
        let mut t = NodeTask::new("r-delete-source", spec);
        t.status = phase.map(|phase| NodeTaskStatus {
            phase: Some(phase),
            message: message.map(String::from),
            ..Default::default()
        });
        t
    }

    #[test]
    fn each_delete_task_state_is_deleted_left_or_pending() {
        let timeout = Duration::from_secs(60);
        // (task phase, message, gave up, outcome)
        let table = [
            (None, None, false, Outcome::Pending),
            (Some(TaskPhase::Running), None, false, Outcome::Pending),
            (Some(TaskPhase::Succeeded), None, true, Outcome::Deleted),
            (
                Some(TaskPhase::Failed),
                Some("EBUSY"),
                false,
                Outcome::Left(
                    "ImageDeleteFailed",
                    "deleting the image on node a failed: EBUSY".into(),
                ),
            ),
            (
                None,
                None,
                true,
                Outcome::Left(
                    "ImageLeft",
                    "the agent on node a did not delete the image within 60s".into(),
                ),
            ),
            (
                Some(TaskPhase::Running),
                None,
                true,
                Outcome::Left(
                    "ImageLeft",
                    "the agent on node a did not delete the image within 60s".into(),
                ),
            ),
        ];
        for (i, (phase, message, give_up, expected)) in table.into_iter().enumerate() {
            let task = delete_task(phase, message);
            assert_eq!(judge("a", &task, give_up, timeout), expected, "case {i}");
        }
        assert_eq!(
            unattended("a"),
            Outcome::Left(
                "ImageLeft",
                "no ready ferry agent on node a; its image of this request stays there".into()
            )
        );
    }
}
