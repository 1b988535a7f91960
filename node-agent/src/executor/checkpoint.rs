//! A Checkpoint task: the pod's containers through this mode's [`Checkpointer`] into a staged
//! image, published when the checkpoint succeeded.
//!
//! Two checks come before anything is frozen: an image already at the location counts as this
//! task's only if it was made for this request and pod (UIDs in its manifest: a request name
//! can be re-used), and the store must have room for the pod's memory ([`ensure_room`]).

use std::sync::Arc;
use std::time::Instant;

use ferry_api::{CheckpointRequest, NodeTask};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::Resource;
use tracing::{info, warn};

use crate::executor::context::{Context, tool_timeout};
use crate::executor::error::TaskError;
use crate::executor::mode::RuntimeMode;
use crate::executor::result::checkpoint_result;
use crate::executor::task::{Attempt, TaskOutcome};
use crate::runtime::RuntimeError;
use crate::runtime::checkpoint::{CheckpointJob, ContainerTarget};
use crate::store::{Image, ImageSource, Store, StoreError};

/// Runs a Checkpoint task.
pub async fn run(ctx: &Context, task: Arc<NodeTask>, attempt: Attempt) -> TaskOutcome {
    let (store, _in_use) = ctx.held_store(&task)?;
    let location = task.spec.image.location.clone();
    let pod_ref = &task.spec.pod;
    // Idempotent: an image this request already published is not redone.
    match store.open_image(&location) {
        Ok(image) => {
            check_image_owner(&task, &image, true)?;
            info!(location = %location, "image already published; not checkpointing again");
            return Ok(checkpoint_result(&image, None, None));
        }
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(TaskError::Store(e)),
    }
    let pod = ctx.pod(&task).await?;
    let targets = ctx.config.runtime.checkpoint_targets(&task, &pod)?;
    // Before anything is frozen: a checkpoint that cannot fit fails here, the pod untouched.
    let runc_root = match &ctx.config.runtime {
        RuntimeMode::Runc { root, .. } => Some(root.clone()),
        _ => None,
    };
    let what = format!("checkpointing pod {}/{}", pod_ref.namespace, pod_ref.name);
    let (room_store, room_targets) = (store.clone(), targets.clone());
    tokio::task::spawn_blocking(move || {
        ensure_room(
            &room_store,
            &pod,
            &room_targets,
            runc_root.as_deref(),
            &what,
        )
    })
    .await
    .map_err(|source| TaskError::Worker {
        what: "free-space check",
        source,
    })?
    .map_err(|source| TaskError::Image {
        location: location.clone(),
        source,
    })?;
    attempt.progress.say(format!(
        "checkpointing {} container(s){}",
        targets.len(),
        if attempt.resumed {
            " (retry after an agent restart; the partial image was discarded)"
        } else {
            ""
        }
    ));
    let source = ImageSource {
        node: ctx.config.node.clone(),
        namespace: pod_ref.namespace.clone(),
        pod: pod_ref.name.clone(),
        containers: Vec::new(),
    };
    let mut job = CheckpointJob::new(source, targets);
    job.leave_running = task.spec.options.leave_running;
    job.env = ctx.config.plugin_env.clone();
    job.timeout = tool_timeout(&task);
    let checkpointer = ctx.config.runtime.checkpointer(&ctx.config.criu);
    // Recorded so that a later request of the same name never takes this image for its own.
    let request_uid = request_uid_of(&task);
    let pod_uid = pod_ref.uid.clone();
    let started = Instant::now();
    let (image, outcome) = tokio::task::spawn_blocking(move || {
        let staging = store.stage(&location)?;
        match checkpointer.checkpoint(&job, &staging) {
            Ok(outcome) => {
                let mut meta = outcome.meta.clone();
                meta.request_uid = request_uid;
                meta.pod_uid = pod_uid;
                let manifest = staging.build_manifest(meta)?;
                let image = staging.publish(&manifest)?;
                Ok((image, outcome))
            }
            Err(e) => {
                // Keep CRIU's log in the message; the partial goes (a retry starts over).
                if let Err(d) = staging.discard() {
                    warn!(error = %d, "could not remove the partial image");
                }
                Err(e)
            }
        }
    })
    .await
    .map_err(|source| TaskError::Worker {
        what: "checkpoint",
        source,
    })?
    .map_err(|e: RuntimeError| TaskError::Checkpoint(e))?;
    let seconds = started.elapsed().as_secs_f64();
    let vendor = image.manifest.meta.gpu_vendor.unwrap_or_default();
    ctx.metrics
        .checkpoint(vendor.as_str(), seconds, image.manifest.total_bytes());
    info!(
        location = %image.location,
        bytes = image.manifest.total_bytes(),
        seconds,
        digest = %image.digest,
        "checkpoint published"
    );
    Ok(checkpoint_result(
        &image,
        Some(outcome.duration),
        Some(MicroTime(outcome.frozen_at)),
    ))
}

