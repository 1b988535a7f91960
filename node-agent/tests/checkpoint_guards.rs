//! The executor's Checkpoint, Restore and Delete steps against issue #14's store findings,
//! with a real API server (the e2e harness's etcd + kube-apiserver: the pod is read from it),
//! real CRIU on a real process, and a real small tmpfs as the store:
//! - finding 9: a pod whose memory does not fit the store's free space is refused before
//!   anything is frozen; one that fits is checkpointed;
//! - finding 5: the image records its request's and pod's UIDs, and a task of a re-used
//!   request name (another request UID) neither takes nor restores it, while the request's own
//!   re-run (an agent restart) and restore still do;
//! - finding 10 (the agent trusting NodeTask fields): a Delete removes one image of its own
//!   namespace, never a bare namespace or another namespace's image.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_agent::executor::context::{Context, WorkerConfig};
use ferry_agent::executor::{Attempt, Progress, RuntimeMode, checkpoint, delete, restore};
use ferry_agent::runtime::criu::Criu;
use ferry_agent::store::{ImageKind, ImageMeta, ImageSource, Store, Stores};
use ferry_agent::telemetry::metrics::Metrics;
use ferry_api::{ImageRef, NodeTask, NodeTaskSpec, PodReference, StorageSpec, TaskOperation};
use ferry_e2e::{Cluster, Options, User};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::config::{KubeConfigOptions, Kubeconfig};
use runtime_common::{CRIU, alive, kill, require, scratch, wait_for};

const NS: &str = "ns";
const OLD_UID: &str = "0b7c3a52-0000-4000-8000-000000000001";
const NEW_UID: &str = "0b7c3a52-0000-4000-8000-000000000002";

/// A small tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a tmpfs failed (the test needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A process in its own session with no tty (CRIU dumps it without `--shell-job`), killed
/// on drop.
struct Proc(Child);

impl Proc {
    fn spawn(program: &str, args: &[&str]) -> Proc {
        Proc(
            Command::new("setsid")
                .arg(program)
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// The state letter in `/proc/<pid>/stat` (`T`: stopped, e.g. frozen by a dump).
    fn state(&self) -> String {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        stat.rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap()
            .to_string()
    }

    fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Creates pod `name` in [`NS`] standing for process `pid` (`--runtime process`); its UID.
fn create_pod(cluster: &Cluster, name: &str, pid: i32) -> String {
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "annotations": {"ferry.dev/pid": pid.to_string()}},
        "spec": {"nodeName": "node-a", "automountServiceAccountToken": false, "containers": [{"name": "main", "image": "x"}]},
    });
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], Some(&pod.to_string()))
        .unwrap();
    let got = cluster
        .kubectl_json(&["get", "pod", name, "-n", NS, "-o", "json"])
        .unwrap();
    got["metadata"]["uid"].as_str().unwrap().to_string()
}

