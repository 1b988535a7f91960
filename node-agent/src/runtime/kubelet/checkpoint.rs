//! The kubelet's checkpoint API as a [`Checkpointer`]: one request per container, the archive
//! moved into the staged image, the plugin's stats read from it.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::runtime::checkpoint::{
    CheckpointJob, CheckpointOutcome, Checkpointer, ContainerCheckpoint, ContainerTarget,
};
use crate::runtime::error::{Result, RuntimeError, io_err};
use crate::runtime::kubelet::api::KubeletApi;
use crate::runtime::kubelet::archive::archive_member;
use crate::store::{ImageKind, Staging};

/// Moves `from` to `to`: a rename, or copy and remove across filesystems.
fn move_file(from: &Path, to: &Path) -> Result<()> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to).map_err(io_err(format!(
                "copy {} to {}",
                from.display(),
                to.display()
            )))?;
            std::fs::remove_file(from).map_err(io_err(format!("remove {}", from.display())))
        }
        Err(e) => Err(io_err(format!(
            "move {} to {}",
            from.display(),
            to.display()
        ))(e)),
    }
}

impl Checkpointer for KubeletApi {
    fn checkpoint(&self, job: &CheckpointJob, staging: &Staging) -> Result<CheckpointOutcome> {
        job.validate()?;
        let start = Instant::now();
        let mut frozen_at = None;
        let mut containers = Vec::new();
        for target in &job.containers {
            let ContainerTarget::Kubelet { name } = target else {
                return Err(RuntimeError::Invalid(format!(
                    "the kubelet checkpointer cannot checkpoint {target:?}"
                )));
            };
            // The kubelet (its CRIU) is asked to finish by the task's deadline: ferry cannot
            // kill the kubelet's CRIU, only stop waiting for it.
            let limit = self.control.limit(job.timeout);
            let path =
                KubeletApi::checkpoint_path(&job.source.namespace, &job.source.pod, name, limit)?;
            let span = tracing::info_span!("kubelet_checkpoint", node = %self.address, namespace = %job.source.namespace, pod = %job.source.pod, container = %name);
            let _g = span.enter();
            // The kubelet freezes during the call; its CRIU log is inside the archive, so the
            // request's start is the freeze instant's bound here.
            frozen_at.get_or_insert_with(jiff::Timestamp::now);
            let asked = Instant::now();
            let (status, body) = self.post(&path, limit + Duration::from_secs(30))?;
            let tool_wall = asked.elapsed();
            let items = KubeletApi::parse_response(status, &body)?;
            let archive = self.local_archive(&items[0])?;
            let dest = staging.file_path(&format!("{name}.tar"))?;
            move_file(&archive, &dest)?;
            // ferry's plugin ran inside the kubelet's CRIU if it is in CRIU's plugin dir; its
            // dump stats are then in the archive's `checkpoint/` dir.
            let member = format!("checkpoint/{}", ferry_api::stats::DUMP_STATS_FILE);
            // The stats only inform metrics and the image's GPU vendor: an archive they cannot
            // be read from is still the checkpoint, so a failure here is a warning.
            let plugin_stats = match archive_member(&dest, &member) {
                Ok(Some(bytes)) => {
                    match ferry_api::stats::PluginStats::from_json(&String::from_utf8_lossy(&bytes))
                    {
                        Ok(stats) => Some(stats),
                        Err(e) => {
                            tracing::warn!(archive = %dest.display(), error = %e, "unreadable plugin stats in the archive");
                            None
                        }
                    }
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(archive = %dest.display(), error = %e, "cannot read the archive for plugin stats");
                    None
                }
            };
            tracing::info!(archive = %archive.display(), dest = %dest.display(), "kubelet checkpoint archive moved into the image");
            containers.push(ContainerCheckpoint {
                name: name.clone(),
                path: dest,
                log: None,
                plugin_stats,
                tool_wall,
            });
        }
        Ok(CheckpointOutcome::assemble(
            job,
            ImageKind::CheckpointArchive,
            None,
            containers,
            frozen_at,
            start,
            true,
        ))
    }
}
