//! The NodeTask executor: what Checkpoint, Restore and Delete do on this node, built from the
//! store, the runtimes and the transfer client.
//!
//! **Where a pod's processes are** depends on the agent's `--runtime`:
//! * `runc` (production): each container's runtime id from the pod's `containerStatuses`
//!   (`containerd://<id>`), checkpointed under containerd's runc root with CRIU and ferry's
//!   plugin.
//! * `containerd` (kubelet checkpoint API, containerd ≥ 2.1 checkpoint-image restore): a
//!   Checkpoint asks the node's kubelet (`POST /checkpoint/...`) for each container's
//!   checkpoint archive; a Restore turns each archive into a containerd checkpoint image and
//!   imports it into the node's containerd under the name the operator gave the restored pod's
//!   container (`ferry_api::names::checkpoint_image::reference`); the kubelet then creates the
//!   container from it, which is containerd's restore.
//! * `process` (demo and tests, where pods are simulated): the pod's annotation
//!   `ferry.dev/pid` names the root of a host process tree (the init of its own pid
//!   namespace, so that a restored copy can run beside the original). Only an agent started
//!   with `--runtime process` reads that annotation: it lets whoever can annotate pods choose
//!   a host process to dump.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::stats::PluginStats;
use ferry_api::{
    GpuInfo, GpuVendor, NodeTask, StorageSpec, TaskOperation, TaskResult, TaskTimings,
    TransferStats,
};
use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::checkpoint::{CheckpointJob, Checkpointer, ContainerTarget};
use crate::criu::Criu;
use crate::grants;
use crate::intake::{Attempt, Executor, TaskFailure, TaskOutcome};
use crate::kubelet::KubeletApi;
use crate::metrics::Metrics;
use crate::process_tree::ProcessTree;
use crate::restore::{
    ContainerdCheckpointImage, Ctr, RestoreJob, RestoreTarget, Restorer, pack_layout,
};
use crate::runc::Runc;
use crate::store::{Image, ImageKind, ImageSource, Store, Stores};
use crate::transfer::{self, PullSpec};

/// Annotation on a pod, read only by an agent in `process` mode: the root pid of the process
/// tree that stands for the pod.
pub const PROCESS_PID_ANNOTATION: &str = "ferry.dev/pid";

/// How the agent finds and restores a pod's processes.
#[derive(Clone, Debug)]
pub enum RuntimeMode {
    /// Containers of containerd's runc (`--runc-root`).
    Runc {
        /// The runc binary.
        binary: PathBuf,
        /// containerd's runc state dir.
        root: PathBuf,
    },
    /// The kubelet checkpoints, containerd restores from imported checkpoint images.
    Containerd {
        /// This node's kubelet checkpoint API.
        kubelet: KubeletApi,
        /// `ctr` on the node's containerd.
        ctr: Ctr,
    },
    /// A host process tree named by the pod's `ferry.dev/pid` annotation (demo, tests).
    Process,
}

/// Worker settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This node.
    pub node: String,
    /// The main store (the default `hostPath`) and the other host paths a request may name.
    pub stores: Stores,
    /// Private directory for restores (outside every store).
    pub work_dir: PathBuf,
    /// CRIU with ferry's plugin dir.
    pub criu: Criu,
    /// How pods map to processes.
    pub runtime: RuntimeMode,
    /// Extra environment for CRIU and the plugin (e.g. `FERRY_SIM_*` on a sim-GPU node).
    pub plugin_env: Vec<(String, String)>,
}

/// Runs NodeTasks.
#[derive(Clone)]
pub struct Worker {
    client: Client,
    config: Arc<WorkerConfig>,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// A worker using `client` for pods and Secrets.
    pub fn new(client: Client, config: WorkerConfig, metrics: Arc<Metrics>) -> Self {
        Worker {
            client,
            config: Arc::new(config),
            metrics,
        }
    }

