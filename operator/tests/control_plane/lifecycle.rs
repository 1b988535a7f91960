//! What happens around the phases: operator restarts, deletion, timeout, TTL, spec
//! immutability, and leader election between two replicas.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ferry_api::names::{label, reason};
use ferry_api::{CheckpointRequest, NodeTask, RequestPhase, TaskOperation};
use ferry_operator::controller;
use ferry_operator::leader::{self, LeaseConfig};
use ferry_operator::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::helpers::{
    AGENTS, Env, agent_writes, checkpoint_done, config, fails_with, migrate_to_restoring, poll,
    request, running_pod, start_operator, task, tasks_of, wait_phase,
};

pub async fn an_operator_restart_in_each_phase_of_a_migration_resumes_it(env: &Env, ns: &str) {
    // Each phase: the operator stops, the agent moves on while it is down, a new operator
    // (fresh caches, no memory) takes the request on from what it finds.
    running_pod(env, ns, "p", &env.nodes[0]).await;
    let op = start_operator(env);
    request(env, ns, "m", json!({"podName": "p", "migrate": {}})).await;
    wait_phase(env, ns, "m", RequestPhase::Checkpointing).await;
    task(env, ns, "m-checkpoint").await;
    op.abort();
    agent_writes(env, ns, "m-checkpoint", checkpoint_done()).await;
    let op = start_operator(env);
    wait_phase(env, ns, "m", RequestPhase::Transferring).await;
    task(env, ns, "m-restore").await;
    op.abort();
    agent_writes(
        env,
        ns,
        "m-restore",
        json!({"phase": "Running", "result": {"timings": {"transferMs": 5}}}),
    )
    .await;
    let op = start_operator(env);
    wait_phase(env, ns, "m", RequestPhase::Restoring).await;
    op.abort();
    agent_writes(
        env,
        ns,
        "m-restore",
        json!({"phase": "Succeeded", "result": {"timings": {"transferMs": 5, "restoreMs": 7}}}),
    )
    .await;
    let op = start_operator(env);
    let r = wait_phase(env, ns, "m", RequestPhase::Succeeded).await;
    op.abort();
    let api: Api<NodeTask> = Api::namespaced(env.admin.clone(), ns);
    let list = api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(tasks_of(&list, "m"), vec!["m-checkpoint", "m-restore"]);
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    let restored: Vec<String> = pods
        .list(&ListParams::default().labels(label::CHECKPOINT_REQUEST))
        .await
        .unwrap()
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    assert_eq!(restored, vec![r.status.unwrap().restored_pod_name.unwrap()]);
}

pub async fn deleting_a_running_migration_aborts_it_and_deletes_images_through_the_agents(
    env: &Env,
    ns: &str,
) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    let restored = migrate_to_restoring(env, ns, "m").await;
    let api: Api<CheckpointRequest> = Api::namespaced(env.admin.clone(), ns);
    api.delete("m", &DeleteParams::default()).await.unwrap();
    let source = task(env, ns, "m-delete-source").await;
    let target = task(env, ns, "m-delete-target").await;
    assert_eq!(source.spec.operation, TaskOperation::Delete);
    assert_eq!(source.spec.node_name, env.nodes[0]);
    assert_ne!(target.spec.node_name, env.nodes[0]);
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    poll("the restored pod deleted", || async {
        pods.get_opt(&restored)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(
        pods.get_opt("p").await.unwrap().is_some(),
        "the source pod must stay"
    );
    assert!(
        api.get_opt("m").await.unwrap().is_some(),
        "deletion waits for the agents"
    );
    agent_writes(env, ns, "m-delete-source", json!({"phase": "Succeeded"})).await;
    agent_writes(env, ns, "m-delete-target", json!({"phase": "Succeeded"})).await;
    poll("the request gone", || async {
        api.get_opt("m").await.unwrap().is_none().then_some(())
    })
    .await;
    // The grant (in the agents' namespace) goes with the request.
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), AGENTS);
    let grant = ferry_api::names::agent::grant_secret_name(ns, "m");
    assert!(secrets.get_opt(&grant).await.unwrap().is_none());
}

