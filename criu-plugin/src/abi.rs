//! The C entry point CRIU loads: `CR_PLUGIN_DESC`, one `extern "C"` function per hook, and the
//! panic guard every hook runs in. The functions CRIU exports to plugins are called from
//! [`crate::sys`]; what the hooks, backends and engine agree on is in [`crate::contract`].
//!
//! Every hook body is `guard(name, || ...)`: a panic is caught (it must never unwind into
//! CRIU's C frames) and logged, and every error becomes `-errno` after one log line. A
//! backend that does not own an fd or pid returns [`Claim::NotMine`], which becomes
//! `-ENOTSUP` so CRIU asks the next plugin.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::contract::{Claim, Stage};
use crate::error::Result;
use crate::state;

/// `CRIU_PLUGIN_GEN_VERSION(0, 2, 0)`.
pub const CRIU_PLUGIN_VERSION: c_uint = 0x200;
/// Hook slots we fill. 13 is `CR_PLUGIN_HOOK__MAX` of CRIU 4.1.x/4.2.x; criu-dev has 15 but
/// only reads `hooks[i]` for `i < max_hooks`, so one binary loads in all of them.
pub const MAX_HOOKS: usize = 13;

/// Hook ids (`enum cr_plugin_hook` in criu-plugin.h).
pub mod hook {
    pub const DUMP_EXT_FILE: usize = 2;
    pub const RESTORE_EXT_FILE: usize = 3;
    pub const HANDLE_DEVICE_VMA: usize = 7;
    pub const UPDATE_VMA_MAP: usize = 8;
    pub const RESUME_DEVICES_LATE: usize = 9;
    pub const PAUSE_DEVICES: usize = 10;
    pub const CHECKPOINT_DEVICES: usize = 11;
    pub const POST_FORKING: usize = 12;
}

/// `enum cr_plugin_stage` → [`Stage`].
fn stage_from_raw(stage: c_int) -> Option<Stage> {
    match stage {
        0 => Some(Stage::Dump),
        1 => Some(Stage::PreDump),
        2 => Some(Stage::Restore),
        _ => None,
    }
}

/// Mirror of `cr_plugin_desc_t` (x86-64: name 0, init 8, exit 16, version 24, max_hooks 28,
/// hooks 32).
#[repr(C)]
pub struct CrPluginDesc {
    pub name: *const c_char,
    pub init: Option<extern "C" fn(c_int) -> c_int>,
    pub exit: Option<extern "C" fn(c_int, c_int)>,
    pub version: c_uint,
    pub max_hooks: c_uint,
    pub hooks: [*const c_void; MAX_HOOKS],
}

/// The descriptor only holds pointers to immutable statics and functions.
#[repr(transparent)]
pub struct SyncDesc(pub CrPluginDesc);
// SAFETY: every pointer in the descriptor points to immutable 'static data or code.
unsafe impl Sync for SyncDesc {}

const _: () = assert!(std::mem::offset_of!(CrPluginDesc, version) == 24);
const _: () = assert!(std::mem::offset_of!(CrPluginDesc, hooks) == 32);
const _: () = assert!(std::mem::size_of::<CrPluginDesc>() == 32 + 8 * MAX_HOOKS);

const fn hooks() -> [*const c_void; MAX_HOOKS] {
    let mut h = [std::ptr::null::<c_void>(); MAX_HOOKS];
    h[hook::DUMP_EXT_FILE] = dump_ext_file as *const c_void;
    h[hook::RESTORE_EXT_FILE] = restore_ext_file as *const c_void;
    h[hook::HANDLE_DEVICE_VMA] = handle_device_vma as *const c_void;
    h[hook::UPDATE_VMA_MAP] = update_vma_map as *const c_void;
    h[hook::RESUME_DEVICES_LATE] = resume_devices_late as *const c_void;
    h[hook::PAUSE_DEVICES] = pause_devices as *const c_void;
    h[hook::CHECKPOINT_DEVICES] = checkpoint_devices as *const c_void;
    h[hook::POST_FORKING] = post_forking as *const c_void;
    h
}

/// What CRIU `dlsym`s after loading the library.
#[unsafe(no_mangle)]
pub static CR_PLUGIN_DESC: SyncDesc = SyncDesc(CrPluginDesc {
    name: c"ferry".as_ptr(),
    init: Some(plugin_init),
    exit: Some(plugin_exit),
    version: CRIU_PLUGIN_VERSION,
    max_hooks: MAX_HOOKS as c_uint,
    hooks: hooks(),
});

