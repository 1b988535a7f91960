// Test code: unwrap/expect are allowed in tests (the workspace lints deny them elsewhere);
// helpers outside #[test] need it said.
#![allow(clippy::expect_used, clippy::unwrap_used)]

//! The operator's controller, started in-process as the `ferry-operator` user with only the
//! RBAC of `manifests/rbac/`, against a real control plane (etcd, kube-apiserver,
//! controller-manager, scheduler) with kwok nodes that run pods on paper. The test plays
//! the node agents: it renews their readiness Leases and writes NodeTask statuses.
//!
//! One cluster per test binary; scenarios run in sequence, each in its own namespace, and the
//! test fails listing every failed scenario.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ferry_api::names::{FINALIZER, condition, label, reason};
use ferry_api::{CheckpointRequest, NodeTask, RequestPhase, TaskOperation};
use ferry_e2e::{Cluster, Options, User};
use ferry_operator::controller::children::transfer_secret::TOKEN_KEY;
use ferry_operator::controller::{self, Config};
use ferry_operator::leader::{self, LeaseConfig};
use ferry_operator::metrics::Metrics;
use futures::FutureExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::task::JoinHandle;

const AGENTS: &str = "ferry-system";
const NODES: usize = 4;
const WAIT: Duration = Duration::from_secs(30);

struct Env {
    cluster: Cluster,
    admin: Client,
    operator: Client,
    nodes: Vec<String>,
}

type Scenario = for<'a> fn(&'a Env, &'a str) -> Pin<Box<dyn Future<Output = ()> + 'a>>;

macro_rules! scenarios {
    ($($f:ident),* $(,)?) => { &[$((stringify!($f), |e, ns| Box::pin($f(e, ns)))),*] };
}

const SCENARIOS: &[(&str, Scenario)] = scenarios![
    a_request_for_a_missing_pod_fails_with_pod_not_found_and_an_event,
    a_request_for_a_pending_pod_fails_with_pod_not_running,
    a_request_naming_an_unknown_container_fails_with_container_not_found,
    a_request_for_a_pod_on_a_node_without_an_agent_fails_with_agent_not_ready,
    a_migration_to_a_missing_node_fails_with_target_node_not_found,
    a_migration_to_a_node_that_is_not_ready_fails_with_target_node_not_ready,
    a_migration_to_a_cordoned_node_fails_with_target_node_unschedulable,
    a_migration_to_the_pods_own_node_fails_with_target_is_source,
    a_migration_to_a_node_outside_the_pods_node_affinity_fails_with_no_compatible_node,
    a_request_with_a_missing_pvc_fails_with_pvc_not_found,
    a_second_request_for_a_busy_pod_fails_with_request_already_active,
    a_migration_no_node_can_take_fails_with_no_compatible_node_naming_each_node,
    a_checkpoint_succeeds_with_the_test_playing_the_agent,
    a_migration_succeeds_and_deletes_the_source_with_the_test_playing_the_agent,
    a_failed_restore_deletes_the_restored_pod_and_keeps_the_source_running,
    an_operator_restart_in_each_phase_of_a_migration_resumes_it,
    deleting_a_running_migration_aborts_it_and_deletes_images_through_the_agents,
    a_request_past_its_timeout_fails_with_timeout,
    a_finished_request_is_deleted_after_its_ttl,
    the_api_server_rejects_a_spec_update,
];

