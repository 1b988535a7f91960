//! The test's cluster, its clients and the operator it runs, and what the scenarios do to it:
//! create pods and requests, play the agents (Leases, NodeTask statuses), wait for phases and
//! Events.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::names::{condition, label};
use ferry_api::{CheckpointRequest, NodeTask, RequestPhase, TaskOperation};
use ferry_e2e::{Cluster, User};
use ferry_operator::controller::children::transfer_secret::TOKEN_KEY;
use ferry_operator::controller::{self, Config};
use ferry_operator::metrics::Metrics;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

pub const AGENTS: &str = "ferry-system";
pub const NODES: usize = 4;
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Env {
    pub cluster: Cluster,
    pub admin: Client,
    pub operator: Client,
    pub nodes: Vec<String>,
}

pub async fn client(cluster: &Cluster, user: User) -> Client {
    let kc = Kubeconfig::read_from(cluster.kubeconfig(user)).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

pub fn config(identity: &str) -> Config {
    Config {
        agent_namespace: AGENTS.into(),
        active_requeue: Duration::from_secs(1),
        cleanup_timeout: Duration::from_secs(20),
        instance: identity.into(),
        // Short, so that the scenarios do not wait long; the settle rules are the same.
        restore_settle: Duration::from_secs(1),
        ..Config::default()
    }
}

/// The controller, without leader election, as the `ferry-operator` user.
pub fn start_operator(env: &Env) -> JoinHandle<()> {
    let client = env.operator.clone();
    tokio::spawn(async move {
        let r = controller::run(
            client,
            config("test"),
            Arc::new(Metrics::new().unwrap()),
            std::future::pending(),
        )
        .await;
        eprintln!("operator stopped: {r:?}");
    })
}

pub async fn create_namespace(env: &Env, ns: &str) {
    let api: Api<Namespace> = Api::all(env.admin.clone());
    let obj: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap();
    // Pods are admitted only once the controller manager made the default service account.
    let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(env.admin.clone(), ns);
    poll("the default service account", || async {
        sa.get_opt("default").await.ok().flatten()
    })
    .await;
}

/// The transfer certificate fingerprint every played agent publishes.
pub const CERT_SHA256: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Plays the agent on `node`: a readiness Lease, renewed now (or long expired).
pub async fn agent_lease(env: &Env, node: &str, live: bool) {
    let api: Api<Lease> = Api::namespaced(env.admin.clone(), AGENTS);
    let renewed = if live {
        jiff::Timestamp::now()
    } else {
        jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1)
    };
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": ferry_api::agent_lease::lease_name(node),
                     "annotations": {ferry_api::names::annotation::TRANSFER_CERT_SHA256: CERT_SHA256}},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 3600, "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    });
    api.patch(
        &ferry_api::agent_lease::lease_name(node),
        &PatchParams::apply("e2e-agent").force(),
        &Patch::Apply(&lease),
    )
    .await
    .unwrap();
}

pub fn pod_json(name: &str, node: Option<&str>) -> serde_json::Value {
    let mut spec = json!({
        "containers": [{"name": "main", "image": "registry.example/trainer:1"}],
        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}],
    });
    match node {
        Some(n) => spec["nodeName"] = json!(n),
        None => spec["nodeSelector"] = json!({"no-such-label": "x"}),
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "trainer"}}, "spec": spec})
}

/// One more kwok node, Ready, with an agent Lease (`agent_ready` or expired).
pub async fn extra_node(env: &Env, agent_ready: bool) -> String {
    let extra = env.cluster.add_kwok_nodes(1).unwrap();
    env.cluster.wait_nodes_ready(&extra, WAIT).unwrap();
    agent_lease(env, &extra[0], agent_ready).await;
    extra[0].clone()
}

/// A pod on `node`, Running (kwok runs it).
pub async fn running_pod(env: &Env, ns: &str, name: &str, node: &str) -> Pod {
    running_pod_from(env, ns, name, pod_json(name, Some(node))).await
}

/// The pod `json` (named `name`), Running.
pub async fn running_pod_from(env: &Env, ns: &str, name: &str, json: serde_json::Value) -> Pod {
    let api: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    api.create(
        &PostParams::default(),
        &serde_json::from_value(json).unwrap(),
    )
    .await
    .unwrap();
    poll(&format!("pod {name} Running"), || async {
        let p = api.get(name).await.ok()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await
}

pub async fn request(env: &Env, ns: &str, name: &str, spec: serde_json::Value) {
    let api: Api<CheckpointRequest> = Api::namespaced(env.admin.clone(), ns);
    let obj = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "CheckpointRequest", "metadata": {"name": name}, "spec": spec});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap();
}

