//! Running the `criu` binary directly (the process-tree path) and reading what CRIU and
//! ferry's plugin leave behind: the log's error lines, the freeze instant, the stats JSON.
//!
//! Logs. A dump writes `criu-dump.log` into the image directory it dumps into (the staged
//! image), so the log travels with the image and is in its manifest. A restore never writes
//! into a published image: it runs in a *restore directory* outside the store (see
//! [`crate::runtime::layout`]), a directory of hard links to the image's files, so CRIU's
//! `restore.log`, `stats-restore`, the pidfile and the plugin's `ferry-restore-stats.json`
//! land there and the image stays byte-for-byte as published.
//!
//! The plugin is loaded with `--libdir <dir>` when a libdir is configured; otherwise CRIU
//! loads the plugins in its built-in plugin dir (`/usr/lib/criu` as `scripts/install-deps`
//! builds it). CRIU loads every `.so` in that directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use jiff::Timestamp;

use crate::runtime::control::ToolControl;
use crate::runtime::criu_log::log_errors;
use crate::runtime::error::{Result, RuntimeError, io_err};
use crate::runtime::exec::{self, DEFAULT_TIMEOUT};
use crate::runtime::layout::{DUMP_LOG, RESTORE_LOG, RESTORE_PIDFILE};

/// Default CRIU binary (what `scripts/install-deps` installs).
pub const DEFAULT_CRIU: &str = "/usr/local/sbin/criu";

/// The `criu` binary and where it finds ferry's plugin.
#[derive(Clone, Debug)]
pub struct Criu {
    /// The binary.
    pub binary: PathBuf,
    /// `--libdir`: the directory holding ferry's plugin. `None`: CRIU's built-in plugin dir.
    pub libdir: Option<PathBuf>,
    /// Limit for one run.
    pub timeout: Duration,
    /// The task's deadline and cancel switch (default: none). The executor binds each task's
    /// own, so a cancelled task's CRIU is killed with its helpers.
    pub control: ToolControl,
}

impl Default for Criu {
    fn default() -> Self {
        Criu {
            binary: PathBuf::from(DEFAULT_CRIU),
            libdir: None,
            timeout: DEFAULT_TIMEOUT,
            control: ToolControl::default(),
        }
    }
}

/// One process-tree dump.
#[derive(Clone, Debug)]
pub struct DumpArgs<'a> {
    /// Root of the tree.
    pub pid: i32,
    /// Where the images go (created if missing); the log goes here too.
    pub images_dir: &'a Path,
    /// Keep the tree running after the dump (otherwise CRIU kills it once dumped).
    pub leave_running: bool,
}

/// One process-tree restore.
#[derive(Clone, Debug)]
pub struct RestoreArgs<'a> {
    /// The directory CRIU reads images from and writes its log, stats and pidfile into
    /// (a restore directory, never a published image).
    pub images_dir: &'a Path,
}

/// What a finished CRIU run left.
#[derive(Clone, Debug)]
pub struct CriuRun {
    /// Wall-clock time when `criu` was started.
    pub started_at: Timestamp,
    /// Wall time of the run.
    pub wall: Duration,
    /// The log.
    pub log: PathBuf,
}

