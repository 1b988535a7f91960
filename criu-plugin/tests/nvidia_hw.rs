//! The hardware-check kit (`criu-plugin/hw/`) checked without a GPU: the scripts parse, the
//! check exits 77 where there is no NVIDIA GPU, and the `cuda-checkpoint` shim drives the
//! stand-in libcuda (`fixtures/fake_libcuda.c`, NOT NVIDIA's driver) both by hand and under
//! CRIU's stock cuda plugin, as it will on the GPU machine.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "fixtures/support.rs"]
mod support;

use std::path::Path;
use std::process::Command;

use ferry_api::plugin_env::FERRY_CUDA_LIB;
use support::{Scenario, cc_skip_reason, criu_skip_reason, fixtures, serial, tail};

const HW: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/hw");
const STOCK_CUDA_PLUGIN: &str = "/var/cache/ferry/criu/cuda_plugin.so";

fn has(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_hardware_scripts_are_valid_bash_and_shellcheck_clean() {
    for f in ["nvidia-check", "bundle", "cuda-checkpoint"] {
        let o = Command::new("bash")
            .arg("-n")
            .arg(format!("{HW}/{f}"))
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    if !has("shellcheck") {
        eprintln!("shellcheck not installed: only bash -n checked");
        return;
    }
    let o = Command::new("shellcheck")
        .args(["nvidia-check", "bundle", "cuda-checkpoint"])
        .current_dir(HW)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
}

#[test]
fn the_hardware_check_exits_77_without_an_nvidia_gpu() {
    if has("nvidia-smi") && Path::new("/proc/driver/nvidia/gpus").is_dir() {
        eprintln!(
            "skipped: this machine has an NVIDIA GPU; run criu-plugin/hw/nvidia-check itself"
        );
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let o = Command::new("bash")
        .arg(format!("{HW}/nvidia-check"))
        .arg(out.path())
        .arg(out.path().join("result"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(77), "{o:?}");
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("no NVIDIA GPU"),
        "{o:?}"
    );
}

fn shim(s: &Scenario, args: &[&str]) -> (bool, String) {
    let o = Command::new(format!("{HW}/cuda-checkpoint"))
        .args(args)
        .envs(&s.env)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).trim().to_string(),
    )
}

#[test]
fn the_cuda_checkpoint_shim_answers_like_nvidias_utility_over_the_driver_api() {
    if let Some(why) = cc_skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    if !has("python3") {
        eprintln!("skipped: no python3");
        return;
    }
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(1, &[]);
    let pid = kids[0].to_string();
    let (ok, help) = shim(&s, &["-h"]);
    assert!(ok && help.contains("--action"), "{help}");
    let (ok, tid) = shim(&s, &["--get-restore-tid", "--pid", &pid]);
    assert!(ok, "{tid}");
    let tid_n: i32 = tid.parse().unwrap();
    assert_ne!(tid_n, kids[0]);
    assert_eq!(
        shim(&s, &["--get-state", "--pid", &pid]),
        (true, "running".into())
    );
    assert!(
        shim(
            &s,
            &["--action", "lock", "--pid", &pid, "--timeout", "5000"]
        )
        .0
    );
    // CRIU's plugin passes the restore thread id to --get-state.
    assert_eq!(
        shim(&s, &["--get-state", "--pid", &tid]),
        (true, "locked".into())
    );
    assert!(shim(&s, &["--action", "checkpoint", "--pid", &pid]).0);
    assert_eq!(
        shim(&s, &["--get-state", "--pid", &pid]),
        (true, "checkpointed".into())
    );
    assert!(shim(&s, &["--action", "restore", "--pid", &pid]).0);
    assert!(shim(&s, &["--action", "unlock", "--pid", &pid]).0);
    let ev = s.events();
    assert!(
        ev.iter()
            .any(|e| e.op == "lock" && e.extra == "timeout_ms=5000"),
        "{ev:?}"
    );
    let (ok, msg) = shim(&s, &["--get-restore-tid", "--pid", &root.to_string()]);
    assert!(
        !ok && msg.contains("cuCheckpointProcessGetRestoreThreadId failed"),
        "{msg}"
    );
    s.assert_running_and_intact(&kids);
    let _ = fixtures();
}

#[test]
fn criu_stock_cuda_plugin_dumps_and_restores_through_the_shim() {
    if let Some(why) = criu_skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    if !Path::new(STOCK_CUDA_PLUGIN).exists() || !has("python3") {
        eprintln!("skipped: {STOCK_CUDA_PLUGIN} (scripts/install-deps) or python3 missing");
        return;
    }
    let _g = serial();
    let mut s = Scenario::new();
    // The stock plugin alone in the plugin dir; the shim first in PATH.
    let lib = s.path("lib");
    std::fs::remove_file(lib.join("libferry_criu_plugin.so")).unwrap();
    std::fs::copy(STOCK_CUDA_PLUGIN, lib.join("cuda_plugin.so")).unwrap();
    let path = format!("{HW}:{}", std::env::var("PATH").unwrap_or_default());
    s.env.insert("PATH".into(), path);
    // FI_PLUGIN_CUDA_FORCE_ENABLE: the stock plugin otherwise wants /proc/driver/nvidia/gpus.
    s.env.insert("CRIU_FAULT".into(), "138".into());
    let (root, kids) = s.spawn(2, &[]);
    let before: Vec<Vec<u8>> = kids.iter().map(|p| s.dev(*p)).collect();
    let (ok, log) = s.dump(root, &[], &[]);
    assert!(ok, "stock dump failed:\n{}", tail(&log));
    assert!(
        log.contains("cuda_plugin: Checkpointing CUDA devices"),
        "{}",
        tail(&log)
    );
    for p in &kids {
        assert_eq!(
            s.state(*p),
            2,
            "pid {p} not checkpointed by the stock plugin"
        );
    }
    s.wait_gone();
    let (ok, log) = s.restore("lib", "restore.log", &[]);
    assert!(ok, "stock restore failed:\n{}", tail(&log));
    for (p, b) in kids.iter().zip(&before) {
        assert_eq!(&s.dev(*p), b);
    }
    s.assert_running_and_intact(&kids);
}

#[test]
fn the_hardware_check_runs_every_case_end_to_end_in_a_dry_run_and_never_passes() {
    if let Some(why) = criu_skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    if !Path::new(STOCK_CUDA_PLUGIN).exists() || !has("python3") {
        eprintln!("skipped: {STOCK_CUDA_PLUGIN} (scripts/install-deps) or python3 missing");
        return;
    }
    let _g = serial();
    // nvidia-check waits for dumped processes to be reaped; other tests of this binary made it
    // a subreaper that only reaps its own scenarios' pids, so orphans must go to init here.
    rustix::process::set_child_subreaper(None).unwrap();
    // A bundle as hw/bundle lays it out, from this build (debug plugin, installed criu).
    let t = tempfile::tempdir().unwrap();
    let b = t.path().join("bundle");
    for d in ["bin", "lib", "plugins-ferry", "plugins-stock"] {
        std::fs::create_dir_all(b.join(d)).unwrap();
    }
    let criu = Command::new("sh")
        .args(["-c", "command -v criu"])
        .output()
        .unwrap();
    let criu = String::from_utf8_lossy(&criu.stdout).trim().to_string();
    std::os::unix::fs::symlink(&criu, b.join("bin/criu")).unwrap();
    for f in [
        "nvidia-check",
        "gpu_workload.py",
        "cuda_checkpoint.py",
        "cuda-checkpoint",
    ] {
        std::os::unix::fs::symlink(format!("{HW}/{f}"), b.join("bin").join(f)).unwrap();
    }
    std::fs::copy(
        support::plugin_so(),
        b.join("plugins-ferry/libferry_criu_plugin.so"),
    )
    .unwrap();
    std::fs::copy(STOCK_CUDA_PLUGIN, b.join("plugins-stock/cuda_plugin.so")).unwrap();
    std::fs::write(b.join("VERSION"), "dry run\n").unwrap();
    let out = t.path().join("out");
    let o = Command::new("timeout")
        .arg("300")
        .arg(b.join("bin/nvidia-check"))
        .arg(&b)
        .arg(&out)
        .env("NVIDIA_CHECK_DRY_RUN", "1")
        .env("NVIDIA_CHECK_WORK", t.path().join("work"))
        .env("PYTHONPATH", format!("{}/fake_torch", support::FIXTURES))
        .env_remove(FERRY_CUDA_LIB)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(o.status.code(), Some(78), "{text}");
    let md = std::fs::read_to_string(out.join("nvidia-check.md")).unwrap();
    for case in [
        "2g-ferry",
        "2g-stock",
        "2x2g-ferry",
        "2x2g-stock",
        "2g-ferry-leave-running",
        "8g-ferry",
        "8g-stock",
        "4x2g-ferry",
        "4x2g-stock",
    ] {
        let row = md
            .lines()
            .find(|l| l.starts_with(&format!("| {case} |")))
            .unwrap();
        assert!(row.ends_with("| yes |"), "{row}\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("nvidia-check.json")).unwrap())
            .unwrap();
    assert_eq!(json.as_array().unwrap().len(), 9);
    assert!(
        text.contains("case 2g-ferry-leave-running: processes left running kept their GPU memory"),
        "{text}"
    );
    assert!(out.join("logs/2x2g-ferry/dump.log").exists());
}
