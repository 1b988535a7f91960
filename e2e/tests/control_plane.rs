//! ferry's CRDs against a real control plane (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler, built from Go modules by `e2e/cluster/build`) with kwok-simulated nodes.
//!
//! Starting a cluster costs seconds, so one `#[test]` starts it once and runs every scenario
//! against it in sequence; each scenario's name is a sentence, a failing scenario does not stop
//! the others, and the test fails listing every failed scenario. Afterwards it checks that the
//! teardown left no process, port or directory behind.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use ferry_e2e::process::{port_is_free, process_exists};
use ferry_e2e::{Cluster, Options, User};

const NAMESPACE: &str = "e2e-ckpt";
const KWOK_NODES: usize = 500;

type Scenario = (&'static str, fn(&Cluster));

const SCENARIOS: &[Scenario] = &[
    (
        "a checkpoint request applied with kubectl reads back with defaults and printer columns",
        a_checkpoint_request_applied_with_kubectl_reads_back_with_defaults_and_printer_columns,
    ),
    (
        "the api server rejects a timeout below the schema minimum",
        the_api_server_rejects_a_timeout_below_the_schema_minimum,
    ),
    (
        "the api server rejects storage with both host path and pvc",
        the_api_server_rejects_storage_with_both_host_path_and_pvc,
    ),
    (
        "the api server rejects a relative host path",
        the_api_server_rejects_a_relative_host_path,
    ),
    (
        "the api server rejects a name longer than a label value",
        the_api_server_rejects_a_name_longer_than_a_label_value,
    ),
    (
        "the api server rejects a change to an existing spec",
        the_api_server_rejects_a_change_to_an_existing_spec,
    ),
    (
        "operator and agent certificates authenticate as their own users",
        operator_and_agent_certificates_authenticate_as_their_own_users,
    ),
    (
        "the controller manager creates a new namespace's default service account",
        the_controller_manager_creates_a_new_namespaces_default_service_account,
    ),
    (
        "five hundred kwok nodes register and become ready",
        five_hundred_kwok_nodes_register_and_become_ready,
    ),
    (
        "a pod that tolerates the kwok taint is scheduled onto a kwok node and runs",
        a_pod_that_tolerates_the_kwok_taint_is_scheduled_onto_a_kwok_node_and_runs,
    ),
];

#[test]
fn ferry_crds_work_against_a_real_control_plane_with_kwok_nodes() {
    let cluster = Cluster::start(Options::control_plane().with_controllers().with_kwok())
        .unwrap_or_else(|e| panic!("starting the test cluster: {e}"));
    eprintln!(
        "control plane (etcd, kube-apiserver ready, CRDs established; controllers and kwok started) up in {:.1?}",
        cluster.started_in()
    );
    assert!(
        cluster.started_in() < Duration::from_secs(60),
        "the control plane took {:?} to start; it should take seconds",
        cluster.started_in()
    );
    cluster
        .kubectl(&["create", "namespace", NAMESPACE])
        .unwrap_or_else(|e| panic!("{e}"));

    let mut failed = Vec::new();
    for (name, scenario) in SCENARIOS {
        let began = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| scenario(&cluster))) {
            Ok(()) => eprintln!("scenario ok ({:.1?}): {name}", began.elapsed()),
            Err(_) => {
                eprintln!("scenario FAILED ({:.1?}): {name}", began.elapsed());
                failed.push(*name);
            }
        }
    }
    if let Err(e) = cluster.check_components() {
        panic!("a component died during the scenarios: {e}");
    }
    // Panicking with the cluster alive keeps its directory and prints the component logs.
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");

    let pids = cluster.pids();
    let ports = cluster.ports().to_vec();
    let dir = cluster.dir().to_path_buf();
    assert!(pids.iter().all(|&pid| process_exists(pid)));
    drop(cluster);
    let alive: Vec<u32> = pids.into_iter().filter(|&p| process_exists(p)).collect();
    assert!(alive.is_empty(), "processes left after teardown: {alive:?}");
    let taken: Vec<u16> = ports.into_iter().filter(|&p| !port_is_free(p)).collect();
    assert!(
        taken.is_empty(),
        "ports still bound after teardown: {taken:?}"
    );
    if std::env::var_os("FERRY_E2E_KEEP").is_none() {
        assert!(!dir.exists(), "{} left after teardown", dir.display());
    }
}

/// A CheckpointRequest manifest in [`NAMESPACE`] with `spec` as given.
fn checkpoint_request(name: &str, spec: serde_json::Value) -> String {
    serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointRequest",
        "metadata": { "name": name, "namespace": NAMESPACE },
        "spec": spec,
    })
    .to_string()
}

