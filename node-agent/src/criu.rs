//! Running the `criu` binary directly (the process-tree path) and reading what CRIU and
//! ferry's plugin leave behind: the log's error lines, the freeze instant, the stats JSON.
//!
//! Logs. A dump writes `criu-dump.log` into the image directory it dumps into (the staged
//! image), so the log travels with the image and is in its manifest. A restore never writes
//! into a published image: it runs in a *restore directory* outside the store (see
//! [`crate::restore`]), a directory of hard links to the image's files, so CRIU's
//! `restore.log`, `stats-restore`, the pidfile and the plugin's `ferry-restore-stats.json`
//! land there and the image stays byte-for-byte as published.
//!
//! The plugin is loaded with `--libdir <dir>` when a libdir is configured; otherwise CRIU
//! loads the plugins in its built-in plugin dir (`/usr/lib/criu` as `scripts/install-deps`
//! builds it). CRIU loads every `.so` in that directory.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_api::stats::{PluginStats, StatsError};
use jiff::Timestamp;

use crate::store::StoreError;

/// Default CRIU binary (what `scripts/install-deps` installs).
pub const DEFAULT_CRIU: &str = "/usr/local/sbin/criu";
/// CRIU's dump log, inside the dumped image directory.
pub const DUMP_LOG: &str = "criu-dump.log";
/// CRIU's restore log, inside the restore directory.
pub const RESTORE_LOG: &str = "criu-restore.log";
/// The pidfile a detached restore writes, inside the restore directory.
pub const RESTORE_PIDFILE: &str = "restore.pid";
/// How many of CRIU's error lines go into a task's message.
pub const ERROR_LINES: usize = 3;
/// Default limit for one CRIU or runc run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// What went wrong checkpointing or restoring.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// CRIU (directly or under runc) failed; `message` holds CRIU's last error lines.
    #[error("{tool} {op} failed ({status}): {message} (log: {})", log.display())]
    Tool {
        /// `criu` or `runc`.
        tool: &'static str,
        /// `dump`, `restore`, `checkpoint`, ...
        op: &'static str,
        /// The exit status, as text.
        status: String,
        /// CRIU's error lines (and runc's own error, for runc), one line.
        message: String,
        /// CRIU's log (kept: next to the staged image, or in the restore directory).
        log: PathBuf,
    },
    /// A tool could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran past its limit and was killed.
    #[error("{what} did not finish within {after:?} and was killed")]
    Timeout {
        /// What ran.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The request cannot be carried out as asked.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The kubelet's checkpoint API failed.
    #[error("kubelet checkpoint API: {0}")]
    Kubelet(String),
    /// The plugin's stats file is there but unreadable.
    #[error("plugin stats {}: {source}", path.display())]
    Stats {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StatsError,
    },
    /// The image store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// I/O, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What and where.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of the runtime modules.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}

/// The `criu` binary and where it finds ferry's plugin.
#[derive(Clone, Debug)]
pub struct Criu {
    /// The binary.
    pub binary: PathBuf,
    /// `--libdir`: the directory holding ferry's plugin. `None`: CRIU's built-in plugin dir.
    pub libdir: Option<PathBuf>,
    /// Limit for one run.
    pub timeout: Duration,
}

impl Default for Criu {
    fn default() -> Self {
        Criu {
            binary: PathBuf::from(DEFAULT_CRIU),
            libdir: None,
            timeout: DEFAULT_TIMEOUT,
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
        let finished = crate::exec::run(&mut cmd, &format!("criu {op}"), self.timeout)?;
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

/// CRIU's error lines in `log`: lines with `Error (` (CRIU's `pr_err`, `Error (file:line): …`)
/// or `Error:`, the timestamp prefix stripped.
pub fn error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .map(|l| strip_timestamp(l).trim().to_string())
        .collect()
}

/// The last `n` error lines joined into one line for a task's message. Falls back to the
/// log's last line when CRIU printed no error line.
pub fn error_summary(log: &str, n: usize) -> String {
    let lines = error_lines(log);
    if lines.is_empty() {
        return log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| strip_timestamp(l).trim().to_string())
            .unwrap_or_else(|| "no CRIU log".to_string());
    }
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// [`error_summary`] of the log file at `path`.
pub fn log_errors(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => error_summary(&text, ERROR_LINES),
        Err(e) => format!("no CRIU log at {} ({e})", path.display()),
    }
}

fn strip_timestamp(line: &str) -> &str {
    // `(00.123456) text`
    match line.strip_prefix('(').and_then(|r| r.split_once(") ")) {
        Some((ts, rest)) if ts.bytes().all(|b| b.is_ascii_digit() || b == b'.') => rest,
        _ => line,
    }
}

/// Seconds since CRIU started (the log's timestamps) at which it began freezing the tasks:
/// the cgroup freezer (`freezing cgroup …`, containers) or ptrace seizing (`SEIZE`/`Seized
/// task`, process trees), whichever comes first.
pub fn freeze_offset(log: &str) -> Option<Duration> {
    log.lines().find_map(|l| {
        let rest = l.strip_prefix('(')?;
        let (ts, text) = rest.split_once(") ")?;
        let text = text.trim_start();
        let freezing = text.starts_with("freezing cgroup")
            || text.starts_with("SEIZE ")
            || text.starts_with("Seized task")
            || text.starts_with("seized task");
        if !freezing {
            return None;
        }
        let secs: f64 = ts.trim().parse().ok()?;
        Duration::try_from_secs_f64(secs).ok()
    })
}

/// When the tasks were frozen: the log's clock origin plus the log's [`freeze_offset`].
///
/// CRIU's log timestamps count from when it set up the log, which is when it created the log
/// file, so the origin is the log file's birth time (`statx` btime); where the filesystem has
/// none, `started` (the wall clock when the tool was started: for runc that is early by runc's
/// own setup before it starts CRIU, tens of ms). Without a freeze line, the origin itself.
pub fn frozen_at(started: Timestamp, log: &Path) -> Timestamp {
    let origin = log_birth(log)
        // A birth time before the run started would be a stale file: ignore it.
        .filter(|b| {
            *b >= started
                .checked_sub(jiff::SignedDuration::from_secs(1))
                .unwrap_or(started)
        })
        .unwrap_or(started);
    let offset = std::fs::read_to_string(log)
        .ok()
        .and_then(|text| freeze_offset(&text));
    match offset.and_then(|o| jiff::SignedDuration::try_from(o).ok()) {
        Some(o) => origin.checked_add(o).unwrap_or(origin),
        None => origin,
    }
}

/// The birth time of `path`, where the filesystem records one.
fn log_birth(path: &Path) -> Option<Timestamp> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::BTIME,
    )
    .ok()?;
    if st.stx_mask & rustix::fs::StatxFlags::BTIME.bits() == 0 {
        return None;
    }
    Timestamp::new(st.stx_btime.tv_sec, st.stx_btime.tv_nsec as i32).ok()
}