/// `metadata.uid` of the CheckpointRequest that owns `task` (its controller owner reference,
/// which the operator always sets), if any.
pub fn request_uid_of(task: &NodeTask) -> Option<String> {
    let kind = CheckpointRequest::kind(&());
    task.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true) && o.kind == kind)
        .map(|o| o.uid.clone())
}

/// Checks that `image` was made for `task`'s request (and, with `same_pod`, from `task`'s pod:
/// a Checkpoint re-run; a Restore's pod is a new one). An image without a recorded request
/// UID, or a task without an owning request, matches nothing: a published image is taken for
/// this task's only on evidence.
pub fn check_image_owner(task: &NodeTask, image: &Image, same_pod: bool) -> Result<(), TaskError> {
    let meta = &image.manifest.meta;
    let want = request_uid_of(task);
    if !meta.made_for_request(want.as_deref()) {
        return Err(TaskError::Image {
            location: image.location.clone(),
            source: StoreError::OtherRequest {
                found: meta.request_uid.as_deref().map_or_else(
                    || "an unknown request (no request uid recorded)".to_string(),
                    |uid| format!("request uid {uid}"),
                ),
                want: want.unwrap_or_else(|| "unknown".into()),
            },
        });
    }
    if same_pod {
        let pod = &task.spec.pod;
        let same_uid = match (pod.uid.as_deref(), meta.pod_uid.as_deref()) {
            (Some(want), have) => have == Some(want),
            (None, _) => true,
        };
        if meta.source.namespace != pod.namespace || meta.source.pod != pod.name || !same_uid {
            return Err(TaskError::ImageOfAnotherPod {
                location: image.location.clone(),
            });
        }
    }
    Ok(())
}

/// Fixed headroom on top of the memory estimate: CRIU's metadata images, the manifest, and
/// pods whose memory is small or unknown.
const ROOM_BASE: u64 = 64 << 20;

/// Fails with [`StoreError::NoSpace`] (naming what is needed and what is free) unless the
/// store has room for a checkpoint of `pod`: its memory plus an eighth (page maps and CRIU's
/// other images) plus [`ROOM_BASE`]. The memory is measured where the agent can see the
/// processes (a process tree's or a runc container's resident memory), else the containers'
/// declared memory (limit, else request). Device memory is not known before the dump (the
/// plugin reports it), so a GPU pod's device memory is not counted here; a dump that runs
/// out of space still fails cleanly and its partial image is removed.
pub fn ensure_room(
    store: &Store,
    pod: &Pod,
    targets: &[ContainerTarget],
    runc_root: Option<&std::path::Path>,
    what: &str,
) -> Result<(), StoreError> {
    let memory = memory_estimate(pod, targets, runc_root);
    let need = memory.saturating_add(memory / 8).saturating_add(ROOM_BASE);
    store.ensure_room(need, &format!("{what} ({memory} bytes of memory)"))
}

