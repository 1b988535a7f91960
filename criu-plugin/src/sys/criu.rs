//! CRIU's exported functions, resolved with `dlsym` once: the log, the image directory, the
//! fdstore, the inventory and compel's interrupt-only mode. Every call into them is here, so
//! the rest of the crate reaches CRIU through safe methods (the `host` module wraps them with
//! fallbacks for the plugin-host harness).
#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_uint, c_void};
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::OnceLock;

/// Functions the `criu` binary exports to plugins, resolved once with `dlsym`. Absent when
/// the plugin runs outside CRIU (the plugin-host harness), where the `host` module falls back.
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