    /// The store a task's `image.storage` names, if this agent serves it.
    fn store(&self, storage: &StorageSpec) -> Result<Store, TaskFailure> {
        let Some(host) = storage.host_path.as_ref() else {
            return Err(TaskFailure(
                "PVC image storage is not supported by this agent yet: use hostPath storage".into(),
            ));
        };
        self.config
            .stores
            .for_host_path(Some(&host.path))
            .map_err(|e| match e {
                crate::store::StoreError::NotAStore { .. } => {
                    TaskFailure(format!("{e}; refusing to write outside them"))
                }
                e => TaskFailure(format!("image store: {e}")),
            })
    }

    async fn pod(&self, task: &NodeTask) -> Result<Pod, TaskFailure> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &task.spec.pod.namespace);
        let pod = api
            .get_opt(&task.spec.pod.name)
            .await
            .map_err(|e| TaskFailure(format!("reading pod: {e}")))?
            .ok_or_else(|| {
                TaskFailure(format!(
                    "pod {}/{} not found",
                    task.spec.pod.namespace, task.spec.pod.name
                ))
            })?;
        if let (Some(want), Some(have)) = (task.spec.pod.uid.as_deref(), pod.uid())
            && want != have
        {
            return Err(TaskFailure(format!(
                "pod {}/{} was re-created (uid {have}, the task names {want})",
                task.spec.pod.namespace, task.spec.pod.name
            )));
        }
        Ok(pod)
    }

    /// The containers to checkpoint: the task's list, else every container of the pod.
    fn targets(&self, task: &NodeTask, pod: &Pod) -> Result<Vec<ContainerTarget>, TaskFailure> {
        let names: Vec<String> = if task.spec.containers.is_empty() {
            pod.spec
                .as_ref()
                .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default()
        } else {
            task.spec.containers.clone()
        };
        match &self.config.runtime {
            RuntimeMode::Process => {
                let pid = pod
                    .annotations()
                    .get(PROCESS_PID_ANNOTATION)
                    .and_then(|p| p.trim().parse::<i32>().ok())
                    .filter(|p| *p > 1)
                    .ok_or_else(|| {
                        TaskFailure(format!(
                            "process runtime: pod {} has no valid {PROCESS_PID_ANNOTATION} annotation",
                            pod.name_any()
                        ))
                    })?;
                let name = names.into_iter().next().unwrap_or_else(|| "main".into());
                Ok(vec![ContainerTarget::Process { name, pid }])
            }
            RuntimeMode::Containerd { .. } => Ok(names
                .into_iter()
                .map(|name| ContainerTarget::Kubelet { name })
                .collect()),
            RuntimeMode::Runc { .. } => {
                let statuses = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default();
                names
                    .into_iter()
                    .map(|name| {
                        let id = statuses
                            .iter()
                            .find(|s| s.name == name)
                            .and_then(|s| s.container_id.as_deref())
                            .and_then(|id| id.split_once("://").map(|(_, id)| id.to_string()))
                            .ok_or_else(|| {
                                TaskFailure(format!(
                                    "container {name} of pod {} has no runtime id yet",
                                    pod.name_any()
                                ))
                            })?;
                        Ok(ContainerTarget::Runc { name, id })
                    })
                    .collect()
            }
        }
    }

    async fn checkpoint(&self, task: Arc<NodeTask>, attempt: Attempt) -> TaskOutcome {
        let store = self.store(&task.spec.image.storage)?;
        let location = task.spec.image.location.clone();
        let _in_use = store
            .hold(&location)
            .map_err(|e| TaskFailure(format!("image {location}: {e}")))?;
        let pod_ref = &task.spec.pod;
        // Idempotent: an image this request already published is not redone.
        match store.open_image(&location) {
            Ok(image)
                if image.manifest.meta.source.namespace == pod_ref.namespace
                    && image.manifest.meta.source.pod == pod_ref.name =>
            {
                info!(location = %location, "image already published; not checkpointing again");
                return Ok(checkpoint_result(&image, None, None));
            }
            Ok(_) => {
                return Err(TaskFailure(format!(
                    "image {location} already exists for another pod; images are never overwritten"
                )));
            }
            Err(crate::store::StoreError::NotFound(_)) => {}
            Err(e) => return Err(TaskFailure(format!("image store: {e}"))),
        }
        let pod = self.pod(&task).await?;
        let targets = self.targets(&task, &pod)?;
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
            node: self.config.node.clone(),
            namespace: pod_ref.namespace.clone(),
            pod: pod_ref.name.clone(),
            containers: Vec::new(),
        };
        let mut job = CheckpointJob::new(source, targets);
        job.leave_running = task.spec.options.leave_running;
        job.env = self.config.plugin_env.clone();
        job.timeout = Duration::from_secs(task.spec.options.timeout_seconds.max(1) as u64);
        let checkpointer: Box<dyn Checkpointer> = match &self.config.runtime {
            RuntimeMode::Process => Box::new(ProcessTree::new(self.config.criu.clone())),
            RuntimeMode::Runc { binary, root } => {
                Box::new(Runc::new(binary, root, self.config.criu.clone()))
            }
            RuntimeMode::Containerd { kubelet, .. } => Box::new(kubelet.clone()),
        };
        let started = Instant::now();
        let outcome = tokio::task::spawn_blocking(move || {
            let staging = store.stage(&location)?;
            match checkpointer.checkpoint(&job, &staging) {
                Ok(outcome) => {
                    let manifest = staging.build_manifest(outcome.meta.clone())?;
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
        .map_err(|e| TaskFailure(format!("checkpoint worker: {e}")))?
        .map_err(|e: crate::criu::RuntimeError| TaskFailure(e.to_string()))?;
        let (image, outcome) = outcome;
        let seconds = started.elapsed().as_secs_f64();
        let vendor = image.manifest.meta.gpu_vendor.unwrap_or_default();
        self.metrics
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

    async fn restore(&self, task: Arc<NodeTask>, attempt: Attempt) -> TaskOutcome {
        let store = self.store(&task.spec.image.storage)?;
        let location = task.spec.image.location.clone();
        let _in_use = store
            .hold(&location)
            .map_err(|e| TaskFailure(format!("image {location}: {e}")))?;
        let marker = self
            .config
            .work_dir
            .join(format!("{}.restoring", task.uid().unwrap_or_default()));
        if attempt.resumed && marker.exists() {
            return Err(TaskFailure(
                "the agent restarted while CRIU was restoring this image; the restored process state is unknown, so the restore is not repeated (the image is kept)".into(),
            ));
        }
        let mut transfer_stats = None;
        let mut transfer_ms = None;
        let mut pulled = false;
        if let Some(source) = task.spec.source.clone() {
            let present = store.open_image(&location).ok();
            let matches = present
                .as_ref()
                .is_some_and(|i| source.image_sha256.as_deref().is_none_or(|d| d == i.digest));
            if !matches {
                let report = self.pull(&task, &store, &source, &attempt).await?;
                transfer_ms = Some((report.seconds * 1000.0) as i64);
                transfer_stats = Some(TransferStats {
                    bytes: Some(report.bytes_transferred as i64),
                    bytes_per_second: Some(report.bytes_per_second as i64),
                });
                pulled = true;
            }
        }
        let image = store
            .open_image(&location)
            .map_err(|e| TaskFailure(format!("image {location}: {e}")))?;
        if !pulled {
            // A pulled image was verified file by file as it arrived; a local one is checked
            // now, before anything is restored from it.
            attempt.progress.say("verifying the image");
            let check = image.clone();
            tokio::task::spawn_blocking(move || check.verify())
                .await
                .map_err(|e| TaskFailure(format!("verify worker: {e}")))?
                .map_err(|e| TaskFailure(format!("image {location} is corrupt: {e}")))?;
        }
        let containers = match &self.config.runtime {
            RuntimeMode::Containerd { ctr, .. } => {
                let ctr = ctr.clone();
                return self
                    .import_checkpoint_images(
                        &task,
                        image,
                        ctr,
                        &attempt,
                        transfer_ms,
                        transfer_stats,
                    )
                    .await;
            }
            RuntimeMode::Process => image
                .manifest
                .meta
                .source
                .containers
                .iter()
                .map(|name| RestoreTarget::Process { name: name.clone() })
                .collect::<Vec<_>>(),
            RuntimeMode::Runc { .. } => {
                return Err(TaskFailure(
                    "restoring into a pod through the container runtime (containerd checkpoint-image restore) is not wired into this agent build; the image is kept".into(),
                ));
            }
        };
        attempt.progress.say("restoring");
        let work_dir = self
            .config
            .work_dir
            .join(task.uid().unwrap_or_else(|| task.name_any()));
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&self.config.work_dir)
            .and_then(|()| std::fs::write(&marker, b"restoring\n"))
            .map_err(|e| {
                TaskFailure(format!("work dir {}: {e}", self.config.work_dir.display()))
            })?;
        let mut job = RestoreJob::new(&work_dir);
        job.containers = containers;
        job.parallel_restore = task.spec.options.parallel_restore;
        job.env = self.config.plugin_env.clone();
        job.timeout = Duration::from_secs(task.spec.options.timeout_seconds.max(1) as u64);
        let restorer = ProcessTree::new(self.config.criu.clone());
        let restore_image = image.clone();
        let result = tokio::task::spawn_blocking(move || restorer.restore(&job, &restore_image))
            .await
            .map_err(|e| TaskFailure(format!("restore worker: {e}")));
        let _ = std::fs::remove_file(&marker);
        let outcome = result?.map_err(|e| TaskFailure(format!("{e}; the image is kept")))?;
        let seconds = outcome.duration.as_secs_f64();
        self.metrics.restore(seconds, outcome.plugin_stats.as_ref());
        let pids: Vec<String> = outcome
            .restored
            .iter()
            .filter_map(|r| r.pid.map(|p| format!("{}={p}", r.name)))
            .collect();
        info!(seconds, pids = %pids.join(","), "restored");
        let stats = outcome.plugin_stats.as_ref();
        Ok(TaskResult {
            size_bytes: Some(image.manifest.total_bytes() as i64),
            files: Some(image.manifest.files.len() as i64),
            sha256: Some(image.digest.clone()),
            gpu_vendor: Some(vendor_of(stats, &image)),
            gpu_memory_bytes: stats.map(|s| s.total_bytes() as i64),
            host_memory_bytes: Some(host_memory_bytes(&image) as i64),
            timings: Some(TaskTimings {
                transfer_ms,
                restore_ms: Some(outcome.duration.as_millis() as i64),
                host_restore_ms: outcome.host_restore.map(|d| d.as_millis() as i64),
                gpu_restore_ms: outcome.gpu_restore.map(|d| d.as_millis() as i64),
                ..Default::default()
            }),
            transfer: transfer_stats,
            archive_containers: Vec::new(),
            gpus: gpus_of(stats),
        })
    }

    /// Restore in `containerd` mode: each container's kubelet archive becomes a checkpoint
    /// image imported into this node's containerd. Re-running it re-imports under the same
    /// names (an import replaces the image), so a retried task is harmless.
    async fn import_checkpoint_images(
        &self,
        task: &NodeTask,
        image: Image,
        ctr: Ctr,
        attempt: &Attempt,
        transfer_ms: Option<i64>,
        transfer_stats: Option<TransferStats>,
    ) -> TaskOutcome {
        if image.manifest.meta.kind != ImageKind::CheckpointArchive {
            return Err(TaskFailure(format!(
                "image {} holds CRIU image files, not kubelet checkpoint archives: the containerd runtime restores only archives; the image is kept",
                image.location
            )));
        }
        let containers = image.manifest.meta.source.containers.clone();
        if containers.is_empty() {
            return Err(TaskFailure(format!(
                "image {} names no container",
                image.location
            )));
        }
        attempt.progress.say(format!(
            "importing {} checkpoint image(s) into containerd",
            containers.len()
        ));
        let work_dir = self
            .config
            .work_dir
            .join(task.uid().unwrap_or_else(|| task.name_any()));
        let _ = std::fs::remove_dir_all(&work_dir);
        std::fs::create_dir_all(&work_dir)
            .map_err(|e| TaskFailure(format!("work dir {}: {e}", work_dir.display())))?;
        let namespace = task.spec.pod.namespace.clone();
        let request = task.spec.checkpoint_request.clone();
        let limit = Duration::from_secs(task.spec.options.timeout_seconds.max(1) as u64);
        let started = Instant::now();
        let import_image = image.clone();
        let import_dir = work_dir.clone();
        let imported = tokio::task::spawn_blocking(move || {
            let mut references = Vec::new();
            for container in &import_image.manifest.meta.source.containers {
                let archive = import_image.file_path(&format!("{container}.tar"))?;
                let reference = ferry_api::names::checkpoint_image::reference(
                    &namespace,
                    &request,
                    container,
                    &import_image.digest,
                );
                let layout = ContainerdCheckpointImage {
                    reference: reference.clone(),
                    container: container.clone(),
                }
                .build_layout(&archive, &import_dir.join(format!("{container}-layout")))?;
                let tar = import_dir.join(format!("{container}.oci.tar"));
                pack_layout(&layout.dir, &tar, limit)?;
                // The layout's copy of the archive is in the tar now: free it before the
                // import copies the tar into containerd's content store.
                let _ = std::fs::remove_dir_all(&layout.dir);
                ctr.import(&tar, &import_dir.join(format!("{container}-import.log")), limit)?;
                let _ = std::fs::remove_file(&tar);
                info!(container = %container, reference = %reference, "checkpoint image imported into containerd");
                references.push(reference);
            }
            Ok::<_, crate::criu::RuntimeError>(references)
        })
        .await
        .map_err(|e| TaskFailure(format!("import worker: {e}")))?
        .map_err(|e| TaskFailure(format!("{e}; the image is kept")))?;
        // The logs are only needed when an import failed (the error names them).
        let _ = std::fs::remove_dir_all(&work_dir);
        let duration = started.elapsed();
        self.metrics.restore(duration.as_secs_f64(), None);
        info!(seconds = duration.as_secs_f64(), images = %imported.join(","), "checkpoint images imported; the kubelet restores the containers");
        let mut result = checkpoint_result(&image, None, None);
        result.timings = Some(TaskTimings {
            transfer_ms,
            restore_ms: Some(duration.as_millis() as i64),
            ..Default::default()
        });
        result.transfer = transfer_stats;
        result.archive_containers = containers;
        Ok(result)
    }

    async fn pull(
        &self,
        task: &NodeTask,
        store: &Store,
        source: &ferry_api::TransferSource,
        attempt: &Attempt,
    ) -> Result<transfer::PullReport, TaskFailure> {
        let cert = source.cert_sha256.clone().ok_or_else(|| {
            TaskFailure(
                "the task names no source certificate (certSha256); refusing to pull over an unpinned connection".into(),
            )
        })?;
        let namespace = task.namespace().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &namespace);
        let secret = secrets
            .get_opt(&source.token_secret_ref.name)
            .await
            .map_err(|e| TaskFailure(format!("reading the transfer token: {e}")))?
            .ok_or_else(|| {
                TaskFailure(format!(
                    "transfer token Secret {} not found",
                    source.token_secret_ref.name
                ))
            })?;
        let token = grants::token_of(&secret, &source.token_secret_ref.key).ok_or_else(|| {
            TaskFailure(format!(
                "transfer token Secret {} has no key {}",
                source.token_secret_ref.name, source.token_secret_ref.key
            ))
        })?;
        let spec = PullSpec {
            endpoint: source.endpoint.clone(),
            cert_sha256: cert,
            token,
            namespace,
            request: task.spec.checkpoint_request.clone(),
            location: task.spec.image.location.clone(),
            expected_digest: source.image_sha256.clone(),
        };
        attempt
            .progress
            .say(format!("pulling from {}", source.endpoint));
        let progress = attempt.progress.clone();
        let started = Instant::now();
        let report = transfer::pull(&spec, store, move |done, total| {
            let secs = started.elapsed().as_secs_f64().max(1e-3);
            progress.transfer(
                format!(
                    "pulling: {:.0}% of {:.2} GB",
                    100.0 * done as f64 / total.max(1) as f64,
                    total as f64 / 1e9
                ),
                TransferStats {
                    bytes: Some(done as i64),
                    bytes_per_second: Some((done as f64 / secs) as i64),
                },
            );
        })
        .await
        .map_err(|e| TaskFailure(format!("pull from {} failed: {e}", source.endpoint)))?;
        self.metrics
            .pulled(report.bytes_transferred, report.seconds);
        info!(
            bytes = report.bytes_transferred,
            resumed = report.bytes_resumed,
            seconds = report.seconds,
            "image pulled"
        );
        Ok(report)
    }

    async fn delete(&self, task: Arc<NodeTask>) -> TaskOutcome {
        let store = self.store(&task.spec.image.storage)?;
        let location = task.spec.image.location.clone();
        let found = store
            .delete(&location)
            .map_err(|e| TaskFailure(format!("deleting image {location}: {e}")))?;
        info!(location = %location, found, "image deleted");
        Ok(TaskResult::default())
    }
}

impl Executor for Worker {
    fn execute(&self, task: Arc<NodeTask>, attempt: Attempt) -> BoxFuture<'static, TaskOutcome> {
        let worker = self.clone();
        Box::pin(async move {
            match task.spec.operation {
                TaskOperation::Checkpoint => worker.checkpoint(task, attempt).await,
                TaskOperation::Restore => worker.restore(task, attempt).await,
                TaskOperation::Delete => worker.delete(task).await,
            }
        })
    }
}