pub async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn wait_phase(env: &Env, ns: &str, name: &str, phase: RequestPhase) -> CheckpointRequest {
    let api: Api<CheckpointRequest> = Api::namespaced(env.admin.clone(), ns);
    let mut last = None;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(r) = api.get(name).await {
            if r.status.as_ref().and_then(|s| s.phase) == Some(phase) {
                return r;
            }
            last = r.status;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/{name} never reached {phase:?}; last status {last:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for `Failed` with `why` on the Ready condition and a Warning Event with that reason;
/// returns the message.
pub async fn fails_with(env: &Env, ns: &str, name: &str, why: &str) -> String {
    let r = wait_phase(env, ns, name, RequestPhase::Failed).await;
    let ready = r
        .status
        .as_ref()
        .and_then(|s| s.condition(condition::READY))
        .cloned()
        .unwrap();
    assert_eq!(ready.reason, why, "{ready:?}");
    assert_eq!(ready.status, "False");
    assert!(
        r.status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .is_some()
    );
    event_with_reason(env, ns, name, why).await;
    ready.message
}

pub async fn event_with_reason(env: &Env, ns: &str, name: &str, why: &str) -> Event {
    let api: Api<Event> = Api::namespaced(env.admin.clone(), ns);
    poll(&format!("an Event {why} on {name}"), || async {
        let list = api.list(&ListParams::default()).await.ok()?;
        list.items.into_iter().find(|e| {
            e.reason.as_deref() == Some(why)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
    })
    .await
}

pub async fn task(env: &Env, ns: &str, name: &str) -> NodeTask {
    let api: Api<NodeTask> = Api::namespaced(env.admin.clone(), ns);
    poll(&format!("NodeTask {name}"), || async {
        api.get(name).await.ok()
    })
    .await
}

/// Plays the agent: writes a NodeTask's status as the agent's field manager.
pub async fn agent_writes(env: &Env, ns: &str, name: &str, status: serde_json::Value) {
    let api: Api<NodeTask> = Api::namespaced(env.admin.clone(), ns);
    let t = api.get(name).await.unwrap();
    let body = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "NodeTask", "status": status});
    let manager = ferry_api::names::field_manager::agent(&t.spec.node_name);
    api.patch_status(
        name,
        &PatchParams::apply(&manager).force(),
        &Patch::Apply(&body),
    )
    .await
    .unwrap();
}

pub fn checkpoint_done() -> serde_json::Value {
    let frozen = (jiff::Timestamp::now() - jiff::SignedDuration::from_millis(1500))
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    json!({"phase": "Succeeded", "result": {"sizeBytes": 4096, "sha256": CERT_SHA256, "gpuVendor": "none",
        "timings": {"checkpointMs": 120, "frozenAt": frozen}}})
}

pub fn tasks_of(list: &[NodeTask], request: &str) -> Vec<String> {
    let mut v: Vec<String> = list
        .iter()
        .filter(|t| {
            t.labels()
                .get(label::CHECKPOINT_REQUEST)
                .map(String::as_str)
                == Some(request)
        })
        .map(|t| t.name_any())
        .collect();
    v.sort();
    v
}

/// Drives a migration of pod `p` to Restoring; returns the restored pod's name.
pub async fn migrate_to_restoring(env: &Env, ns: &str, name: &str) -> String {
    request(env, ns, name, json!({"podName": "p", "migrate": {}})).await;
    let r = wait_phase(env, ns, name, RequestPhase::Checkpointing).await;
    let target = r.status.unwrap().target_node.unwrap();
    assert_ne!(target, env.nodes[0]);
    agent_writes(env, ns, &format!("{name}-checkpoint"), checkpoint_done()).await;
    wait_phase(env, ns, name, RequestPhase::Transferring).await;
    let restore = task(env, ns, &format!("{name}-restore")).await;
    assert_eq!(restore.spec.operation, TaskOperation::Restore);
    assert_eq!(restore.spec.node_name, target);
    let source = restore.spec.source.clone().unwrap();
    assert!(
        source.endpoint.starts_with("https://"),
        "{}",
        source.endpoint
    );
    // The grant lives in the agents' namespace, where tenants cannot write.
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), AGENTS);
    let secret = secrets.get(&source.token_secret_ref.name).await.unwrap();
    assert!(secret.data.unwrap().contains_key(TOKEN_KEY));
    // The source agent checks the token against these: until when, and for which image.
    let notes = secret.metadata.annotations.unwrap();
    let expires: jiff::Timestamp = notes[ferry_api::names::annotation::TOKEN_EXPIRES_AT]
        .parse()
        .unwrap();
    assert!(expires > jiff::Timestamp::now(), "{expires}");
    assert_eq!(
        notes[ferry_api::names::annotation::IMAGE_LOCATION],
        restore.spec.image.location
    );
    // The target pins the source agent's certificate and the checkpoint's image digest.
    assert_eq!(source.cert_sha256.as_deref(), Some(CERT_SHA256));
    assert!(source.image_sha256.is_some(), "{source:?}");
    let pods: Api<Pod> = Api::namespaced(env.admin.clone(), ns);
    let restored = pods.get(&restore.spec.pod.name).await.unwrap();
    assert_eq!(
        restored.spec.as_ref().unwrap().node_name.as_deref(),
        Some(target.as_str())
    );
    assert_eq!(
        restored.labels().get("app").map(String::as_str),
        Some("trainer")
    );
    agent_writes(env, ns, &format!("{name}-restore"), json!({"phase": "Running", "result": {"timings": {"transferMs": 300}, "transfer": {"bytes": 4096}}})).await;
    wait_phase(env, ns, name, RequestPhase::Restoring).await;
    restore.spec.pod.name
}
