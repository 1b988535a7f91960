//! Checkpointing, three paths behind one trait (see `docs/node-agent-runtimes.md`):
//! - [`crate::runtime::kubelet::KubeletApi`]: the kubelet's checkpoint API (KEP-2008), an
//!   archive;
//! - [`crate::runtime::runc::Runc`]: `runc checkpoint` on the runtime's containers (GPU pods,
//!   runtimes without the kubelet API);
//! - [`crate::runtime::process_tree::ProcessTree`]: CRIU on a process tree (demo, tests).
//!
//! A checkpointer writes into a [`Staging`] and returns the image's [`ImageMeta`]; the caller
//! builds the manifest and publishes (or discards: the staged CRIU log is then still there to
//! read until it does). Calls are synchronous: the executor runs them on a blocking thread.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_api::stats::PluginStats;
use jiff::Timestamp;

use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::exec::DEFAULT_TIMEOUT;
use crate::runtime::plugin::merge_stats;
use crate::store::{ImageKind, ImageMeta, ImageSource, Staging};

/// One container (or process tree) to checkpoint. `name` is the container's name in the pod:
/// it names the image's subdirectory (`<image>/<name>/`) or archive (`<image>/<name>.tar`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContainerTarget {
    /// A process tree rooted at `pid` (path c).
    Process {
        /// Name in the image.
        name: String,
        /// Root of the tree.
        pid: i32,
    },
    /// A runc container by its runtime id (path b).
    Runc {
        /// Name in the image.
        name: String,
        /// The runtime's container id (containerd's, under its runc `--root`).
        id: String,
    },
    /// A pod's container through the kubelet (path a); namespace and pod come from the job's
    /// [`ImageSource`].
    Kubelet {
        /// The container's name in the pod spec.
        name: String,
    },
}

impl ContainerTarget {
    /// The container's name in the image.
    pub fn name(&self) -> &str {
        match self {
            ContainerTarget::Process { name, .. }
            | ContainerTarget::Runc { name, .. }
            | ContainerTarget::Kubelet { name } => name,
        }
    }
}

/// A checkpoint request as the executor hands it over.
#[derive(Clone, Debug)]
pub struct CheckpointJob {
    /// Node, namespace and pod (goes into the image's metadata).
    pub source: ImageSource,
    /// What to checkpoint, in order. Several containers are dumped one after another.
    pub containers: Vec<ContainerTarget>,
    /// Keep the workload running after the dump; otherwise it is stopped by the dump.
    pub leave_running: bool,
    /// Extra environment for CRIU and ferry's plugin (e.g. `FERRY_SIM_*`, `FERRY_CHUNK_SIZE`).
    pub env: Vec<(String, String)>,
    /// Limit for each tool run.
    pub timeout: Duration,
}

impl CheckpointJob {
    /// A job for `containers` of `source`, stopping the workload, default limit.
    pub fn new(source: ImageSource, containers: Vec<ContainerTarget>) -> Self {
        CheckpointJob {
            source,
            containers,
            leave_running: false,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.containers.is_empty() {
            return Err(RuntimeError::Invalid("no containers to checkpoint".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for c in &self.containers {
            crate::store::validate_relative(c.name())?;
            if c.name().contains('/') {
                return Err(RuntimeError::Invalid(format!(
                    "container name {:?} has a '/'",
                    c.name()
                )));
            }
            if !seen.insert(c.name()) {
                return Err(RuntimeError::Invalid(format!(
                    "container {:?} listed twice",
                    c.name()
                )));
            }
        }
        Ok(())
    }

    /// The image source with the job's container names filled in.
    pub(crate) fn source_with_containers(&self) -> ImageSource {
        let mut source = self.source.clone();
        source.containers = self.containers.iter().map(|c| c.name().into()).collect();
        source
    }
}

/// One container's part of a checkpoint.
#[derive(Clone, Debug)]
pub struct ContainerCheckpoint {
    /// The container's name.
    pub name: String,
    /// Its files in the staging dir (a directory of CRIU images, or an archive).
    pub path: PathBuf,
    /// CRIU's dump log, inside the staged image (absent for the kubelet path, where it is
    /// inside the archive).
    pub log: Option<PathBuf>,
    /// The plugin's dump stats, when it handled a device.
    pub plugin_stats: Option<PluginStats>,
    /// Wall time of the tool run itself (CRIU, runc, or the kubelet's answer); the rest of
    /// [`CheckpointOutcome::duration`] is the agent's own work.
    pub tool_wall: Duration,
}

/// What a checkpoint produced.
#[derive(Clone, Debug)]
pub struct CheckpointOutcome {
    /// The image's metadata: pass it to [`Staging::build_manifest`].
    pub meta: ImageMeta,
    /// When the (first) container's tasks were frozen.
    pub frozen_at: Timestamp,
    /// Wall time of the whole checkpoint.
    pub duration: Duration,
    /// The plugin's dump stats, merged over containers.
    pub plugin_stats: Option<PluginStats>,
    /// Per container.
    pub containers: Vec<ContainerCheckpoint>,
    /// Whether the workload still runs. The kubelet API always leaves it running, even when
    /// the job asked to stop it: the caller then stops (deletes) the pod itself.
    pub still_running: bool,
}

impl CheckpointOutcome {
    /// The outcome of a checkpoint that took `containers` since `start`: the image metadata
    /// (`kind`, the job's source, `criu_version`) with the containers' plugin stats merged in.
    pub fn assemble(
        job: &CheckpointJob,
        kind: ImageKind,
        criu_version: Option<String>,
        containers: Vec<ContainerCheckpoint>,
        frozen_at: Option<Timestamp>,
        start: Instant,
        still_running: bool,
    ) -> Self {
        let plugin_stats = merge_stats(containers.iter().filter_map(|c| c.plugin_stats.clone()));
        let mut meta = ImageMeta::new(kind, job.source_with_containers());
        meta.criu_version = criu_version;
        meta.gpu_vendor = plugin_stats.as_ref().map(|s| s.vendor);
        meta.plugin_stats = plugin_stats.clone();
        CheckpointOutcome {
            meta,
            frozen_at: frozen_at.unwrap_or_else(Timestamp::now),
            duration: start.elapsed(),
            plugin_stats,
            containers,
            still_running,
        }
    }
}

/// A way to checkpoint containers.
pub trait Checkpointer: Send + Sync {
    /// Checkpoints `job`'s containers into `staging`. On error the staging directory keeps
    /// what was written (the CRIU log among it); the caller discards it.
    fn checkpoint(&self, job: &CheckpointJob, staging: &Staging) -> Result<CheckpointOutcome>;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_job_needs_distinct_safe_container_names() {
        let src = ImageSource::default();
        let p = |n: &str| ContainerTarget::Process {
            name: n.into(),
            pid: 1,
        };
        assert!(CheckpointJob::new(src.clone(), vec![]).validate().is_err());
        assert!(
            CheckpointJob::new(src.clone(), vec![p("a"), p("a")])
                .validate()
                .is_err()
        );
        assert!(
            CheckpointJob::new(src.clone(), vec![p("../x")])
                .validate()
                .is_err()
        );
        assert!(
            CheckpointJob::new(src.clone(), vec![p("a/b")])
                .validate()
                .is_err()
        );
        let job = CheckpointJob::new(src, vec![p("a"), p("b")]);
        job.validate().unwrap();
        assert_eq!(job.source_with_containers().containers, ["a", "b"]);
    }
}