/// A task of request `req` (UID `request_uid`) on `pod`, as the operator writes it.
fn task(
    op: TaskOperation,
    request_uid: &str,
    pod: (&str, &str),
    store: &Path,
    location: &str,
) -> Arc<NodeTask> {
    let mut t = NodeTask::new(
        &format!("req-{}", op.as_str().to_lowercase()),
        NodeTaskSpec {
            node_name: "node-a".into(),
            operation: op,
            checkpoint_request: "req".into(),
            pod: PodReference {
                namespace: NS.into(),
                name: pod.0.into(),
                uid: Some(pod.1.into()),
            },
            containers: vec![],
            source: None,
            image: ImageRef {
                storage: StorageSpec::host_path(store.display().to_string()),
                location: location.into(),
            },
            options: Default::default(),
        },
    );
    t.metadata.namespace = Some(NS.into());
    t.metadata.uid = Some(format!("task-{request_uid}"));
    t.metadata.owner_references = Some(vec![OwnerReference {
        api_version: "ferry.dev/v1alpha1".into(),
        kind: "CheckpointRequest".into(),
        name: "req".into(),
        uid: request_uid.into(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    Arc::new(t)
}

fn attempt() -> Attempt {
    Attempt {
        resumed: false,
        progress: Progress::new().0,
        control: Default::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_check_free_space_and_the_request_uid_before_anything_is_frozen() {
    require(&["criu"]);
    let tmp = scratch();
    let cluster = Cluster::start(Options::control_plane()).unwrap_or_else(|e| panic!("{e}"));
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            Some(r#"{"apiVersion":"v1","kind":"Namespace","metadata":{"name":"ns"}}"#),
        )
        .unwrap();
    // No controller manager runs: the pods' service account is created here.
    cluster
        .kubectl_stdin(
            &["apply", "-f", "-"],
            Some(
                r#"{"apiVersion":"v1","kind":"ServiceAccount","metadata":{"name":"default","namespace":"ns"}}"#,
            ),
        )
        .unwrap();
    let kc = Kubeconfig::read_from(cluster.kubeconfig(User::Admin)).unwrap();
    let cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(cfg).unwrap();

    let fs = Tmpfs::mount("128m");
    let root = fs.0.path().join("store");
    let store = Store::open(&root).unwrap();
    let libdir = tmp.path().join("criu-lib");
    std::fs::create_dir_all(&libdir).unwrap();
    let ctx = Context {
        client,
        config: WorkerConfig {
            node: "node-a".into(),
            stores: Stores::from(store.clone()),
            work_dir: tmp.path().join("work"),
            criu: Criu::new(CRIU).with_libdir(&libdir),
            runtime: RuntimeMode::Process,
            plugin_env: vec![],
            pull_identity: None,
        },
        metrics: Arc::new(Metrics::new().unwrap()),
    };
    let store_root = store.root().to_path_buf();

    // ---- finding 9: 200 MiB of resident memory cannot fit a 128 MiB store ----------------
    let big = Proc::spawn(
        "python3",
        &["-c", "import time\nb = b'x' * (200 << 20)\ntime.sleep(600)"],
    );
    wait_for("200 MiB resident", Duration::from_secs(30), || {
        big.rss() >= 200 << 20
    });
    let big_uid = create_pod(&cluster, "big", big.pid());
    let t = task(
        TaskOperation::Checkpoint,
        OLD_UID,
        ("big", &big_uid),
        &store_root,
        "ns/req",
    );
    let started = Instant::now();
    let err = checkpoint::run(&ctx, t, attempt()).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("not enough space"), "{msg}");
    assert!(msg.contains("checkpointing pod ns/big"), "{msg}");
    assert!(msg.contains("are free"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the refusal ran a dump"
    );
    assert!(
        alive(big.pid()) && big.state() != "T",
        "the pod was touched"
    );
    assert!(store.list().unwrap().is_empty());
    assert!(!root.join("ns/req.partial").exists() && !root.join("ns/req").exists());
    drop(big);

    // ---- the legitimate path: a small process is checkpointed by real CRIU ----------------
    let small = Proc::spawn("sleep", &["600"]);
    let small_uid = create_pod(&cluster, "small", small.pid());
    let own = task(
        TaskOperation::Checkpoint,
        OLD_UID,
        ("small", &small_uid),
        &store_root,
        "ns/req",
    );
    let result = checkpoint::run(&ctx, own.clone(), attempt())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let image = store.open_image("ns/req").unwrap();
    assert_eq!(result.image.sha256.as_deref(), Some(image.digest.as_str()));
    assert_eq!(image.manifest.meta.request_uid.as_deref(), Some(OLD_UID));
    assert_eq!(
        image.manifest.meta.pod_uid.as_deref(),
        Some(small_uid.as_str())
    );
    assert!(alive(small.pid()), "leaveRunning: the process goes on");

    // ---- finding 5: a re-used request name does not take the old image --------------------
    let reused = task(
        TaskOperation::Checkpoint,
        NEW_UID,
        ("small", &small_uid),
        &store_root,
        "ns/req",
    );
    let msg = checkpoint::run(&ctx, reused, attempt())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("made for request uid {OLD_UID}")) && msg.contains(NEW_UID),
        "{msg}"
    );
    let restore_reused = task(
        TaskOperation::Restore,
        NEW_UID,
        ("small-restored", "0b7c3a52-0000-4000-8000-0000000000ff"),
        &store_root,
        "ns/req",
    );
    let msg = restore::run(&ctx, restore_reused, attempt())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains(&format!("made for request uid {OLD_UID}")),
        "{msg}"
    );
    // The request's own re-run (after an agent restart) takes its image without a new dump.
    let again = checkpoint::run(&ctx, own, attempt())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.image.sha256, result.image.sha256);
    assert_eq!(again.timings.unwrap().steps.checkpoint_ms, None);
    // An image of an older agent (no request UID recorded) matches no request.
    let staging = store.stage("ns/legacy").unwrap();
    std::fs::write(staging.file_path("f").unwrap(), b"old").unwrap();
    let meta = ImageMeta::new(
        ImageKind::Criu,
        ImageSource {
            node: "node-a".into(),
            namespace: NS.into(),
            pod: "small".into(),
            containers: vec![],
        },
    );
    let manifest = staging.build_manifest(meta).unwrap();
    staging.publish(&manifest).unwrap();
    let legacy = task(
        TaskOperation::Checkpoint,
        OLD_UID,
        ("small", &small_uid),
        &store_root,
        "ns/legacy",
    );
    let msg = checkpoint::run(&ctx, legacy, attempt())
        .await
        .unwrap_err()
        .to_string();
    assert!(msg.contains("an unknown request"), "{msg}");

    // The request's own restore passes the check and restores (the original is gone first:
    // CRIU restores the same pid).
    let pid = small.pid();
    drop(small);
    wait_for("the original process gone", Duration::from_secs(10), || {
        !alive(pid)
    });
    let restore_own = task(
        TaskOperation::Restore,
        OLD_UID,
        ("small-restored", "0b7c3a52-0000-4000-8000-0000000000ff"),
        &store_root,
        "ns/req",
    );
    let restored = restore::run(&ctx, restore_own, attempt()).await;
    kill(pid);
    let restored = restored.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(restored.image.sha256, result.image.sha256);

    // ---- a Delete removes one image of its own namespace ----------------------------------
    for location in ["ns", "other/req", "ns/req/c"] {
        let t = task(
            TaskOperation::Delete,
            OLD_UID,
            ("small", &small_uid),
            &store_root,
            location,
        );
        let msg = delete::run(&ctx, t).unwrap_err().to_string();
        assert!(msg.contains("its own namespace"), "{location}: {msg}");
    }
    assert!(store.exists("ns/req").unwrap() && store.exists("ns/legacy").unwrap());
    let t = task(
        TaskOperation::Delete,
        OLD_UID,
        ("small", &small_uid),
        &store_root,
        "ns/req",
    );
    delete::run(&ctx, t).unwrap();
    assert!(!store.exists("ns/req").unwrap() && store.exists("ns/legacy").unwrap());
}
