//! The agent's task intake against a real API server (etcd + kube-apiserver from the e2e
//! harness) with the real executor, store and, for checkpoints, real CRIU with ferry's plugin
//! and the sim-GPU workload (issue #14, findings 7 and 10; docs/security.md).
//!
//! Each scenario runs its own intake for its own node name, so scenarios do not see each
//! other's tasks. A "hung CRIU" is a real CRIU dump stopped with SIGSTOP once its parasite
//! is in the workload (the workload is then seized and frozen, as in a dump that hangs).
//!
//! One `#[test]` starts the cluster and runs the scenarios in order (a failing scenario does
//! not stop the others).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_agent::executor::{Attempt, Executor, RuntimeMode, TaskOutcome, Worker, WorkerConfig};
use ferry_agent::intake::{self, IntakeConfig};
use ferry_agent::runtime::criu::Criu;
use ferry_agent::store::{ImageKind, ImageMeta, ImageSource, Store, Stores};
use ferry_agent::telemetry::metrics::Metrics;
use ferry_api::{NodeTask, TaskPhase};
use ferry_e2e::{Cluster, Options, User};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, ResourceExt};
use runtime_common::*;
use serde_json::json;
use tokio::sync::watch;

const TENANT: &str = "tenant-a";
const OTHER: &str = "tenant-b";

struct World {
    cluster: Cluster,
    rt: tokio::runtime::Runtime,
    admin: Client,
    tmp: tempfile::TempDir,
    store: Store,
}

type Scenario = (&'static str, fn(&World));

const SCENARIOS: &[Scenario] = &[
    (
        "a task for another node, another namespace's pod or another location is refused and touches nothing",
        forged_tasks_are_refused_and_touch_nothing,
    ),
    (
        "a panicking task fails with the panic and the loop goes on; a panicking loop restarts",
        a_panic_fails_the_task_and_the_loop_goes_on,
    ),
    (
        "a NodeTask deleted during a hung CRIU dump kills CRIU within a bound and the workload runs on",
        a_deleted_task_kills_its_dump_and_the_workload_runs_on,
    ),
    (
        "a hung CRIU dump is killed at the task's deadline and the workload runs on; an unhindered checkpoint succeeds",
        a_hung_dump_is_killed_at_the_deadline_and_a_clean_one_succeeds,
    ),
];

#[test]
fn the_intake_refuses_forged_tasks_and_stops_tools_with_their_task() {
    require(&["criu"]);
    let cluster = Cluster::start(Options::control_plane()).unwrap_or_else(|e| panic!("{e}"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let admin = rt.block_on(async {
        let kc = Kubeconfig::read_from(cluster.kubeconfig(User::Admin)).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .unwrap();
        Client::try_from(cfg).unwrap()
    });
    rt.block_on(async {
        for ns in [TENANT, OTHER] {
            let api: Api<Namespace> = Api::all(admin.clone());
            let obj = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
            api.create(&PostParams::default(), &obj).await.unwrap();
            // No controller manager here: the pods' ServiceAccount is made by hand.
            let sa: Api<ServiceAccount> = Api::namespaced(admin.clone(), ns);
            let obj = serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
            sa.create(&PostParams::default(), &obj).await.unwrap();
        }
    });
    let tmp = scratch();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let world = World {
        cluster,
        rt,
        admin,
        tmp,
        store,
    };
    let mut failed = Vec::new();
    for (name, scenario) in SCENARIOS {
        eprintln!("scenario: {name}");
        let t = Instant::now();
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| scenario(&world))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            eprintln!("FAILED: {name}: {message}");
            failed.push(*name);
        }
        eprintln!("scenario took {:.1} s", t.elapsed().as_secs_f64());
    }
    if !failed.is_empty() {
        eprintln!("{}", world.cluster.log_tails(20));
    }
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");
}

// ---- helpers ---------------------------------------------------------------------------

/// A running intake for `node`; stops on drop.
struct Intake {
    stop: watch::Sender<bool>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl Intake {
    fn stop(mut self, w: &World) {
        let _ = self.stop.send(true);
        if let Some(h) = self.handle.take() {
            w.rt.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(30), h).await;
            });
        }
    }
}

