//! The children a migration's restore needs, made once each: the transfer token Secret, the
//! restored pod (bound to the target) and the Restore task (pulling from the source agent).
//! What they hold is decided by pure functions ([`plan`], [`restore_task`]); [`ensure`]
//! reads what exists and creates what is missing.

use ferry_api::agent_lease;
use ferry_api::names::reason;
use ferry_api::{
    CheckpointRequest, CheckpointRequestStatus, NodeTask, PodReference, TaskOperation,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Secret};
use kube::{Api, ResourceExt};

use super::checkpointing::digest_problem;
use super::step::{Failure, Step};
use super::{api, identity};
use crate::agents;
use crate::controller::children::names::{restore_task_name, restored_pod_name};
use crate::controller::children::node_task::{node_task, transfer_source};
use crate::controller::children::restored_pod::{restored_pod, use_checkpoint_images};
use crate::controller::children::transfer_secret::{
    grant_name, is_grant_of, random_token, token_secret,
};
use crate::controller::context::Context;
use crate::{Error, Result};

/// Where the restore runs, decided from the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The node the checkpoint was taken on ("" if the status lost it).
    pub source: String,
    /// The node to restore on.
    pub target: String,
    /// The restored pod's name: the one in the status, or a new deterministic one.
    pub restored_name: String,
}

/// The restore's plan; a status without a target node cannot be restored, nor an image from
/// another node without a well-formed digest to pin its pull to (finding 2: fail closed).
pub fn plan(
    req: &CheckpointRequest,
    st: &CheckpointRequestStatus,
    uid: &str,
) -> Result<Plan, Failure> {
    let Some(target) = st.target_node.clone() else {
        return Err(Failure::new(
            reason::RESTORE_FAILED,
            "the status names no target node",
        ));
    };
    let digest = st
        .checkpoint
        .as_ref()
        .and_then(|c| c.image.sha256.as_deref());
    if st.source_node.as_deref() != Some(target.as_str())
        && let Some(problem) = digest_problem(digest)
    {
        return Err(Failure::new(
            reason::CHECKPOINT_FAILED,
            format!("the checkpoint has {problem}; its pull cannot be verified"),
        ));
    }
    Ok(Plan {
        source: st.source_node.clone().unwrap_or_default(),
        target,
        restored_name: st
            .restored_pod_name
            .clone()
            .unwrap_or_else(|| restored_pod_name(&req.spec.pod_name, uid)),
    })
}

/// Until when a new transfer token is good: the request's whole timeout from now (a restore
/// that outlives it fails by timeout anyway).
pub fn token_expiry(req: &CheckpointRequest, now: Timestamp) -> Timestamp {
    now + SignedDuration::from_secs(i64::from(req.spec.timeout_seconds.max(0)))
}

/// The Restore task of `restored` on the plan's target. A restore on another node pulls
/// from the source agent: its endpoint and certificate from its Lease (or its Node), and
/// only a well-formed image digest (the NodeTask schema requires one).
pub fn restore_task(
    req: &CheckpointRequest,
    st: &CheckpointRequestStatus,
    plan: &Plan,
    restored: &Pod,
    source_lease: Option<&Lease>,
    source_node: Option<&Node>,
) -> NodeTask {
    let endpoint = agents::transfer_endpoint(source_lease, source_node, &plan.source);
    let cert = agent_lease::transfer_cert_sha256(source_lease);
    let digest = st
        .checkpoint
        .as_ref()
        .and_then(|c| c.image.sha256.clone())
        .filter(|d| agent_lease::is_sha256_hex(d));
    let pod = PodReference {
        namespace: req.namespace().unwrap_or_default(),
        name: plan.restored_name.clone(),
        uid: restored.uid(),
    };
    let transfer =
        (plan.source != plan.target).then(|| transfer_source(req, endpoint, cert, digest));
    node_task(
        req,
        restore_task_name(&req.name_any()),
        &plan.target,
        TaskOperation::Restore,
        pod,
        transfer,
    )
}

/// The restored pod and the Restore task once both exist, or what to do until then.
pub enum Children {
    /// Both exist.
    Ready {
        /// The restored pod.
        restored: Box<Pod>,
        /// The Restore task.
        task: Box<NodeTask>,
    },
    /// One was missing (and is created now, if it can be): this is the step.
    Pending(Step),
}

