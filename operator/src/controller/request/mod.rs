//! The state machine of one CheckpointRequest.
//!
//! ```text
//! Pending ──validate, pick target──► Checkpointing ──Checkpoint task Succeeded──► Succeeded
//!                                         │ (migrate)
//!                                         ▼
//!                    Transferring ──Restore task reports its pull──► Restoring
//!                                         │ Restore task Succeeded and restored pod Running
//!                                         ▼ (deleteSource: the source pod is deleted now)
//!                                      Succeeded
//! any step ──failure, timeout──► Failed (the source pod is left running)
//! ```
//!
//! Each reconcile reads the world (the status it wrote, the NodeTasks, the pods) and moves
//! on from there; every object it creates has a deterministic name, so a reconcile that
//! re-runs after an operator restart finds what the previous run created instead of making
//! it twice. Decisions that must not change on a re-run (source and target node, restored
//! pod name, start time) are in the status.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::names::{condition, reason};
use ferry_api::{
    CheckpointInfo, CheckpointRequest, CheckpointRequestStatus, NodeTask, PodReference,
    RequestPhase, RequestTimings, TaskOperation, TaskPhase,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::info;

use super::Context;
use super::node_select::{self, Candidate, Needs};
use super::tasks;
use crate::agents;
use crate::{Error, Result};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = ferry_api::names::field_manager::OPERATOR;

/// What one step decided.
enum Step {
    /// Nothing more to do until the world changes.
    Wait,
    /// The status moved on; look again at once.
    Advanced,
    /// The request failed: reason and message.
    Fail(&'static str, String),
}

/// Drives a live request one step on.
pub async fn apply(req: Arc<CheckpointRequest>, ctx: &Context) -> Result<Action> {
    let key = key(&req);
    let before = req.status.clone().unwrap_or_default();
    let mut st = before.clone();
    let phase = req.phase();
    if phase.is_terminal() {
        ctx.metrics.set_phase(&key, Some(phase));
        return finished(&req, ctx).await;
    }
    let step = match timed_out(&req, &st) {
        Some(message) => Step::Fail(reason::TIMEOUT, message),
        None => match phase {
            RequestPhase::Pending => start(&req, ctx, &mut st).await?,
            RequestPhase::Checkpointing => checkpointing(&req, ctx, &mut st).await?,
            _ => restoring(&req, ctx, &mut st).await?,
        },
    };
    if let Step::Fail(why, message) = &step {
        abort(&req, ctx, &st).await?;
        fail(&req, &mut st, why, message);
    }
    st.observed_generation = req.metadata.generation;
    if st != before {
        write_status(&req, ctx, &st).await?;
    }
    let new_phase = st.phase.unwrap_or_default();
    ctx.metrics.set_phase(&key, Some(new_phase));
    if new_phase != phase || before.phase.is_none() {
        publish_transition(&req, ctx, &st).await;
    }
    Ok(match step {
        Step::Advanced if !new_phase.is_terminal() => Action::requeue(Duration::from_millis(1)),
        _ if new_phase.is_terminal() => ttl_action(&req, &st),
        _ => Action::requeue(requeue_before_timeout(&req, &st, ctx.config.active_requeue)),
    })
}

/// Removes what a request created; for a request deleted mid-way this aborts it, leaving the
/// source pod as it is. Images are deleted through the agents (Delete NodeTasks); deletion
/// waits for them up to `cleanup_timeout`, and not at all for a node without a ready agent.
pub async fn cleanup(req: Arc<CheckpointRequest>, ctx: &Context) -> Result<Action> {
    let ns = namespace(&req)?;
    let name = req.name_any();
    let st = req.status.clone().unwrap_or_default();
    let phase = req.phase();
    if phase != RequestPhase::Succeeded {
        abort(&req, ctx, &st).await?;
    }
    let task_api: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    for task in [
        tasks::checkpoint_task_name(&name),
        tasks::restore_task_name(&name),
    ] {
        delete_ignoring_missing(&task_api, &task).await?;
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    delete_ignoring_missing(&secrets, &tasks::token_secret_name(&name)).await?;

    // Nodes that may hold an image: the source once a checkpoint started, the target once
    // the restore started.
    let mut holders = Vec::new();
    if let (Some(source), Some(_)) = (&st.source_node, &st.start_time)
        && phase != RequestPhase::Pending
    {
        holders.push((false, source.clone()));
    }
    if let (Some(target), Some(_)) = (&st.target_node, &st.restored_pod_name) {
        holders.push((true, target.clone()));
    }
    let deleting_since = req
        .meta()
        .deletion_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or_else(Timestamp::now);
    let give_up = deleting_since + signed(ctx.config.cleanup_timeout) < Timestamp::now();
    let mut pending = Vec::new();
    for (target, node) in holders {
        let task_name = tasks::delete_task_name(&name, target);
        let existing = task_api.get_opt(&task_name).await?;
        if existing.is_none() && !agent_ready(ctx, &node) {
            event(
                ctx,
                &req,
                EventType::Warning,
                "ImageLeft",
                format!(
                    "no ready ferry agent on node {node}; its image of this request stays there"
                ),
            )
            .await;
            continue;
        }
        let task = match existing {
            Some(t) => t,
            None => {
                let pod = PodReference {
                    namespace: ns.clone(),
                    name: req.spec.pod_name.clone(),
                    uid: None,
                };
                let task = tasks::node_task(
                    &req,
                    task_name.clone(),
                    &node,
                    TaskOperation::Delete,
                    pod,
                    None,
                );
                create_ignoring_existing(&task_api, &task).await?;
                task
            }
        };
        match task.phase() {
            TaskPhase::Succeeded => {}
            TaskPhase::Failed => {
                event(
                    ctx,
                    &req,
                    EventType::Warning,
                    "ImageDeleteFailed",
                    format!(
                        "deleting the image on node {node} failed: {}",
                        task.status.and_then(|s| s.message).unwrap_or_default()
                    ),
                )
                .await;
            }
            _ if give_up => {
                event(
                    ctx,
                    &req,
                    EventType::Warning,
                    "ImageLeft",
                    format!(
                        "the agent on node {node} did not delete the image within {:?}",
                        ctx.config.cleanup_timeout
                    ),
                )
                .await;
            }
            _ => pending.push(node),
        }
    }
    if !pending.is_empty() {
        return Err(Error::CleanupPending(pending.join(", ")));
    }
    for target in [false, true] {
        delete_ignoring_missing(&task_api, &tasks::delete_task_name(&name, target)).await?;
    }
    ctx.metrics.set_phase(&key(&req), None);
    info!("request cleaned up");
    Ok(Action::await_change())
}

/// Pending: validate, pick the target, start the checkpoint.
async fn start(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &mut CheckpointRequestStatus,
) -> Result<Step> {
    let ns = namespace(req)?;
    let spec = &req.spec;
    if let Some(other) = active_request_for_pod(req, ctx).await {
        return Ok(Step::Fail(
            reason::REQUEST_ALREADY_ACTIVE,
            format!(
                "request {other} is already active for pod {}; one request at a time per pod",
                spec.pod_name
            ),
        ));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(pod) = pods.get_opt(&spec.pod_name).await? else {
        return Ok(Step::Fail(
            reason::POD_NOT_FOUND,
            format!("pod {ns}/{} does not exist", spec.pod_name),
        ));
    };
    let pod_phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let source = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if pod_phase != "Running" || source.is_empty() {
        return Ok(Step::Fail(
            reason::POD_NOT_RUNNING,
            format!(
                "pod {ns}/{} is {} (node {}); only a Running pod can be checkpointed",
                spec.pod_name,
                if pod_phase.is_empty() {
                    "without a phase"
                } else {
                    &pod_phase
                },
                if source.is_empty() { "none" } else { &source }
            ),
        ));
    }
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    let missing: Vec<&String> = spec
        .containers
        .iter()
        .filter(|c| !names.contains(c))
        .collect();
    if !missing.is_empty() {
        return Ok(Step::Fail(
            reason::CONTAINER_NOT_FOUND,
            format!(
                "pod {ns}/{} has no container {}; its containers are {}",
                spec.pod_name,
                join(&missing),
                join(&names)
            ),
        ));
    }
    if !agent_ready(ctx, &source) {
        return Ok(Step::Fail(
            reason::AGENT_NOT_READY,
            format!(
                "no ready ferry agent on the pod's node {source} (Lease {}/{} missing or expired); is the ferry-agent DaemonSet running there?",
                ctx.config.agent_namespace,
                agents::lease_name(&source)
            ),
        ));
    }
    if let Some(pvc) = &spec.storage.pvc {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), &ns);
        if claims.get_opt(&pvc.claim_name).await?.is_none() {
            return Ok(Step::Fail(
                reason::PVC_NOT_FOUND,
                format!(
                    "PersistentVolumeClaim {ns}/{} for the image does not exist",
                    pvc.claim_name
                ),
            ));
        }
    }
    let target = match &spec.migrate {
        None => None,
        Some(m) => match &m.target_node {
            Some(t) => match check_target(ctx, t, &source, &pod) {
                Some(failure) => return Ok(failure),
                None => Some(t.clone()),
            },
            None => match pick_target(ctx, &pod, &source, &m.node_selector).await? {
                Ok(t) => Some(t),
                Err(message) => return Ok(Step::Fail(reason::NO_COMPATIBLE_NODE, message)),
            },
        },
    };
    st.source_node = Some(source.clone());
    st.target_node = target;
    st.start_time = Some(Time(Timestamp::now()));
    st.phase = Some(RequestPhase::Checkpointing);
    set_condition(
        req,
        st,
        condition::CHECKPOINTED,
        false,
        "Checkpointing",
        format!("checkpointing on node {source}"),
    );
    if spec.is_migration() {
        set_condition(
            req,
            st,
            condition::TRANSFERRED,
            false,
            "Waiting",
            "waiting for the checkpoint".into(),
        );
        set_condition(
            req,
            st,
            condition::RESTORED,
            false,
            "Waiting",
            "waiting for the checkpoint".into(),
        );
    }
    set_condition(
        req,
        st,
        condition::READY,
        false,
        "InProgress",
        "checkpointing".into(),
    );
    ensure_checkpoint_task(req, ctx, &source, &pod).await?;
    Ok(Step::Advanced)
}

/// Checkpointing: wait for the Checkpoint task.
async fn checkpointing(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &mut CheckpointRequestStatus,
) -> Result<Step> {
    let ns = namespace(req)?;
    let name = req.name_any();
    let source = st.source_node.clone().unwrap_or_default();
    let task_api: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(task) = task_api
        .get_opt(&tasks::checkpoint_task_name(&name))
        .await?
    else {
        // The operator stopped between the status write and the task creation.
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        return Ok(match pods.get_opt(&req.spec.pod_name).await? {
            Some(pod) => {
                ensure_checkpoint_task(req, ctx, &source, &pod).await?;
                Step::Wait
            }
            None => Step::Fail(
                reason::POD_NOT_FOUND,
                format!(
                    "pod {ns}/{} disappeared before its checkpoint",
                    req.spec.pod_name
                ),
            ),
        });
    };
    match task.phase() {
        TaskPhase::Failed => Ok(Step::Fail(
            reason::CHECKPOINT_FAILED,
            format!(
                "checkpoint on node {source} failed: {}",
                task_message(&task)
            ),
        )),
        TaskPhase::Succeeded => {
            let result = task
                .status
                .as_ref()
                .and_then(|s| s.result.clone())
                .unwrap_or_default();
            st.checkpoint = Some(CheckpointInfo {
                node: source.clone(),
                location: tasks::image_location(req),
                size_bytes: result.size_bytes,
                host_memory_bytes: result.host_memory_bytes,
                gpu_memory_bytes: result.gpu_memory_bytes,
                gpu_vendor: result.gpu_vendor,
                gpus: result.gpus.clone(),
                sha256: result.sha256.clone(),
                archive_containers: result.archive_containers.clone(),
            });
            timings(st).checkpoint_ms = result.timings.as_ref().and_then(|t| t.checkpoint_ms);
            set_condition(
                req,
                st,
                condition::CHECKPOINTED,
                true,
                "Checkpointed",
                format!("image {} on node {source}", tasks::image_location(req)),
            );
            if req.spec.is_migration() {
                st.phase = Some(RequestPhase::Transferring);
                set_condition(
                    req,
                    st,
                    condition::TRANSFERRED,
                    false,
                    "Transferring",
                    format!(
                        "node {} pulls the image from node {source}",
                        st.target_node.as_deref().unwrap_or_default()
                    ),
                );
                set_condition(
                    req,
                    st,
                    condition::READY,
                    false,
                    "InProgress",
                    "transferring".into(),
                );
            } else {
                succeed(
                    req,
                    st,
                    format!(
                        "checkpoint of pod {} is on node {source}",
                        req.spec.pod_name
                    ),
                );
            }
            Ok(Step::Advanced)
        }
        _ => Ok(Step::Wait),
    }
}

/// Transferring and Restoring: the token, the restored pod, the Restore task; then the
/// source pod's deletion.
async fn restoring(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &mut CheckpointRequestStatus,
) -> Result<Step> {
    let ns = namespace(req)?;
    let name = req.name_any();
    let uid = req.uid().ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let source = st.source_node.clone().unwrap_or_default();
    let Some(target) = st.target_node.clone() else {
        return Ok(Step::Fail(
            reason::RESTORE_FAILED,
            "the status names no target node".into(),
        ));
    };
    let restored_name = st
        .restored_pod_name
        .clone()
        .unwrap_or_else(|| tasks::restored_pod_name(&req.spec.pod_name, &uid));
    st.restored_pod_name = Some(restored_name.clone());

    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    if secrets
        .get_opt(&tasks::token_secret_name(&name))
        .await?
        .is_none()
    {
        // The token is good for the request's whole timeout from now: a restore that outlives
        // it fails by timeout anyway.
        let expires_at = Timestamp::now()
            + SignedDuration::from_secs(i64::from(req.spec.timeout_seconds.max(0)));
        let secret = tasks::token_secret(req, tasks::random_token()?, expires_at);
        create_ignoring_existing(&secrets, &secret).await?;
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let restored = match pods.get_opt(&restored_name).await? {
        Some(p) => p,
        None => {
            let Some(source_pod) = pods.get_opt(&req.spec.pod_name).await? else {
                return Ok(Step::Fail(
                    reason::POD_NOT_FOUND,
                    format!(
                        "pod {ns}/{} disappeared before its restore",
                        req.spec.pod_name
                    ),
                ));
            };
            let mut pod = tasks::restored_pod(req, &source_pod, restored_name.clone(), &target);
            if let Some(checkpoint) = &st.checkpoint {
                tasks::use_checkpoint_images(&mut pod, req, checkpoint);
            }
            create_ignoring_existing(&pods, &pod).await?;
            match pods.get_opt(&restored_name).await? {
                Some(p) => p,
                None => return Ok(Step::Wait),
            }
        }
    };
    let task_api: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    let task_name = tasks::restore_task_name(&name);
    let task = match task_api.get_opt(&task_name).await? {
        Some(t) => t,
        None => {
            let source_lease = ctx.leases.get(&lease_ref(ctx, &source));
            let endpoint = agents::transfer_endpoint(
                source_lease.as_deref(),
                ctx.nodes.get(&ObjectRef::new(&source)).as_deref(),
                &source,
            );
            let cert = agents::transfer_cert_sha256(source_lease.as_deref());
            // Only a well-formed digest is passed on (the NodeTask schema requires one).
            let digest = st
                .checkpoint
                .as_ref()
                .and_then(|c| c.sha256.clone())
                .filter(|d| agents::is_sha256_hex(d));
            let pod = PodReference {
                namespace: ns.clone(),
                name: restored_name.clone(),
                uid: restored.uid(),
            };
            let transfer =
                (source != target).then(|| tasks::transfer_source(req, endpoint, cert, digest));
            let task = tasks::node_task(
                req,
                task_name,
                &target,
                TaskOperation::Restore,
                pod,
                transfer,
            );
            create_ignoring_existing(&task_api, &task).await?;
            return Ok(Step::Wait);
        }
    };
    let status = task.status.clone().unwrap_or_default();
    let result = status.result.clone().unwrap_or_default();
    let task_timings = result.timings.clone().unwrap_or_default();
    let pulled = result.transfer.is_some() || task_timings.transfer_ms.is_some();
    let phase = task.phase();
    if phase == TaskPhase::Failed {
        let why = if pulled {
            reason::RESTORE_FAILED
        } else {
            reason::TRANSFER_FAILED
        };
        return Ok(Step::Fail(
            why,
            format!("restore on node {target} failed: {}", task_message(&task)),
        ));
    }
    let mut advanced = false;
    if (pulled || phase == TaskPhase::Succeeded) && st.phase == Some(RequestPhase::Transferring) {
        st.phase = Some(RequestPhase::Restoring);
        timings(st).transfer_ms = task_timings.transfer_ms;
        set_condition(
            req,
            st,
            condition::TRANSFERRED,
            true,
            "Transferred",
            format!("the image is on node {target}"),
        );
        set_condition(
            req,
            st,
            condition::RESTORED,
            false,
            "Restoring",
            format!("restoring pod {restored_name} on node {target}"),
        );
        set_condition(
            req,
            st,
            condition::READY,
            false,
            "InProgress",
            "restoring".into(),
        );
        advanced = true;
    }
    if phase != TaskPhase::Succeeded {
        return Ok(if advanced { Step::Advanced } else { Step::Wait });
    }
    let running = restored.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
    if !running {
        return Ok(if advanced { Step::Advanced } else { Step::Wait });
    }
    // Restored: the pod runs. Downtime runs from the source's freeze to now, the first time
    // the operator sees the restored pod running (an operator restart in between adds to it).
    let now = Timestamp::now();
    let t = timings(st);
    t.transfer_ms = t.transfer_ms.or(task_timings.transfer_ms);
    t.restore_ms = task_timings.restore_ms;
    t.host_restore_ms = task_timings.host_restore_ms;
    t.gpu_restore_ms = task_timings.gpu_restore_ms;
    if t.downtime_ms.is_none() {
        let frozen = frozen_at(ctx, &ns, &name).await?;
        if let Some(frozen) = frozen {
            let ms = now.duration_since(frozen).as_millis().max(0);
            t.downtime_ms = Some(i64::try_from(ms).unwrap_or(i64::MAX));
            #[allow(clippy::cast_precision_loss)]
            ctx.metrics.downtime.observe(ms as f64 / 1000.0);
        }
    }
    set_condition(
        req,
        st,
        condition::RESTORED,
        true,
        "Restored",
        format!("pod {restored_name} runs on node {target}"),
    );
    let delete_source = req.spec.migrate.as_ref().is_some_and(|m| m.delete_source);
    if delete_source {
        delete_ignoring_missing(&pods, &req.spec.pod_name).await?;
    }
    succeed(
        req,
        st,
        format!(
            "pod {} migrated from node {source} to node {target} as {restored_name}{}",
            req.spec.pod_name,
            if delete_source {
                "; the source pod is deleted"
            } else {
                "; the source pod keeps running"
            }
        ),
    );
    Ok(Step::Advanced)
}

/// Terminal: garbage-collect after `ttlSecondsAfterFinished`.
async fn finished(req: &CheckpointRequest, ctx: &Context) -> Result<Action> {
    let st = req.status.clone().unwrap_or_default();
    if ttl_expired(req, &st) {
        let api: Api<CheckpointRequest> = Api::namespaced(ctx.client.clone(), &namespace(req)?);
        info!("ttlSecondsAfterFinished passed; deleting the request");
        delete_ignoring_missing(&api, &req.name_any()).await?;
        return Ok(Action::await_change());
    }
    Ok(ttl_action(req, &st))
}

fn ttl_deadline(req: &CheckpointRequest, st: &CheckpointRequestStatus) -> Option<Timestamp> {
    let done = st.completion_time.as_ref()?.0;
    Some(done + SignedDuration::from_secs(i64::from(req.spec.ttl_seconds_after_finished)))
}

fn ttl_expired(req: &CheckpointRequest, st: &CheckpointRequestStatus) -> bool {
    ttl_deadline(req, st).is_some_and(|d| d <= Timestamp::now())
}

fn ttl_action(req: &CheckpointRequest, st: &CheckpointRequestStatus) -> Action {
    match ttl_deadline(req, st) {
        Some(d) => Action::requeue(
            unsigned(d.duration_since(Timestamp::now())) + Duration::from_millis(10),
        ),
        None => Action::await_change(),
    }
}

/// The timeout's message when the request ran past `timeoutSeconds`.
fn timed_out(req: &CheckpointRequest, st: &CheckpointRequestStatus) -> Option<String> {
    let started = st.start_time.as_ref()?.0;
    let limit = SignedDuration::from_secs(i64::from(req.spec.timeout_seconds));
    (started + limit < Timestamp::now()).then(|| {
        format!(
            "no result after timeoutSeconds={} in phase {}",
            req.spec.timeout_seconds,
            req.phase().as_str()
        )
    })
}

fn requeue_before_timeout(
    req: &CheckpointRequest,
    st: &CheckpointRequestStatus,
    every: Duration,
) -> Duration {
    let Some(started) = st.start_time.as_ref() else {
        return every;
    };
    let deadline = started.0 + SignedDuration::from_secs(i64::from(req.spec.timeout_seconds));
    every.min(unsigned(deadline.duration_since(Timestamp::now())) + Duration::from_millis(10))
}

/// Undoes a request that will not finish: stops its unfinished tasks and removes its
/// restored pod; the source pod is never touched.
async fn abort(req: &CheckpointRequest, ctx: &Context, st: &CheckpointRequestStatus) -> Result<()> {
    let ns = namespace(req)?;
    let name = req.name_any();
    let task_api: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    for task in [
        tasks::checkpoint_task_name(&name),
        tasks::restore_task_name(&name),
    ] {
        if let Some(t) = task_api.get_opt(&task).await?
            && !matches!(t.phase(), TaskPhase::Succeeded | TaskPhase::Failed)
        {
            delete_ignoring_missing(&task_api, &task).await?;
        }
    }
    if let Some(restored) = &st.restored_pod_name {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        delete_ignoring_missing(&pods, restored).await?;
    }
    Ok(())
}

fn fail(req: &CheckpointRequest, st: &mut CheckpointRequestStatus, why: &str, message: &str) {
    let mut message = message.to_string();
    if let Some(source) = &st.source_node
        && req.spec.is_migration()
    {
        message.push_str(&format!(
            "; the source pod {} keeps running on node {source}",
            req.spec.pod_name
        ));
    }
    st.phase = Some(RequestPhase::Failed);
    st.completion_time = Some(Time(Timestamp::now()));
    for type_ in condition::ALL {
        let pending = st.condition(type_).is_some_and(|c| c.status != "True");
        if pending && type_ != condition::READY {
            set_condition(req, st, type_, false, why, message.clone());
        }
    }
    set_condition(req, st, condition::READY, false, why, message);
}

fn succeed(req: &CheckpointRequest, st: &mut CheckpointRequestStatus, message: String) {
    st.phase = Some(RequestPhase::Succeeded);
    st.completion_time = Some(Time(Timestamp::now()));
    set_condition(req, st, condition::READY, true, "Succeeded", message);
}

/// Sets a condition; `lastTransitionTime` changes only when its status does.
fn set_condition(
    req: &CheckpointRequest,
    st: &mut CheckpointRequestStatus,
    type_: &str,
    ok: bool,
    why: &str,
    message: String,
) {
    let status = if ok { "True" } else { "False" };
    let generation = req.metadata.generation;
    match st.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(Timestamp::now());
            }
            c.status = status.to_string();
            c.reason = why.to_string();
            c.message = message;
            c.observed_generation = generation;
        }
        None => st.conditions.push(Condition {
            type_: type_.to_string(),
            status: status.to_string(),
            reason: why.to_string(),
            message,
            last_transition_time: Time(Timestamp::now()),
            observed_generation: generation,
        }),
    }
}