impl Drop for Intake {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

fn worker(w: &World, node: &str, criu: Criu, plugin_env: Vec<(String, String)>) -> Worker {
    Worker::new(
        w.admin.clone(),
        WorkerConfig {
            node: node.into(),
            stores: Stores::new(w.store.clone(), vec![]).unwrap(),
            work_dir: w.tmp.path().join("work").join(node),
            criu,
            runtime: RuntimeMode::Process,
            plugin_env,
            pull_identity: None,
        },
        Arc::new(Metrics::new().unwrap()),
    )
}

fn start_intake(w: &World, node: &str, executor: Arc<dyn Executor>) -> Intake {
    let (stop, rx) = watch::channel(false);
    let config = IntakeConfig {
        node: node.into(),
        workers: 2,
        heartbeat_every: Duration::from_secs(1),
        shutdown_grace: Duration::from_secs(5),
    };
    let client = w.admin.clone();
    let handle = w.rt.spawn(intake::run(
        client,
        config,
        executor,
        Arc::new(Metrics::new().unwrap()),
        rx,
    ));
    Intake {
        stop,
        handle: Some(handle),
    }
}

struct TaskArgs<'a> {
    name: &'a str,
    node: &'a str,
    label_node: &'a str,
    operation: &'a str,
    request: &'a str,
    pod_namespace: &'a str,
    pod: &'a str,
    pod_uid: Option<String>,
    location: &'a str,
    timeout_seconds: i32,
    leave_running: bool,
}

fn task_args<'a>(
    name: &'a str,
    node: &'a str,
    request: &'a str,
    location: &'a str,
) -> TaskArgs<'a> {
    TaskArgs {
        name,
        node,
        label_node: node,
        operation: "Delete",
        request,
        pod_namespace: TENANT,
        pod: "trainer",
        pod_uid: None,
        location,
        timeout_seconds: 300,
        leave_running: true,
    }
}

fn create_task(w: &World, a: &TaskArgs<'_>) {
    let mut pod = json!({"namespace": a.pod_namespace, "name": a.pod});
    if let Some(uid) = &a.pod_uid {
        pod["uid"] = json!(uid);
    }
    let task: NodeTask = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1", "kind": "NodeTask",
        "metadata": {"name": a.name, "labels": {ferry_api::names::label::NODE: a.label_node}},
        "spec": {
            "nodeName": a.node, "operation": a.operation, "checkpointRequest": a.request,
            "pod": pod,
            "image": {"location": a.location,
                      "storage": {"hostPath": {"path": w.store.root().display().to_string()}}},
            "options": {"timeoutSeconds": a.timeout_seconds, "leaveRunning": a.leave_running},
        },
    }))
    .unwrap();
    let api: Api<NodeTask> = Api::namespaced(w.admin.clone(), TENANT);
    w.rt.block_on(api.create(&PostParams::default(), &task))
        .unwrap_or_else(|e| panic!("create NodeTask {}: {e}", a.name));
}

fn get_task(w: &World, name: &str) -> Option<NodeTask> {
    let api: Api<NodeTask> = Api::namespaced(w.admin.clone(), TENANT);
    w.rt.block_on(api.get_opt(name)).unwrap()
}

