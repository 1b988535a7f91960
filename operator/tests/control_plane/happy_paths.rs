//! A checkpoint and a migration that succeed, and a restore that fails, with the test playing
//! the agents.

use ferry_api::names::{FINALIZER, condition, label, reason};
use ferry_api::{RequestPhase, TaskOperation};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::helpers::{
    Env, agent_writes, checkpoint_done, event_with_reason, fails_with, migrate_to_restoring, poll,
    request, running_pod, task, wait_phase,
};

pub async fn a_checkpoint_succeeds_with_the_test_playing_the_agent(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(env, ns, "r", json!({"podName": "p"})).await;
    let r = wait_phase(env, ns, "r", RequestPhase::Checkpointing).await;
    assert!(r.finalizers().iter().any(|f| f == FINALIZER));
    let t = task(env, ns, "r-checkpoint").await;
    assert_eq!(t.spec.operation, TaskOperation::Checkpoint);
    assert_eq!(t.spec.node_name, env.nodes[0]);
    assert_eq!(t.labels().get(label::NODE), Some(&env.nodes[0]));
    assert_eq!(t.owner_references()[0].uid, r.uid().unwrap());
    assert!(t.spec.pod.uid.is_some());
    agent_writes(env, ns, "r-checkpoint", json!({"phase": "Running"})).await;
    agent_writes(env, ns, "r-checkpoint", checkpoint_done()).await;
    let r = wait_phase(env, ns, "r", RequestPhase::Succeeded).await;
    let st = r.status.unwrap();
    assert_eq!(
        st.condition(condition::CHECKPOINTED).unwrap().status,
        "True"
    );
    assert_eq!(st.condition(condition::READY).unwrap().status, "True");
    assert_eq!(st.checkpoint.as_ref().unwrap().image.size_bytes, Some(4096));
    assert_eq!(st.timings.as_ref().unwrap().steps.checkpoint_ms, Some(120));
    assert_eq!(st.observed_generation, r.metadata.generation);
    assert!(st.start_time.is_some() && st.completion_time.is_some());
    event_with_reason(env, ns, "r", "Checkpointing").await;
    event_with_reason(env, ns, "r", "Succeeded").await;
}

pub async fn a_migration_succeeds_and_deletes_the_source_with_the_test_playing_the_agent(
    env: &Env,
    ns: &str,
) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    let restored = migrate_to_restoring(env, ns, "m").await;
    agent_writes(
        env,
        ns,
        "m-restore",
        json!({"phase": "Succeeded", "result": {"timings": {"transferMs": 300, "restoreMs": 200}}}),
    )
    .await;
    let r = wait_phase(env, ns, "m", RequestPhase::Succeeded).await;
    let st = r.status.unwrap();
    for c in condition::ALL {
        assert_eq!(st.condition(c).unwrap().status, "True", "{c}");
    }
    let t = st.timings.unwrap();
    assert_eq!(t.steps.transfer_ms, Some(300));
    assert_eq!(t.steps.restore_ms, Some(200));
    assert!(t.downtime_ms.unwrap() >= 1500, "{t:?}");
    assert_eq!(st.restored_pod_name.as_deref(), Some(restored.as_str()));
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    poll("the source pod deleted", || async {
        pods.get_opt("p").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(pods.get_opt(&restored).await.unwrap().is_some());
    for e in ["Checkpointing", "Transferring", "Restoring", "Succeeded"] {
        event_with_reason(env, ns, "m", e).await;
    }
}

pub async fn a_failed_restore_deletes_the_restored_pod_and_keeps_the_source_running(
    env: &Env,
    ns: &str,
) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    let restored = migrate_to_restoring(env, ns, "m").await;
    agent_writes(env, ns, "m-restore", json!({"phase": "Failed", "message": "criu restore: exit 1", "result": {"timings": {"transferMs": 1}}})).await;
    let m = fails_with(env, ns, "m", reason::RESTORE_FAILED).await;
    assert!(
        m.contains("criu restore: exit 1") && m.contains("keeps running"),
        "{m}"
    );
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    poll("the restored pod deleted", || async {
        pods.get_opt(&restored)
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    assert!(pods.get_opt("p").await.unwrap().is_some());
}
