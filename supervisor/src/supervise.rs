//! The supervisor's life: wait for the agent's word, adopt the restored root, forward
//! signals to it, reap every child, exit with the root's status. Every path ends in an exit
//! code and a log line; nothing here panics.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use rustix::process::Signal;

use crate::control::{self, Control, State};
use crate::exit::{self, Ended};
use crate::say;
use crate::sys::{self, Child, SignalSet};

/// How the supervisor runs (`ferry-supervisor run`).
#[derive(Debug, Clone)]
pub struct Config {
    /// The control directory (an emptyDir of the pod).
    pub control: PathBuf,
    /// How long to wait for the agent.
    pub timeout: Duration,
    /// How often to look for the agent's control file while waiting.
    pub poll: Duration,
    /// How long a pid in `restored` may stay a non-child (reparenting in flight) before it
    /// is refused.
    pub adopt_grace: Duration,
    /// The container's termination message file (`/dev/termination-log`); written on the
    /// supervisor's own failures if it exists.
    pub termination_log: Option<PathBuf>,
}

/// The most exit statuses remembered from children reaped before the restore was reported.
const REMEMBERED: usize = 256;

/// The signals that stop a supervisor still waiting for the restore.
const STOPPING: [Signal; 4] = [Signal::TERM, Signal::INT, Signal::HUP, Signal::QUIT];

/// Runs the supervisor; returns its exit code.
pub fn run(cfg: &Config) -> u8 {
    let signals = match SignalSet::block() {
        Ok(s) => s,
        Err(e) => return fail(cfg, exit::INTERNAL, &format!("blocking signals: {e}")),
    };
    let pid1 = sys::is_pid1();
    if !pid1 && let Err(e) = sys::become_subreaper() {
        return fail(cfg, exit::INTERNAL, &format!("PR_SET_CHILD_SUBREAPER: {e}"));
    }
    if let Err(e) = control::write_state(&cfg.control, &State::Waiting) {
        return fail(cfg, exit::INTERNAL, &format!("writing the state file: {e}"));
    }
    say!(
        "waiting for the restore control={} timeout={}s pid1={pid1}",
        cfg.control.display(),
        cfg.timeout.as_secs()
    );
    match wait_for_restore(cfg, &signals) {
        Waited::Adopted { pid, pending } => supervise(cfg, &signals, pid, pending),
        Waited::AlreadyExited { pid, ended } => finish(cfg, pid, ended),
        Waited::Stop(code) => code,
    }
}

enum Waited {
    Adopted { pid: i32, pending: Option<Signal> },
    AlreadyExited { pid: i32, ended: Ended },
    Stop(u8),
}

fn wait_for_restore(cfg: &Config, signals: &SignalSet) -> Waited {
    let deadline = Instant::now() + cfg.timeout;
    let mut reaped: Vec<(i32, Ended)> = Vec::new();
    let mut not_child_since: Option<Instant> = None;
    let mut stop: Option<(Signal, &str)> = None;
    loop {
        let now = Instant::now();
        match control::read_control(&cfg.control) {
            Err(e) => return Waited::Stop(fail(cfg, exit::BAD_CONTROL, &e.to_string())),
            Ok(Control::Failed(reason)) => {
                let msg = format!("restore failed: {reason}");
                return Waited::Stop(fail(cfg, exit::RESTORE_FAILED, &msg));
            }
            Ok(Control::Restored(pid)) => {
                if let Some(&(_, ended)) = reaped.iter().find(|(p, _)| *p == pid) {
                    return Waited::AlreadyExited { pid, ended };
                }
                match sys::child_state(pid) {
                    Ok(Child::Running | Child::Exited) => {
                        let pending = stop.map(|(s, _)| s);
                        return Waited::Adopted { pid, pending };
                    }
                    Ok(Child::NotMine) => {
                        let since = *not_child_since.get_or_insert(now);
                        if now.duration_since(since) >= cfg.adopt_grace || stop.is_some() {
                            let msg = format!(
                                "pid {pid} in {} is not a child of the supervisor (its parent: {})",
                                control::RESTORED,
                                parent_of(pid)
                            );
                            return Waited::Stop(fail(cfg, exit::BAD_CONTROL, &msg));
                        }
                    }
                    Err(e) => {
                        let msg = format!("waitid on pid {pid}: {e}");
                        return Waited::Stop(fail(cfg, exit::INTERNAL, &msg));
                    }
                }
            }
            Ok(Control::Pending) => {}
        }
        if let Some((sig, name)) = stop {
            say!("stopped by {name} before the restore, exiting");
            let code = Ended::Signal(sig.as_raw()).exit_code();
            let _ = control::write_state(&cfg.control, &State::Exited { code });
            return Waited::Stop(code);
        }
        if now >= deadline {
            let msg = format!(
                "timed out after {}s waiting for the agent: no {} or {} in {}",
                cfg.timeout.as_secs(),
                control::RESTORED,
                control::FAILED,
                cfg.control.display()
            );
            return Waited::Stop(fail(cfg, exit::TIMEOUT, &msg));
        }
        match signals.wait(cfg.poll.min(deadline - now)) {
            Ok(None) => {}
            Ok(Some(libc::SIGCHLD)) => reap_all(&mut reaped),
            Ok(Some(raw)) => match sys::forwarded(raw) {
                Some((sig, name)) if STOPPING.contains(&sig) => stop = Some((sig, name)),
                Some((_, name)) => say!("ignored {name}: nothing restored yet"),
                None => {}
            },
            Err(e) => {
                return Waited::Stop(fail(cfg, exit::INTERNAL, &format!("sigtimedwait: {e}")));
            }
        }
    }
}