/// Creates what of the token, the restored pod and the Restore task is missing. Only the
/// pod this request created is its restored pod ([`identity`]): its UID goes into the status
/// (written at once, before the Restore task names it) and a pod found under its name
/// without that UID fails the request instead of being adopted.
pub async fn ensure(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &mut CheckpointRequestStatus,
    plan: &Plan,
) -> Result<Children> {
    let ns = api::namespace(req)?;
    if plan.source != plan.target
        && let Some(step) = ensure_grant(req, ctx, plan).await?
    {
        return Ok(Children::Pending(step));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let restored = match pods.get_opt(&plan.restored_name).await? {
        Some(p) => match identity::check_restored(&p, req, st.restored_pod_uid.as_deref()) {
            Ok(()) => p,
            Err(f) => return Ok(Children::Pending(Step::Fail(f))),
        },
        None if st.restored_pod_uid.is_some() => {
            // The Restore task names that pod's UID: a new pod would not be the one restored.
            return Ok(Children::Pending(Step::Fail(Failure::new(
                reason::RESTORE_FAILED,
                format!("restored pod {ns}/{} was deleted", plan.restored_name),
            ))));
        }
        None => {
            let Some(source_pod) = pods.get_opt(&req.spec.pod_name).await? else {
                return Ok(Children::Pending(Step::Fail(Failure::new(
                    reason::POD_NOT_FOUND,
                    format!(
                        "pod {ns}/{} disappeared before its restore",
                        req.spec.pod_name
                    ),
                ))));
            };
            if let Err(f) = identity::check_source(&source_pod, st.source_pod_uid.as_deref()) {
                return Ok(Children::Pending(Step::Fail(f)));
            }
            let mut pod = restored_pod(req, &source_pod, plan.restored_name.clone(), &plan.target);
            if let Some(checkpoint) = &st.checkpoint {
                use_checkpoint_images(&mut pod, req, checkpoint);
            }
            match api::create_new(&pods, &pod).await? {
                Some(created) => {
                    st.restored_pod_name = Some(plan.restored_name.clone());
                    st.restored_pod_uid = created.uid();
                    api::write_status(&ctx.client, req, st).await?;
                    created
                }
                // Someone created a pod of that name since the get above: not ours.
                None => {
                    let squatter = pods.get_opt(&plan.restored_name).await?;
                    let failure = squatter
                        .and_then(|p| identity::check_restored(&p, req, None).err())
                        .unwrap_or_else(|| {
                            Failure::new(
                                reason::RESTORE_FAILED,
                                format!(
                                    "pod {ns}/{} came and went while this request created it",
                                    plan.restored_name
                                ),
                            )
                        });
                    return Ok(Children::Pending(Step::Fail(failure)));
                }
            }
        }
    };
    let tasks: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    let Some(task) = tasks.get_opt(&restore_task_name(&req.name_any())).await? else {
        let lease = ctx.agent_lease(&plan.source);
        let node = ctx.node(&plan.source);
        let task = restore_task(req, st, plan, &restored, lease.as_deref(), node.as_deref());
        api::apply_node_task(&tasks, &task).await?;
        return Ok(Children::Pending(Step::Wait));
    };
    Ok(Children::Ready {
        restored: Box::new(restored),
        task: Box::new(task),
    })
}

/// Creates the transfer grant in the agents' namespace (finding 1: where tenants cannot
/// write), bound to this request and to the target agent's certificate. A grant left by an
/// earlier request of the same name is replaced, never reused. `Some`: what to do instead
/// (the target agent publishes no certificate, so nothing could pull).
async fn ensure_grant(req: &CheckpointRequest, ctx: &Context, plan: &Plan) -> Result<Option<Step>> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.config.agent_namespace);
    let name = grant_name(req);
    if let Some(existing) = secrets.get_opt(&name).await? {
        if is_grant_of(&existing, req) {
            return Ok(None);
        }
        api::delete_ignoring_missing(&secrets, &name).await?;
    }
    let lease = ctx.agent_lease(&plan.target);
    let Some(client_cert) = agent_lease::transfer_cert_sha256(lease.as_deref()) else {
        return Ok(Some(Step::Fail(Failure::new(
            reason::TRANSFER_FAILED,
            format!(
                "the agent on the target node {} publishes no transfer certificate on its Lease; the source serves only the target agent's certificate",
                plan.target
            ),
        ))));
    };
    let expires_at = token_expiry(req, Timestamp::now());
    let secret = token_secret(
        req,
        &ctx.config.agent_namespace,
        &client_cert,
        random_token()?,
        expires_at,
    );
    api::create_ignoring_existing(&secrets, &secret).await?;
    Ok(None)
}