fn timings(st: &mut CheckpointRequestStatus) -> &mut RequestTimings {
    st.timings.get_or_insert_with(RequestTimings::default)
}

/// Writes the whole status (server-side apply, field manager `ferry-operator`).
async fn write_status(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &CheckpointRequestStatus,
) -> Result<()> {
    let api: Api<CheckpointRequest> = Api::namespaced(ctx.client.clone(), &namespace(req)?);
    let body = serde_json::json!({
        "apiVersion": CheckpointRequest::api_version(&()),
        "kind": CheckpointRequest::kind(&()),
        "status": st,
    });
    api.patch_status(
        &req.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}

/// An Event for the phase the status now has.
async fn publish_transition(req: &CheckpointRequest, ctx: &Context, st: &CheckpointRequestStatus) {
    let phase = st.phase.unwrap_or_default();
    let ready = st.condition(condition::READY);
    let message = ready.map(|c| c.message.clone()).unwrap_or_default();
    let (type_, why, note) = match phase {
        RequestPhase::Failed => (
            EventType::Warning,
            ready
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| "Failed".into()),
            message,
        ),
        RequestPhase::Checkpointing => (
            EventType::Normal,
            "Checkpointing".into(),
            format!(
                "checkpointing pod {} on node {}{}",
                req.spec.pod_name,
                st.source_node.as_deref().unwrap_or_default(),
                st.target_node
                    .as_deref()
                    .map(|t| format!(", target node {t}"))
                    .unwrap_or_default()
            ),
        ),
        RequestPhase::Transferring => (
            EventType::Normal,
            "Transferring".into(),
            "checkpointed; transferring the image".into(),
        ),
        RequestPhase::Restoring => (
            EventType::Normal,
            "Restoring".into(),
            "image transferred; restoring".into(),
        ),
        RequestPhase::Succeeded => (EventType::Normal, "Succeeded".into(), message),
        RequestPhase::Pending => return,
    };
    event(ctx, req, type_, &why, note).await;
}