/// The memory a checkpoint of `targets` would dump, best known: measured resident memory,
/// else the containers' declared memory; 0 when neither is known.
pub fn memory_estimate(
    pod: &Pod,
    targets: &[ContainerTarget],
    runc_root: Option<&std::path::Path>,
) -> u64 {
    let procs = procfs::Processes::read();
    targets.iter().fold(0u64, |sum, target| {
        let measured = match target {
            ContainerTarget::Process { pid, .. } => procs.tree_rss(*pid),
            ContainerTarget::Runc { id, .. } => runc_root
                .and_then(|root| procfs::runc_init_pid(root, id))
                .and_then(|pid| procs.tree_rss(pid)),
            ContainerTarget::Kubelet { .. } => None,
        };
        let bytes = measured
            .or_else(|| declared_memory(pod, target.name()))
            .unwrap_or(0);
        sum.saturating_add(bytes)
    })
}

/// The container's `resources.limits.memory`, else its `requests.memory`, in bytes.
fn declared_memory(pod: &Pod, container: &str) -> Option<u64> {
    let c = pod
        .spec
        .as_ref()?
        .containers
        .iter()
        .find(|c| c.name == container)?;
    let resources = c.resources.as_ref()?;
    [resources.limits.as_ref(), resources.requests.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|m| m.get("memory"))
        .and_then(|q| parse_quantity(&q.0))
}

/// A Kubernetes quantity (`512Mi`, `1.5G`, `1e9`, `100m`) in whole units, rounded up.
pub fn parse_quantity(q: &str) -> Option<u64> {
    const SUFFIXES: [(&str, f64); 13] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
        ("m", 1e-3),
    ];
    let q = q.trim();
    let (number, factor) = SUFFIXES
        .iter()
        .find_map(|(suffix, f)| q.strip_suffix(suffix).map(|n| (n, *f)))
        .unwrap_or((q, 1.0));
    let value: f64 = number.parse().ok()?;
    // `as` saturates: an absurd quantity becomes u64::MAX, which no disk has room for.
    (value.is_finite() && value >= 0.0).then(|| (value * factor).ceil() as u64)
}

/// Resident memory of process trees, from `/proc`.
mod procfs {
    use std::collections::HashMap;
    use std::fs;
    use std::path::Path;

    /// Every process's parent and resident bytes, read once.
    pub struct Processes {
        parent: HashMap<i32, i32>,
        rss: HashMap<i32, u64>,
    }

    impl Processes {
        /// Reads `/proc/*/status` (processes that exit meanwhile are skipped).
        pub fn read() -> Self {
            let mut parent = HashMap::new();
            let mut rss = HashMap::new();
            for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                else {
                    continue;
                };
                let Ok(status) = fs::read_to_string(entry.path().join("status")) else {
                    continue;
                };
                let field = |name: &str| {
                    status.lines().find_map(|l| {
                        l.strip_prefix(name)
                            .and_then(|v| v.split_whitespace().next())
                            .and_then(|v| v.parse::<u64>().ok())
                    })
                };
                let Some(ppid) = field("PPid:").and_then(|p| i32::try_from(p).ok()) else {
                    continue;
                };
                parent.insert(pid, ppid);
                // VmRSS is in kB; kernel threads have none.
                rss.insert(pid, field("VmRSS:").unwrap_or(0).saturating_mul(1024));
            }
            Processes { parent, rss }
        }

        /// Resident bytes of `root` and all its descendants (`None`: no such process).
        pub fn tree_rss(&self, root: i32) -> Option<u64> {
            let mut total = *self.rss.get(&root)?;
            for (&pid, &bytes) in &self.rss {
                if pid != root && self.descends_from(pid, root) {
                    total = total.saturating_add(bytes);
                }
            }
            Some(total)
        }

        fn descends_from(&self, mut pid: i32, root: i32) -> bool {
            // Bounded walk: a parent map read while processes come and go may hold a cycle.
            for _ in 0..self.parent.len() {
                match self.parent.get(&pid) {
                    Some(&p) if p == root => return true,
                    Some(&p) if p > 0 => pid = p,
                    _ => return false,
                }
            }
            false
        }
    }

    /// The init process of runc container `id` under `root` (its `state.json`).
    pub fn runc_init_pid(root: &Path, id: &str) -> Option<i32> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return None;
        }
        let state = fs::read(root.join(id).join("state.json")).ok()?;
        let state: serde_json::Value = serde_json::from_slice(&state).ok()?;
        state
            .get("init_process_pid")?
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .filter(|p| *p > 1)
    }
}
