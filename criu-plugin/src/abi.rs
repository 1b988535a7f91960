//! The C boundary with CRIU: `CR_PLUGIN_DESC`, one `extern "C"` function per hook, and the
//! helpers CRIU exports to plugins. Nothing else in the crate is `unsafe` at the CRIU edge.
//!
//! Every hook body is `guard(name, || ...)`: a panic is caught (it must never unwind into
//! CRIU's C frames) and logged, and every error becomes `-errno` after one log line. A
//! backend that does not own an fd or pid returns [`Claim::NotMine`], which becomes
//! `-ENOTSUP` so CRIU asks the next plugin.
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::os::fd::{BorrowedFd, IntoRawFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::OnceLock;

use crate::backends::Claim;
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

/// Plugin stages (`enum cr_plugin_stage`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Dump,
    PreDump,
    Restore,
}

impl Stage {
    fn from_raw(stage: c_int) -> Option<Stage> {
        match stage {
            0 => Some(Stage::Dump),
            1 => Some(Stage::PreDump),
            2 => Some(Stage::Restore),
            _ => None,
        }
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
        let Some(stage) = Stage::from_raw(stage) else {
            return Err(crate::PluginError::invalid(format!(
                "unknown CRIU plugin stage {stage}"
            )));
        };
        state::init(stage).map(|()| 0)
    })
}

