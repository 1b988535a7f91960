//! Requests that fail before anything is checkpointed, each with its reason and a Warning
//! Event.

use ferry_api::names::reason;
use ferry_api::{NodeTask, RequestPhase};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::helpers::{
    Env, agent_lease, extra_node, fails_with, pod_json, request, running_pod, running_pod_from,
    wait_phase,
};

pub async fn a_request_for_a_missing_pod_fails_with_pod_not_found_and_an_event(
    env: &Env,
    ns: &str,
) {
    request(env, ns, "r", json!({"podName": "ghost"})).await;
    let m = fails_with(env, ns, "r", reason::POD_NOT_FOUND).await;
    assert!(m.contains("ghost"), "{m}");
}

pub async fn a_request_for_a_pending_pod_fails_with_pod_not_running(env: &Env, ns: &str) {
    let api: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(pod_json("p", None)).unwrap(),
    )
    .await
    .unwrap();
    request(env, ns, "r", json!({"podName": "p"})).await;
    fails_with(env, ns, "r", reason::POD_NOT_RUNNING).await;
}

pub async fn a_request_naming_an_unknown_container_fails_with_container_not_found(
    env: &Env,
    ns: &str,
) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "containers": ["sidecar"]}),
    )
    .await;
    let m = fails_with(env, ns, "r", reason::CONTAINER_NOT_FOUND).await;
    assert!(m.contains("sidecar") && m.contains("main"), "{m}");
}

pub async fn a_request_for_a_pod_on_a_node_without_an_agent_fails_with_agent_not_ready(
    env: &Env,
    ns: &str,
) {
    let node = extra_node(env, false).await;
    running_pod(env, ns, "p", &node).await;
    request(env, ns, "r", json!({"podName": "p"})).await;
    let m = fails_with(env, ns, "r", reason::AGENT_NOT_READY).await;
    assert!(m.contains(&node), "{m}");
}

pub async fn a_migration_to_a_missing_node_fails_with_target_node_not_found(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "migrate": {"targetNode": "nowhere"}}),
    )
    .await;
    fails_with(env, ns, "r", reason::TARGET_NODE_NOT_FOUND).await;
}

pub async fn a_migration_to_a_node_that_is_not_ready_fails_with_target_node_not_ready(
    env: &Env,
    ns: &str,
) {
    // A node kwok does not manage never becomes Ready.
    let api: Api<Node> = Api::all(env.admin.clone());
    let node = serde_json::from_value(json!({"metadata": {"name": "not-ready-node"}})).unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    agent_lease(env, "not-ready-node", true).await;
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "migrate": {"targetNode": "not-ready-node"}}),
    )
    .await;
    fails_with(env, ns, "r", reason::TARGET_NODE_NOT_READY).await;
}

pub async fn a_migration_to_a_cordoned_node_fails_with_target_node_unschedulable(
    env: &Env,
    ns: &str,
) {
    let node = extra_node(env, true).await;
    env.cluster.kubectl(&["cordon", &node]).unwrap();
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "migrate": {"targetNode": node}}),
    )
    .await;
    fails_with(env, ns, "r", reason::TARGET_NODE_UNSCHEDULABLE).await;
}

/// The target's kubelet would refuse the restored pod (NodeAffinity admission), so the request
/// fails before anything is checkpointed; the pod's pin to its own node does not count.
pub async fn a_migration_to_a_node_outside_the_pods_node_affinity_fails_with_no_compatible_node(
    env: &Env,
    ns: &str,
) {
    let node = extra_node(env, true).await;
    let mut pod = pod_json("p", Some(&env.nodes[0]));
    pod["spec"]["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "kubernetes.io/hostname", "operator": "In", "values": [env.nodes[0]]},
            {"key": "pool", "operator": "In", "values": ["train"]},
        ]}],
    }}});
    running_pod_from(env, ns, "p", pod).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "migrate": {"targetNode": node}}),
    )
    .await;
    let m = fails_with(env, ns, "r", reason::NO_COMPATIBLE_NODE).await;
    assert_eq!(
        m,
        format!(
            "target node {} does not fit the pod: required node affinity not met (pool In [train])",
            node
        )
    );
    let tasks: Api<NodeTask> = Api::namespaced(env.admin.clone(), ns);
    assert!(
        tasks
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
}

pub async fn a_migration_to_the_pods_own_node_fails_with_target_is_source(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "migrate": {"targetNode": env.nodes[0]}}),
    )
    .await;
    fails_with(env, ns, "r", reason::TARGET_IS_SOURCE).await;
}

pub async fn a_request_with_a_missing_pvc_fails_with_pvc_not_found(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "storage": {"pvc": {"claimName": "ckpts"}}}),
    )
    .await;
    fails_with(env, ns, "r", reason::PVC_NOT_FOUND).await;
}

pub async fn a_second_request_for_a_busy_pod_fails_with_request_already_active(
    env: &Env,
    ns: &str,
) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(env, ns, "first", json!({"podName": "p"})).await;
    wait_phase(env, ns, "first", RequestPhase::Checkpointing).await;
    request(env, ns, "second", json!({"podName": "p"})).await;
    let m = fails_with(env, ns, "second", reason::REQUEST_ALREADY_ACTIVE).await;
    assert!(m.contains("first"), "{m}");
}

pub async fn a_migration_no_node_can_take_fails_with_no_compatible_node_naming_each_node(
    env: &Env,
    ns: &str,
) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "migrate": {"nodeSelector": {"gpu": "mi300x"}}}),
    )
    .await;
    let m = fails_with(env, ns, "r", reason::NO_COMPATIBLE_NODE).await;
    assert!(
        m.contains(&format!("{}: the pod's own node", env.nodes[0])),
        "{m}"
    );
    assert!(
        m.contains(&format!("{}: label gpu=mi300x missing", env.nodes[1])),
        "{m}"
    );
    assert!(m.contains("not-ready-node: NotReady"), "{m}");
}
