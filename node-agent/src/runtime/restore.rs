//! Restoring, one trait with one implementation per runtime mechanism (see
//! `docs/node-agent-runtimes.md`):
//! - [`crate::runtime::runc::Runc`]: `runc restore` of a container's CRIU images into a bundle;
//! - [`crate::runtime::process_tree::ProcessTree`]: CRIU on a process tree;
//! - [`crate::runtime::containerd::import::CheckpointImageImport`]: containerd ≥ 2.1's
//!   checkpoint-image restore: each kubelet archive becomes an OCI checkpoint image imported
//!   into the node's containerd; creating the container from it (CRIU's restore) is then the
//!   kubelet's and containerd's work, when they start the restored pod;
//! - [`crate::runtime::placeholder::PlaceholderRestore`]: CRIU into a running placeholder
//!   container whose PID 1 is `ferry-supervisor`.
//!
//! **A restore never modifies the image**: it runs in a restore directory of links to the
//! image's files (see [`crate::runtime::layout`]).

use std::path::PathBuf;
use std::time::Duration;

use ferry_api::stats::PluginStats;

use crate::runtime::control::ToolControl;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::exec::DEFAULT_TIMEOUT;
use crate::runtime::plugin::{merge_stats, plugin_env};
use crate::store::Image;

/// One container of an image to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The process tree saved as `name` (`<image>/<name>/`).
    Process {
        /// Name in the image.
        name: String,
    },
    /// The container saved as `name`, restored by runc as container `id` from `bundle`.
    Runc {
        /// Name in the image.
        name: String,
        /// The new container's id (must not exist under the runc root).
        id: String,
        /// The OCI bundle (config.json + rootfs) to restore into. In tests and the demo the
        /// caller builds it; for a pod it is the bundle of a container created (not started)
        /// from the same pod spec, which is what containerd's restore path does itself.
        bundle: PathBuf,
    },
    /// The kubelet checkpoint archive saved as `name` (`<image>/<name>.tar`), imported into the
    /// node's containerd as the checkpoint image `reference`.
    CheckpointImage {
        /// Name in the image.
        name: String,
        /// The image reference the restored pod's container names
        /// ([`ferry_api::names::checkpoint_image::reference`]).
        reference: String,
    },
    /// The container saved as `name` (a `runc checkpoint` image), restored by CRIU into the
    /// running placeholder container `placeholder` (see [`crate::runtime::placeholder`]).
    Placeholder {
        /// Name in the image.
        name: String,
        /// The placeholder to restore into.
        placeholder: Placeholder,
    },
}

impl RestoreTarget {
    /// The container's name in the image.
    pub fn name(&self) -> &str {
        match self {
            RestoreTarget::Process { name }
            | RestoreTarget::Runc { name, .. }
            | RestoreTarget::CheckpointImage { name, .. }
            | RestoreTarget::Placeholder { name, .. } => name,
        }
    }
}

/// A running placeholder container, as the agent sees it from the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placeholder {
    /// Host pid of its PID 1 (the supervisor).
    pub host_pid: i32,
    /// Its root filesystem on the host (CRIU's `--root`).
    pub rootfs: PathBuf,
    /// Its control directory on the host (the supervisor's `--control`).
    pub control_dir: PathBuf,
    /// Its network namespace (`/run/netns/…`, `/proc/<pid>/ns/net`).
    pub netns: PathBuf,
    /// Where an external mount of the dump comes from, by CRIU's key (runc's key is the
    /// mount's destination in the container). Keys not listed map to the same path on the
    /// host (`/dev/null`, `/sys/fs/cgroup/*`, binds whose source is their destination).
    pub ext_mounts: Vec<(String, PathBuf)>,
}

/// A restore request.
#[derive(Clone, Debug)]
pub struct RestoreJob {
    /// A private directory for this restore (e.g. `/var/lib/ferry/work/<task>`), outside the
    /// store: restore directories, CRIU's logs and the plugin's stats go here.
    pub work_dir: PathBuf,
    /// What to restore. Empty: every container in the image, as process trees.
    pub containers: Vec<RestoreTarget>,
    /// ferry's plugin refills device memory in parallel with host memory (the CR's
    /// `gpu.parallelRestore`; `FERRY_PARALLEL_RESTORE`).
    pub parallel_restore: bool,
    /// Extra environment for CRIU and ferry's plugin.
    pub env: Vec<(String, String)>,
    /// Limit for each tool run.
    pub timeout: Duration,
    /// The task's deadline and cancel switch for every tool of this restore (default: none).
    pub control: ToolControl,
}

