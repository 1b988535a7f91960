//! Path (b): the container runtime's runc directly — `runc checkpoint` / `runc restore` under
//! the runtime's state root (`/run/containerd/runc/k8s.io` for containerd's CRI namespace).
//!
//! **ferry's plugin under runc.** runc drives CRIU over RPC (`criu swrk`) and has no
//! `--libdir`. CRIU finds the plugin in one of three ways, all tried here:
//! 1. CRIU's built-in plugin dir (`/usr/lib/criu` as `scripts/install-deps` builds CRIU):
//!    ferry's DaemonSet copies the `.so` there (see `docs/deploy.md`). Node-wide; the default.
//! 2. A CRIU config file with a `libdir` line ([`criu_config`]) named by the container's
//!    OCI annotation [`CRIU_CONFIG_ANNOTATION`] (`org.criu.config`), which runc hands to CRIU
//!    for that container only. For pods, containerd copies pod annotations listed in its
//!    runtime's `pod_annotations` allowlist into the OCI spec. Tested in `runtime_runc.rs`.
//! 3. `/etc/criu/runc.conf`, which runc passes to CRIU when no annotation names a file.
//!
//! runc runs `criu swrk` with its own environment, so the job's env
//! (`FERRY_PARALLEL_RESTORE`, `FERRY_SIM_*`, …) is passed to runc and reaches the plugin.
//!
//! Layout: `<image>/<name>/` holds CRIU's images, runc's `descriptors.json`, CRIU's
//! `dump.log` (runc's `--work-path` is the image dir, so the log is part of the image) and
//! runc's own stderr (`runc-checkpoint.log`). A restore runs in a restore directory
//! (see [`crate::runtime::layout`]): `restore.log`, `runc-restore.log`, `runc.pid`.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ferry_api::stats::{DUMP_STATS_FILE, RESTORE_STATS_FILE};

use crate::runtime::checkpoint::{
    CheckpointJob, CheckpointOutcome, Checkpointer, ContainerCheckpoint, ContainerTarget,
};
use crate::runtime::control::ToolControl;
use crate::runtime::criu::{Criu, VersionCache};
use crate::runtime::criu_log::{self, log_errors};
use crate::runtime::error::{Result, RuntimeError, io_err};
use crate::runtime::exec;
use crate::runtime::layout::{
    RUNC_CHECKPOINT_STDERR, RUNC_DUMP_LOG, RUNC_PIDFILE, RUNC_RESTORE_LOG, RUNC_RESTORE_STDERR,
    restore_dir,
};
use crate::runtime::plugin::read_plugin_stats;
use crate::runtime::restore::{
    RestoreJob, RestoreOutcome, RestoreTarget, Restored, Restorer, container_dir,
};
use crate::store::{Image, ImageKind, Staging};

/// Default runc binary.
pub const DEFAULT_RUNC: &str = "/usr/sbin/runc";
/// containerd's runc state root for the CRI (`k8s.io`) namespace.
pub const CONTAINERD_RUNC_ROOT: &str = "/run/containerd/runc/k8s.io";
/// The OCI annotation naming a CRIU config file for one container (runc reads it).
pub const CRIU_CONFIG_ANNOTATION: &str = "org.criu.config";

/// A CRIU config file that loads plugins from `libdir` (for [`CRIU_CONFIG_ANNOTATION`] or
/// `/etc/criu/runc.conf`).
pub fn criu_config(libdir: &Path) -> String {
    format!("libdir {}\n", libdir.display())
}

/// runc under one state root.
#[derive(Debug)]
pub struct Runc {
    /// The runc binary.
    pub binary: PathBuf,
    /// `--root`: runc's state dir (containerd's: [`CONTAINERD_RUNC_ROOT`]).
    pub root: PathBuf,
    /// The CRIU runc runs (`--criu`), also asked for its version. Its `libdir` is not used
    /// (see the module docs).
    pub criu: Criu,
    version: VersionCache,
}

impl Runc {
    /// runc `binary` with state root `root`, CRIU `criu`.
    pub fn new(binary: impl Into<PathBuf>, root: impl Into<PathBuf>, criu: Criu) -> Self {
        Runc {
            binary: binary.into(),
            root: root.into(),
            criu,
            version: VersionCache::default(),
        }
    }

    fn global_args(&self) -> Vec<OsString> {
        vec![
            "--root".into(),
            self.root.clone().into(),
            "--criu".into(),
            self.criu.binary.clone().into(),
        ]
    }

    /// `runc … checkpoint` arguments for container `id` into `image_path`.
    pub fn checkpoint_args(
        &self,
        id: &str,
        image_path: &Path,
        leave_running: bool,
    ) -> Vec<OsString> {
        let mut args = self.global_args();
        args.extend([
            "checkpoint".into(),
            "--image-path".into(),
            image_path.into(),
            "--work-path".into(),
            image_path.into(),
        ]);
        if leave_running {
            args.push("--leave-running".into());
        }
        args.push(id.into());
        args
    }

