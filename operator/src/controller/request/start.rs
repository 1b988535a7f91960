//! Pending: validate the request ([`validate`](super::validate), [`target`](super::target)),
//! record the decisions that must not change on a re-run (source, target, start time), and
//! create the Checkpoint task.

use std::time::Duration;

use ferry_api::names::condition;
use ferry_api::{
    CheckpointRequest, CheckpointRequestStatus, NodeTask, PodReference, RequestPhase, TaskOperation,
};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Api, ResourceExt};

use super::api;
use super::conditions::set_condition;
use super::step::{Failure, Step};
use super::{target, validate};
use crate::Result;
use crate::controller::children::names::checkpoint_task_name;
use crate::controller::children::node_task::node_task;
use crate::controller::context::Context;

/// Runs the Pending phase: the first failed check fails the request, else it moves to
/// Checkpointing. The checks run in order and each reads only what it needs.
pub async fn run(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &mut CheckpointRequestStatus,
) -> Result<Step> {
    let ns = api::namespace(req)?;
    match checks(req, ctx, &ns).await? {
        Err(failure) => Ok(Step::Fail(failure)),
        Ok((source, target, pod)) => {
            record_start(req, st, &source, target, Timestamp::now());
            // The pod checkpointed is this UID; a pod re-created under its name is another.
            st.source_pod_uid = pod.uid();
            ensure_checkpoint_task(req, ctx, &source, &pod).await?;
            Ok(Step::Advanced)
        }
    }
}

/// The source node, the target node (migrations) and the pod, or the first failure.
async fn checks(
    req: &CheckpointRequest,
    ctx: &Context,
    ns: &str,
) -> Result<Result<(String, Option<String>, Pod), Failure>> {
    let spec = &req.spec;
    // The cache may still be filling right after a start; the rule is best effort then.
    let _ = tokio::time::timeout(Duration::from_secs(10), ctx.requests.wait_until_ready()).await;
    let other = validate::earlier_active_request(req, &ctx.requests.state());
    if let Err(f) = validate::no_other_request(spec, other) {
        return Ok(Err(f));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let Some(pod) = pods.get_opt(&spec.pod_name).await? else {
        return Ok(Err(validate::pod_missing(spec, ns)));
    };
    let source = match validate::source_node(spec, ns, &pod) {
        Ok(source) => source,
        Err(f) => return Ok(Err(f)),
    };
    if let Err(f) = validate::source_agent(
        ctx.agent_ready(&source),
        &source,
        &ctx.config.agent_namespace,
    ) {
        return Ok(Err(f));
    }
    if let Some(pvc) = &spec.storage.pvc {
        let claims: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), ns);
        let exists = claims.get_opt(&pvc.claim_name).await?.is_some();
        if let Err(f) = validate::pvc(exists, ns, &pvc.claim_name) {
            return Ok(Err(f));
        }
    }
    let target = match &spec.migrate {
        None => None,
        Some(m) => match &m.target_node {
            Some(t) => {
                let node = ctx.node(t);
                let source_node = ctx.node(&source);
                let checked = target::check_target(
                    t,
                    (&source, source_node.as_deref()),
                    node.as_deref(),
                    ctx.agent_ready(t),
                    &pod,
                    &ctx.config.agent_namespace,
                );
                match checked {
                    Ok(()) => Some(t.clone()),
                    Err(f) => return Ok(Err(f)),
                }
            }
            None => match target::pick_target(ctx, &pod, &source, &m.node_selector).await? {
                Ok(t) => Some(t),
                Err(f) => return Ok(Err(f)),
            },
        },
    };
    Ok(Ok((source, target, pod)))
}

/// Records the start: source and target node, start time, Checkpointing, and the
/// conditions still to come (Transferred and Restored only for a migration).
pub fn record_start(
    req: &CheckpointRequest,
    st: &mut CheckpointRequestStatus,
    source: &str,
    target: Option<String>,
    now: Timestamp,
) {
    st.source_node = Some(source.to_string());
    st.target_node = target;
    st.start_time = Some(Time(now));
    st.phase = Some(RequestPhase::Checkpointing);
    let checkpointing = format!("checkpointing on node {source}");
    set_condition(
        req,
        st,
        condition::CHECKPOINTED,
        false,
        "Checkpointing",
        checkpointing,
        now,
    );
    if req.spec.is_migration() {
        for type_ in [condition::TRANSFERRED, condition::RESTORED] {
            let waiting = "waiting for the checkpoint".to_string();
            set_condition(req, st, type_, false, "Waiting", waiting, now);
        }
    }
    let ready = "checkpointing".to_string();
    set_condition(req, st, condition::READY, false, "InProgress", ready, now);
}

/// Creates (or re-applies) the Checkpoint task of `pod` on `source`.
pub async fn ensure_checkpoint_task(
    req: &CheckpointRequest,
    ctx: &Context,
    source: &str,
    pod: &Pod,
) -> Result<()> {
    let ns = api::namespace(req)?;
    let tasks: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    let reference = PodReference {
        namespace: ns,
        name: req.spec.pod_name.clone(),
        uid: pod.uid(),
    };
    let task = node_task(
        req,
        checkpoint_task_name(&req.name_any()),
        source,
        TaskOperation::Checkpoint,
        reference,
        None,
    );
    api::apply_node_task(&tasks, &task).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{CheckpointRequestSpec, MigrateSpec};

    #[test]
    fn the_start_records_source_target_and_the_conditions_to_come() {
        // (migration, target, conditions in order)
        let table = [
            (false, None, vec![condition::CHECKPOINTED, condition::READY]),
            (
                true,
                Some("b"),
                vec![
                    condition::CHECKPOINTED,
                    condition::TRANSFERRED,
                    condition::RESTORED,
                    condition::READY,
                ],
            ),
        ];
        for (migrate, target, conditions) in table {
            let mut spec = CheckpointRequestSpec::for_pod("p");
            spec.migrate = migrate.then(MigrateSpec::default);
            let req = CheckpointRequest::new("r", spec);
            let mut st = CheckpointRequestStatus::default();
            let now = Timestamp::UNIX_EPOCH;
            record_start(&req, &mut st, "a", target.map(String::from), now);
            assert_eq!(st.phase, Some(RequestPhase::Checkpointing));
            assert_eq!(st.source_node.as_deref(), Some("a"));
            assert_eq!(st.target_node.as_deref(), target);
            assert_eq!(st.start_time, Some(Time(now)));
            let types: Vec<&str> = st.conditions.iter().map(|c| c.type_.as_str()).collect();
            assert_eq!(types, conditions, "migrate={migrate}");
            assert!(st.conditions.iter().all(|c| c.status == "False"));
            assert_eq!(
                st.condition(condition::CHECKPOINTED)
                    .map(|c| c.message.as_str()),
                Some("checkpointing on node a")
            );
        }
    }
}