pub async fn a_request_past_its_timeout_fails_with_timeout(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(env, ns, "r", json!({"podName": "p", "timeoutSeconds": 10})).await;
    wait_phase(env, ns, "r", RequestPhase::Checkpointing).await;
    let deadline = Instant::now() + Duration::from_secs(25);
    let api: Api<CheckpointRequest> = Api::namespaced(env.admin.clone(), ns);
    while api.get("r").await.unwrap().phase() != RequestPhase::Failed {
        assert!(Instant::now() < deadline, "no timeout");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fails_with(env, ns, "r", reason::TIMEOUT).await;
    let tasks: Api<NodeTask> = Api::namespaced(env.admin.clone(), ns);
    poll("the unfinished task deleted", || async {
        tasks
            .get_opt("r-checkpoint")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

pub async fn a_finished_request_is_deleted_after_its_ttl(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "ttlSecondsAfterFinished": 1}),
    )
    .await;
    wait_phase(env, ns, "r", RequestPhase::Checkpointing).await;
    agent_writes(env, ns, "r-checkpoint", checkpoint_done()).await;
    wait_phase(env, ns, "r", RequestPhase::Succeeded).await;
    let d = task(env, ns, "r-delete-source").await;
    assert_eq!(d.spec.operation, TaskOperation::Delete);
    agent_writes(env, ns, "r-delete-source", json!({"phase": "Succeeded"})).await;
    let api: Api<CheckpointRequest> = Api::namespaced(env.admin.clone(), ns);
    poll("the request gone", || async {
        api.get_opt("r").await.unwrap().is_none().then_some(())
    })
    .await;
}

pub async fn the_api_server_rejects_a_spec_update(env: &Env, ns: &str) {
    request(env, ns, "r", json!({"podName": "ghost"})).await;
    let api: Api<CheckpointRequest> = Api::namespaced(env.admin.clone(), ns);
    let err = api
        .patch(
            "r",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"podName": "other"}})),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("immutable"), "{err}");
}

pub async fn two_replicas_fail_over_without_a_duplicated_node_task(env: &Env, ns: &str) {
    let replica = |id: &'static str| {
        let client = env.operator.clone();
        tokio::spawn(async move {
            let lease = LeaseConfig {
                namespace: AGENTS.into(),
                name: "ferry-operator-e2e".into(),
                identity: id.into(),
                lease_duration: Duration::from_secs(3),
                renew_every: Duration::from_millis(500),
            };
            let lead_client = client.clone();
            let r = leader::run(
                client,
                lease,
                Arc::new(AtomicBool::new(false)),
                std::future::pending(),
                move |stop| {
                    controller::run(
                        lead_client,
                        config(id),
                        Arc::new(Metrics::new().unwrap()),
                        stop.wait(),
                    )
                },
            )
            .await;
            eprintln!("replica {id} stopped: {r:?}");
        })
    };
    let mut replicas = BTreeMap::from([("a", replica("a")), ("b", replica("b"))]);
    let leases: Api<Lease> = Api::namespaced(env.admin.clone(), AGENTS);
    let holder = || async {
        leases
            .get("ferry-operator-e2e")
            .await
            .ok()?
            .spec?
            .holder_identity
            .filter(|h| !h.is_empty())
    };
    let first = poll("a leader", holder).await;
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(env, ns, "r", json!({"podName": "p"})).await;
    wait_phase(env, ns, "r", RequestPhase::Checkpointing).await;
    // Kill the leader: no release, the lease has to expire.
    let killed = Instant::now();
    if let Some(h) = replicas.remove(first.as_str()) {
        h.abort();
    }
    let second = poll("another leader", || async {
        holder().await.filter(|h| *h != first)
    })
    .await;
    eprintln!(
        "failover from {first} to {second} in {:.1?}",
        killed.elapsed()
    );
    // The new leader acts: it rejects a second request and finishes the first.
    request(env, ns, "r2", json!({"podName": "p"})).await;
    fails_with(env, ns, "r2", reason::REQUEST_ALREADY_ACTIVE).await;
    agent_writes(env, ns, "r-checkpoint", checkpoint_done()).await;
    wait_phase(env, ns, "r", RequestPhase::Succeeded).await;
    let api: Api<NodeTask> = Api::namespaced(env.admin.clone(), ns);
    let list = api.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(tasks_of(&list, "r"), vec!["r-checkpoint"]);
    for (_, h) in replicas {
        h.abort();
    }
}
