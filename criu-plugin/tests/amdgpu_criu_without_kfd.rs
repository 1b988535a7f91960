//! The built plugin (`libferry_criu_plugin.so`, with the AMDGPU backend compiled in) loaded
//! by the real CRIU on a machine without `/dev/kfd`: a plain process is dumped and restored
//! through `--libdir` and the AMDGPU backend stays out of the way. Needs root and CRIU
//! (`scripts/install-deps`); skipped with the reason printed otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn criu() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("CRIU") {
        return Some(PathBuf::from(p));
    }
    [
        "/usr/local/sbin/criu",
        "/usr/sbin/criu",
        "/usr/local/bin/criu",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// The cdylib as it is now.
fn plugin_so() -> PathBuf {
    // `cargo test` builds the cdylib fresh into deps/, beside this test binary.
    let exe = std::env::current_exe().unwrap();
    let so = exe.parent().unwrap().join("libferry_criu_plugin.so");
    assert!(
        so.exists(),
        "{} missing: run through `cargo test`",
        so.display()
    );
    so
}

fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("not root (CRIU needs CAP_SYS_ADMIN/CAP_CHECKPOINT_RESTORE)".into());
    }
    if criu().is_none() {
        return Some("no criu binary (run scripts/install-deps or set CRIU)".into());
    }
    if Path::new("/dev/kfd").exists() {
        return Some("this machine has /dev/kfd; criu-plugin/hw/amdgpu-check covers it".into());
    }
    None
}

fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proc_comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

#[test]
fn real_criu_dumps_and_restores_a_plain_process_with_the_plugin_and_no_dev_kfd() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let so = plugin_so();
    assert!(so.exists(), "{} was not built", so.display());
    let work = tempfile::tempdir().unwrap();
    let (lib, img) = (work.path().join("lib"), work.path().join("img"));
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(&img).unwrap();
    std::fs::copy(&so, lib.join("libferry_criu_plugin.so")).unwrap();
    let criu = criu().unwrap();

    // setsid execs in place (the child is not a group leader), so the pid is sleep's.
    let mut child = Command::new("setsid")
        .args(["sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for("sleep started", || {
        proc_comm(pid).as_deref() == Some("sleep")
    });

    let out = Command::new(&criu)
        .args([
            "dump",
            "-t",
            &pid.to_string(),
            "-v4",
            "-o",
            "dump.log",
            "-D",
        ])
        .arg(&img)
        .arg("-L")
        .arg(&lib)
        .output()
        .unwrap();
    let dump_log = std::fs::read_to_string(img.join("dump.log")).unwrap_or_default();
    if !out.status.success() {
        let _ = child.kill();
    }
    assert!(out.status.success(), "criu dump failed:\n{dump_log}");
    let _ = child.wait(); // reap the dumped (killed) process so its pid is free again
    assert!(dump_log.contains("Plugin \"ferry\""), "{dump_log}");
    assert!(dump_log.contains("amdgpu backend off"), "{dump_log}");
    assert!(
        !std::fs::read_dir(&img).unwrap().any(|e| e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("amdgpu-")),
        "no amdgpu images for a process without a GPU"
    );

    let out = Command::new(&criu)
        .args(["restore", "-d", "-v4", "-o", "restore.log", "-D"])
        .arg(&img)
        .arg("-L")
        .arg(&lib)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let restore_log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    assert!(out.status.success(), "criu restore failed:\n{restore_log}");
    assert!(restore_log.contains("Plugin \"ferry\""), "{restore_log}");
    wait_for("restored sleep running", || {
        matches!(proc_state(pid), Some('S' | 'R'))
    });
    assert_eq!(proc_comm(pid).as_deref(), Some("sleep"));
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    );
}