    /// `runc … restore` arguments: container `id` from `image_path` into `bundle`, detached;
    /// logs and the pidfile in `work_path`.
    pub fn restore_args(
        &self,
        id: &str,
        image_path: &Path,
        work_path: &Path,
        bundle: &Path,
    ) -> Vec<OsString> {
        let mut args = self.global_args();
        args.extend([
            "restore".into(),
            "--detach".into(),
            "--image-path".into(),
            image_path.into(),
            "--work-path".into(),
            work_path.into(),
            "--bundle".into(),
            bundle.into(),
            "--pid-file".into(),
            work_path.join(RUNC_PIDFILE).into(),
            id.into(),
        ]);
        args
    }

    /// Runs runc with `args` within `timeout`, cut and cancelled by `control`; on failure the
    /// error carries runc's last stderr line and CRIU's error lines from `criu_log`.
    fn run(
        &self,
        op: &'static str,
        args: &[OsString],
        env: &[(String, String)],
        stderr_path: &Path,
        criu_log: &Path,
        (timeout, control): (std::time::Duration, &ToolControl),
    ) -> Result<std::time::Duration> {
        let stderr = File::create(stderr_path)
            .map_err(io_err(format!("create {}", stderr_path.display())))?;
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // A detached container inherits runc's stdio; nothing may be a pipe we wait on.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        tracing::debug!(op, binary = %self.binary.display(), ?args, "running runc");
        let finished = exec::run(&mut cmd, &format!("runc {op}"), timeout, control)?;
        if finished.status.success() {
            return Ok(finished.wall);
        }
        let runc_says = std::fs::read_to_string(stderr_path)
            .ok()
            .and_then(|t| {
                t.lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .map(runc_message)
            })
            .unwrap_or_else(|| "no output".into());
        let criu_says = if criu_log.exists() {
            log_errors(criu_log)
        } else {
            "CRIU did not run".into()
        };
        let message = format!("runc: {runc_says}; criu: {criu_says}");
        tracing::warn!(op, status = %finished.status, log = %criu_log.display(), %message, "runc failed");
        Err(RuntimeError::Tool {
            tool: "runc",
            op,
            status: finished.status.to_string(),
            message,
            log: criu_log.to_path_buf(),
        })
    }
}