async fn event(ctx: &Context, req: &CheckpointRequest, type_: EventType, why: &str, note: String) {
    let ev = Event {
        type_,
        reason: why.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &req.object_ref(&())).await {
        tracing::warn!(error = %e, reason = why, "publishing an Event failed");
    }
}

/// Another unfinished request for the same pod that came first (older, or as old with a
/// smaller name), if any.
async fn active_request_for_pod(req: &CheckpointRequest, ctx: &Context) -> Option<String> {
    let _ = tokio::time::timeout(Duration::from_secs(10), ctx.requests.wait_until_ready()).await;
    let ns = req.namespace();
    let mine = (req.creation_timestamp().map(|t| t.0), req.name_any());
    ctx.requests
        .state()
        .iter()
        .filter(|o| {
            o.namespace() == ns && o.spec.pod_name == req.spec.pod_name && o.uid() != req.uid()
        })
        .filter(|o| !o.phase().is_terminal() && o.meta().deletion_timestamp.is_none())
        .filter(|o| (o.creation_timestamp().map(|t| t.0), o.name_any()) < mine)
        .map(|o| o.name_any())
        .min()
}

/// The given target node is usable, or the failure that says why not.
fn check_target(ctx: &Context, target: &str, source: &str, pod: &Pod) -> Option<Step> {
    let Some(node) = ctx.nodes.get(&ObjectRef::new(target)) else {
        return Some(Step::Fail(
            reason::TARGET_NODE_NOT_FOUND,
            format!("target node {target} does not exist"),
        ));
    };
    if target == source {
        return Some(Step::Fail(
            reason::TARGET_IS_SOURCE,
            format!("target node {target} is the node the pod runs on"),
        ));
    }
    if !node_select::is_ready(&node) {
        return Some(Step::Fail(
            reason::TARGET_NODE_NOT_READY,
            format!("target node {target} is not Ready"),
        ));
    }
    if node_select::is_cordoned(&node) {
        return Some(Step::Fail(
            reason::TARGET_NODE_UNSCHEDULABLE,
            format!("target node {target} is cordoned (spec.unschedulable)"),
        ));
    }
    // The target's kubelet would refuse the restored pod (NodeAffinity admission) after the
    // checkpoint; say so now.
    let needs = Needs::of_pod(pod, None, &BTreeMap::new());
    if let Err(why) = node_select::fits_constraints(&needs, &node) {
        return Some(Step::Fail(
            reason::NO_COMPATIBLE_NODE,
            format!("target node {target} does not fit the pod: {why}"),
        ));
    }
    if !agent_ready(ctx, target) {
        return Some(Step::Fail(
            reason::AGENT_NOT_READY,
            format!(
                "no ready ferry agent on target node {target} (Lease {}/{} missing or expired)",
                ctx.config.agent_namespace,
                agents::lease_name(target)
            ),
        ));
    }
    None
}

