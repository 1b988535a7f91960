//! Real CRIU dumps and restores of the sim-GPU workload with the plugin loaded via
//! `--libdir`: both restore modes, 1 and 3 devices, a process tree, and the failure paths.
//! Needs root and the CRIU that `scripts/install-deps` builds; skips with the reason if not.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Mutex;

use common::*;
use ferry_api::plugin_env::{
    FERRY_CHUNK_SIZE, FERRY_IO_TIMEOUT, FERRY_PARALLEL_RESTORE, FERRY_TEST_FAULT,
};
use ferry_api::stats::{PluginStats, RestoreMode};

/// One CRIU run at a time: the runs are heavy on 2 cores and restores reuse pids.
static SERIAL: Mutex<()> = Mutex::new(());

struct Checkpointed {
    env: SimEnv,
    workload: Workload,
    libdir: std::path::PathBuf,
    counter_at_dump: u64,
}

fn dump_workload(args: &[&str]) -> Checkpointed {
    let env = SimEnv::new();
    let libdir = plugin_libdir(env.dir.path());
    let mut workload = Workload::start(&env, args);
    let before = workload.verify();
    // Other tasks of the tree (from --procs): their pids must be free again before restore.
    let others: Vec<i32> = (1..8)
        .map(|i| std::path::PathBuf::from(format!("{}.child{i}", workload.status.display())))
        .filter(|p| p.exists())
        .map(|p| verify_at(&p).pid as i32)
        .collect();
    assert!(before.host_ok && before.devices_ok.iter().all(|ok| *ok));
    let run = dump(workload.pid, &env.images(), &libdir, &env.env(), &[]);
    assert!(run.ok, "criu dump failed:\n{}", run.log);
    assert!(
        run.log.contains("ferry: sim device context dumped"),
        "the plugin did not dump the device:\n{}",
        ferry_lines(&run.log).join("\n")
    );
    workload.reap();
    // Orphaned tasks of the tree are reaped by init; wait until their pids are free.
    wait_for(
        "dumped tasks to be reaped",
        std::time::Duration::from_secs(30),
        || {
            others
                .iter()
                .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        },
    );
    env.wipe_devices();
    Checkpointed {
        env,
        workload,
        libdir,
        counter_at_dump: before.counter,
    }
}

fn restore_and_check(c: &Checkpointed, parallel: bool, devices: usize) -> PluginStats {
    let mut env = c.env.env();
    env.push((
        FERRY_PARALLEL_RESTORE.into(),
        if parallel { "1" } else { "0" }.into(),
    ));
    let run = restore(&c.env.images(), &c.libdir, &env);
    assert!(run.ok, "criu restore failed:\n{}", run.log);
    assert!(alive(c.workload.pid), "restored process is not running");
    let s = verify_at(&c.workload.status);
    assert_eq!(s.pid as i32, c.workload.pid);
    assert!(s.host_ok, "host memory differs after restore");
    assert_eq!(
        s.devices_ok,
        vec![true; devices],
        "device memory differs after restore"
    );
    assert!(
        s.counter >= c.counter_at_dump,
        "the step counter went back: {} < {}",
        s.counter,
        c.counter_at_dump
    );
    assert!(
        s.device_steps.iter().all(|d| *d == s.counter),
        "device memory did not carry the latest step: {:?} vs {}",
        s.device_steps,
        s.counter
    );
    // Hook order as CRIU ran it: POST_FORKING (12) in main, RESTORE_EXT_FILE (3) in the
    // task, RESUME_DEVICES_LATE (9) in main.
    let hook = |n: u32| run.log.find(&format!("plugin: `ferry' hook {n} ->"));
    let (post, ext, resume) = (hook(12), hook(3), hook(9));
    assert!(
        post.is_some() && ext.is_some() && resume.is_some(),
        "hooks missing:\n{}",
        run.log
    );
    assert!(post < resume && ext < resume, "hooks out of order");
    let handed = run
        .log
        .matches("copy plan handed to the main CRIU process")
        .count();
    assert_eq!(handed, if parallel { devices } else { 0 }, "{}", run.log);
    let stats = PluginStats::from_json(
        &std::fs::read_to_string(c.env.images().join(ferry_api::stats::RESTORE_STATS_FILE))
            .expect("restore stats file"),
    )
    .unwrap();
    assert_eq!(
        stats.mode,
        if parallel {
            RestoreMode::Parallel
        } else {
            RestoreMode::Sequential
        }
    );
    assert_eq!(stats.vendor.as_str(), "sim");
    assert_eq!(stats.devices.len(), devices);
    assert!(
        stats
            .devices
            .iter()
            .all(|d| d.bytes == 8 << 20 && d.copy_seconds > 0.0)
    );
    stats
}

#[test]
fn parallel_restore_of_one_device_brings_back_host_and_device_memory() {
    if skip("parallel 1 device") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "1", "--device-mib", "8", "--host-mib", "16"]);
    restore_and_check(&c, true, 1);
}

#[test]
fn parallel_restore_of_three_devices_uses_per_device_offsets() {
    if skip("parallel 3 devices") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "3", "--device-mib", "8", "--host-mib", "16"]);
    let stats = restore_and_check(&c, true, 3);
    let mut labels: Vec<_> = stats.devices.iter().map(|d| d.device.clone()).collect();
    labels.sort();
    assert_eq!(labels, ["sim0", "sim1", "sim2"]);
}

