//! The plugin-host harness: `dlopen`s the built `libferry_criu_plugin.so` the way CRIU does,
//! reads `CR_PLUGIN_DESC`, and drives the hooks in CRIU's order across a real `fork`, a real
//! Unix socket and real fds — without CRIU (its exports are absent, so the plugin's own
//! fallbacks stand in: `FERRY_IMAGES_DIR` for the image dir, fds inherited through fork for
//! the fdstore). Real CRIU runs of the same paths are in `sim_criu.rs`.
#![allow(unsafe_code)] // This file is a C host: dlopen'd function pointers and fork.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::{CStr, c_char, c_int, c_uint, c_void};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Mutex;

use common::*;
use ferry_api::plugin_env::{
    FERRY_CHUNK_SIZE, FERRY_IMAGES_DIR, FERRY_IO_TIMEOUT, FERRY_PARALLEL_RESTORE, FERRY_SIM_MEM,
    FERRY_SIM_ROOT, FERRY_TEST_FAULT,
};
use ferry_criu_plugin::backends::sim::device::{SimContext, SimPaths};

#[repr(C)]
struct Desc {
    name: *const c_char,
    init: Option<extern "C" fn(c_int) -> c_int>,
    exit: Option<extern "C" fn(c_int, c_int)>,
    version: c_uint,
    max_hooks: c_uint,
    hooks: [*const c_void; 13],
}

static SERIAL: Mutex<()> = Mutex::new(());

struct Plugin {
    _lib: libloading::Library,
    desc: &'static Desc,
}

impl Plugin {
    fn load() -> Plugin {
        // SAFETY: loading our own plugin; its initialisers only set up statics.
        let lib = unsafe { libloading::Library::new(plugin_so()) }.unwrap();
        // SAFETY: CR_PLUGIN_DESC is a `#[repr(C)]` static of exactly this layout.
        let desc: &'static Desc = unsafe {
            let sym: libloading::Symbol<*const Desc> = lib.get(b"CR_PLUGIN_DESC\0").unwrap();
            &**sym
        };
        Plugin { _lib: lib, desc }
    }
    fn init(&self, stage: c_int) -> c_int {
        (self.desc.init.unwrap())(stage)
    }
    fn exit(&self, stage: c_int, ret: c_int) {
        (self.desc.exit.unwrap())(stage, ret)
    }
    fn dump_ext_file(&self, fd: c_int, id: c_int) -> c_int {
        // SAFETY: hook 2 is `int (*)(int fd, int id)`.
        let f: extern "C" fn(c_int, c_int) -> c_int =
            unsafe { std::mem::transmute(self.desc.hooks[2]) };
        f(fd, id)
    }
    fn restore_ext_file(&self, id: c_int) -> c_int {
        // SAFETY: hook 3 is `int (*)(int id)` on CRIU 4.2.
        let f: extern "C" fn(c_int) -> c_int = unsafe { std::mem::transmute(self.desc.hooks[3]) };
        f(id)
    }
    fn resume_devices_late(&self, pid: c_int) -> c_int {
        // SAFETY: hook 9 is `int (*)(int pid)`.
        let f: extern "C" fn(c_int) -> c_int = unsafe { std::mem::transmute(self.desc.hooks[9]) };
        f(pid)
    }
    fn post_forking(&self) -> c_int {
        // SAFETY: hook 12 is `int (*)(void)`.
        let f: extern "C" fn() -> c_int = unsafe { std::mem::transmute(self.desc.hooks[12]) };
        f()
    }
}

fn set_env(pairs: &[(&str, String)]) {
    for (k, v) in pairs {
        // SAFETY: tests in this file are serialised by SERIAL; nothing reads env concurrently.
        unsafe { std::env::set_var(k, v) };
    }
}

fn pattern(d: usize, i: usize, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| ((k * 31 + d * 7 + i * 13) % 251) as u8)
        .collect()
}

const SIZES: [u64; 2] = [1 << 20, 3 << 20];