/// Picks a target node ([`node_select::select_target`]); the error is the message.
async fn pick_target(
    ctx: &Context,
    pod: &Pod,
    source: &str,
    selector: &BTreeMap<String, String>,
) -> Result<Result<String, String>> {
    let source_node = ctx.nodes.get(&ObjectRef::new(source));
    let needs = Needs::of_pod(pod, source_node.as_deref(), selector);
    let mut in_use: BTreeMap<String, i64> = BTreeMap::new();
    if let Some((resource, _)) = &needs.gpu {
        let pods: Api<Pod> = Api::all(ctx.client.clone());
        let lp = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
        for p in pods.list(&lp).await? {
            let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
                continue;
            };
            if let Some((r, n)) = node_select::gpu_request(&p)
                && &r == resource
            {
                *in_use.entry(node).or_default() += n;
            }
        }
    }
    let nodes = ctx.nodes.state();
    let candidates: Vec<Candidate<'_>> = nodes
        .iter()
        .map(|n| {
            let name = n.name_any();
            Candidate {
                node: n,
                agent_ready: agent_ready(ctx, &name),
                gpus_in_use: in_use.get(&name).copied().unwrap_or(0),
            }
        })
        .collect();
    Ok(node_select::select_target(&needs, &candidates)
        .map(|p| p.node)
        .map_err(|r| r.to_string()))
}