/// The environment for ferry's plugin from a task's options.
pub fn plugin_env(parallel_restore: bool) -> Vec<(String, String)> {
    vec![(
        "FERRY_PARALLEL_RESTORE".to_string(),
        if parallel_restore { "1" } else { "0" }.to_string(),
    )]
}

/// Reads the plugin's stats file `name` in `dir` (`ferry-dump-stats.json` /
/// `ferry-restore-stats.json`, written into CRIU's image dir). `None` when the plugin wrote
/// none (no GPU in the tree: the plugin writes stats only when it handled a device).
pub fn read_plugin_stats(dir: &Path, name: &str) -> Result<Option<PluginStats>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => PluginStats::from_json(&text)
            .map(Some)
            .map_err(|source| RuntimeError::Stats { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// Several containers' stats as one: devices and processes together, the phases the longest.
pub fn merge_stats(all: impl IntoIterator<Item = PluginStats>) -> Option<PluginStats> {
    all.into_iter().reduce(|mut a, b| {
        a.devices.extend(b.devices);
        a.processes.extend(b.processes);
        a.host_restore_seconds = a.host_restore_seconds.max(b.host_restore_seconds);
        a.resume_wait_seconds = a.resume_wait_seconds.max(b.resume_wait_seconds);
        a.gpu_phase_seconds = a.gpu_phase_seconds.max(b.gpu_phase_seconds);
        a
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LOG: &str = "\
(00.000000) CRIU run id = 1
(00.010000) Dumping processes (pid: 375 comm: sh)
(00.129561) freezing cgroup /sys/fs/cgroup/freezer/c1: 100 x 100ms attempts, timeout: 10s
(00.229942) SEIZE 375 (comm sh): success
(00.072150) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self
(00.189418) Error (criu/files-reg.c:1790): Can't lookup mount=27 for fd=1 path=/tmp/out
(00.189445) Error (criu/cr-dump.c:1545): Dump files (pid: 31930) failed with -1
(00.283560) Error (criu/cr-dump.c:1975): Dumping FAILED.
";

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
    fn the_last_error_lines_make_one_line_without_timestamps() {
        assert_eq!(error_lines(LOG).len(), 4);
        let s = error_summary(LOG, 3);
        assert_eq!(
            s,
            "Error (criu/files-reg.c:1790): Can't lookup mount=27 for fd=1 path=/tmp/out | \
             Error (criu/cr-dump.c:1545): Dump files (pid: 31930) failed with -1 | \
             Error (criu/cr-dump.c:1975): Dumping FAILED."
        );
        assert!(!s.contains('\n'));
        assert_eq!(
            error_summary("(00.1) fine\n(00.2) last words\n", 3),
            "last words"
        );
        assert_eq!(error_summary("", 3), "no CRIU log");
    }

    #[test]
    fn the_freeze_offset_is_the_first_freezer_or_seize_line() {
        assert_eq!(freeze_offset(LOG), Some(Duration::from_micros(129_561)));
        assert_eq!(
            freeze_offset("(01.500000) Seized task 7, state 1\n"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(freeze_offset("(00.1) nothing\n"), None);
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

    #[test]
    fn frozen_at_counts_from_the_log_file_s_birth() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("dump.log");
        let before = Timestamp::now();
        std::fs::write(
            &log,
            "(00.000000) start\n(00.250000) SEIZE 7 (comm x): success\n",
        )
        .unwrap();
        let after = Timestamp::now();
        let f = frozen_at(before, &log);
        let lo = before
            .checked_add(jiff::SignedDuration::from_millis(240))
            .unwrap();
        let hi = after
            .checked_add(jiff::SignedDuration::from_millis(260))
            .unwrap();
        assert!(f >= lo && f <= hi, "{f} not in [{lo}, {hi}]");
        // No log: the start.
        assert_eq!(frozen_at(before, &tmp.path().join("none")), before);
    }

    #[test]
    fn plugin_env_follows_the_parallel_option() {
        assert_eq!(plugin_env(true)[0].1, "1");
        assert_eq!(plugin_env(false)[0].1, "0");
    }
}