/// Runs a hook body so that no panic and no error escapes into CRIU unreported: an error
/// becomes `-errno` after one log line, a panic `-EIO`.
fn guard(hook: &'static str, f: impl FnOnce() -> Result<c_int>) -> c_int {
    crate::log::flush();
    let r = guard_inner(hook, f);
    crate::log::flush();
    r
}

fn guard_inner(hook: &'static str, f: impl FnOnce() -> Result<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            tracing::error!(hook, errno = e.errno(), "{e}");
            -e.errno()
        }
        Err(panic) => {
            tracing::error!(
                hook,
                "panic in plugin, failing the hook with -EIO: {}",
                panic_text(&*panic)
            );
            -libc::EIO
        }
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_string())
}

fn claim_to_int(c: Claim) -> c_int {
    match c {
        Claim::NotMine => -libc::ENOTSUP,
        Claim::Done => 0,
    }
}

extern "C" fn plugin_init(stage: c_int) -> c_int {
    crate::log::init();
    guard("init", || {
        let Some(stage) = stage_from_raw(stage) else {
            return Err(crate::PluginError::invalid(format!(
                "unknown CRIU plugin stage {stage}"
            )));
        };
        state::init(stage).map(|()| 0)
    })
}

extern "C" fn plugin_exit(stage: c_int, ret: c_int) {
    if let Err(panic) = catch_unwind(|| state::fini(stage_from_raw(stage), ret)) {
        tracing::error!(
            hook = "exit",
            "panic in plugin exit: {}",
            panic_text(&*panic)
        );
    }
}

extern "C" fn dump_ext_file(fd: c_int, id: c_int) -> c_int {
    guard("DUMP_EXT_FILE", || {
        if fd < 0 {
            return Ok(-libc::ENOTSUP);
        }
        // SAFETY: CRIU passes an fd it owns and keeps open for the duration of the hook.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        state::dump_file(fd, id as u32).map(claim_to_int)
    })
}

// CRIU 4.2.1 calls this with `(int id)`, criu-dev with `(int id, bool *retry_needed)`; the
// second argument is never read, so one signature serves both (extra register args are
// ignored under the SysV ABI).
extern "C" fn restore_ext_file(id: c_int) -> c_int {
    guard("RESTORE_EXT_FILE", || {
        Ok(match state::restore_file(id as u32)? {
            Some(fd) => into_raw(fd),
            None => -libc::ENOTSUP,
        })
    })
}

fn into_raw(fd: OwnedFd) -> c_int {
    // CRIU takes ownership of the returned fd (it dups it to the target number and closes it).
    fd.into_raw_fd()
}

extern "C" fn handle_device_vma(fd: c_int, st: *const libc::stat) -> c_int {
    guard("HANDLE_DEVICE_VMA", || {
        if fd < 0 || st.is_null() {
            return Ok(-libc::ENOTSUP);
        }
        // SAFETY: CRIU passes an open fd and a valid `struct stat` for the hook's duration.
        let (fd, st) = unsafe { (BorrowedFd::borrow_raw(fd), &*st) };
        state::handle_device_vma(fd, st).map(claim_to_int)
    })
}

extern "C" fn update_vma_map(
    path: *const c_char,
    addr: u64,
    old_pgoff: u64,
    new_pgoff: *mut u64,
    plugin_fd: *mut c_int,
) -> c_int {
    guard("UPDATE_VMA_MAP", || {
        if path.is_null() || new_pgoff.is_null() || plugin_fd.is_null() {
            return Ok(-libc::ENOTSUP);
        }
        // SAFETY: CRIU passes a NUL-terminated path valid for the hook's duration.
        let path = unsafe { CStr::from_ptr(path) }
            .to_string_lossy()
            .into_owned();
        match state::update_vma_map(&path, addr, old_pgoff)? {
            None => Ok(0),
            Some(update) => {
                // SAFETY: both out-pointers were checked non-null and point to CRIU's locals.
                unsafe {
                    *new_pgoff = update.new_pgoff;
                    *plugin_fd = update.fd.map(into_raw).unwrap_or(-1);
                }
                Ok(1)
            }
        }
    })
}

extern "C" fn resume_devices_late(pid: c_int) -> c_int {
    guard("RESUME_DEVICES_LATE", || {
        state::resume_devices_late(pid).map(claim_to_int)
    })
}

extern "C" fn pause_devices(pid: c_int) -> c_int {
    guard("PAUSE_DEVICES", || {
        state::pause_devices(pid).map(claim_to_int)
    })
}

extern "C" fn checkpoint_devices(pid: c_int) -> c_int {
    guard("CHECKPOINT_DEVICES", || {
        state::checkpoint_devices(pid).map(claim_to_int)
    })
}

extern "C" fn post_forking() -> c_int {
    guard("POST_FORKING", || state::post_forking().map(claim_to_int))
}
