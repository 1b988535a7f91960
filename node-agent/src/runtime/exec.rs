//! Running the runtime's tools (`criu`, `runc`, `tar`, `ctr`) with a hard time limit, and
//! reading a failed tool's log into its error.
//!
//! A hung CRIU must fail the task, not the worker thread forever. The child is watched
//! through a pidfd: `poll` wakes the moment it exits (no sleep-polling latency on the
//! checkpoint's critical path). Each tool runs in **its own process group**, and a timeout or a
//! cancel ([`ToolControl`]) kills the whole group: `runc` runs `criu swrk`, CRIU forks helpers,
//! and killing only the direct child would leave them running (issue #14, finding 7). The group
//! is killed before the child is reaped, so its id (the child's pid) cannot have been reused.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal};

use crate::runtime::control::{POLL_SLICE, ToolControl};
use crate::runtime::error::{Result, RuntimeError};

/// Default limit for one CRIU or runc run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// How a tool run ended.
#[derive(Debug)]
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub wall: Duration,
}

/// Why a watched tool was stopped.
enum Stop {
    Exited,
    TimedOut,
    Cancelled,
}

/// Spawns `cmd` in a new process group (the caller sets its stdio: nothing here reads pipes,
/// so a tool that writes a lot must write to a file) and waits for it at most `limit`, cut to
/// what is left of `control`'s deadline. At the limit the tool's whole process group is killed
/// and the result is [`RuntimeError::Timeout`]; on `control.cancel()` likewise, with
/// [`RuntimeError::Cancelled`]. A control cancelled before the call starts nothing.
pub(crate) fn run(
    cmd: &mut Command,
    what: &str,
    limit: Duration,
    control: &ToolControl,
) -> Result<Finished, RuntimeError> {
    if control.is_cancelled() {
        return Err(RuntimeError::Cancelled {
            what: what.to_string(),
        });
    }
    let limit = control.limit(limit);
    if limit.is_zero() {
        return Err(RuntimeError::Timeout {
            what: what.to_string(),
            after: limit,
        });
    }
    let program = PathBuf::from(cmd.get_program());
    let start = Instant::now();
    // Its own group: what the tool forks can be killed with it, and a signal meant for the
    // agent's group (a terminal's Ctrl-C) does not hit the tool halfway.
    cmd.process_group(0);
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
            kill_group(&mut child);
            let _ = child.wait();
            return Err(e);
        }
    };
    let stop = loop {
        if control.is_cancelled() {
            break Stop::Cancelled;
        }
        let left = limit.saturating_sub(start.elapsed());
        if left.is_zero() {
            break Stop::TimedOut;
        }
        // Without an eventfd the cancel flag is looked at every slice.
        let wait = if control.is_live() && control.wake_fd().is_none() {
            left.min(POLL_SLICE)
        } else {
            left
        };
        let ts = Timespec {
            tv_sec: wait.as_secs() as i64,
            tv_nsec: i64::from(wait.subsec_nanos()),
        };
        let wake = control.wake_fd();
        let mut fds = vec![PollFd::new(&pidfd, PollFlags::IN)];
        if let Some(fd) = &wake {
            fds.push(PollFd::new(fd, PollFlags::IN));
        }
        match rustix::event::poll(&mut fds, Some(&ts)) {
            Ok(0) => {}
            Ok(_) if fds[0].revents().contains(PollFlags::IN) => break Stop::Exited,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                kill_group(&mut child);
                let _ = rustix::process::pidfd_send_signal(pidfd.as_fd(), Signal::KILL);
                let _ = child.wait();
                return Err(RuntimeError::Io {
                    context: format!("{what}: poll on pidfd"),
                    source: e.into(),
                });
            }
        }
    };
    if !matches!(stop, Stop::Exited) {
        // The child is not reaped yet, so the pidfd and the group id still name it.
        kill_group(&mut child);
        let _ = rustix::process::pidfd_send_signal(pidfd.as_fd(), Signal::KILL);
        let _ = child.wait();
        let cancelled = matches!(stop, Stop::Cancelled);
        tracing::warn!(
            what,
            cancelled,
            limit_s = limit.as_secs_f64(),
            ran_s = start.elapsed().as_secs_f64(),
            "tool stopped: killed with its process group"
        );
        return Err(if cancelled {
            RuntimeError::Cancelled {
                what: what.to_string(),
            }
        } else {
            RuntimeError::Timeout {
                what: what.to_string(),
                after: limit,
            }
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

/// SIGKILL to the process group the child leads (it was spawned with `process_group(0)`, so the
/// group id is its pid). Call only before the child is reaped.
fn kill_group(child: &mut Child) {
    if let Some(pgid) = Pid::from_raw(child.id() as i32)
        && let Err(e) = rustix::process::kill_process_group(pgid, Signal::KILL)
        && e != rustix::io::Errno::SRCH
    {
        tracing::warn!(pgid = child.id(), error = %e, "could not kill the tool's process group");
    }
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
        let f = run(
            &mut Command::new("true"),
            "true",
            Duration::from_secs(10),
            &ToolControl::default(),
        )
        .unwrap();
        assert!(f.status.success());
        assert!(f.wall < Duration::from_secs(2));
    }

    #[test]
    fn a_hung_tool_is_killed_at_its_limit() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let t = Instant::now();
        let e = run(
            &mut cmd,
            "sleep",
            Duration::from_millis(200),
            &ToolControl::default(),
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::Timeout { .. }), "{e}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    fn pid_in(file: &Path) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                return pid;
            }
            assert!(t.elapsed() < Duration::from_secs(10), "no pid in {file:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Live and not a zombie.
    fn alive(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .is_some_and(|st| st != "Z" && st != "X")
        })
    }

    /// A tool that forks a grandchild (which ignores SIGTERM and writes its pid) and hangs.
    fn forking_tool(pidfile: &Path) -> Command {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(format!(
            "sh -c 'trap \"\" TERM; echo $$ > {}; exec sleep 300' & wait",
            pidfile.display()
        ));
        cmd
    }

    fn gone_within(pid: i32, bound: Duration) -> bool {
        let t = Instant::now();
        while alive(pid) {
            if t.elapsed() > bound {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    #[test]
    fn a_hung_tool_is_killed_with_its_grandchild_at_the_deadline() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("grandchild.pid");
        // The task's deadline (1 s) is shorter than the tool's own limit (60 s): it wins.
        let control = ToolControl::new(Some(Instant::now() + Duration::from_secs(1)));
        let t = Instant::now();
        let e = run(
            &mut forking_tool(&pidfile),
            "forking tool",
            Duration::from_secs(60),
            &control,
        )
        .unwrap_err();
        let took = t.elapsed();
        assert!(matches!(e, RuntimeError::Timeout { .. }), "{e}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
        let grandchild = pid_in(&pidfile);
        assert!(
            gone_within(grandchild, Duration::from_secs(5)),
            "the grandchild {grandchild} outlived its tool"
        );
        // The next tool of a task past its deadline does not start.
        let e = run(
            &mut Command::new("true"),
            "true",
            Duration::from_secs(10),
            &control,
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::Timeout { .. }), "{e}");
    }

    #[test]
    fn a_cancel_kills_the_running_tool_and_its_group_at_once() {
        let tmp = tempfile::tempdir().unwrap();
        let pidfile = tmp.path().join("grandchild.pid");
        let control = ToolControl::new(None);
        let canceller = {
            let control = control.clone();
            let pidfile = pidfile.clone();
            std::thread::spawn(move || {
                pid_in(&pidfile);
                control.cancel();
                Instant::now()
            })
        };
        let e = run(
            &mut forking_tool(&pidfile),
            "forking tool",
            Duration::from_secs(60),
            &control,
        )
        .unwrap_err();
        let returned = Instant::now();
        let cancelled = canceller.join().unwrap();
        assert!(matches!(e, RuntimeError::Cancelled { .. }), "{e}");
        assert!(
            returned.duration_since(cancelled) < Duration::from_secs(2),
            "the tool ran on {:?} after the cancel",
            returned.duration_since(cancelled)
        );
        let grandchild = pid_in(&pidfile);
        assert!(gone_within(grandchild, Duration::from_secs(5)));
        // Nothing starts once cancelled; a tool of a live control still runs to its end.
        assert!(matches!(
            run(
                &mut Command::new("true"),
                "true",
                Duration::from_secs(10),
                &control
            ),
            Err(RuntimeError::Cancelled { .. })
        ));
        let other = ToolControl::new(Some(Instant::now() + Duration::from_secs(30)));
        let f = run(
            &mut Command::new("true"),
            "true",
            Duration::from_secs(10),
            &other,
        )
        .unwrap();
        assert!(f.status.success());
    }

    #[test]
    fn a_missing_tool_is_a_spawn_error() {
        let e = run(
            &mut Command::new("/nonexistent/criu"),
            "criu",
            Duration::from_secs(1),
            &ToolControl::default(),
        )
        .unwrap_err();
        assert!(matches!(e, RuntimeError::Spawn { .. }), "{e}");
    }
}
