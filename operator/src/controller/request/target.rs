//! The target node of a migration: the one the spec names, checked ([`check_target`], pure),
//! or one the operator picks ([`pick_target`], which counts the GPUs in use and then asks
//! the pure [`select::select_target`]).

use std::collections::BTreeMap;

use ferry_api::agent_lease;
use ferry_api::names::reason;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

use super::step::Failure;
use crate::Result;
use crate::controller::context::Context;
use crate::controller::placement::needs::{Needs, gpu_request};
use crate::controller::placement::node_state::{is_cordoned, is_ready, untolerated_taint};
use crate::controller::placement::select::{self, Candidate, Rejection};

/// The given target node is usable, or the failure that says why not. `node` is the target's
/// Node object (if it exists), `source_node` the source's (its migration pool) and
/// `agent_ready` whether a ferry agent is ready on the target.
///
/// The restored pod is bound with `nodeName`, which skips the scheduler: everything the
/// scheduler or the target's kubelet would refuse (a taint, node affinity), and the pool
/// boundary, is checked here, before anything is checkpointed.
pub fn check_target(
    target: &str,
    (source, source_node): (&str, Option<&Node>),
    node: Option<&Node>,
    agent_ready: bool,
    pod: &Pod,
    agent_namespace: &str,
) -> Result<(), Failure> {
    let Some(node) = node else {
        return Err(Failure::new(
            reason::TARGET_NODE_NOT_FOUND,
            format!("target node {target} does not exist"),
        ));
    };
    if target == source {
        return Err(Failure::new(
            reason::TARGET_IS_SOURCE,
            format!("target node {target} is the node the pod runs on"),
        ));
    }
    if !is_ready(node) {
        return Err(Failure::new(
            reason::TARGET_NODE_NOT_READY,
            format!("target node {target} is not Ready"),
        ));
    }
    if is_cordoned(node) {
        return Err(Failure::new(
            reason::TARGET_NODE_UNSCHEDULABLE,
            format!("target node {target} is cordoned (spec.unschedulable)"),
        ));
    }
    // Without the source's Node its pool is unknown: refuse rather than guess "no pool".
    if source_node.is_none() {
        return Err(Failure::new(
            reason::NO_COMPATIBLE_NODE,
            format!(
                "target node {target}: the pod's node {source} is not known, so its migration pool cannot be checked"
            ),
        ));
    }
    let needs = Needs::of_pod(pod, source_node, &BTreeMap::new());
    let fits = select::fits_pool(&needs, node)
        .and_then(|()| match untolerated_taint(&needs.tolerations, node) {
            Some(taint) => Err(Rejection::Taint(taint)),
            None => Ok(()),
        })
        // The target's kubelet would refuse the restored pod (NodeAffinity admission) after
        // the checkpoint; say so now.
        .and_then(|()| select::fits_constraints(&needs, node));
    if let Err(why) = fits {
        return Err(Failure::new(
            reason::NO_COMPATIBLE_NODE,
            format!("target node {target} does not fit the pod: {why}"),
        ));
    }
    if !agent_ready {
        return Err(Failure::new(
            reason::AGENT_NOT_READY,
            format!(
                "no ready ferry agent on target node {target} (Lease {agent_namespace}/{} missing or expired)",
                agent_lease::lease_name(target)
            ),
        ));
    }
    Ok(())
}

/// GPUs of `resource` that `pods` request, per node.
pub fn gpus_in_use(pods: &[Pod], resource: &str) -> BTreeMap<String, i64> {
    let mut in_use: BTreeMap<String, i64> = BTreeMap::new();
    for p in pods {
        let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) else {
            continue;
        };
        if let Some((r, n)) = gpu_request(p)
            && r == resource
        {
            *in_use.entry(node).or_default() += n;
        }
    }
    in_use
}