extern "C" fn plugin_exit(stage: c_int, ret: c_int) {
    if let Err(panic) = catch_unwind(|| state::fini(Stage::from_raw(stage), ret)) {
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

/// Functions the `criu` binary exports to plugins, resolved once with `dlsym`. Absent when
/// the plugin runs outside CRIU (the plugin-host harness), where [`crate::host`] falls back.
pub struct CriuExports {
    print_on_level: Option<unsafe extern "C" fn(c_uint, *const c_char, ...)>,
    criu_get_image_dir: Option<unsafe extern "C" fn() -> c_int>,
    fdstore_add: Option<unsafe extern "C" fn(c_int) -> c_int>,
    fdstore_get: Option<unsafe extern "C" fn(c_int) -> c_int>,
    add_inventory_plugin: Option<unsafe extern "C" fn(*const c_char) -> c_int>,
    check_and_remove_inventory_plugin: Option<unsafe extern "C" fn(*const c_char, usize) -> bool>,
}

fn sym(name: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads the loaded
    // objects' symbol tables.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

macro_rules! resolve {
    ($name:literal, $ty:ty) => {{
        let p = sym($name);
        if p.is_null() {
            None
        } else {
            // SAFETY: the symbol is CRIU's exported function of exactly this C signature
            // (criu/include/{log,fdstore,image,criu-plugin}.h of CRIU 4.x).
            Some(unsafe { std::mem::transmute::<*mut c_void, $ty>(p) })
        }
    }};
}

/// CRIU's exports, resolved on first use.
pub fn criu() -> &'static CriuExports {
    static EXPORTS: OnceLock<CriuExports> = OnceLock::new();
    EXPORTS.get_or_init(|| CriuExports {
        print_on_level: resolve!(
            c"print_on_level",
            unsafe extern "C" fn(c_uint, *const c_char, ...)
        ),
        criu_get_image_dir: resolve!(c"criu_get_image_dir", unsafe extern "C" fn() -> c_int),
        fdstore_add: resolve!(c"fdstore_add", unsafe extern "C" fn(c_int) -> c_int),
        fdstore_get: resolve!(c"fdstore_get", unsafe extern "C" fn(c_int) -> c_int),
        add_inventory_plugin: resolve!(
            c"add_inventory_plugin",
            unsafe extern "C" fn(*const c_char) -> c_int
        ),
        check_and_remove_inventory_plugin: resolve!(
            c"check_and_remove_inventory_plugin",
            unsafe extern "C" fn(*const c_char, usize) -> bool
        ),
    })
}

impl CriuExports {
    /// True when running inside a `criu` binary.
    pub fn in_criu(&self) -> bool {
        self.print_on_level.is_some() && self.criu_get_image_dir.is_some()
    }

    /// Writes one line to CRIU's log at `level` (0 msg, 1 error, 2 warn, 3 info, 4 debug).
    /// Returns false when CRIU's logger is absent.
    pub fn print(&self, level: u32, line: &str) -> bool {
        let Some(f) = self.print_on_level else {
            return false;
        };
        let Ok(c) = CString::new(line.replace('\0', " ")) else {
            return false;
        };
        // SAFETY: the format is the literal "%s" and its one argument a valid C string.
        unsafe { f(level, c"%s".as_ptr(), c.as_ptr()) };
        true
    }

    /// CRIU's image-directory fd (a service fd CRIU owns; never close it).
    pub fn image_dir(&self) -> Option<BorrowedFd<'static>> {
        let f = self.criu_get_image_dir?;
        // SAFETY: criu_get_image_dir takes no arguments and returns an fd or -1.
        let fd = unsafe { f() };
        // SAFETY: the service fd stays open for CRIU's lifetime.
        (fd >= 0).then(|| unsafe { BorrowedFd::borrow_raw(fd) })
    }

    /// Puts a copy of `fd` into CRIU's fdstore (it survives into restored tasks); returns its id.
    pub fn fdstore_add(&self, fd: BorrowedFd<'_>) -> Option<i32> {
        let f = self.fdstore_add?;
        use std::os::fd::AsRawFd;
        // SAFETY: fdstore_add sends a copy of a valid open fd to CRIU's store.
        let id = unsafe { f(fd.as_raw_fd()) };
        (id >= 0).then_some(id)
    }

    /// Gets a new fd for fdstore entry `id`.
    pub fn fdstore_get(&self, id: i32) -> Option<OwnedFd> {
        let f = self.fdstore_get?;
        // SAFETY: fdstore_get returns a new fd the caller owns, or -1.
        let fd = unsafe { f(id) };
        use std::os::fd::FromRawFd;
        // SAFETY: a non-negative result is a fresh fd owned by us.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Records `name` in the inventory image (dump). None outside CRIU.
    pub fn add_inventory(&self, name: &str) -> Option<bool> {
        let f = self.add_inventory_plugin?;
        let c = CString::new(name).ok()?;
        // SAFETY: a valid C string; CRIU copies it.
        Some(unsafe { f(c.as_ptr()) } == 0)
    }

    /// Checks and removes `name` from the inventory (restore). None outside CRIU.
    pub fn check_inventory(&self, name: &str) -> Option<bool> {
        let f = self.check_and_remove_inventory_plugin?;
        let c = CString::new(name).ok()?;
        // SAFETY: a valid C string and its length.
        Some(unsafe { f(c.as_ptr(), name.len()) })
    }
}

/// Ends the calling process at once, without running CRIU's atexit handlers (tests only:
/// the restored task dying mid-send).
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit takes an int and never returns; nothing of ours needs unwinding.
    unsafe { libc::_exit(code) }
}

/// The thread's previous signal mask, restored by [`restore_sigmask`].
pub struct SigMask(libc::sigset_t);

/// Blocks SIGCHLD in the calling thread and returns the previous mask.
pub fn block_sigchld() -> Result<SigMask> {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it before use, and
    // pthread_sigmask reads `set` and writes `old`, both valid locals.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
        if rc != 0 {
            return Err(crate::PluginError::io(
                "block SIGCHLD for the worker",
                std::io::Error::from_raw_os_error(rc),
            ));
        }
        Ok(SigMask(old))
    }
}

/// Restores a mask saved by [`block_sigchld`].
pub fn restore_sigmask(old: &SigMask) {
    // SAFETY: `old.0` is a mask pthread_sigmask filled in; a null `oldset` is allowed.
    unsafe {
        libc::pthread_sigmask(libc::SIG_SETMASK, &old.0, std::ptr::null_mut());
    }
}

/// Calls CRIU's `set_compel_interrupt_only_mode()` (seize.c, exported to plugins; CRIU's cuda
/// plugin calls it in init): CRIU then stops tasks with ptrace interrupts even with
/// `--freeze-cgroup`, so a plugin can let a single thread (the CUDA restore thread) run while
/// the rest of the tree stays stopped. Returns false outside CRIU.
pub fn set_compel_interrupt_only_mode() -> bool {
    let Some(f) = resolve!(c"set_compel_interrupt_only_mode", unsafe extern "C" fn()) else {
        return false;
    };
    // SAFETY: the function takes no arguments and only sets a static flag in CRIU.
    unsafe { f() };
    true
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
