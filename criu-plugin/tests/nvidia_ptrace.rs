//! The restore-thread ptrace sequence and the driver binding against the stand-in libcuda
//! (`fixtures/fake_libcuda.c`, NOT NVIDIA's driver), without CRIU: the test thread seizes the
//! workload's restore thread as CRIU would, then drives the backend's `ptrace` module.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "fixtures/support.rs"]
mod support;

use std::time::{Duration, Instant};

use ferry_criu_plugin::backends::nvidia::driver::{Driver, ProcessState};
use ferry_criu_plugin::backends::nvidia::ptrace;
use support::{Scenario, cc_skip_reason, fixtures, serial};

fn wait_state(pid: i32, tid: i32, want_stopped: bool) -> char {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let st = ptrace::thread_state(pid, tid).unwrap();
        if (st == 't') == want_stopped || Instant::now() > deadline {
            return st;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

const NAME: &str = "the_restore_thread_runs_only_between_resume_and_stop_and_keeps_its_signal_mask";

/// The driver binding in this process reads `FERRY_FAKE_CUDA_DIR` through the stand-in's
/// `getenv`, and the environment of a running test process cannot be changed safely, so the
/// test runs itself again in a child process with the variable set.
#[test]
fn the_restore_thread_runs_only_between_resume_and_stop_and_keeps_its_signal_mask() {
    if std::env::var_os("FERRY_NVIDIA_PTRACE_INNER").is_some() {
        return inner();
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: not root (ptrace of another session's process)");
        return;
    }
    if let Some(why) = cc_skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let _g = serial();
    fixtures();
    let st = tempfile::Builder::new()
        .prefix("ferry-nvidia-st-")
        .tempdir()
        .unwrap();
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", NAME, "--nocapture", "--test-threads=1"])
        .env("FERRY_NVIDIA_PTRACE_INNER", "1")
        .env("FERRY_FAKE_CUDA_DIR", st.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

fn inner() {
    let st = std::env::var("FERRY_FAKE_CUDA_DIR").unwrap();
    let mut s = Scenario::with_state_dir(std::path::Path::new(&st));
    let (_root, kids) = s.spawn(1, &[]);
    let pid = kids[0];
    let before = s.dev(pid);
    let driver = Driver::load(&fixtures().libcuda).unwrap();
    assert_eq!(driver.version(), 12080);
    let tid = driver.restore_thread_id(pid).unwrap();
    assert_ne!(tid, pid);

    driver.lock(pid, 1000).unwrap();
    assert_eq!(driver.state(pid).unwrap(), ProcessState::Locked);
    // Stand in for CRIU: seize the restore thread and hold it stopped.
    ptrace::seize_and_interrupt(tid).unwrap();
    assert_eq!(ptrace::thread_state(pid, tid).unwrap(), 't');
    let mask = ptrace::sigmask(tid).unwrap();

    // Held stopped, the driver cannot work on the process.
    let e = driver.checkpoint(pid).unwrap_err();
    assert_eq!(e.code, 401, "{e}");

    let r = ptrace::resume(tid).unwrap();
    assert_ne!(
        wait_state(pid, tid, false),
        't',
        "restore thread still stopped after resume"
    );
    driver.checkpoint(pid).unwrap();
    ptrace::stop(r).unwrap();
    assert_eq!(wait_state(pid, tid, true), 't');
    assert_eq!(
        ptrace::sigmask(tid).unwrap(),
        mask,
        "signal mask not put back"
    );
    assert!(s.dev(pid).iter().all(|b| *b == 0));
    // Neither can it say the process's state (NVIDIA's driver blocks; the stand-in fails).
    assert_eq!(driver.state(pid).unwrap_err().code, 401);

    let r = ptrace::resume(tid).unwrap();
    assert_eq!(driver.state(pid).unwrap(), ProcessState::Checkpointed);
    driver.restore(pid, &[]).unwrap();
    driver.unlock(pid).unwrap();
    ptrace::stop(r).unwrap();
    assert_eq!(ptrace::sigmask(tid).unwrap(), mask);
    ptrace::detach(tid).unwrap();
    assert_eq!(s.dev(pid), before, "device memory did not come back");
    s.assert_running_and_intact(&kids);
}
