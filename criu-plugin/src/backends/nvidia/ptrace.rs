//! Running the CUDA restore thread of a task that CRIU holds stopped, and stopping it again.
//!
//! The driver's checkpoint and restore work happens on a thread inside the target process
//! (the "restore thread", `cuCheckpointProcessGetRestoreThreadId`). CRIU has seized every thread
//! of the tree with ptrace, so that thread must run for the duration of the driver call. The
//! sequence is the one of CRIU's own cuda plugin (plugins/cuda/cuda_plugin.c):
//!
//! - resume: `PTRACE_GETSIGMASK` (saved), `PTRACE_SETSIGMASK` all but SIGTRAP, `PTRACE_SETOPTIONS`
//!   0, `PTRACE_CONT`;
//! - stop: `PTRACE_INTERRUPT`, `waitpid(__WALL)` for the stop, `PTRACE_SETOPTIONS`
//!   (`PTRACE_O_SUSPEND_SECCOMP | PTRACE_O_TRACESYSGOOD`), `PTRACE_SETSIGMASK` (saved).
//!
//! ptrace requests are only accepted from the tracer thread (the CRIU thread that seized the
//! tasks and calls the hooks), so these functions must run on the hook's thread, never on a
//! worker. Raw `ptrace(2)` has no safe wrapper in rustix, hence this small FFI module.
#![allow(unsafe_code)]

use std::ffi::c_void;
use std::io;

/// One kernel `sigset_t` (64 signals on x86-64 and arm64).
type KSigset = u64;

/// Why a ptrace step failed.
#[derive(Debug, thiserror::Error)]
#[error("{step} on restore thread {tid} failed: {source}")]
pub struct PtraceError {
    pub step: &'static str,
    pub tid: i32,
    #[source]
    pub source: io::Error,
}

impl PtraceError {
    /// ESRCH: the thread is not stopped under our ptrace (not seized by this tracer).
    pub fn not_traced(&self) -> bool {
        self.source.raw_os_error() == Some(libc::ESRCH)
    }
}

/// A restore thread that [`resume`] let run; give it to [`stop`] afterwards.
#[derive(Debug)]
#[must_use = "a resumed restore thread must be stopped again before CRIU continues"]
pub struct Resumed {
    pub tid: i32,
    saved_mask: KSigset,
}

fn req(
    step: &'static str,
    tid: i32,
    request: libc::c_uint,
    addr: usize,
    data: usize,
) -> Result<(), PtraceError> {
    // SAFETY: every request used here takes integer `addr`/`data`, or (GET/SETSIGMASK) a
    // pointer to a live 8-byte sigset passed in `data` with its size in `addr`.
    let r = unsafe { libc::ptrace(request, tid, addr as *mut c_void, data as *mut c_void) };
    if r == -1 {
        return Err(PtraceError {
            step,
            tid,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn set_mask(step: &'static str, tid: i32, mask: &KSigset) -> Result<(), PtraceError> {
    req(
        step,
        tid,
        libc::PTRACE_SETSIGMASK,
        size_of::<KSigset>(),
        mask as *const KSigset as usize,
    )
}

/// Lets a ptrace-stopped restore thread run, with every signal but SIGTRAP blocked.
pub fn resume(tid: i32) -> Result<Resumed, PtraceError> {
    let mut saved: KSigset = 0;
    req(
        "PTRACE_GETSIGMASK",
        tid,
        libc::PTRACE_GETSIGMASK,
        size_of::<KSigset>(),
        &mut saved as *mut KSigset as usize,
    )?;
    let block: KSigset = !(1u64 << (libc::SIGTRAP - 1));
    set_mask("PTRACE_SETSIGMASK", tid, &block)?;
    req("PTRACE_SETOPTIONS", tid, libc::PTRACE_SETOPTIONS, 0, 0)?;
    req("PTRACE_CONT", tid, libc::PTRACE_CONT, 0, 0)?;
    Ok(Resumed {
        tid,
        saved_mask: saved,
    })
}

/// Stops a thread that [`resume`] let run and puts back its options and signal mask.
pub fn stop(r: Resumed) -> Result<(), PtraceError> {
    let tid = r.tid;
    req("PTRACE_INTERRUPT", tid, libc::PTRACE_INTERRUPT, 0, 0)?;
    wait_for_stop(tid)?;
    req(
        "PTRACE_SETOPTIONS",
        tid,
        libc::PTRACE_SETOPTIONS,
        0,
        (libc::PTRACE_O_SUSPEND_SECCOMP | libc::PTRACE_O_TRACESYSGOOD) as usize,
    )?;
    set_mask("PTRACE_SETSIGMASK(saved)", tid, &r.saved_mask)
}

/// Waits until `tid` reports a ptrace stop. A signal-delivery stop on the way (only SIGTRAP,
/// SIGSTOP and SIGKILL get through the mask) is passed on; the pending interrupt then stops
/// the thread again.
fn wait_for_stop(tid: i32) -> Result<(), PtraceError> {
    for _ in 0..16 {
        let mut status: libc::c_int = 0;
        // SAFETY: `status` is a valid out-pointer; waiting on a tracee thread with __WALL.
        let r = unsafe { libc::waitpid(tid, &mut status, libc::__WALL) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(PtraceError {
                step: "waitpid",
                tid,
                source: e,
            });
        }
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            return Err(PtraceError {
                step: "waitpid",
                tid,
                source: io::Error::other(format!("the thread ended (wait status {status:#x})")),
            });
        }
        if libc::WIFSTOPPED(status) {
            let event = (status >> 16) & 0xff;
            if event == libc::PTRACE_EVENT_STOP {
                return Ok(());
            }
            let sig = libc::WSTOPSIG(status);
            let pass = if sig == libc::SIGTRAP || sig == (libc::SIGTRAP | 0x80) {
                0
            } else {
                sig
            };
            req(
                "PTRACE_CONT(signal)",
                tid,
                libc::PTRACE_CONT,
                0,
                pass as usize,
            )?;
        }
    }
    Err(PtraceError {
        step: "waitpid",
        tid,
        source: io::Error::other("no interrupt stop after 16 wake-ups"),
    })
}

/// Seizes `tid` and waits for it to stop, as CRIU's seize does (tests use this to stand in
/// for CRIU).
pub fn seize_and_interrupt(tid: i32) -> Result<(), PtraceError> {
    req("PTRACE_SEIZE", tid, libc::PTRACE_SEIZE, 0, 0)?;
    req("PTRACE_INTERRUPT", tid, libc::PTRACE_INTERRUPT, 0, 0)?;
    wait_for_stop(tid)
}

/// Detaches from a ptrace-stopped `tid` (tests).
pub fn detach(tid: i32) -> Result<(), PtraceError> {
    req("PTRACE_DETACH", tid, libc::PTRACE_DETACH, 0, 0)
}

/// Reads the signal mask of a ptrace-stopped thread (tests).
pub fn sigmask(tid: i32) -> Result<u64, PtraceError> {
    let mut m: KSigset = 0;
    req(
        "PTRACE_GETSIGMASK",
        tid,
        libc::PTRACE_GETSIGMASK,
        size_of::<KSigset>(),
        &mut m as *mut KSigset as usize,
    )?;
    Ok(m)
}

/// The scheduler state letter of a thread (`/proc/<pid>/task/<tid>/stat`, field 3): `t` is a
/// ptrace stop.
pub fn thread_state(pid: i32, tid: i32) -> io::Result<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    stat.rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next())
        .ok_or_else(|| io::Error::other(format!("cannot parse /proc/{pid}/task/{tid}/stat")))
}