/// Waits until the task is terminal; returns its phase and message.
fn wait_terminal(w: &World, name: &str, limit: Duration) -> (TaskPhase, String) {
    let t = Instant::now();
    loop {
        if let Some(task) = get_task(w, name)
            && task.phase().is_terminal()
        {
            let status = task.status.unwrap_or_default();
            return (
                task_phase(&status.phase),
                status.message.unwrap_or_default(),
            );
        }
        assert!(
            t.elapsed() < limit,
            "task {name} not terminal after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn task_phase(p: &Option<TaskPhase>) -> TaskPhase {
    p.unwrap_or(TaskPhase::Pending)
}

/// A published image at `location` holding one file.
fn publish(w: &World, location: &str) {
    let staging = w.store.stage(location).unwrap();
    std::fs::write(staging.file_path("data").unwrap(), b"tenant data").unwrap();
    let (ns, _) = location.split_once('/').unwrap_or((location, ""));
    let manifest = staging
        .build_manifest(ImageMeta::new(
            ImageKind::Criu,
            ImageSource {
                node: "n".into(),
                namespace: ns.into(),
                pod: "trainer".into(),
                containers: vec!["main".into()],
            },
        ))
        .unwrap();
    staging.publish(&manifest).unwrap();
}

fn exists(w: &World, location: &str) -> bool {
    w.store.open_image(location).is_ok()
}

// ---- finding 10: forged tasks ----------------------------------------------------------

fn forged_tasks_are_refused_and_touch_nothing(w: &World) {
    let node = "node-trust";
    publish(w, &format!("{OTHER}/secret"));
    publish(w, &format!("{TENANT}/kept"));
    publish(w, &format!("{TENANT}/mine"));
    let intake = start_intake(w, node, Arc::new(worker(w, node, Criu::new(CRIU), vec![])));

    let other_image = format!("{OTHER}/secret");
    let cases: Vec<(TaskArgs<'_>, &str)> = vec![
        (
            // Labelled for this node, written for another.
            TaskArgs {
                node: "node-elsewhere",
                ..task_args("for-another-node", node, "kept", "tenant-a/kept")
            },
            "not this agent's node",
        ),
        (
            TaskArgs {
                pod_namespace: OTHER,
                ..task_args("pod-of-another-namespace", node, "kept", "tenant-a/kept")
            },
            "not in the task's namespace",
        ),
        (
            task_args("bare-namespace", node, "kept", TENANT),
            "is not this task's request's location",
        ),
        (
            task_args("another-namespaces-image", node, "secret", &other_image),
            "is not this task's request's location",
        ),
        (
            task_args("another-requests-image", node, "mine", "tenant-a/kept"),
            "is not this task's request's location",
        ),
    ];
    for (args, _) in &cases {
        create_task(w, args);
    }
    for (args, says) in &cases {
        let (phase, message) = wait_terminal(w, args.name, Duration::from_secs(30));
        assert_eq!(phase, TaskPhase::Failed, "{}: {message}", args.name);
        assert!(message.contains(says), "{}: {message}", args.name);
    }
    assert!(
        exists(w, &other_image),
        "another namespace's image was deleted"
    );
    assert!(
        exists(w, "tenant-a/kept"),
        "a refused task deleted an image"
    );
    assert!(exists(w, "tenant-a/mine"));

    // The same agent deletes its own request's image.
    create_task(w, &task_args("legit-delete", node, "mine", "tenant-a/mine"));
    let (phase, message) = wait_terminal(w, "legit-delete", Duration::from_secs(30));
    assert_eq!(phase, TaskPhase::Succeeded, "{message}");
    assert!(
        !exists(w, "tenant-a/mine"),
        "the legitimate delete left the image"
    );
    assert!(exists(w, "tenant-a/kept"));
    intake.stop(w);
}

// ---- panics ----------------------------------------------------------------------------

/// The real worker, except that a task named `panic-*` panics inside its future and the
/// first task named `loop-panic-*` panics in the intake's own call (before any future).
struct Panicky {
    inner: Worker,
    loop_panicked: AtomicBool,
}

impl Executor for Panicky {
    fn execute(&self, task: Arc<NodeTask>, attempt: Attempt) -> BoxFuture<'static, TaskOutcome> {
        let name = task.name_any();
        if name.starts_with("loop-panic-") && !self.loop_panicked.swap(true, Ordering::SeqCst) {
            panic!("injected panic in the task loop");
        }
        if name.starts_with("panic-") {
            return Box::pin(async { panic!("injected panic in the executor") });
        }
        self.inner.execute(task, attempt)
    }
}

fn a_panic_fails_the_task_and_the_loop_goes_on(w: &World) {
    let node = "node-panic";
    publish(w, "tenant-a/after-panic");
    publish(w, "tenant-a/after-loop-panic");
    let intake = start_intake(
        w,
        node,
        Arc::new(Panicky {
            inner: worker(w, node, Criu::new(CRIU), vec![]),
            loop_panicked: AtomicBool::new(false),
        }),
    );
    create_task(w, &task_args("panic-1", node, "gone", "tenant-a/gone"));
    let (phase, message) = wait_terminal(w, "panic-1", Duration::from_secs(30));
    assert_eq!(phase, TaskPhase::Failed);
    assert!(
        message.contains("panic: injected panic in the executor"),
        "{message}"
    );
    // The loop still takes tasks.
    create_task(
        w,
        &task_args("after-panic", node, "after-panic", "tenant-a/after-panic"),
    );
    let (phase, message) = wait_terminal(w, "after-panic", Duration::from_secs(30));
    assert_eq!(phase, TaskPhase::Succeeded, "{message}");
    assert!(!exists(w, "tenant-a/after-panic"));

    // A panic in the loop itself: the loop restarts and resumes the task it left Running.
    create_task(
        w,
        &task_args(
            "loop-panic-1",
            node,
            "after-loop-panic",
            "tenant-a/after-loop-panic",
        ),
    );
    let (phase, message) = wait_terminal(w, "loop-panic-1", Duration::from_secs(60));
    assert_eq!(phase, TaskPhase::Succeeded, "{message}");
    assert!(!exists(w, "tenant-a/after-loop-panic"));
    intake.stop(w);
}

// ---- finding 7: a hung dump --------------------------------------------------------------

/// The sim workload, its pod in the API and an intake running real CRIU for `node`.
struct Dumping {
    workload: SimWorkload,
    pod_uid: String,
    intake: Intake,
}

fn dumping(w: &World, node: &str, pod: &str) -> Dumping {
    let dir = w.tmp.path().join(format!("workload-{node}"));
    std::fs::create_dir_all(&dir).unwrap();
    // 256 MiB of host memory: the dump takes long enough to be caught mid-way.
    let workload = SimWorkload::start(
        &dir,
        &["--devices", "1", "--device-mib", "8", "--host-mib", "256"],
    );
    let pods: Api<Pod> = Api::namespaced(w.admin.clone(), TENANT);
    let obj: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod, "annotations": {
            ferry_agent::executor::PROCESS_PID_ANNOTATION: workload.pid.to_string()}},
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "x"}]},
    }))
    .unwrap();
    let created =
        w.rt.block_on(pods.create(&PostParams::default(), &obj))
            .unwrap();
    let criu = Criu::new(CRIU).with_libdir(plugin_libdir(&dir));
    let worker = worker(w, node, criu, SimWorkload::env(&dir));
    Dumping {
        pod_uid: created.uid().unwrap(),
        intake: start_intake(w, node, Arc::new(worker)),
        workload,
    }
}