async fn ensure_checkpoint_task(
    req: &CheckpointRequest,
    ctx: &Context,
    source: &str,
    pod: &Pod,
) -> Result<()> {
    let ns = namespace(req)?;
    let api: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = PodReference {
        namespace: ns,
        name: req.spec.pod_name.clone(),
        uid: pod.uid(),
    };
    let task = tasks::node_task(
        req,
        tasks::checkpoint_task_name(&req.name_any()),
        source,
        TaskOperation::Checkpoint,
        reference,
        None,
    );
    create_ignoring_existing(&api, &task).await
}

/// When the Checkpoint task froze the source, as the agent reported it.
async fn frozen_at(ctx: &Context, ns: &str, name: &str) -> Result<Option<Timestamp>> {
    let api: Api<NodeTask> = Api::namespaced(ctx.client.clone(), ns);
    Ok(api
        .get_opt(&tasks::checkpoint_task_name(name))
        .await?
        .and_then(|t| t.status?.result?.timings?.frozen_at)
        .map(|t| t.0))
}

fn task_message(task: &NodeTask) -> String {
    task.status
        .as_ref()
        .and_then(|s| s.message.clone())
        .unwrap_or_else(|| "the agent gave no message".into())
}

fn lease_ref(ctx: &Context, node: &str) -> ObjectRef<k8s_openapi::api::coordination::v1::Lease> {
    ObjectRef::new(&agents::lease_name(node)).within(&ctx.config.agent_namespace)
}

fn agent_ready(ctx: &Context, node: &str) -> bool {
    ctx.leases
        .get(&lease_ref(ctx, node))
        .is_some_and(|l| agents::lease_is_live(&l, Timestamp::now()))
}

async fn create_ignoring_existing<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            obj,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

fn namespace(req: &CheckpointRequest) -> Result<String> {
    req.namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))
}

fn key(req: &CheckpointRequest) -> String {
    format!("{}/{}", req.namespace().unwrap_or_default(), req.name_any())
}

fn join(items: &[impl AsRef<str>]) -> String {
    items
        .iter()
        .map(|s| s.as_ref())
        .collect::<Vec<_>>()
        .join(", ")
}

fn signed(d: Duration) -> SignedDuration {
    SignedDuration::try_from(d).unwrap_or(SignedDuration::MAX)
}

fn unsigned(d: SignedDuration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}