#[test]
fn sequential_restore_of_one_device_copies_inside_restore_ext_file() {
    if skip("sequential 1 device") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "1", "--device-mib", "8", "--host-mib", "16"]);
    restore_and_check(&c, false, 1);
}

#[test]
fn sequential_restore_of_three_devices_brings_back_every_device() {
    if skip("sequential 3 devices") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "3", "--device-mib", "8", "--host-mib", "16"]);
    restore_and_check(&c, false, 3);
}

#[test]
fn a_process_tree_restores_every_task_devices_in_parallel() {
    if skip("process tree") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&[
        "--devices",
        "1",
        "--device-mib",
        "8",
        "--host-mib",
        "8",
        "--procs",
        "3",
    ]);
    let mut env = c.env.env();
    env.push((FERRY_PARALLEL_RESTORE.into(), "1".into()));
    let run = restore(&c.env.images(), &c.libdir, &env);
    assert!(run.ok, "criu restore failed:\n{}", run.log);
    // Each task sends its own plan; RESUME_DEVICES_LATE runs once per task.
    assert_eq!(
        run.log
            .matches("copy plan handed to the main CRIU process")
            .count(),
        3
    );
    assert_eq!(run.log.matches("plugin: `ferry' hook 9 ->").count(), 3);
    let root = verify_at(&c.workload.status);
    assert!(root.host_ok && root.devices_ok == vec![true]);
    for i in 1..3 {
        let s = verify_at(&std::path::PathBuf::from(format!(
            "{}.child{i}",
            c.workload.status.display()
        )));
        assert!(s.host_ok && s.devices_ok == vec![true], "child {i}: {s:?}");
        assert!(s.device_steps[0] == s.counter);
        kill(s.pid as i32);
    }
    let stats = PluginStats::from_json(
        &std::fs::read_to_string(c.env.images().join(ferry_api::stats::RESTORE_STATS_FILE))
            .unwrap(),
    )
    .unwrap();
    let mut pids: Vec<u32> = stats.devices.iter().map(|d| d.pid).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 3, "one device entry per task: {stats:?}");
}

/// Restores with a fault and checks: CRIU fails (no hang), the reason is in its log, no
/// half-restored task is left running, and the image files are unchanged.
fn failed_restore(c: &Checkpointed, extra: &[(&str, &str)], expect: &str) {
    let before = image_fingerprint(&c.env.images());
    let mut env = c.env.env();
    env.push((FERRY_IO_TIMEOUT.into(), "10".into()));
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let run = restore(&c.env.images(), &c.libdir, &env);
    assert!(!run.ok, "restore should have failed:\n{}", run.log);
    assert!(
        run.log.contains(expect),
        "log lacks {expect:?}:\n{}",
        ferry_lines(&run.log).join("\n")
    );
    assert!(run.wall.as_secs() < 60, "failure took {:?}", run.wall);
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !alive(c.workload.pid),
        "a half-restored task is still running"
    );
    assert_eq!(
        before,
        image_fingerprint(&c.env.images()),
        "the image changed"
    );
}

#[test]
fn a_copy_error_in_the_main_process_fails_the_restore() {
    if skip("copy error") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "1", "--device-mib", "32", "--host-mib", "8"]);
    failed_restore(
        &c,
        &[(FERRY_TEST_FAULT, "copy-error"), (FERRY_CHUNK_SIZE, "1M")],
        "killing the task to fail the restore",
    );
}

#[test]
fn a_truncated_pages_image_fails_the_restore_with_both_sizes() {
    if skip("truncated image") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "1", "--device-mib", "8", "--host-mib", "8"]);
    let pages = std::fs::read_dir(c.env.images())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sim-pages-")
        })
        .unwrap();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&pages)
        .unwrap();
    f.set_len(4096).unwrap();
    failed_restore(
        &c,
        &[],
        "is truncated: its header says 8388608 payload bytes",
    );
}

#[test]
fn a_missing_pages_image_fails_the_restore() {
    if skip("missing image") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "1", "--device-mib", "8", "--host-mib", "8"]);
    for e in std::fs::read_dir(c.env.images()).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("sim-pages-")
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    failed_restore(&c, &[], "open image sim-pages-");
}

#[test]
fn a_corrupt_command_header_fails_the_restore() {
    if skip("corrupt header") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "1", "--device-mib", "8", "--host-mib", "8"]);
    failed_restore(&c, &[(FERRY_TEST_FAULT, "corrupt-header")], "bad magic");
}

#[test]
fn the_restored_task_dying_mid_send_fails_the_restore_without_a_hang() {
    if skip("child dies mid-send") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "1", "--device-mib", "8", "--host-mib", "8"]);
    failed_restore(
        &c,
        &[(FERRY_TEST_FAULT, "child-exit-mid-send")],
        "closed the channel after",
    );
}

#[test]
fn a_restore_without_the_plugin_is_refused_by_the_inventory() {
    if skip("inventory") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = dump_workload(&["--devices", "1", "--device-mib", "8", "--host-mib", "8"]);
    let empty = c.env.dir.path().join("no-plugins");
    std::fs::create_dir_all(&empty).unwrap();
    let run = restore(&c.env.images(), &empty, &c.env.env());
    assert!(!run.ok);
    assert!(
        run.log.contains("ferry"),
        "CRIU should name the missing plugin:\n{}",
        run.log
    );
}
