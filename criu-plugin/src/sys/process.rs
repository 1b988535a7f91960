//! Process-level calls the plugin makes on its host process: ending it at once, blocking
//! SIGCHLD for worker threads, unsharing their fs context, and pinning the plugin's object in
//! memory.
#![allow(unsafe_code)]

use std::ffi::c_void;

use crate::error::{PluginError, Result};

/// Ends the calling process at once, without running CRIU's atexit handlers (tests only:
/// the restored task dying mid-send).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an int and never returns; nothing of ours needs unwinding.
    unsafe { libc::_exit(code) }
}

/// Gives the calling thread its own root, working directory and umask (`unshare(CLONE_FS)`).
/// A thread of CRIU's main process must: while any thread shares the process's `fs_struct`,
/// CRIU's `setns` into the restored mount namespace (cleaning ghost files after a container's
/// restore) fails with EINVAL.
pub fn unshare_fs() -> Result<()> {
    // SAFETY: CLONE_FS only copies this thread's root, cwd and umask; no file descriptor
    // table is unshared, so no thread can observe another's descriptors differently.
    unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
        .map_err(|e| PluginError::io("unshare CLONE_FS for the worker", e.into()))
}

/// Blocks SIGCHLD in the calling thread until dropped, so a thread spawned meanwhile
/// inherits the blocked mask (CRIU's main thread must keep receiving SIGCHLD).
pub struct SigchldBlocked {
    /// The thread's mask before, put back on drop.
    old: libc::sigset_t,
}

impl SigchldBlocked {
    /// Blocks SIGCHLD in the calling thread.
    pub fn new() -> Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use, and
        // pthread_sigmask reads `set` and writes `old`, both valid locals.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGCHLD);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            if rc != 0 {
                return Err(PluginError::io(
                    "block SIGCHLD for the worker",
                    std::io::Error::from_raw_os_error(rc),
                ));
            }
            Ok(SigchldBlocked { old })
        }
    }
}

impl Drop for SigchldBlocked {
    fn drop(&mut self) {
        // SAFETY: `old` is a mask pthread_sigmask filled in; a null `oldset` is allowed.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}

/// Makes this plugin's shared object stay mapped for the life of the process, even after
/// CRIU's `dlclose` at `fini`. Needed once a worker thread is abandoned inside a driver call
/// (see the NVIDIA backend's call timeout): if that call ever returns, it returns into this
/// object's code, which must still be there. Returns whether the object is now pinned.
pub fn pin_in_memory() -> bool {
    let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
    let here = pin_in_memory as *const c_void;
    // SAFETY: `here` is an address inside this object; dladdr only fills `info`.
    if unsafe { libc::dladdr(here, info.as_mut_ptr()) } == 0 {
        return false;
    }
    // SAFETY: dladdr succeeded, so `info` is initialised; `dli_fname` is a NUL-terminated
    // path owned by the loader (valid while the object is loaded, which it is).
    let fname = unsafe { info.assume_init() }.dli_fname;
    if fname.is_null() {
        return false;
    }
    // SAFETY: RTLD_NOLOAD only looks up the already-loaded object (no constructors run) and
    // RTLD_NODELETE marks it never to be unloaded; the extra reference is never released.
    let handle = unsafe {
        libc::dlopen(
            fname,
            libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
        )
    };
    !handle.is_null()
}