/// Reaps every exited child while waiting, remembering their statuses (the restored root may
/// exit before the agent's word arrives).
fn reap_all(reaped: &mut Vec<(i32, Ended)>) {
    loop {
        match sys::reap_one() {
            Ok(Some((pid, ended))) => {
                say!("reaped pid={pid} {ended} (before the restore was reported)");
                if reaped.len() >= REMEMBERED {
                    reaped.remove(0);
                }
                reaped.push((pid, ended));
            }
            Ok(None) => return,
            Err(e) => {
                say!("error: reaping: {e}");
                return;
            }
        }
    }
}

fn supervise(cfg: &Config, signals: &SignalSet, pid: i32, pending: Option<Signal>) -> u8 {
    if let Err(e) = control::write_state(&cfg.control, &State::Running { pid }) {
        say!("error: writing the state file: {e} (the probe will not pass)");
    }
    say!("restored pid={pid} adopted, forwarding signals to it");
    if let Some(sig) = pending {
        forward(pid, sig, "the stop signal that came while waiting");
    }
    loop {
        loop {
            match sys::reap_one() {
                Ok(Some((p, ended))) if p == pid => return finish(cfg, pid, ended),
                Ok(Some((p, ended))) => say!("reaped pid={p} {ended}"),
                Ok(None) => break,
                Err(e) => {
                    say!("error: reaping: {e}");
                    break;
                }
            }
        }
        match signals.wait(Duration::from_secs(1)) {
            Ok(Some(libc::SIGCHLD)) => {}
            Ok(Some(raw)) => {
                if let Some((sig, name)) = sys::forwarded(raw) {
                    forward(pid, sig, name);
                }
            }
            Ok(None) => {
                // SIGCHLD coalesces and is re-checked by the reap above; this guards
                // against a root that is somehow no longer ours.
                if let Ok(Child::NotMine) = sys::child_state(pid) {
                    let msg = format!("lost the restored root pid={pid} (not a child any more)");
                    return fail(cfg, exit::INTERNAL, &msg);
                }
            }
            Err(e) => {
                say!("error: sigtimedwait: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn forward(pid: i32, sig: Signal, name: &str) {
    let sig_name = sys::FORWARDED
        .iter()
        .find(|(s, _)| *s == sig)
        .map_or("signal", |(_, n)| n);
    match sys::send(pid, sig) {
        Ok(true) => say!("forwarded {sig_name} to pid={pid} ({name})"),
        Ok(false) => say!("{sig_name} not forwarded: pid={pid} is gone"),
        Err(e) => say!("error: forwarding {sig_name} to pid={pid}: {e}"),
    }
}

fn finish(cfg: &Config, pid: i32, ended: Ended) -> u8 {
    let code = ended.exit_code();
    if let Err(e) = control::write_state(&cfg.control, &State::Exited { code }) {
        say!("error: writing the state file: {e}");
    }
    say!("restored pid={pid} {ended}, exiting code={code}");
    code
}

/// The supervisor's own failure: state file, termination message, log line, exit code.
fn fail(cfg: &Config, code: u8, msg: &str) -> u8 {
    let _ = control::write_state(
        &cfg.control,
        &State::Failed {
            reason: msg.to_string(),
        },
    );
    if let Some(path) = &cfg.termination_log {
        write_termination_log(path, msg);
    }
    say!("error: {msg} (exit code {code})");
    code
}

/// Writes the message into an existing termination-log file (the kubelet creates it; the
/// supervisor never does).
fn write_termination_log(path: &std::path::Path, msg: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path);
    if let Ok(mut f) = file {
        let _ = writeln!(f, "ferry-supervisor: {msg}");
    }
}

/// The parent of `pid` from `/proc`, for an error message.
fn parent_of(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("PPid:"))
        .map_or_else(
            || "no such process".to_string(),
            |p| format!("pid {}", p.trim()),
        )
}

/// `ferry-supervisor probe`: exit code 0 and the state line while the restored root runs,
/// 1 and the state (or why there is none) otherwise.
pub fn probe(control_dir: &std::path::Path) -> (u8, String) {
    match control::read_state(control_dir) {
        Ok(Some(state @ State::Running { .. })) => (0, state.to_line()),
        Ok(Some(state)) => (1, state.to_line()),
        Ok(None) => (1, "no state yet: the supervisor has not started".into()),
        Err(e) => (1, format!("unreadable state: {e}")),
    }
}
