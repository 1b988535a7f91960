//! The syscall boundary: blocking signals and waiting for them (`sigtimedwait`, as tini
//! does: a blocked signal is queued even for a PID 1 that has no handler), the child
//! subreaper flag, reaping and the "is this my child" check. The only `unsafe` of the crate
//! is here.
#![allow(unsafe_code)]

use std::io;
use std::time::Duration;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions, WaitOptions};

use crate::exit::Ended;

/// The signals passed on to the restored root, with their names for the log.
pub const FORWARDED: [(Signal, &str); 6] = [
    (Signal::TERM, "SIGTERM"),
    (Signal::INT, "SIGINT"),
    (Signal::HUP, "SIGHUP"),
    (Signal::QUIT, "SIGQUIT"),
    (Signal::USR1, "SIGUSR1"),
    (Signal::USR2, "SIGUSR2"),
];

/// A forwarded signal by its number.
pub fn forwarded(raw: i32) -> Option<(Signal, &'static str)> {
    FORWARDED.iter().copied().find(|(s, _)| s.as_raw() == raw)
}

/// The signals the supervisor takes through [`SignalSet::wait`]: the forwarded ones and
/// SIGCHLD.
pub struct SignalSet {
    set: libc::sigset_t,
}

impl SignalSet {
    /// Blocks SIGCHLD and the forwarded signals in the calling thread (the supervisor has no
    /// other thread), so they queue until [`SignalSet::wait`] takes them. Children inherit
    /// the mask across fork but `exec` keeps it too, so the supervisor never spawns.
    pub fn block() -> io::Result<Self> {
        let raw = FORWARDED
            .iter()
            .map(|(s, _)| s.as_raw())
            .chain([libc::SIGCHLD]);
        // SAFETY: sigset_t is plain data that sigemptyset initialises before any other use;
        // sigaddset gets valid signal numbers; pthread_sigmask reads `set` and is given a null
        // old-mask pointer, which it allows.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            if libc::sigemptyset(&mut set) != 0 {
                return Err(io::Error::last_os_error());
            }
            for sig in raw {
                if libc::sigaddset(&mut set, sig) != 0 {
                    return Err(io::Error::last_os_error());
                }
            }
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(Self { set })
        }
    }

    /// Takes one pending signal of the set, waiting at most `timeout`; `None` when none came
    /// (or a signal outside the set interrupted the wait).
    pub fn wait(&self, timeout: Duration) -> io::Result<Option<i32>> {
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `self.set` was initialised in `block`; `ts` is a valid timespec; a null
        // siginfo pointer is allowed.
        let sig = unsafe { libc::sigtimedwait(&self.set, std::ptr::null_mut(), &ts) };
        if sig > 0 {
            return Ok(Some(sig));
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(None),
            _ => Err(err),
        }
    }
}

/// Marks the process a child subreaper: orphans among its descendants come to it (what PID 1
/// of a pid namespace gets anyway).
pub fn become_subreaper() -> io::Result<()> {
    rustix::process::set_child_subreaper(Some(rustix::process::getpid())).map_err(io::Error::from)
}

/// Whether the supervisor is PID 1 of its pid namespace.
pub fn is_pid1() -> bool {
    rustix::process::getpid().is_init()
}

/// Reaps one exited child without blocking: `None` when no child has exited (or there is no
/// child at all).
pub fn reap_one() -> io::Result<Option<(i32, Ended)>> {
    loop {
        match rustix::process::wait(WaitOptions::NOHANG) {
            Ok(Some((pid, status))) => match Ended::from_wait(status) {
                Some(ended) => return Ok(Some((pid.as_raw_nonzero().get(), ended))),
                None => continue,
            },
            Ok(None) => return Ok(None),
            Err(rustix::io::Errno::CHILD) => return Ok(None),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// What `waitid(P_PID, pid, WNOWAIT)` says about `pid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Child {
    /// A child of ours, still running.
    Running,
    /// A child of ours that has exited and waits to be reaped.
    Exited,
    /// Not a child of ours (or no such process).
    NotMine,
}

/// Checks `pid` without reaping it.
pub fn child_state(pid: i32) -> io::Result<Child> {
    let Some(pid) = Pid::from_raw(pid) else {
        return Ok(Child::NotMine);
    };
    let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
    match rustix::process::waitid(WaitId::Pid(pid), opts) {
        Ok(None) => Ok(Child::Running),
        Ok(Some(_)) => Ok(Child::Exited),
        Err(rustix::io::Errno::CHILD) => Ok(Child::NotMine),
        Err(e) => Err(e.into()),
    }
}

/// Sends `sig` to `pid`; a process already gone is not an error (`Ok(false)`).
pub fn send(pid: i32, sig: Signal) -> io::Result<bool> {
    let Some(pid) = Pid::from_raw(pid) else {
        return Ok(false);
    };
    match rustix::process::kill_process(pid, sig) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::SRCH) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_signals_by_number() {
        assert_eq!(forwarded(libc::SIGTERM).map(|(_, n)| n), Some("SIGTERM"));
        assert_eq!(forwarded(libc::SIGUSR2).map(|(_, n)| n), Some("SIGUSR2"));
        assert_eq!(forwarded(libc::SIGCHLD), None);
        assert_eq!(forwarded(libc::SIGKILL), None);
        assert_eq!(forwarded(0), None);
    }
}
