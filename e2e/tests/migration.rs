//! The whole product on one machine: real control plane (kwok nodes: no kubelet runs them),
//! the real operator and two real agents (`--runtime process`: the pod stands for a host
//! process tree), real CRIU with ferry's plugin on the sim GPU, and a TLS transfer between
//! the agents. The workload must continue from its state on the target.

use std::path::PathBuf;
use std::process::Command;

use ferry_e2e::migration::{self, MigrationOptions};

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    exe.parent()
        .and_then(|d| d.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no target dir above {}", exe.display()))
}

#[test]
fn a_sim_gpu_workload_migrates_between_two_real_agents_through_the_operator() {
    // The binaries under test come from other packages of the workspace: build them (cheap
    // when fresh) so the test never runs stale ones.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "-p",
            "ferry-operator",
            "-p",
            "ferry-node-agent",
            "-p",
            "ferry-criu-plugin",
        ])
        .args([
            "--bin",
            "ferry-operator",
            "--bin",
            "ferry-agent",
            "--bin",
            "ferry-sim-workload",
            "--lib",
        ])
        .current_dir(ferry_e2e::workspace_root())
        .status()
        .unwrap_or_else(|e| panic!("cargo build: {e}"));
    assert!(status.success(), "building the binaries failed");
    let bin_dir = target_dir();
    let report = migration::run(&MigrationOptions {
        plugin: bin_dir.join("libferry_criu_plugin.so"),
        bin_dir,
        criu: PathBuf::from("/usr/local/sbin/criu"),
        device_mib: 64,
        host_mib: 64,
        parallel_restore: true,
        work_dir: None,
        verbose: true,
    })
    .unwrap_or_else(|e| panic!("{e:#}"));

    let timings = &report.status["timings"];
    for key in ["checkpointMs", "transferMs", "restoreMs", "downtimeMs"] {
        assert!(
            timings[key].as_i64().is_some(),
            "{key} missing: {}",
            report.status
        );
    }
    assert_eq!(
        report.status["checkpoint"]["gpuVendor"], "sim",
        "{}",
        report.status
    );
    // The GPU the image holds, with its memory: the one sim device of 64 MiB.
    assert_eq!(
        report.status["checkpoint"]["gpus"],
        serde_json::json!([{"id": "sim0", "memoryBytes": 64 << 20}]),
        "{}",
        report.status
    );
    // The checkpoint ran once (a stale cache must not re-run a finished task).
    assert!(
        report
            .source_metrics
            .iter()
            .any(|l| l == "ferry_tasks_total{operation=\"Checkpoint\",result=\"Succeeded\"} 1"),
        "{:#?}",
        report.source_metrics
    );
    assert!(
        report
            .source_metrics
            .iter()
            .any(|l| l == "ferry_checkpoint_duration_seconds_count{vendor=\"sim\"} 1"),
        "{:#?}",
        report.source_metrics
    );
    // The workload continued from its state, with host and device memory intact.
    assert_ne!(report.pids.0, report.pids.1);
    assert!(
        report.counters.1 >= report.counters.0,
        "{:?}",
        report.counters
    );
    assert_eq!(report.verify["hostOk"], true, "{}", report.verify);
    assert_eq!(
        report.verify["devicesOk"],
        serde_json::json!([true]),
        "{}",
        report.verify
    );
    // The target agent exported the GPU restore timings.
    let metric = |prefix: &str| report.target_metrics.iter().any(|l| l.starts_with(prefix));
    assert!(
        metric("ferry_gpu_restore_duration_seconds_count{mode=\"parallel\",vendor=\"sim\"} 1"),
        "{:#?}",
        report.target_metrics
    );
    assert!(
        metric("ferry_gpu_restore_bytes_total{mode=\"parallel\",vendor=\"sim\"}"),
        "{:#?}",
        report.target_metrics
    );
    assert!(
        metric("ferry_transfer_bytes_total{direction=\"in\"}"),
        "{:#?}",
        report.target_metrics
    );
    assert!(
        metric("ferry_tasks_total{operation=\"Restore\",result=\"Succeeded\"} 1"),
        "{:#?}",
        report.target_metrics
    );
}