#[test]
fn the_operator_reconciles_requests_against_a_real_control_plane() {
    let cluster = Cluster::start(Options::control_plane().with_controllers().with_kwok())
        .unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
    let nodes = cluster
        .add_kwok_nodes(NODES)
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .wait_nodes_ready(&nodes, WAIT)
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .kubectl(&["create", "namespace", AGENTS])
        .unwrap_or_else(|e| panic!("{e}"));
    let rbac = ferry_e2e::workspace_root().join("manifests/rbac");
    cluster
        .kubectl(&["apply", "-f", &rbac.display().to_string()])
        .unwrap_or_else(|e| panic!("{e}"));
    // The harness's operator certificate is user ferry-operator: bind the same roles to it.
    for args in [
        [
            "create",
            "clusterrolebinding",
            "ferry-operator-user",
            "--clusterrole=ferry-operator",
            "--user=ferry-operator",
        ]
        .as_slice(),
        [
            "create",
            "rolebinding",
            "ferry-operator-user",
            "-n",
            AGENTS,
            "--role=ferry-operator",
            "--user=ferry-operator",
        ]
        .as_slice(),
    ] {
        cluster.kubectl(args).unwrap_or_else(|e| panic!("{e}"));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let failed = runtime.block_on(async {
        let admin = client(&cluster, User::Admin).await;
        let operator = client(&cluster, User::Operator).await;
        let env = Env {
            cluster,
            admin,
            operator,
            nodes,
        };
        for node in &env.nodes {
            agent_lease(&env, node, true).await;
        }
        let mut failed = Vec::new();
        for (i, (name, scenario)) in SCENARIOS.iter().enumerate() {
            let ns = format!("s{i:02}");
            let began = Instant::now();
            create_namespace(&env, &ns).await;
            // The restart scenario runs its own operators.
            let op = (!name.starts_with("an_operator_restart")).then(|| start_operator(&env));
            let outcome = AssertUnwindSafe(scenario(&env, &ns)).catch_unwind().await;
            if let Some(op) = op {
                op.abort();
            }
            match outcome {
                Ok(()) => eprintln!("scenario ok ({:.1?}): {name}", began.elapsed()),
                Err(_) => {
                    eprintln!("scenario FAILED ({:.1?}): {name}", began.elapsed());
                    failed.push(*name);
                }
            }
        }
        let began = Instant::now();
        let name = "two_replicas_fail_over_without_a_duplicated_node_task";
        create_namespace(&env, "leader").await;
        match AssertUnwindSafe(two_replicas_fail_over_without_a_duplicated_node_task(
            &env, "leader",
        ))
        .catch_unwind()
        .await
        {
            Ok(()) => eprintln!("scenario ok ({:.1?}): {name}", began.elapsed()),
            Err(_) => {
                eprintln!("scenario FAILED ({:.1?}): {name}", began.elapsed());
                failed.push(name);
            }
        }
        (failed, env)
    });
    let (failed, env) = failed;
    drop(runtime);
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");
    drop(env);
}

// ---- helpers -------------------------------------------------------------------------------

async fn client(cluster: &Cluster, user: User) -> Client {
    let kc = Kubeconfig::read_from(cluster.kubeconfig(user)).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    Client::try_from(cfg).unwrap()
}

fn config(identity: &str) -> Config {
    Config {
        agent_namespace: AGENTS.into(),
        active_requeue: Duration::from_secs(1),
        cleanup_timeout: Duration::from_secs(20),
        instance: identity.into(),
        ..Config::default()
    }
}

/// The controller, without leader election, as the `ferry-operator` user.
fn start_operator(env: &Env) -> JoinHandle<()> {
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

async fn create_namespace(env: &Env, ns: &str) {
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
const CERT_SHA256: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// Plays the agent on `node`: a readiness Lease, renewed now (or long expired).
async fn agent_lease(env: &Env, node: &str, live: bool) {
    let api: Api<Lease> = Api::namespaced(env.admin.clone(), AGENTS);
    let renewed = if live {
        jiff::Timestamp::now()
    } else {
        jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1)
    };
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": ferry_operator::agents::lease_name(node),
                     "annotations": {ferry_api::names::annotation::TRANSFER_CERT_SHA256: CERT_SHA256}},
        "spec": {"holderIdentity": node, "leaseDurationSeconds": 3600, "renewTime": renewed.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
    });
    api.patch(
        &ferry_operator::agents::lease_name(node),
        &PatchParams::apply("e2e-agent").force(),
        &Patch::Apply(&lease),
    )
    .await
    .unwrap();
}

fn pod_json(name: &str, node: Option<&str>) -> serde_json::Value {
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
async fn extra_node(env: &Env, agent_ready: bool) -> String {
    let extra = env.cluster.add_kwok_nodes(1).unwrap();
    env.cluster.wait_nodes_ready(&extra, WAIT).unwrap();
    agent_lease(env, &extra[0], agent_ready).await;
    extra[0].clone()
}

/// A pod on `node`, Running (kwok runs it).
async fn running_pod(env: &Env, ns: &str, name: &str, node: &str) -> Pod {
    running_pod_from(env, ns, name, pod_json(name, Some(node))).await
}

/// The pod `json` (named `name`), Running.
async fn running_pod_from(env: &Env, ns: &str, name: &str, json: serde_json::Value) -> Pod {
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

async fn request(env: &Env, ns: &str, name: &str, spec: serde_json::Value) {
    let api: Api<CheckpointRequest> = Api::namespaced(env.admin.clone(), ns);
    let obj = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "CheckpointRequest", "metadata": {"name": name}, "spec": spec});
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap();
}

async fn poll<T, F, Fut>(what: &str, mut probe: F) -> T
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