/// Picks a target node ([`select::select_target`]); the inner error is the
/// `NoCompatibleNode` message.
pub async fn pick_target(
    ctx: &Context,
    pod: &Pod,
    source: &str,
    selector: &BTreeMap<String, String>,
) -> Result<Result<String, Failure>> {
    let Some(source_node) = ctx.node(source) else {
        // Its pool is unknown: refuse rather than guess "no pool".
        return Ok(Err(Failure::new(
            reason::NO_COMPATIBLE_NODE,
            format!(
                "the pod's node {source} is not known, so its migration pool cannot be checked"
            ),
        )));
    };
    let needs = Needs::of_pod(pod, Some(&source_node), selector);
    let in_use = match &needs.gpu {
        // Only a GPU pod needs the free GPUs of each node: the other pods' requests.
        Some((resource, _)) => {
            let pods: Api<Pod> = Api::all(ctx.client.clone());
            let lp = ListParams::default().fields("status.phase!=Succeeded,status.phase!=Failed");
            gpus_in_use(&pods.list(&lp).await?.items, resource)
        }
        None => BTreeMap::new(),
    };
    let nodes = ctx.nodes.state();
    let candidates: Vec<Candidate<'_>> = nodes
        .iter()
        .map(|n| {
            let name = n.name_any();
            Candidate {
                node: n,
                agent_ready: ctx.agent_ready(&name),
                gpus_in_use: in_use.get(&name).copied().unwrap_or(0),
            }
        })
        .collect();
    Ok(select::select_target(&needs, &candidates)
        .map(|p| p.node)
        .map_err(|r| Failure::new(reason::NO_COMPATIBLE_NODE, r.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, ready: bool, cordoned: bool, labels: serde_json::Value) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"unschedulable": cordoned},
            "status": {"conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]},
        }))
        .unwrap()
    }

    fn pod(selector: serde_json::Value, gpus: i64, node: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"nodeName": node, "nodeSelector": selector, "containers": [
                {"name": "main", "resources": {"limits": {"amd.com/gpu": gpus.to_string()}}}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_named_target_must_exist_differ_be_ready_schedulable_fit_and_run_an_agent() {
        let p = pod(serde_json::json!({"zone": "z1"}), 0, "a");
        let fits = serde_json::json!({"zone": "z1"});
        // (target, node object, agent ready, expected reason)
        let table = [
            ("b", None, true, Some(reason::TARGET_NODE_NOT_FOUND)),
            (
                "a",
                Some(node("a", true, false, fits.clone())),
                true,
                Some(reason::TARGET_IS_SOURCE),
            ),
            (
                "b",
                Some(node("b", false, false, fits.clone())),
                true,
                Some(reason::TARGET_NODE_NOT_READY),
            ),
            (
                "b",
                Some(node("b", true, true, fits.clone())),
                true,
                Some(reason::TARGET_NODE_UNSCHEDULABLE),
            ),
            (
                "b",
                Some(node("b", true, false, serde_json::json!({"zone": "z2"}))),
                true,
                Some(reason::NO_COMPATIBLE_NODE),
            ),
            (
                "b",
                Some(node("b", true, false, fits.clone())),
                false,
                Some(reason::AGENT_NOT_READY),
            ),
            ("b", Some(node("b", true, false, fits)), true, None),
        ];
        for (i, (target, n, agent, expected)) in table.into_iter().enumerate() {
            let source = node("a", true, false, fits_source());
            let got = check_target(
                target,
                ("a", Some(&source)),
                n.as_ref(),
                agent,
                &p,
                "ferry-system",
            );
            assert_eq!(
                got.as_ref().err().map(|f| f.reason),
                expected,
                "case {i}: {got:?}"
            );
            if let Err(f) = got {
                assert!(
                    f.message.contains(&format!("target node {target}")),
                    "{}",
                    f.message
                );
            }
        }
    }

    fn fits_source() -> serde_json::Value {
        serde_json::json!({"zone": "z1"})
    }

    /// `n` with `taints` (`key`, `effect`) and its migration pool.
    fn tainted(mut n: Node, taints: &[(&str, &str)], pool: Option<&str>) -> Node {
        let taints: Vec<k8s_openapi::api::core::v1::Taint> = taints
            .iter()
            .map(|(key, effect)| k8s_openapi::api::core::v1::Taint {
                key: (*key).into(),
                value: Some("x".into()),
                effect: (*effect).into(),
                ..Default::default()
            })
            .collect();
        if let Some(spec) = n.spec.as_mut() {
            spec.taints = Some(taints);
        }
        if let Some(pool) = pool {
            n.metadata
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(ferry_api::names::label::MIGRATION_POOL.into(), pool.into());
        }
        n
    }

    #[test]
    fn a_named_target_must_tolerate_its_taints_and_share_the_sources_pool() {
        let mut p = pod(serde_json::json!({}), 0, "a");
        let tolerating = {
            let mut p = p.clone();
            if let Some(spec) = p.spec.as_mut() {
                spec.tolerations = Some(vec![k8s_openapi::api::core::v1::Toleration {
                    key: Some("gpu-only".into()),
                    operator: Some("Exists".into()),
                    ..Default::default()
                }]);
            }
            p
        };
        let b = |taints: &[(&str, &str)], pool| {
            tainted(node("b", true, false, serde_json::json!({})), taints, pool)
        };
        let a = |pool| tainted(node("a", true, false, serde_json::json!({})), &[], pool);
        // (pod tolerates gpu-only, target, source (None: unknown), failure words or None)
        let table = [
            (
                false,
                b(&[("gpu-only", "NoSchedule")], None),
                Some(a(None)),
                Some("taint gpu-only=x:NoSchedule not tolerated"),
            ),
            (
                false,
                b(&[("gpu-only", "NoExecute")], None),
                Some(a(None)),
                Some("taint gpu-only=x:NoExecute not tolerated"),
            ),
            (
                false,
                b(&[("gpu-only", "PreferNoSchedule")], None),
                Some(a(None)),
                None,
            ),
            (
                true,
                b(&[("gpu-only", "NoSchedule")], None),
                Some(a(None)),
                None,
            ),
            (
                true,
                b(&[("gpu-only", "NoSchedule"), ("other", "NoExecute")], None),
                Some(a(None)),
                Some("taint other=x:NoExecute"),
            ),
            (false, b(&[], Some("red")), Some(a(Some("red"))), None),
            (
                false,
                b(&[], Some("blue")),
                Some(a(Some("red"))),
                Some("migration pool blue, the pod's node is in migration pool red"),
            ),
            (
                false,
                b(&[], None),
                Some(a(Some("red"))),
                Some("no migration pool, the pod's node is in migration pool red"),
            ),
            (
                false,
                b(&[], Some("red")),
                Some(a(None)),
                Some("migration pool red, the pod's node is in no migration pool"),
            ),
            (false, b(&[], None), None, Some("pod's node a is not known")),
        ];
        for (i, (tolerates, target, source, words)) in table.into_iter().enumerate() {
            if tolerates {
                p = tolerating.clone();
            } else {
                p.spec.as_mut().unwrap().tolerations = None;
            }
            let got = check_target(
                "b",
                ("a", source.as_ref()),
                Some(&target),
                true,
                &p,
                "ferry-system",
            );
            match (got, words) {
                (Ok(()), None) => {}
                (Err(f), Some(words)) => {
                    assert_eq!(f.reason, reason::NO_COMPATIBLE_NODE, "case {i}");
                    assert!(f.message.contains(words), "case {i}: {}", f.message);
                    assert!(
                        f.message.contains("target node b"),
                        "case {i}: {}",
                        f.message
                    );
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn gpus_in_use_sum_per_node_for_the_resource() {
        let pods = [
            pod(serde_json::json!({}), 2, "a"),
            pod(serde_json::json!({}), 1, "a"),
            pod(serde_json::json!({}), 4, "b"),
        ];
        let used = gpus_in_use(&pods, "amd.com/gpu");
        assert_eq!(used, BTreeMap::from([("a".into(), 3), ("b".into(), 4)]));
        assert!(gpus_in_use(&pods, "nvidia.com/gpu").is_empty());
    }
}