/// CRIU is gone, the workload runs (not stopped, not traced) and still verifies its memory,
/// and the partial image is gone.
fn assert_workload_runs_on(d: &Dumping, criu: i32, images: &Path, since: Instant, bound: Duration) {
    wait_for("CRIU to be killed", bound, || !alive(criu));
    eprintln!(
        "criu gone {:.2} s after the trigger",
        since.elapsed().as_secs_f64()
    );
    let pid = d.workload.pid;
    wait_for("the workload to run again", Duration::from_secs(10), || {
        let s = state(pid);
        !s.is_empty() && !s.starts_with('T') && !s.starts_with('t')
    });
    assert_eq!(proc_status(pid, "TracerPid:").as_deref(), Some("0"));
    let status = d.workload.verify();
    assert!(status.host_ok && status.devices_ok == [true], "{status:?}");
    wait_for("the partial image to go", Duration::from_secs(10), || {
        !images.exists()
    });
}

fn a_deleted_task_kills_its_dump_and_the_workload_runs_on(w: &World) {
    let node = "node-delete";
    let d = dumping(w, node, "deleted-dump");
    create_task(
        w,
        &TaskArgs {
            operation: "Checkpoint",
            pod: "deleted-dump",
            pod_uid: Some(d.pod_uid.clone()),
            leave_running: false,
            ..task_args(
                "deleted-dump",
                node,
                "deleted-dump",
                "tenant-a/deleted-dump",
            )
        },
    );
    let (criu, images) = hang_criu_on(d.workload.pid);
    let api: Api<NodeTask> = Api::namespaced(w.admin.clone(), TENANT);
    let deleted = Instant::now();
    w.rt.block_on(api.delete("deleted-dump", &DeleteParams::default()))
        .unwrap();
    assert_workload_runs_on(&d, criu, &images, deleted, Duration::from_secs(5));
    assert!(!exists(w, "tenant-a/deleted-dump"));
    d.intake.stop(w);
}

fn a_hung_dump_is_killed_at_the_deadline_and_a_clean_one_succeeds(w: &World) {
    let node = "node-deadline";
    let d = dumping(w, node, "hung-dump");
    create_task(
        w,
        &TaskArgs {
            operation: "Checkpoint",
            pod: "hung-dump",
            pod_uid: Some(d.pod_uid.clone()),
            timeout_seconds: 10,
            leave_running: false,
            ..task_args("hung-dump", node, "hung-dump", "tenant-a/hung-dump")
        },
    );
    let created = Instant::now();
    let (criu, images) = hang_criu_on(d.workload.pid);
    let (phase, message) = wait_terminal(w, "hung-dump", Duration::from_secs(30));
    assert_eq!(phase, TaskPhase::Failed, "{message}");
    assert!(message.contains("timed out after 10 s"), "{message}");
    assert_workload_runs_on(&d, criu, &images, created, Duration::from_secs(20));
    assert!(!exists(w, "tenant-a/hung-dump"));

    // The same workload, the same agent, nothing in the way: the checkpoint is published and
    // (leaveRunning) the workload runs on.
    create_task(
        w,
        &TaskArgs {
            operation: "Checkpoint",
            pod: "hung-dump",
            pod_uid: Some(d.pod_uid.clone()),
            timeout_seconds: 120,
            leave_running: true,
            ..task_args("clean-dump", node, "clean-dump", "tenant-a/clean-dump")
        },
    );
    let (phase, message) = wait_terminal(w, "clean-dump", Duration::from_secs(150));
    assert_eq!(phase, TaskPhase::Succeeded, "{message}");
    assert!(exists(w, "tenant-a/clean-dump"));
    assert!(d.workload.verify().host_ok);
    d.intake.stop(w);
}
