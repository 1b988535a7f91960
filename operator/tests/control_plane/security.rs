//! Issue #14 against the real API server, each attack tried and refused next to the
//! legitimate path that still works (docs/security.md, findings 2, 3 and 6 and migration
//! pools): an explicit tainted target, a target in another migration pool, a checkpoint
//! without a digest, a source pod re-created under its name mid-migration, a restored pod
//! that restarted, and a pod squatting the restored pod's name.

use ferry_api::names::{annotation, label, reason};
use ferry_api::{CheckpointRequest, NodeTask, RequestPhase};
use ferry_operator::controller::children::names::restored_pod_name;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::helpers::{
    AGENTS, Env, agent_writes, checkpoint_done, extra_node, fails_with, migrate_to_restoring,
    pod_json, poll, request, running_pod, running_pod_from, wait_phase,
};

/// The names of the NodeTasks in `ns`.
async fn task_names(env: &Env, ns: &str) -> Vec<String> {
    let api: Api<NodeTask> = Api::namespaced(env.admin.clone(), ns);
    let list = api.list(&ListParams::default()).await.unwrap().items;
    list.iter().map(|t| t.name_any()).collect()
}

/// Finding 3: `nodeName` skips the scheduler, so the operator checks the taints itself.
pub async fn a_migration_to_a_tainted_node_fails_before_the_checkpoint_naming_the_taint(
    env: &Env,
    ns: &str,
) {
    let node = extra_node(env, true).await;
    let taint = "ferry-test/dedicated=gpu:NoSchedule";
    env.cluster
        .kubectl(&["taint", "nodes", &node, taint])
        .unwrap();
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "migrate": {"targetNode": node}}),
    )
    .await;
    let m = fails_with(env, ns, "r", reason::NO_COMPATIBLE_NODE).await;
    assert!(
        m.contains(&format!("target node {node}"))
            && m.contains(&format!("taint {taint} not tolerated")),
        "{m}"
    );
    assert!(
        task_names(env, ns).await.is_empty(),
        "nothing is checkpointed"
    );
    // A pod that tolerates the taint goes there.
    let mut pod = pod_json("q", Some(&env.nodes[0]));
    pod["spec"]["tolerations"]
        .as_array_mut()
        .unwrap()
        .push(json!({"key": "ferry-test/dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}));
    running_pod_from(env, ns, "q", pod).await;
    request(
        env,
        ns,
        "ok",
        json!({"podName": "q", "migrate": {"targetNode": node}}),
    )
    .await;
    let r = wait_phase(env, ns, "ok", RequestPhase::Checkpointing).await;
    assert_eq!(
        r.status.unwrap().target_node.as_deref(),
        Some(node.as_str())
    );
}

/// Migration pools: an image never crosses from one pool to another, explicit target or not.
pub async fn a_migration_out_of_its_nodes_pool_fails_and_one_inside_it_goes_ahead(
    env: &Env,
    ns: &str,
) {
    let (src, blue, red) = (
        extra_node(env, true).await,
        extra_node(env, true).await,
        extra_node(env, true).await,
    );
    for (node, pool) in [(&src, "red"), (&blue, "blue"), (&red, "red")] {
        let value = format!("{}={pool}", label::MIGRATION_POOL);
        env.cluster
            .kubectl(&["label", "nodes", node, &value])
            .unwrap();
    }
    running_pod(env, ns, "p", &src).await;
    request(
        env,
        ns,
        "r",
        json!({"podName": "p", "migrate": {"targetNode": blue}}),
    )
    .await;
    let m = fails_with(env, ns, "r", reason::NO_COMPATIBLE_NODE).await;
    assert!(
        m.contains("migration pool blue, the pod's node is in migration pool red"),
        "{m}"
    );
    assert!(
        task_names(env, ns).await.is_empty(),
        "nothing is checkpointed"
    );
    // Picked by the operator: the only other node of the pool.
    request(env, ns, "pick", json!({"podName": "p", "migrate": {}})).await;
    let r = wait_phase(env, ns, "pick", RequestPhase::Checkpointing).await;
    assert_eq!(r.status.unwrap().target_node.as_deref(), Some(red.as_str()));
}

/// Finding 2, the operator's side: a checkpoint without a well-formed digest fails closed.
pub async fn a_checkpoint_without_a_well_formed_digest_fails_closed(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(env, ns, "m", json!({"podName": "p", "migrate": {}})).await;
    wait_phase(env, ns, "m", RequestPhase::Checkpointing).await;
    let mut done = checkpoint_done();
    done["result"]
        .as_object_mut()
        .unwrap()
        .remove("sha256")
        .unwrap();
    agent_writes(env, ns, "m-checkpoint", done).await;
    let m = fails_with(env, ns, "m", reason::CHECKPOINT_FAILED).await;
    assert!(
        m.contains("no image digest") && m.contains("keeps running"),
        "{m}"
    );
    assert_eq!(
        task_names(env, ns).await,
        ["m-checkpoint"],
        "no Restore task"
    );
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), AGENTS);
    let grant = ferry_api::names::agent::grant_secret_name(ns, "m");
    assert!(secrets.get_opt(&grant).await.unwrap().is_none(), "no grant");
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    assert!(pods.get_opt("p").await.unwrap().is_some());
    // A malformed one, on a checkpoint only.
    running_pod(env, ns, "q", &env.nodes[0]).await;
    request(env, ns, "c", json!({"podName": "q"})).await;
    wait_phase(env, ns, "c", RequestPhase::Checkpointing).await;
    let mut done = checkpoint_done();
    done["result"]["sha256"] = json!("ABC");
    agent_writes(env, ns, "c-checkpoint", done).await;
    let m = fails_with(env, ns, "c", reason::CHECKPOINT_FAILED).await;
    assert!(m.contains("malformed image digest \"ABC\""), "{m}");
}

