//! containerd ≥ 2.1's checkpoint-image restore as a [`Restorer`]: each container's kubelet
//! archive becomes a checkpoint image imported into the node's containerd under the name the
//! operator gave the restored pod's container; the kubelet then creates the container from
//! it, which is containerd's restore. Re-running it re-imports under the same names (an
//! import replaces the image), so a retried task is harmless.

use std::time::Instant;

use crate::runtime::containerd::ctr::Ctr;
use crate::runtime::containerd::image::{ContainerdCheckpointImage, pack_layout};
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::restore::{RestoreJob, RestoreOutcome, RestoreTarget, Restored, Restorer};
use crate::store::Image;

/// Imports an image's kubelet archives into containerd as checkpoint images.
#[derive(Clone, Debug)]
pub struct CheckpointImageImport {
    /// `ctr` on the node's containerd.
    pub ctr: Ctr,
}

impl Restorer for CheckpointImageImport {
    fn restore(&self, job: &RestoreJob, image: &Image) -> Result<RestoreOutcome> {
        let start = Instant::now();
        if job.containers.is_empty() {
            return Err(RuntimeError::Invalid(
                "a checkpoint-image import needs each container's image reference".into(),
            ));
        }
        let mut restored = Vec::new();
        for target in &job.containers {
            let RestoreTarget::CheckpointImage { name, reference } = target else {
                return Err(RuntimeError::Invalid(format!(
                    "the containerd import cannot restore {target:?}"
                )));
            };
            let archive = image.file_path(&format!("{name}.tar"))?;
            let layout = ContainerdCheckpointImage {
                reference: reference.clone(),
                container: name.clone(),
            }
            .build_layout(&archive, &job.work_dir.join(format!("{name}-layout")))?;
            let tar = job.work_dir.join(format!("{name}.oci.tar"));
            pack_layout(&layout.dir, &tar, job.timeout, &job.control)?;
            // The layout's copy of the archive is in the tar now: free it before the import
            // copies the tar into containerd's content store.
            let _ = std::fs::remove_dir_all(&layout.dir);
            let log = job.work_dir.join(format!("{name}-import.log"));
            let asked = Instant::now();
            self.ctr.import(&tar, &log, job.timeout, &job.control)?;
            let tool_wall = asked.elapsed();
            let _ = std::fs::remove_file(&tar);
            tracing::info!(container = %name, reference = %reference, "checkpoint image imported into containerd");
            restored.push(Restored {
                name: name.clone(),
                pid: None,
                container_id: None,
                log,
                plugin_stats: None,
                tool_wall,
            });
        }
        // The logs are only needed when an import failed (the error names them).
        let _ = std::fs::remove_dir_all(&job.work_dir);
        Ok(RestoreOutcome::new(restored, start.elapsed()))
    }

    fn repeatable(&self) -> bool {
        true
    }
}