/// Applies `manifest`, expecting the API server to reject it; returns kubectl's stderr.
fn rejected(cluster: &Cluster, manifest: &str) -> String {
    let out = cluster
        .kubectl_output(&["apply", "-f", "-"], Some(manifest))
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "the API server accepted {manifest}\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn a_checkpoint_request_applied_with_kubectl_reads_back_with_defaults_and_printer_columns(
    cluster: &Cluster,
) {
    let manifest = checkpoint_request(
        "train-1",
        serde_json::json!({ "podName": "trainer-0", "migrate": { "targetNode": "kwok-node-0001" } }),
    );
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest))
        .unwrap_or_else(|e| panic!("{e}"));

    let obj = cluster
        .kubectl_json(&[
            "get",
            "checkpointrequest",
            "train-1",
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let spec = &obj["spec"];
    assert_eq!(spec["podName"], "trainer-0");
    assert_eq!(spec["migrate"]["targetNode"], "kwok-node-0001");
    // Structural-schema defaults, applied by the API server.
    assert_eq!(spec["timeoutSeconds"], 900, "{spec:#}");
    assert_eq!(spec["ttlSecondsAfterFinished"], 86400, "{spec:#}");
    assert_eq!(spec["leaveRunning"], true, "{spec:#}");
    assert_eq!(spec["migrate"]["deleteSource"], true, "{spec:#}");
    assert_eq!(spec["gpu"]["parallelRestore"], true, "{spec:#}");
    assert_eq!(
        spec["storage"]["hostPath"]["path"], "/var/lib/ferry/checkpoints",
        "{spec:#}"
    );

    // Status through the status subresource, as the operator writes it; then the columns.
    let status = serde_json::json!({ "status": {
        "phase": "Succeeded", "sourceNode": "kwok-node-0000", "targetNode": "kwok-node-0001",
        "timings": { "downtimeMs": 1234 },
    }})
    .to_string();
    cluster
        .kubectl(&[
            "patch",
            "ckpt",
            "train-1",
            "-n",
            NAMESPACE,
            "--subresource=status",
            "--type=merge",
            "-p",
            &status,
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    let table = cluster
        .kubectl(&["get", "ckpt", "-n", NAMESPACE])
        .unwrap_or_else(|e| panic!("{e}"));
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        [
            "NAME",
            "PHASE",
            "POD",
            "SOURCE",
            "TARGET",
            "DOWNTIME-MS",
            "AGE"
        ],
        "{table}"
    );
    let row: Vec<&str> = lines
        .find(|l| l.starts_with("train-1 "))
        .unwrap_or_else(|| panic!("no train-1 row in\n{table}"))
        .split_whitespace()
        .collect();
    assert_eq!(
        row[..6],
        [
            "train-1",
            "Succeeded",
            "trainer-0",
            "kwok-node-0000",
            "kwok-node-0001",
            "1234"
        ],
        "{table}"
    );
}

fn the_api_server_rejects_a_timeout_below_the_schema_minimum(cluster: &Cluster) {
    let err = rejected(
        cluster,
        &checkpoint_request(
            "short",
            serde_json::json!({ "podName": "p", "timeoutSeconds": 5 }),
        ),
    );
    assert!(
        err.contains("spec.timeoutSeconds")
            && err.contains("should be greater than or equal to 10"),
        "{err}"
    );
}

fn the_api_server_rejects_storage_with_both_host_path_and_pvc(cluster: &Cluster) {
    let err = rejected(
        cluster,
        &checkpoint_request(
            "both",
            serde_json::json!({ "podName": "p", "storage": {
                "hostPath": { "path": "/var/lib/ferry" },
                "pvc": { "claimName": "images" },
            }}),
        ),
    );
    assert!(
        err.contains("exactly one of storage.hostPath and storage.pvc must be set"),
        "{err}"
    );
}

fn the_api_server_rejects_a_relative_host_path(cluster: &Cluster) {
    let err = rejected(
        cluster,
        &checkpoint_request(
            "relative",
            serde_json::json!({ "podName": "p", "storage": { "hostPath": { "path": "var/lib/ferry" } } }),
        ),
    );
    assert!(
        err.contains("hostPath.path must be an absolute path (start with '/')"),
        "{err}"
    );
}

fn the_api_server_rejects_a_name_longer_than_a_label_value(cluster: &Cluster) {
    let err = rejected(
        cluster,
        &checkpoint_request(&"n".repeat(64), serde_json::json!({ "podName": "p" })),
    );
    assert!(
        err.contains("metadata.name must be at most 63 characters"),
        "{err}"
    );
}

fn the_api_server_rejects_a_change_to_an_existing_spec(cluster: &Cluster) {
    let manifest = checkpoint_request("fixed", serde_json::json!({ "podName": "before" }));
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], Some(&manifest))
        .unwrap_or_else(|e| panic!("{e}"));
    let out = cluster
        .kubectl_output(
            &[
                "patch",
                "ckpt",
                "fixed",
                "-n",
                NAMESPACE,
                "--type=merge",
                "-p",
                r#"{"spec":{"podName":"after"}}"#,
            ],
            None,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the spec change was accepted");
    assert!(
        err.contains("spec is immutable: create a new CheckpointRequest"),
        "{err}"
    );
    let pod = cluster
        .kubectl(&[
            "get",
            "ckpt",
            "fixed",
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.spec.podName}",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(pod, "before");
}

fn operator_and_agent_certificates_authenticate_as_their_own_users(cluster: &Cluster) {
    for user in [User::Operator, User::Agent] {
        let out = cluster
            .kubectl_command_as(user)
            .args([
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ])
            .output()
            .unwrap_or_else(|e| panic!("running kubectl: {e}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), user.name());
        // No RBAC is bound to them yet, so the API server must refuse them.
        let out = cluster
            .kubectl_command_as(user)
            .args(["get", "ckpt", "-n", NAMESPACE])
            .output()
            .unwrap_or_else(|e| panic!("running kubectl: {e}"));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Forbidden") && err.contains(user.name()),
            "{err}"
        );
    }
}

fn the_controller_manager_creates_a_new_namespaces_default_service_account(cluster: &Cluster) {
    cluster
        .kubectl(&["create", "namespace", "e2e-sa"])
        .unwrap_or_else(|e| panic!("{e}"));
    cluster
        .poll(
            "the default ServiceAccount in e2e-sa",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let out = cluster
                    .kubectl_output(&["get", "serviceaccount", "default", "-n", "e2e-sa"], None)
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(Some(()))
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}

fn five_hundred_kwok_nodes_register_and_become_ready(cluster: &Cluster) {
    let began = Instant::now();
    let nodes = cluster
        .add_kwok_nodes(KWOK_NODES)
        .unwrap_or_else(|e| panic!("{e}"));
    let created = began.elapsed();
    cluster
        .wait_nodes_ready(&nodes, Duration::from_secs(300))
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{KWOK_NODES} kwok nodes: created in {created:.1?}, all Ready after {:.1?}",
        began.elapsed()
    );
    // kwok keeps them Ready through node leases, one per node.
    let leases = cluster
        .kubectl(&["get", "leases", "-n", "kube-node-lease", "-o", "name"])
        .unwrap_or_else(|e| panic!("{e}"));
    let with_lease = nodes
        .iter()
        .filter(|n| {
            leases
                .lines()
                .any(|l| l == format!("lease.coordination.k8s.io/{n}"))
        })
        .count();
    assert_eq!(with_lease, KWOK_NODES, "nodes with a lease");
}

fn a_pod_that_tolerates_the_kwok_taint_is_scheduled_onto_a_kwok_node_and_runs(cluster: &Cluster) {
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "sleeper", "namespace": NAMESPACE },
        "spec": {
            "containers": [{ "name": "main", "image": "registry.invalid/sleeper:1" }],
            "nodeSelector": { "type": "kwok" },
            "tolerations": [{ "key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule" }],
        },
    })
    .to_string();
    // The ServiceAccount admission plugin needs the namespace's default ServiceAccount, which
    // the controller manager creates shortly after the namespace.
    cluster
        .poll(
            "creating the pod",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let out = cluster
                    .kubectl_output(&["apply", "-f", "-"], Some(&pod))
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(Some(()))
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).into_owned())
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    let placed = cluster
        .poll(
            "the pod running on a kwok node",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let out = cluster
                    .kubectl(&[
                        "get",
                        "pod",
                        "sleeper",
                        "-n",
                        NAMESPACE,
                        "-o",
                        "jsonpath={.spec.nodeName} {.status.phase}",
                    ])
                    .map_err(|e| e.to_string())?;
                match out.split_once(' ') {
                    Some((node, "Running")) if node.starts_with("kwok-node-") => {
                        Ok(Some(node.to_string()))
                    }
                    _ => Err(out),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("sleeper runs on {placed}");
}