/// Finding 6: a StatefulSet re-creates its pod under the same name; the migration deletes
/// only the pod it checkpointed (UID precondition), never the new one.
pub async fn a_source_pod_recreated_under_its_name_mid_migration_survives(env: &Env, ns: &str) {
    let old = running_pod(env, ns, "p", &env.nodes[0]).await;
    let restored = migrate_to_restoring(env, ns, "m").await;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    // Deleted the ordinary way: kwok finishes it like a kubelet, as a StatefulSet's pod goes.
    pods.delete("p", &DeleteParams::default()).await.unwrap();
    poll("the old pod gone", || async {
        pods.get_opt("p").await.unwrap().is_none().then_some(())
    })
    .await;
    let new = running_pod(env, ns, "p", &env.nodes[0]).await;
    assert_ne!(new.uid(), old.uid());
    agent_writes(
        env,
        ns,
        "m-restore",
        json!({"phase": "Succeeded", "result": {"timings": {"transferMs": 300, "restoreMs": 200}}}),
    )
    .await;
    let r = wait_phase(env, ns, "m", RequestPhase::Succeeded).await;
    let st = r.status.unwrap();
    assert_eq!(st.source_pod_uid, old.uid());
    let ready = st.condition(ferry_api::names::condition::READY).unwrap();
    assert!(
        ready.message.contains("already replaced"),
        "{}",
        ready.message
    );
    // Give a wrong delete time to land, then look.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let still = pods.get("p").await.unwrap();
    assert_eq!(still.uid(), new.uid());
    assert!(still.metadata.deletion_timestamp.is_none());
    assert!(pods.get_opt(&restored).await.unwrap().is_some());
}

/// Finding 6: phase Running is not enough; a restored container that restarted fails the
/// migration and the source keeps running.
pub async fn a_restored_pod_whose_container_restarted_does_not_replace_the_source(
    env: &Env,
    ns: &str,
) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    let restored = migrate_to_restoring(env, ns, "m").await;
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    let pod = poll("the restored pod Running", || async {
        let p = pods.get(&restored).await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    // Its container crashed once and runs again: Running and ready, one restart.
    let started = jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let image = pod.spec.unwrap().containers[0].image.clone().unwrap();
    let status = json!({"status": {"containerStatuses": [{"name": "main", "image": image,
        "imageID": "", "ready": true, "restartCount": 1, "state": {"running": {"startedAt": started}}}]}});
    pods.patch_status(&restored, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    agent_writes(
        env,
        ns,
        "m-restore",
        json!({"phase": "Succeeded", "result": {"timings": {"transferMs": 300, "restoreMs": 200}}}),
    )
    .await;
    let m = fails_with(env, ns, "m", reason::RESTORE_FAILED).await;
    assert!(
        m.contains("container main restarted 1 time(s)") && m.contains("keeps running"),
        "{m}"
    );
    let source = pods.get("p").await.unwrap();
    assert!(source.metadata.deletion_timestamp.is_none());
    // The operator's own restored pod goes (by its recorded UID).
    poll("the restored pod deleted", || async {
        pods.get_opt(&restored)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
}

/// Finding 6: a pod created under the restored pod's (predictable) name before the operator
/// creates it is not adopted, even with the request's annotation, and not deleted.
pub async fn a_pod_squatting_the_restored_name_is_neither_adopted_nor_deleted(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(env, ns, "m", json!({"podName": "p", "migrate": {}})).await;
    wait_phase(env, ns, "m", RequestPhase::Checkpointing).await;
    let api: Api<CheckpointRequest> = Api::namespaced(env.admin.clone(), ns);
    let uid = api.get("m").await.unwrap().uid().unwrap();
    let name = restored_pod_name("p", &uid);
    let mut squat = pod_json(&name, Some(&env.nodes[1]));
    squat["metadata"]["annotations"] = json!({annotation::CHECKPOINT_REQUEST: "m"});
    squat["metadata"]["labels"][label::CHECKPOINT_REQUEST] = json!("m");
    let squatter = running_pod_from(env, ns, &name, squat).await;
    agent_writes(env, ns, "m-checkpoint", checkpoint_done()).await;
    let m = fails_with(env, ns, "m", reason::RESTORE_FAILED).await;
    assert!(
        m.contains(&format!(
            "pod {ns}/{name} is not this request's restored pod"
        )) && m.contains("left alone"),
        "{m}"
    );
    assert_eq!(
        task_names(env, ns).await,
        ["m-checkpoint"],
        "no Restore task"
    );
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let still = pods.get(&name).await.unwrap();
    assert_eq!(still.uid(), squatter.uid());
    assert!(still.metadata.deletion_timestamp.is_none(), "not deleted");
    assert!(
        pods.get("p")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_none()
    );
}
