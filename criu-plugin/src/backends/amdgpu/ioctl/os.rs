//! The backend's two calls that are not device ioctls: CRIU's `find_unused_fd_pid` export and
//! ROCt's POSIX named semaphore.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, c_void};
use std::io;
use std::os::fd::RawFd;

/// CRIU's `find_unused_fd_pid(pid)`: the lowest fd number above every fd the restored task
/// will get, so fds the plugin keeps in the task never clash with them. `None` outside CRIU.
pub fn criu_find_unused_fd(pid: u32) -> Option<RawFd> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads symbol tables.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"find_unused_fd_pid".as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: CRIU 4.x exports `int find_unused_fd_pid(pid_t pid)` (criu/include/files.h).
    let f = unsafe {
        std::mem::transmute::<*mut c_void, unsafe extern "C" fn(libc::pid_t) -> c_int>(p)
    };
    // SAFETY: a plain call with an integer argument; CRIU looks the pid up in its own tables.
    let fd = unsafe { f(pid as libc::pid_t) };
    (fd > 0).then_some(fd)
}

/// Creates (or opens) the POSIX named semaphore `name` with value 1 and closes it again:
/// ROCt's `hsakmt_semaphore`, which must exist when the restored process resumes.
pub fn ensure_named_semaphore(name: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: a NUL-terminated name; the variadic mode and value have the types sem_open
    // reads for O_CREAT (mode_t promoted to c_uint, unsigned value).
    let sem = unsafe { libc::sem_open(name.as_ptr(), libc::O_CREAT, 0o666 as c_uint, 1 as c_uint) };
    if sem == libc::SEM_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sem` is the valid handle sem_open just returned, closed once.
    unsafe { libc::sem_close(sem) };
    Ok(())
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_find_unused_fd_is_absent_outside_criu() {
        assert_eq!(criu_find_unused_fd(1), None);
    }
}
