//! Restoring a runc-dumped container into a running **placeholder container** whose PID 1 is
//! `ferry-supervisor` (issue #19, `docs/placeholder-restore.md`).
//!
//! For each [`RestoreTarget::Placeholder`], [`PlaceholderRestore`]:
//! 1. builds a restore directory of links to the image (the image is never written);
//! 2. runs ferry's CRIU with ferry's plugin (`--libdir`, the plugin's environment) inside the
//!    placeholder's cgroups (every hierarchy of `/proc/<pid>/cgroup`, v1 and unified) and pid
//!    namespace, in a private mount namespace with `/proc` remounted for that pid namespace
//!    ([`recipe`]): `--root` the placeholder's rootfs, `--restore-detached` (so the restored
//!    root is reparented to the supervisor), `--manage-cgroups=ignore`, the network namespace
//!    and the dumped stdio pipes inherited from the placeholder, each external mount of the
//!    dump mapped;
//! 3. writes the supervisor's control file `restored` with the root's pid in the
//!    placeholder's pid namespace (CRIU's `--pidfile`, written in the namespace CRIU ran in)
//!    and waits, bounded, for the supervisor's `state` to say `running`; on any error it
//!    writes `failed` with the reason instead, so the supervisor exits (71) with it;
//! 4. returns the plugin's restore stats like the other restorers.
//!
//! The tool runs through [`crate::runtime::exec`]: its own process group, the job's limit and
//! the task's cancel switch.

pub mod cgroup;
pub mod recipe;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_api::stats::RESTORE_STATS_FILE;
use ferry_supervisor::control::{self, State};

use crate::runtime::criu::Criu;
use crate::runtime::criu_log::log_errors;
use crate::runtime::error::{Result, RuntimeError, io_err};
use crate::runtime::exec;
use crate::runtime::layout::{RESTORE_PIDFILE, RUNC_DUMP_LOG, RUNC_RESTORE_LOG, restore_dir};
use crate::runtime::plugin::read_plugin_stats;
pub use crate::runtime::restore::Placeholder;
use crate::runtime::restore::{
    RestoreJob, RestoreOutcome, RestoreTarget, Restored, Restorer, container_dir,
};
use crate::store::Image;

/// stderr of the joining shell, `nsenter` and `unshare`, in the restore directory.
pub const JOIN_LOG: &str = "placeholder-join.log";
/// runc's list of the dumped container's stdio (`pipe:[ino]`, `/dev/null`, …).
pub const DESCRIPTORS: &str = "descriptors.json";
/// Default bound on the wait for the supervisor to adopt the restored root.
pub const DEFAULT_ADOPT_TIMEOUT: Duration = Duration::from_secs(10);

/// CRIU into placeholder containers.
#[derive(Debug)]
pub struct PlaceholderRestore {
    /// The CRIU binary and ferry's plugin dir.
    pub criu: Criu,
    /// `sh`, `nsenter`, `unshare` on the agent's host.
    pub sh: PathBuf,
    pub nsenter: PathBuf,
    pub unshare: PathBuf,
    /// Bound on the wait for the supervisor's `running`.
    pub adopt_timeout: Duration,
}

impl PlaceholderRestore {
    /// With the usual tool paths.
    pub fn new(criu: Criu) -> Self {
        PlaceholderRestore {
            criu,
            sh: "/bin/sh".into(),
            nsenter: "/usr/bin/nsenter".into(),
            unshare: "/usr/bin/unshare".into(),
            adopt_timeout: DEFAULT_ADOPT_TIMEOUT,
        }
    }
}

impl Restorer for PlaceholderRestore {
    fn restore(&self, job: &RestoreJob, image: &Image) -> Result<RestoreOutcome> {
        let start = Instant::now();
        if job.containers.is_empty() {
            return Err(RuntimeError::Invalid(
                "a placeholder restore needs each container's placeholder".into(),
            ));
        }
        let mut restored = Vec::new();
        for target in &job.containers {
            let RestoreTarget::Placeholder { name, placeholder } = target else {
                return Err(RuntimeError::Invalid(format!(
                    "the placeholder restorer cannot restore {target:?}"
                )));
            };
            let span = tracing::info_span!("placeholder_restore", container = %name, placeholder = placeholder.host_pid, image = %image.location, parallel = job.parallel_restore);
            let _g = span.enter();
            match self.restore_one(job, image, name, placeholder) {
                Ok(r) => restored.push(r),
                Err(e) => {
                    if let Err(w) = control::write_failed(&placeholder.control_dir, &e.to_string())
                    {
                        tracing::error!(error = %w, "could not tell the supervisor the restore failed");
                    }
                    return Err(e);
                }
            }
        }
        Ok(RestoreOutcome::new(restored, start.elapsed()))
    }
}