/// Dumps three sim devices through the hooks, wipes their memory, then restores them in a
/// forked child the way CRIU does. Returns what RESUME_DEVICES_LATE returned.
fn dump_then_restore(env: &SimEnv, parallel: bool, fault: &str) -> c_int {
    let p = Plugin::load();
    set_env(&[
        (FERRY_IMAGES_DIR, env.images().display().to_string()),
        (FERRY_SIM_ROOT, env.root().display().to_string()),
        (FERRY_SIM_MEM, env.mem().display().to_string()),
        (
            FERRY_PARALLEL_RESTORE,
            if parallel { "1" } else { "0" }.into(),
        ),
        (FERRY_TEST_FAULT, fault.into()),
        (FERRY_CHUNK_SIZE, "256K".into()),
        (FERRY_IO_TIMEOUT, "10".into()),
    ]);
    let paths = SimPaths::new(env.root(), env.mem());
    let mut ctxs: Vec<SimContext> = (0..3)
        .map(|d| SimContext::create(paths.clone(), d, &SIZES).unwrap())
        .collect();
    for (d, c) in ctxs.iter_mut().enumerate() {
        for (i, b) in c.buffers.iter_mut().enumerate() {
            let n = b.as_slice().len();
            b.as_mut_slice().copy_from_slice(&pattern(d, i, n));
        }
    }

    // Dump: init, DUMP_EXT_FILE per device fd (and a foreign fd), fini.
    assert_eq!(p.init(0), 0);
    let devnull = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(p.dump_ext_file(devnull.as_raw_fd(), 99), -libc::ENOTSUP);
    for (d, c) in ctxs.iter().enumerate() {
        assert_eq!(p.dump_ext_file(c.handle.as_raw_fd(), 100 + d as c_int), 0);
    }
    p.exit(0, 0);
    let uuids: Vec<String> = ctxs.iter().map(|c| c.meta.uuid.clone()).collect();
    drop(ctxs);
    env.wipe_devices();

    // Restore: init (socket), fork the "task", POST_FORKING in the parent, RESTORE_EXT_FILE
    // in the child, RESUME_DEVICES_LATE in the parent, fini.
    assert_eq!(p.init(2), 0);
    // SAFETY: the child only calls the plugin's hooks and then _exit()s.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut ok = true;
        for d in 0..3 {
            let fd = p.restore_ext_file(100 + d);
            ok &= fd >= 0;
        }
        // SAFETY: leave the forked child without running the test harness's teardown.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    assert_eq!(p.post_forking(), 0);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(libc::WIFEXITED(status), "child died: {status:#x}");
    let child_ok = libc::WEXITSTATUS(status) == 0;
    let r = p.resume_devices_late(pid);
    p.exit(2, if child_ok && r == 0 { 0 } else { -1 });
    if r == 0 {
        assert!(child_ok, "RESTORE_EXT_FILE failed in the child");
        for (d, uuid) in uuids.iter().enumerate() {
            for (i, size) in SIZES.iter().enumerate() {
                let got = std::fs::read(paths.buffer(uuid, &format!("buf{i}"))).unwrap();
                assert_eq!(got.len() as u64, *size);
                assert!(
                    got == pattern(d, i, got.len()),
                    "device {d} buffer {i} differs"
                );
            }
        }
    }
    r
}

fn stats(env: &SimEnv) -> ferry_api::stats::PluginStats {
    let p = Path::new(&env.images()).join(ferry_api::stats::RESTORE_STATS_FILE);
    ferry_api::stats::PluginStats::from_json(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn the_descriptor_is_what_criu_4_2_loads() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let p = Plugin::load();
    // SAFETY: the name points to a static C string.
    let name = unsafe { CStr::from_ptr(p.desc.name) };
    assert_eq!(name.to_str().unwrap(), "ferry");
    assert_eq!(p.desc.version, 0x200);
    assert_eq!(p.desc.max_hooks, 13);
    for h in [2, 3, 7, 8, 9, 10, 11, 12] {
        assert!(!p.desc.hooks[h].is_null(), "hook {h} missing");
    }
    for h in [0, 1, 4, 5, 6] {
        assert!(
            p.desc.hooks[h].is_null(),
            "hook {h} should be left to other plugins"
        );
    }
}

#[test]
fn hooks_in_criu_order_refill_three_devices_from_the_main_process_in_parallel_mode() {
    if skip("plugin host parallel") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = SimEnv::new();
    assert_eq!(dump_then_restore(&env, true, ""), 0);
    let s = stats(&env);
    assert_eq!(s.mode, ferry_api::stats::RestoreMode::Parallel);
    assert_eq!(s.devices.len(), 3);
    assert!(
        s.devices
            .iter()
            .all(|d| d.bytes == 4 << 20 && d.buffers == 2)
    );
}

#[test]
fn hooks_in_criu_order_refill_three_devices_inside_restore_ext_file_in_sequential_mode() {
    if skip("plugin host sequential") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = SimEnv::new();
    assert_eq!(dump_then_restore(&env, false, ""), 0);
    let s = stats(&env);
    assert_eq!(s.mode, ferry_api::stats::RestoreMode::Sequential);
    assert_eq!(s.devices.len(), 3);
}

#[test]
fn a_copy_error_in_the_worker_fails_resume_devices_late() {
    if skip("plugin host copy error") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = SimEnv::new();
    let r = dump_then_restore(&env, true, "copy-error");
    assert_eq!(
        r,
        -libc::EIO,
        "RESUME_DEVICES_LATE must fail on a copy error"
    );
}

#[test]
fn a_panic_in_a_hook_becomes_eio_and_never_unwinds_into_the_host() {
    if skip("plugin host panic") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let env = SimEnv::new();
    let p = Plugin::load();
    set_env(&[
        (FERRY_IMAGES_DIR, env.images().display().to_string()),
        (FERRY_SIM_ROOT, env.root().display().to_string()),
        (FERRY_SIM_MEM, env.mem().display().to_string()),
        (FERRY_TEST_FAULT, "panic".into()),
    ]);
    let ctx = SimContext::create(SimPaths::new(env.root(), env.mem()), 0, &SIZES).unwrap();
    assert_eq!(p.init(0), 0);
    // The hook panics inside the plugin; the host (this test, like CRIU) gets -EIO and goes on.
    assert_eq!(p.dump_ext_file(ctx.handle.as_raw_fd(), 100), -libc::EIO);
    let devnull = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(p.dump_ext_file(devnull.as_raw_fd(), 101), -libc::ENOTSUP);
    p.exit(0, -1);
    set_env(&[(FERRY_TEST_FAULT, String::new())]);
}