impl Runc {
    /// After a `runc checkpoint` killed halfway (finding 7): runc has CRIU freeze the
    /// container's cgroup, and a killed CRIU leaves it frozen. `runc resume` thaws it (runc
    /// reports a frozen container as paused); a container that is not frozen answers "not
    /// paused", which is fine. Runs under its own short limit: the task's control is
    /// cancelled by now.
    fn thaw(&self, id: &str, dir: &Path) {
        let mut args = self.global_args();
        args.extend(["resume".into(), id.into()]);
        let log = dir.join("runc-resume.log");
        let result = File::create(&log)
            .map_err(io_err(format!("create {}", log.display())))
            .and_then(|stderr| {
                let mut cmd = Command::new(&self.binary);
                cmd.args(&args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(stderr);
                exec::run(&mut cmd, "runc resume", THAW_LIMIT, &ToolControl::default())
            });
        match result {
            Ok(done) if done.status.success() => {
                tracing::warn!(id, "runc checkpoint killed; the container was thawed")
            }
            Ok(done) => {
                let said = std::fs::read_to_string(&log).unwrap_or_default();
                tracing::info!(id, status = %done.status, runc = %said.trim(), "runc checkpoint killed; nothing to thaw");
            }
            Err(e) => {
                tracing::error!(id, error = %e, "runc checkpoint killed and the container could not be thawed")
            }
        }
    }
}

/// Limit for the `runc resume` after a killed checkpoint.
const THAW_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The message of a runc (logrus) error line, first line only:
/// `time="…" level=error msg="criu failed: type NOTIFY errno 0\nlog file: …"` →
/// `criu failed: type NOTIFY errno 0`. Other lines are returned trimmed.
pub fn runc_message(line: &str) -> String {
    let line = line.trim();
    match line.split_once("msg=\"") {
        Some((_, rest)) => {
            let msg = rest.strip_suffix('"').unwrap_or(rest);
            let first = msg.split("\\n").next().unwrap_or(msg);
            first.replace("\\\"", "\"").trim().to_string()
        }
        None => line.to_string(),
    }
}

impl Checkpointer for Runc {
    fn checkpoint(&self, job: &CheckpointJob, staging: &Staging) -> Result<CheckpointOutcome> {
        job.validate()?;
        let start = Instant::now();
        let mut containers = Vec::new();
        let mut frozen_at = None;
        for target in &job.containers {
            let ContainerTarget::Runc { name, id } = target else {
                return Err(RuntimeError::Invalid(format!(
                    "the runc checkpointer cannot checkpoint {target:?}"
                )));
            };
            let dir = staging.file_path(name)?;
            std::fs::create_dir_all(&dir).map_err(io_err(format!("create {}", dir.display())))?;
            let span = tracing::info_span!("runc_checkpoint", container = %name, id = %id, leave_running = job.leave_running);
            let _g = span.enter();
            let started_at = jiff::Timestamp::now();
            let args = self.checkpoint_args(id, &dir, job.leave_running);
            let log = dir.join(RUNC_DUMP_LOG);
            let wall = self
                .run(
                    "checkpoint",
                    &args,
                    &job.env,
                    &dir.join(RUNC_CHECKPOINT_STDERR),
                    &log,
                    (job.timeout, &self.criu.control),
                )
                .inspect_err(|e| {
                    if matches!(
                        e,
                        RuntimeError::Timeout { .. } | RuntimeError::Cancelled { .. }
                    ) {
                        self.thaw(id, &dir);
                    }
                })?;
            tracing::info!(wall_s = wall.as_secs_f64(), "runc checkpoint done");
            frozen_at.get_or_insert_with(|| criu_log::frozen_at(started_at, &log));
            let plugin_stats = read_plugin_stats(&dir, DUMP_STATS_FILE)?;
            containers.push(ContainerCheckpoint {
                name: name.clone(),
                path: dir,
                log: Some(log),
                plugin_stats,
                tool_wall: wall,
            });
        }
        Ok(CheckpointOutcome::assemble(
            job,
            ImageKind::Criu,
            self.version.get(&self.criu),
            containers,
            frozen_at,
            start,
            job.leave_running,
        ))
    }
}

impl Restorer for Runc {
    fn restore(&self, job: &RestoreJob, image: &Image) -> Result<RestoreOutcome> {
        let start = Instant::now();
        let env = job.criu_env();
        if job.containers.is_empty() {
            return Err(RuntimeError::Invalid(
                "a runc restore needs each container's new id and bundle".into(),
            ));
        }
        let mut restored = Vec::new();
        for target in &job.containers {
            let RestoreTarget::Runc { name, id, bundle } = target else {
                return Err(RuntimeError::Invalid(format!(
                    "the runc restorer cannot restore {target:?}"
                )));
            };
            let src = container_dir(image, name)?;
            let dir = job.restore_dir(name);
            restore_dir(&src, &dir)?;
            let span = tracing::info_span!("runc_restore", container = %name, id = %id, image = %image.location, parallel = job.parallel_restore);
            let _g = span.enter();
            let args = self.restore_args(id, &dir, &dir, bundle);
            let log = dir.join(RUNC_RESTORE_LOG);
            let control = if job.control.is_live() {
                &job.control
            } else {
                &self.criu.control
            };
            let wall = self.run(
                "restore",
                &args,
                &env,
                &dir.join(RUNC_RESTORE_STDERR),
                &log,
                (job.timeout, control),
            )?;
            let pidfile = dir.join(RUNC_PIDFILE);
            let pid = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            let plugin_stats = read_plugin_stats(&dir, RESTORE_STATS_FILE)?;
            tracing::info!(pid, wall_s = wall.as_secs_f64(), "runc restore done");
            restored.push(Restored {
                name: name.clone(),
                pid,
                container_id: Some(id.clone()),
                log,
                plugin_stats,
                tool_wall: wall,
            });
        }
        Ok(RestoreOutcome::new(restored, start.elapsed()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn strs(a: &[OsString]) -> Vec<String> {
        a.iter().map(|s| s.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn runc_error_lines_are_reduced_to_their_message() {
        assert_eq!(
            runc_message(
                r#"time="2026-11-26T04:39:08Z" level=error msg="criu failed: type NOTIFY errno 0\nlog file: /x/dump.log""#
            ),
            "criu failed: type NOTIFY errno 0"
        );
        assert_eq!(
            runc_message(r#"time="t" level=error msg="container with id exists: c1""#),
            "container with id exists: c1"
        );
        assert_eq!(runc_message("  plain words "), "plain words");
    }

    #[test]
    fn runc_args_carry_root_criu_paths_and_leave_running() {
        let r = Runc::new(
            "/usr/sbin/runc",
            "/run/r",
            Criu::new("/usr/local/sbin/criu"),
        );
        assert_eq!(
            strs(&r.checkpoint_args("c1", Path::new("/s/app"), true)),
            [
                "--root",
                "/run/r",
                "--criu",
                "/usr/local/sbin/criu",
                "checkpoint",
                "--image-path",
                "/s/app",
                "--work-path",
                "/s/app",
                "--leave-running",
                "c1"
            ]
        );
        assert!(
            !strs(&r.checkpoint_args("c1", Path::new("/s/app"), false))
                .contains(&"--leave-running".to_string())
        );
        assert_eq!(
            strs(&r.restore_args(
                "c2",
                Path::new("/w/app"),
                Path::new("/w/app"),
                Path::new("/b")
            )),
            [
                "--root",
                "/run/r",
                "--criu",
                "/usr/local/sbin/criu",
                "restore",
                "--detach",
                "--image-path",
                "/w/app",
                "--work-path",
                "/w/app",
                "--bundle",
                "/b",
                "--pid-file",
                "/w/app/runc.pid",
                "c2"
            ]
        );
    }
}