impl RestoreJob {
    /// A job restoring every container of the image as process trees, parallel restore on.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        RestoreJob {
            work_dir: work_dir.into(),
            containers: Vec::new(),
            parallel_restore: true,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
            control: ToolControl::default(),
        }
    }

    /// The environment for CRIU: the job's, then the plugin's mode.
    pub(crate) fn criu_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.extend(plugin_env(self.parallel_restore));
        env
    }

    /// The restore directory of container `name`.
    pub fn restore_dir(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }
}

/// One restored container.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Its name in the image.
    pub name: String,
    /// The restored root process (host pid namespace).
    pub pid: Option<i32>,
    /// The runtime's container id, for runtime restores.
    pub container_id: Option<String>,
    /// CRIU's restore log.
    pub log: PathBuf,
    /// The plugin's restore stats, when it restored a device.
    pub plugin_stats: Option<PluginStats>,
    /// Wall time of the tool run itself (CRIU or runc).
    pub tool_wall: Duration,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreOutcome {
    /// Per container, in order.
    pub restored: Vec<Restored>,
    /// Wall time of the whole restore.
    pub duration: Duration,
    /// The plugin's stats merged over containers.
    pub plugin_stats: Option<PluginStats>,
    /// Host-memory restore window as the plugin measured it (POST_FORKING → RESUME_DEVICES_LATE).
    pub host_restore: Option<Duration>,
    /// Device-memory restore phase as the plugin measured it.
    pub gpu_restore: Option<Duration>,
}

impl RestoreOutcome {
    pub(crate) fn new(restored: Vec<Restored>, duration: Duration) -> Self {
        let plugin_stats = merge_stats(restored.iter().filter_map(|r| r.plugin_stats.clone()));
        let secs = |s: f64| Duration::try_from_secs_f64(s).ok();
        RestoreOutcome {
            host_restore: plugin_stats
                .as_ref()
                .and_then(|s| secs(s.host_restore_seconds)),
            gpu_restore: plugin_stats
                .as_ref()
                .and_then(|s| secs(s.gpu_phase_seconds)),
            plugin_stats,
            restored,
            duration,
        }
    }
}

/// A way to restore an image.
pub trait Restorer: Send + Sync {
    /// Restores `image` as `job` says. Never modifies or deletes the image; on error the
    /// restore directories (with CRIU's log) stay in `job.work_dir`.
    fn restore(&self, job: &RestoreJob, image: &Image) -> Result<RestoreOutcome>;

    /// Whether running the restore again after an interrupted attempt (an agent restart) is
    /// safe. CRIU's restores are not: the first attempt may have restored processes that
    /// still run. An import is: it replaces what the interrupted one left.
    fn repeatable(&self) -> bool {
        false
    }
}

/// The image's directory for container `name`, checked to exist.
pub(crate) fn container_dir(image: &Image, name: &str) -> Result<PathBuf> {
    let dir = image.file_path(name)?;
    if !dir.is_dir() {
        return Err(RuntimeError::Invalid(format!(
            "image {} has no container {name:?} (no {})",
            image.location,
            dir.display()
        )));
    }
    Ok(dir)
}

/// The containers to restore: the job's, or every container the image lists.
pub(crate) fn targets(job: &RestoreJob, image: &Image) -> Result<Vec<RestoreTarget>> {
    if !job.containers.is_empty() {
        return Ok(job.containers.clone());
    }
    let names = &image.manifest.meta.source.containers;
    if names.is_empty() {
        return Err(RuntimeError::Invalid(format!(
            "image {} lists no containers",
            image.location
        )));
    }
    Ok(names
        .iter()
        .map(|n| RestoreTarget::Process { name: n.clone() })
        .collect())
}
