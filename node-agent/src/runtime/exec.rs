//! Running the runtime's tools (`criu`, `runc`, `tar`, `ctr`) with a hard time limit, and
//! reading a failed tool's log into its error.
//!
//! A hung CRIU must fail the task, not the worker thread forever. The child is watched
//! through a pidfd: `poll` wakes the moment it exits (no sleep-polling latency on the
//! checkpoint's critical path) and a timeout kills it by pidfd, which cannot hit a reused pid.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::runtime::error::{Result, RuntimeError};

/// Default limit for one CRIU or runc run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How a tool run ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub wall: Duration,
}

/// Spawns `cmd` (the caller sets its stdio: nothing here reads pipes, so a tool that writes a
/// lot must write to a file) and waits for it at most `limit`; on timeout it is killed and the
/// result is [`RuntimeError::Timeout`].
pub(crate) fn run(
    cmd: &mut Command,
    what: &str,
    limit: Duration,
) -> Result<Finished, RuntimeError> {
    let program = PathBuf::from(cmd.get_program());
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|source| RuntimeError::Spawn {
        program: program.clone(),
        source,
    })?;
    let pidfd = Pid::from_raw(child.id() as i32)
        .ok_or_else(|| RuntimeError::Io {
            context: format!("{what}: child has pid 0"),
            source: std::io::Error::other("pid 0"),
        })
        .and_then(|pid| {
            rustix::process::pidfd_open(pid, PidfdFlags::empty()).map_err(|e| RuntimeError::Io {
                context: format!("{what}: pidfd_open"),
                source: e.into(),
            })
        });
    let pidfd = match pidfd {
        Ok(fd) => fd,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    let mut timed_out = false;
    loop {
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            timed_out = true;
            break;
        }
        let ts = Timespec {
            tv_sec: left.as_secs() as i64,
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => {}
            Ok(_) => break,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                let _ = rustix::process::pidfd_send_signal(pidfd.as_fd(), Signal::KILL);
                let _ = child.wait();
                return Err(RuntimeError::Io {
                    context: format!("{what}: poll on pidfd"),
                    source: e.into(),
                });
            }
        }
    }
    if timed_out {
        // The child is not reaped yet, so the pidfd still names it.
        let _ = rustix::process::pidfd_send_signal(pidfd.as_fd(), Signal::KILL);
        let _ = child.wait();
        tracing::warn!(
            what,
            limit_s = limit.as_secs_f64(),
            "tool timed out and was killed"
        );
        return Err(RuntimeError::Timeout {
            what: what.to_string(),
            after: limit,
        });
    }
    let status = child.wait().map_err(|source| RuntimeError::Io {
        context: format!("{what}: wait"),
        source,
    })?;
    Ok(Finished {
        status,
        wall: start.elapsed(),
    })
}

/// `Ok` for a successful exit; otherwise a [`RuntimeError::Tool`] whose message is the last
/// three lines of `log` (where the tool's stderr went), joined into one line.
pub(crate) fn tool_result(
    tool: &'static str,
    op: &'static str,
    status: ExitStatus,
    log: &Path,
) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let message = text
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    Err(RuntimeError::Tool {
        tool,
        op,
        status: status.to_string(),
        message,
        log: log.to_path_buf(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_tool_that_exits_is_waited_for_without_delay() {
        let f = run(&mut Command::new("true"), "true", Duration::from_secs(10)).unwrap();
        assert!(f.status.success());
        assert!(f.wall < Duration::from_secs(2));
    }

    #[test]
    fn a_hung_tool_is_killed_at_its_limit() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let t = Instant::now();
        let e = run(&mut cmd, "sleep", Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, RuntimeError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error() {
        let e = run(
            &mut Command::new("/nonexistent/criu"),
            "criu",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::Spawn { .. }), "{e}");
    }
}
