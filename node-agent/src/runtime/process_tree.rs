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
            let run = criu
                .dump(
                    &DumpArgs {
                        pid: *pid,
                        images_dir: &dir,
                        leave_running: job.leave_running,
                    },
                    &job.env,
                )
                .inspect_err(|e| {
                    if matches!(
                        e,
                        RuntimeError::Timeout { .. } | RuntimeError::Cancelled { .. }
                    ) {
                        let continued = thaw_tree(*pid);
                        tracing::warn!(pid, continued, "criu dump killed; the tree runs on");
                    }
                })?;
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
        // The job's control when the executor set one, else the one bound to this CRIU.
        let control = if job.control.is_live() {
            job.control.clone()
        } else {
            self.criu.control.clone()
        };
        let criu = Criu {
            timeout: job.timeout,
            control,
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

/// Continues every stopped task of the tree rooted at `root`; returns how many it continued.
///
/// For a CRIU dump killed halfway (finding 7): the kernel detaches a dead tracer's tracees and
/// wakes them, and CRIU's parasite, finding its control socket closed, returns each task to
/// its own code; but a task CRIU's seize caught in a group stop stays stopped. Without this
/// the workload could be left frozen by a checkpoint that no longer exists.
pub(crate) fn thaw_tree(root: i32) -> usize {
    let mut stack = vec![root];
    let mut seen = std::collections::HashSet::new();
    let mut continued = 0;
    while let Some(pid) = stack.pop() {
        // A tree has at most pid_max members; the bound guards against a /proc that lies.
        if !seen.insert(pid) || seen.len() > 1 << 22 {
            continue;
        }
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        let mut stopped = false;
        for task in tasks.flatten() {
            let dir = task.path();
            let state = std::fs::read_to_string(dir.join("stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit(')')
                        .next()
                        .and_then(|r| r.split_whitespace().next())
                        .map(str::to_string)
                })
                .unwrap_or_default();
            stopped |= state == "T" || state == "t";
            if let Ok(children) = std::fs::read_to_string(dir.join("children")) {
                stack.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<i32>().ok()),
                );
            }
        }
        if stopped && let Some(p) = rustix::process::Pid::from_raw(pid) {
            match rustix::process::kill_process(p, rustix::process::Signal::CONT) {
                Ok(()) => continued += 1,
                Err(e) => tracing::warn!(pid, error = %e, "could not continue a stopped task"),
            }
        }
    }
    continued
}