async fn wait_phase(env: &Env, ns: &str, name: &str, phase: RequestPhase) -> CheckpointRequest {
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
async fn fails_with(env: &Env, ns: &str, name: &str, why: &str) -> String {
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

async fn event_with_reason(env: &Env, ns: &str, name: &str, why: &str) -> Event {
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

async fn task(env: &Env, ns: &str, name: &str) -> NodeTask {
    let api: Api<NodeTask> = Api::namespaced(env.admin.clone(), ns);
    poll(&format!("NodeTask {name}"), || async {
        api.get(name).await.ok()
    })
    .await
}

/// Plays the agent: writes a NodeTask's status as the agent's field manager.
async fn agent_writes(env: &Env, ns: &str, name: &str, status: serde_json::Value) {
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

fn checkpoint_done() -> serde_json::Value {
    let frozen = (jiff::Timestamp::now() - jiff::SignedDuration::from_millis(1500))
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    json!({"phase": "Succeeded", "result": {"sizeBytes": 4096, "sha256": CERT_SHA256, "gpuVendor": "none",
        "timings": {"checkpointMs": 120, "frozenAt": frozen}}})
}

fn tasks_of(list: &[NodeTask], request: &str) -> Vec<String> {
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

// ---- validation ----------------------------------------------------------------------------

async fn a_request_for_a_missing_pod_fails_with_pod_not_found_and_an_event(env: &Env, ns: &str) {
    request(env, ns, "r", json!({"podName": "ghost"})).await;
    let m = fails_with(env, ns, "r", reason::POD_NOT_FOUND).await;
    assert!(m.contains("ghost"), "{m}");
}

async fn a_request_for_a_pending_pod_fails_with_pod_not_running(env: &Env, ns: &str) {
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

async fn a_request_naming_an_unknown_container_fails_with_container_not_found(env: &Env, ns: &str) {
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

async fn a_request_for_a_pod_on_a_node_without_an_agent_fails_with_agent_not_ready(
    env: &Env,
    ns: &str,
) {
    let node = extra_node(env, false).await;
    running_pod(env, ns, "p", &node).await;
    request(env, ns, "r", json!({"podName": "p"})).await;
    let m = fails_with(env, ns, "r", reason::AGENT_NOT_READY).await;
    assert!(m.contains(&node), "{m}");
}

async fn a_migration_to_a_missing_node_fails_with_target_node_not_found(env: &Env, ns: &str) {
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

async fn a_migration_to_a_node_that_is_not_ready_fails_with_target_node_not_ready(
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

async fn a_migration_to_a_cordoned_node_fails_with_target_node_unschedulable(env: &Env, ns: &str) {
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
async fn a_migration_to_a_node_outside_the_pods_node_affinity_fails_with_no_compatible_node(
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

async fn a_migration_to_the_pods_own_node_fails_with_target_is_source(env: &Env, ns: &str) {
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

async fn a_request_with_a_missing_pvc_fails_with_pvc_not_found(env: &Env, ns: &str) {
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

async fn a_second_request_for_a_busy_pod_fails_with_request_already_active(env: &Env, ns: &str) {
    running_pod(env, ns, "p", &env.nodes[0]).await;
    request(env, ns, "first", json!({"podName": "p"})).await;
    wait_phase(env, ns, "first", RequestPhase::Checkpointing).await;
    request(env, ns, "second", json!({"podName": "p"})).await;
    let m = fails_with(env, ns, "second", reason::REQUEST_ALREADY_ACTIVE).await;
    assert!(m.contains("first"), "{m}");
}

async fn a_migration_no_node_can_take_fails_with_no_compatible_node_naming_each_node(
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

// ---- happy paths ---------------------------------------------------------------------------

async fn a_checkpoint_succeeds_with_the_test_playing_the_agent(env: &Env, ns: &str) {
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

/// Drives a migration of pod `p` to Restoring; returns the restored pod's name.
async fn migrate_to_restoring(env: &Env, ns: &str, name: &str) -> String {
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
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), ns);
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

async fn a_migration_succeeds_and_deletes_the_source_with_the_test_playing_the_agent(
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

async fn a_failed_restore_deletes_the_restored_pod_and_keeps_the_source_running(
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

// ---- lifecycle -----------------------------------------------------------------------------

async fn an_operator_restart_in_each_phase_of_a_migration_resumes_it(env: &Env, ns: &str) {
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

async fn deleting_a_running_migration_aborts_it_and_deletes_images_through_the_agents(
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
    let secrets: Api<Secret> = Api::namespaced(env.admin.clone(), ns);
    assert!(secrets.get_opt("m-transfer-token").await.unwrap().is_none());
}

async fn a_request_past_its_timeout_fails_with_timeout(env: &Env, ns: &str) {
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

async fn a_finished_request_is_deleted_after_its_ttl(env: &Env, ns: &str) {
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

async fn the_api_server_rejects_a_spec_update(env: &Env, ns: &str) {
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

// ---- leader election -----------------------------------------------------------------------

async fn two_replicas_fail_over_without_a_duplicated_node_task(env: &Env, ns: &str) {
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