impl Criu {
    /// `criu` at `binary`, plugins from CRIU's built-in dir.
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        Criu {
            binary: binary.into(),
            ..Criu::default()
        }
    }

    /// Loads plugins from `libdir` (`--libdir`).
    pub fn with_libdir(mut self, libdir: impl Into<PathBuf>) -> Self {
        self.libdir = Some(libdir.into());
        self
    }

    /// The same CRIU, its runs bound to a task's `control`.
    pub fn with_control(mut self, control: ToolControl) -> Self {
        self.control = control;
        self
    }

    /// `criu --version`'s version (`4.2.1`).
    pub fn version(&self) -> Result<String> {
        let out = Command::new(&self.binary)
            .arg("--version")
            .stdin(Stdio::null())
            .output()
            .map_err(|source| RuntimeError::Spawn {
                program: self.binary.clone(),
                source,
            })?;
        parse_version(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            RuntimeError::Invalid(format!(
                "{} --version printed no version",
                self.binary.display()
            ))
        })
    }

    fn common_args(&self, args: &mut Vec<OsString>, log: &str) {
        args.extend(["-o".into(), log.into(), "-v4".into()]);
        if let Some(libdir) = &self.libdir {
            args.push("--libdir".into());
            args.push(libdir.into());
        }
    }

    /// The arguments of a dump. The workload is a session leader without a tty (a container's
    /// init, or a `setsid` daemon), so no `--shell-job`.
    pub fn dump_args(&self, a: &DumpArgs<'_>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "dump".into(),
            "-t".into(),
            a.pid.to_string().into(),
            "-D".into(),
            a.images_dir.into(),
        ];
        self.common_args(&mut args, DUMP_LOG);
        if a.leave_running {
            args.push("--leave-running".into());
        }
        args
    }

    /// The arguments of a detached restore (`-W` = the images dir, so the pidfile lands there).
    pub fn restore_args(&self, a: &RestoreArgs<'_>) -> Vec<OsString> {
        let mut args: Vec<OsString> = vec![
            "restore".into(),
            "-D".into(),
            a.images_dir.into(),
            "-W".into(),
            a.images_dir.into(),
            "--restore-detached".into(),
            "--pidfile".into(),
            RESTORE_PIDFILE.into(),
        ];
        self.common_args(&mut args, RESTORE_LOG);
        args
    }

    /// Dumps a process tree. `env` goes to CRIU and thus to the plugin.
    pub fn dump(&self, a: &DumpArgs<'_>, env: &[(String, String)]) -> Result<CriuRun> {
        std::fs::create_dir_all(a.images_dir)
            .map_err(io_err(format!("create {}", a.images_dir.display())))?;
        let args = self.dump_args(a);
        self.run("dump", &args, env, &a.images_dir.join(DUMP_LOG))
    }

    /// Restores a process tree detached; returns the run and the restored root's pid.
    pub fn restore(&self, a: &RestoreArgs<'_>, env: &[(String, String)]) -> Result<(CriuRun, i32)> {
        let args = self.restore_args(a);
        let run = self.run("restore", &args, env, &a.images_dir.join(RESTORE_LOG))?;
        let pidfile = a.images_dir.join(RESTORE_PIDFILE);
        let text = std::fs::read_to_string(&pidfile)
            .map_err(io_err(format!("read {}", pidfile.display())))?;
        let pid = text
            .trim()
            .parse::<i32>()
            .map_err(|e| RuntimeError::Invalid(format!("{}: {e}: {text:?}", pidfile.display())))?;
        Ok((run, pid))
    }

    fn run(
        &self,
        op: &'static str,
        args: &[OsString],
        env: &[(String, String)],
        log: &Path,
    ) -> Result<CriuRun> {
        let started_at = Timestamp::now();
        let mut cmd = Command::new(&self.binary);
        cmd.args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            // Everything CRIU says goes to its -o log; restored tasks get their own fds back
            // from the image, so nothing here inherits a pipe.
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        tracing::debug!(op, binary = %self.binary.display(), ?args, "running criu");
        let finished = exec::run(&mut cmd, &format!("criu {op}"), self.timeout, &self.control)?;
        if !finished.status.success() {
            let message = log_errors(log);
            tracing::warn!(op, status = %finished.status, log = %log.display(), %message, "criu failed");
            return Err(RuntimeError::Tool {
                tool: "criu",
                op,
                status: finished.status.to_string(),
                message,
                log: log.to_path_buf(),
            });
        }
        tracing::info!(op, wall_s = finished.wall.as_secs_f64(), log = %log.display(), "criu done");
        Ok(CriuRun {
            started_at,
            wall: finished.wall,
            log: log.to_path_buf(),
        })
    }
}

/// The version from `criu --version` output (`Version: 4.2.1`).
pub fn parse_version(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("Version:"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

/// `criu --version`, asked once per mechanism: it goes into every image's metadata.
#[derive(Debug, Default)]
pub struct VersionCache(OnceLock<Option<String>>);

impl VersionCache {
    /// `criu`'s version, asking it the first time; `None` (and a warning) when it cannot say.
    pub fn get(&self, criu: &Criu) -> Option<String> {
        self.0
            .get_or_init(|| match criu.version() {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::warn!(error = %e, "criu --version failed; image will not record it");
                    None
                }
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::runtime::layout::{DUMP_LOG, RESTORE_LOG, RESTORE_PIDFILE};

    #[test]
    fn the_version_is_read_from_criu_version_output() {
        assert_eq!(
            parse_version("Version: 4.2.1\nGitID: v4.2.1\n").as_deref(),
            Some("4.2.1")
        );
        assert_eq!(parse_version("Version: 4.2\n").as_deref(), Some("4.2"));
        assert_eq!(parse_version("nothing"), None);
    }

    #[test]
    fn dump_and_restore_args_carry_libdir_log_and_leave_running() {
        let criu = Criu::new("/usr/local/sbin/criu").with_libdir("/opt/ferry/lib");
        let dir = Path::new("/img/c");
        let a = criu.dump_args(&DumpArgs {
            pid: 42,
            images_dir: dir,
            leave_running: true,
        });
        let a: Vec<_> = a.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            a,
            [
                "dump",
                "-t",
                "42",
                "-D",
                "/img/c",
                "-o",
                DUMP_LOG,
                "-v4",
                "--libdir",
                "/opt/ferry/lib",
                "--leave-running"
            ]
        );
        let r = Criu::default().restore_args(&RestoreArgs { images_dir: dir });
        let r: Vec<_> = r.iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(
            r,
            [
                "restore",
                "-D",
                "/img/c",
                "-W",
                "/img/c",
                "--restore-detached",
                "--pidfile",
                RESTORE_PIDFILE,
                "-o",
                RESTORE_LOG,
                "-v4"
            ]
        );
    }
}
