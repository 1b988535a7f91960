//! Path (c): CRIU directly on process trees (the demo and the tests; also any workload the
//! agent can see by pid). One subdirectory per tree: `<image>/<name>/`.

use std::time::Instant;

use ferry_api::stats::{DUMP_STATS_FILE, RESTORE_STATS_FILE};

use crate::runtime::checkpoint::{
    CheckpointJob, CheckpointOutcome, Checkpointer, ContainerCheckpoint, ContainerTarget,
};
use crate::runtime::criu::{Criu, DumpArgs, RestoreArgs, VersionCache};
use crate::runtime::criu_log;
use crate::runtime::error::{Result, RuntimeError};
use crate::runtime::layout::restore_dir;
use crate::runtime::plugin::read_plugin_stats;
use crate::runtime::restore::{
    RestoreJob, RestoreOutcome, RestoreTarget, Restored, Restorer, container_dir, targets,
};
use crate::store::{Image, ImageKind, Staging};

/// CRIU on process trees.
#[derive(Debug)]
pub struct ProcessTree {
    /// The CRIU binary and plugin dir.
    pub criu: Criu,
    version: VersionCache,
}

impl ProcessTree {
    /// Process trees through `criu`.
    pub fn new(criu: Criu) -> Self {
        ProcessTree {
            criu,
            version: VersionCache::default(),
        }
    }

    /// `criu --version`, asked once.
    pub(crate) fn criu_version(&self) -> Option<String> {
        self.version.get(&self.criu)
    }
}

impl Checkpointer for ProcessTree {
    fn checkpoint(&self, job: &CheckpointJob, staging: &Staging) -> Result<CheckpointOutcome> {
        job.validate()?;
        let start = Instant::now();
        let criu = Criu {
            timeout: job.timeout,
            ..self.criu.clone()
        };
        let mut containers = Vec::new();
        let mut frozen_at = None;
        for target in &job.containers {
            let ContainerTarget::Process { name, pid } = target else {
                return Err(RuntimeError::Invalid(format!(
                    "the process-tree checkpointer cannot checkpoint {target:?}"
                )));
            };
            let dir = staging.file_path(name)?;
            let span = tracing::info_span!("criu_dump", container = %name, pid, leave_running = job.leave_running);
            let _g = span.enter();
            let run = criu.dump(
                &DumpArgs {
                    pid: *pid,
                    images_dir: &dir,
                    leave_running: job.leave_running,
                },
                &job.env,
            )?;
            frozen_at.get_or_insert_with(|| criu_log::frozen_at(run.started_at, &run.log));
            let plugin_stats = read_plugin_stats(&dir, DUMP_STATS_FILE)?;
            containers.push(ContainerCheckpoint {
                name: name.clone(),
                path: dir,
                log: Some(run.log),
                plugin_stats,
                tool_wall: run.wall,
            });
        }
        Ok(CheckpointOutcome::assemble(
            job,
            ImageKind::Criu,
            self.criu_version(),
            containers,
            frozen_at,
            start,
            job.leave_running,
        ))
    }
}

impl Restorer for ProcessTree {
    fn restore(&self, job: &RestoreJob, image: &Image) -> Result<RestoreOutcome> {
        let start = Instant::now();
        let criu = Criu {
            timeout: job.timeout,
            ..self.criu.clone()
        };
        let env = job.criu_env();
        let mut restored = Vec::new();
        for target in targets(job, image)? {
            let RestoreTarget::Process { name } = &target else {
                return Err(RuntimeError::Invalid(format!(
                    "the process-tree restorer cannot restore {target:?}"
                )));
            };
            let src = container_dir(image, name)?;
            let dir = job.restore_dir(name);
            restore_dir(&src, &dir)?;
            let span = tracing::info_span!("criu_restore", container = %name, image = %image.location, parallel = job.parallel_restore);
            let _g = span.enter();
            let (run, pid) = criu.restore(&RestoreArgs { images_dir: &dir }, &env)?;
            let plugin_stats = read_plugin_stats(&dir, RESTORE_STATS_FILE)?;
            tracing::info!(
                pid,
                wall_s = run.wall.as_secs_f64(),
                "process tree restored"
            );
            restored.push(Restored {
                name: name.clone(),
                pid: Some(pid),
                container_id: None,
                tool_wall: run.wall,
                log: run.log,
                plugin_stats,
            });
        }
        Ok(RestoreOutcome::new(restored, start.elapsed()))
    }
}