/// The request's uid, which names its restored pod.
pub fn uid(req: &CheckpointRequest) -> Result<String> {
    req.uid().ok_or(Error::MissingObjectKey("metadata.uid"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{CheckpointInfo, CheckpointRequestSpec, ImageSummary, MigrateSpec};

    fn request() -> CheckpointRequest {
        let mut spec = CheckpointRequestSpec::for_pod("trainer");
        spec.migrate = Some(MigrateSpec::default());
        spec.timeout_seconds = 60;
        let mut req = CheckpointRequest::new("r", spec);
        req.metadata.namespace = Some("ns".into());
        req
    }

    #[test]
    fn the_plan_keeps_a_restored_pod_name_once_chosen_and_needs_a_target() {
        let req = request();
        let status = |target: Option<&str>, restored: Option<&str>| CheckpointRequestStatus {
            source_node: Some("a".into()),
            target_node: target.map(String::from),
            restored_pod_name: restored.map(String::from),
            checkpoint: Some(CheckpointInfo {
                image: ImageSummary {
                    sha256: Some("ab".repeat(32)),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        };
        // (target, restored pod in the status, plan's restored name or the failure)
        let table = [
            (Some("b"), None, Ok("trainer-restored-12345")),
            (Some("b"), Some("kept"), Ok("kept")),
            (None, None, Err(reason::RESTORE_FAILED)),
        ];
        for (target, restored, expected) in table {
            let got = plan(&req, &status(target, restored), "1234-5678");
            match (got, expected) {
                (Ok(p), Ok(name)) => {
                    assert_eq!(p.restored_name, name);
                    assert_eq!((p.source.as_str(), p.target.as_str()), ("a", "b"));
                }
                (Err(f), Err(why)) => assert_eq!(f.reason, why),
                (got, want) => panic!("got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_pull_without_a_well_formed_digest_is_never_planned() {
        let req = request();
        // (source, digest in the status, failure words or None)
        let table = [
            ("a", Some("ab".repeat(32)), None),
            ("a", None, Some("the checkpoint has no image digest")),
            (
                "a",
                Some("not-hex".to_string()),
                Some("a malformed image digest"),
            ),
            // A restore on the checkpoint's own node pulls nothing.
            ("b", None, None),
        ];
        for (i, (source, digest, words)) in table.into_iter().enumerate() {
            let st = CheckpointRequestStatus {
                source_node: Some(source.into()),
                target_node: Some("b".into()),
                checkpoint: Some(CheckpointInfo {
                    image: ImageSummary {
                        sha256: digest,
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                ..Default::default()
            };
            match (plan(&req, &st, "1234"), words) {
                (Ok(_), None) => {}
                (Err(f), Some(w)) => {
                    assert_eq!(f.reason, reason::CHECKPOINT_FAILED, "case {i}");
                    assert!(f.message.contains(w), "case {i}: {}", f.message);
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_restore_pulls_only_from_another_node_and_passes_only_a_well_formed_digest() {
        let req = request();
        let restored: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "trainer-restored-x", "namespace": "ns", "uid": "pod-uid"},
        }))
        .unwrap();
        let good = "ab".repeat(32);
        // (source, digest in the status, pulls, digest passed on)
        let table = [
            ("a", Some(good.clone()), true, Some(good.clone())),
            ("a", Some("not-hex".to_string()), true, None),
            ("a", None, true, None),
            ("b", Some(good), false, None),
        ];
        for (source, digest, pulls, passed) in table {
            let st = CheckpointRequestStatus {
                checkpoint: Some(CheckpointInfo {
                    image: ImageSummary {
                        sha256: digest,
                        ..Default::default()
                    },
                    ..Default::default()
                }),
                ..Default::default()
            };
            let p = Plan {
                source: source.into(),
                target: "b".into(),
                restored_name: "trainer-restored-x".into(),
            };
            let task = restore_task(&req, &st, &p, &restored, None, None);
            assert_eq!(task.metadata.name.as_deref(), Some("r-restore"));
            assert_eq!(task.spec.node_name, "b");
            assert_eq!(task.spec.operation, TaskOperation::Restore);
            assert_eq!(task.spec.pod.name, "trainer-restored-x");
            assert_eq!(task.spec.pod.namespace, "ns");
            assert_eq!(task.spec.pod.uid.as_deref(), Some("pod-uid"));
            assert_eq!(task.spec.source.is_some(), pulls, "source {source}");
            assert_eq!(task.spec.source.and_then(|s| s.image_sha256), passed);
        }
    }

    #[test]
    fn a_token_is_good_for_the_requests_timeout() {
        let now = Timestamp::UNIX_EPOCH;
        assert_eq!(
            token_expiry(&request(), now),
            now + SignedDuration::from_secs(60)
        );
    }
}
