//! One cluster component running as a child process in its own process group, with its output
//! in a log file. Dropping it stops the whole group: SIGTERM, a grace period, then SIGKILL.
//!
//! If the test process dies without unwinding (SIGKILL, a second Ctrl-C), `Drop` never runs.
//! So children start under `setpriv --pdeathsig KILL` (util-linux, always on Debian) where it
//! exists: the kernel kills them when the thread that spawned them exits. That is the
//! *thread*, not the process, hence [`crate::Cluster`]'s rule that the thread that starts a
//! cluster must outlive it.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process_group};

use crate::error::{Error, IoContext, Result};

/// How long a component gets to exit after SIGTERM before it is killed.
const GRACE: Duration = Duration::from_secs(5);

/// A running component.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Process {
    /// Starts `program args` as `name`, appending its stdout and stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        Self::spawn_with_env(name, program, args, &[], log)
    }

    /// [`Process::spawn`] with extra environment variables (containerd finds its shim on PATH).
    pub fn spawn_with_env(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &OsStr)],
        log: &Path,
    ) -> Result<Self> {
        let out = File::options()
            .create(true)
            .append(true)
            .open(log)
            .io_context("opening a component log", log)?;
        let err = out.try_clone().io_context("opening a component log", log)?;
        let mut command = match setpriv() {
            Some(setpriv) => {
                let mut c = Command::new(setpriv);
                c.args(["--pdeathsig", "KILL", "--"]).arg(program);
                c
            }
            None => Command::new(program),
        };
        command
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command.spawn().map_err(|source| Error::Spawn {
            name: name.to_string(),
            program: program.to_path_buf(),
            source,
        })?;
        Ok(Self {
            name: name.to_string(),
            child,
            log: log.to_path_buf(),
            exited: None,
        })
    }

    /// The component's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id (also its process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log file.
    pub fn log(&self) -> &Path {
        &self.log
    }

    /// Ok while the process runs; an [`Error::Exited`] with its log tail once it has exited.
    pub fn check_running(&mut self) -> Result<()> {
        let status = match self.exited {
            Some(status) => status,
            None => match self.child.try_wait() {
                Ok(None) => return Ok(()),
                Ok(Some(status)) => {
                    self.exited = Some(status);
                    status
                }
                Err(source) => {
                    return Err(Error::Io {
                        what: "checking on a component",
                        path: self.log.clone(),
                        source,
                    });
                }
            },
        };
        Err(Error::Exited {
            name: self.name.clone(),
            status,
            log: self.log.clone(),
            log_tail: self.log_tail(40),
        })
    }

    /// The last `lines` lines of the log (reads at most the last 64 KiB).
    pub fn log_tail(&self, lines: usize) -> String {
        log_tail(&self.log, lines)
    }

    /// Stops the process group: SIGTERM, up to [`GRACE`] to exit, then SIGKILL. Idempotent.
    pub fn stop(&mut self) {
        let Some(group) = i32::try_from(self.child.id()).ok().and_then(Pid::from_raw) else {
            return;
        };
        if self.exited.is_none() {
            // ESRCH (already gone) is fine; anything else would show up as a hang below.
            let _ = kill_process_group(group, Signal::TERM);
            let deadline = Instant::now() + GRACE;
            while self.exited.is_none() && Instant::now() < deadline {
                match self.child.try_wait() {
                    Ok(Some(status)) => self.exited = Some(status),
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                    Err(_) => break,
                }
            }
        }
        // Also reaches anything the component forked that is still in its group.
        let _ = kill_process_group(group, Signal::KILL);
        if self.exited.is_none()
            && let Ok(status) = self.child.wait()
        {
            self.exited = Some(status);
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of a log file, or a note saying why there are none.
pub fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// `setpriv` from util-linux, if installed.
fn setpriv() -> Option<&'static Path> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            ["/usr/bin/setpriv", "/bin/setpriv"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| fs::metadata(p).is_ok())
        })
        .as_deref()
}

/// Whether a process exists (for checks that teardown left nothing behind).
pub fn process_exists(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// Whether a loopback port can be bound (for checks that teardown freed it).
pub fn port_is_free(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}