fn vendor_of(stats: Option<&PluginStats>, image: &Image) -> GpuVendor {
    stats
        .map(|s| s.vendor)
        .or(image.manifest.meta.gpu_vendor)
        .unwrap_or_default()
}

/// Bytes of CRIU's memory page images (`pages-*.img`) in the image.
fn host_memory_bytes(image: &Image) -> u64 {
    image
        .manifest
        .files
        .iter()
        .filter(|f| {
            let name = f.path.rsplit('/').next().unwrap_or_default();
            name.starts_with("pages-") && name.ends_with(".img")
        })
        .map(|f| f.size)
        .sum()
}

fn checkpoint_result(
    image: &Image,
    duration: Option<Duration>,
    frozen_at: Option<MicroTime>,
) -> TaskResult {
    let stats = image.manifest.meta.plugin_stats.as_ref();
    TaskResult {
        size_bytes: Some(image.manifest.total_bytes() as i64),
        files: Some(image.manifest.files.len() as i64),
        sha256: Some(image.digest.clone()),
        gpu_vendor: Some(vendor_of(stats, image)),
        gpu_memory_bytes: stats.map(|s| s.total_bytes() as i64),
        // The pages of a kubelet archive are inside its tar, not counted here: unknown, not 0.
        host_memory_bytes: (image.manifest.meta.kind == ImageKind::Criu)
            .then(|| host_memory_bytes(image) as i64),
        timings: Some(TaskTimings {
            checkpoint_ms: duration.map(|d| d.as_millis() as i64),
            frozen_at,
            ..Default::default()
        }),
        transfer: None,
        // The operator gives the restored pod's containers checkpoint images for these.
        archive_containers: if image.manifest.meta.kind == ImageKind::CheckpointArchive {
            image.manifest.meta.source.containers.clone()
        } else {
            Vec::new()
        },
        gpus: gpus_of(stats),
    }
}

/// The GPUs in the plugin's stats, with the device memory each one held.
fn gpus_of(stats: Option<&PluginStats>) -> Vec<GpuInfo> {
    stats
        .map(|s| {
            s.bytes_per_device()
                .into_iter()
                .map(|(id, bytes)| GpuInfo {
                    id,
                    model: None,
                    memory_bytes: (bytes > 0).then_some(bytes as i64),
                })
                .collect()
        })
        .unwrap_or_default()
}