impl PlaceholderRestore {
    fn restore_one(
        &self,
        job: &RestoreJob,
        image: &Image,
        name: &str,
        ph: &Placeholder,
    ) -> Result<Restored> {
        let src = container_dir(image, name)?;
        let dir = absolute(&job.restore_dir(name))?;
        restore_dir(&src, &dir)?;
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(io_err(format!("read {}", p.display())))
        };
        let pipes = recipe::stdio_pipes(&read(dir.join(DESCRIPTORS))?)?;
        let ext_mounts: Vec<(String, PathBuf)> =
            recipe::ext_mount_keys(&read(dir.join(RUNC_DUMP_LOG))?)
                .into_iter()
                .map(|key| {
                    let to = ph
                        .ext_mounts
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, v)| v.clone())
                        .unwrap_or_else(|| PathBuf::from(&key));
                    (key, to)
                })
                .collect();
        let cgroup_procs = cgroup::procs_files_of(ph.host_pid)?;
        let pidfile = dir.join(RESTORE_PIDFILE);
        let libdir = self.criu.libdir.as_deref();
        let argv = recipe::Recipe {
            sh: &self.sh,
            nsenter: &self.nsenter,
            unshare: &self.unshare,
            criu: &self.criu.binary,
            libdir,
            dir: &dir,
            log: RUNC_RESTORE_LOG,
            pidfile: &pidfile,
            host_pid: ph.host_pid,
            rootfs: &ph.rootfs,
            netns: &ph.netns,
            cgroup_procs: &cgroup_procs,
            pipes: &pipes,
            ext_mounts: &ext_mounts,
        }
        .argv()?;
        let join_log = dir.join(JOIN_LOG);
        let stderr =
            File::create(&join_log).map_err(io_err(format!("create {}", join_log.display())))?;
        let (program, args) = argv
            .split_first()
            .ok_or_else(|| RuntimeError::Invalid("empty command".into()))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .envs(job.criu_env())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        tracing::debug!(?argv, "running criu in the placeholder");
        let control = if job.control.is_live() {
            &job.control
        } else {
            &self.criu.control
        };
        let log = dir.join(RUNC_RESTORE_LOG);
        let finished = exec::run(&mut cmd, "criu restore (placeholder)", job.timeout, control)?;
        if !finished.status.success() {
            let join = std::fs::read_to_string(&join_log).unwrap_or_default();
            let join = join
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("");
            let criu = if log.exists() {
                log_errors(&log)
            } else {
                "CRIU did not run".into()
            };
            let message = if join.is_empty() {
                format!("criu: {criu}")
            } else {
                format!("criu: {criu}; join: {join}")
            };
            tracing::warn!(status = %finished.status, log = %log.display(), %message, "placeholder restore failed");
            return Err(RuntimeError::Tool {
                tool: "criu",
                op: "restore",
                status: finished.status.to_string(),
                message,
                log,
            });
        }
        let text = read(pidfile.clone())?;
        let ns_pid: i32 = text.trim().parse().ok().filter(|p| *p > 0).ok_or_else(|| {
            RuntimeError::Invalid(format!("{}: not a pid: {text:?}", pidfile.display()))
        })?;
        let host = host_pid_of_child(ph.host_pid, ns_pid);
        control::write_restored(&ph.control_dir, ns_pid).map_err(|e| RuntimeError::Io {
            context: "write the supervisor's restored file".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        self.wait_adopted(&ph.control_dir, ns_pid)?;
        let plugin_stats = read_plugin_stats(&dir, RESTORE_STATS_FILE)?;
        tracing::info!(
            ns_pid,
            host_pid = host,
            wall_s = finished.wall.as_secs_f64(),
            "restored into the placeholder; the supervisor adopted it"
        );
        Ok(Restored {
            name: name.to_string(),
            pid: host,
            container_id: None,
            log,
            plugin_stats,
            tool_wall: finished.wall,
        })
    }

    /// Waits until the supervisor's `state` says it runs `ns_pid`.
    fn wait_adopted(&self, dir: &Path, ns_pid: i32) -> Result<()> {
        let start = Instant::now();
        let mut last: Option<String>;
        loop {
            match control::read_state(dir) {
                Ok(Some(State::Running { pid })) if pid == ns_pid => return Ok(()),
                Ok(Some(s @ (State::Exited { .. } | State::Failed { .. })))
                | Ok(Some(s @ State::Running { .. })) => {
                    return Err(RuntimeError::Invalid(format!(
                        "the supervisor did not adopt the restored root (pid {ns_pid}): state {:?}",
                        s.to_line()
                    )));
                }
                Ok(s) => last = s.map(|s| s.to_line()),
                Err(e) => last = Some(e.to_string()),
            }
            if start.elapsed() >= self.adopt_timeout {
                return Err(RuntimeError::Timeout {
                    what: format!(
                        "the supervisor's adoption of the restored root (pid {ns_pid}; last state {})",
                        last.as_deref().unwrap_or("none")
                    ),
                    after: self.adopt_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `p` made absolute against the agent's working directory.
fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p).map_err(io_err(format!("absolute path of {}", p.display())))
}

/// The host pid of `parent`'s child whose pid in `parent`'s pid namespace is `ns_pid`.
fn host_pid_of_child(parent: i32, ns_pid: i32) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .find(|pid| {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                return false;
            };
            let field = |key: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key))
                    .map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
            };
            field("PPid:")
                .is_some_and(|v| v.first().map(String::as_str) == Some(&parent.to_string()))
                && field("NSpid:").is_some_and(|v| v.get(1) == Some(&ns_pid.to_string()))
        })
}
