//! The NVIDIA backend inside real CRIU dumps and restores, against the stand-in libcuda
//! (`fixtures/fake_libcuda.c`, NOT NVIDIA's driver). Needs root and `criu`; each test prints why
//! it skips otherwise. None of these tests touches a GPU: the hardware check is
//! `criu-plugin/hw/nvidia-check`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "fixtures/support.rs"]
mod support;

use ferry_api::plugin_env::{FERRY_CUDA_CALL_TIMEOUT_MS, FERRY_CUDA_LIB};
use ferry_api::stats::{GpuVendor, PluginStats};
use support::{Event, Scenario, criu_skip_reason, ferry_lines, serial, tail};

macro_rules! require_criu {
    () => {
        if let Some(why) = criu_skip_reason() {
            eprintln!("skipped: {why}");
            return;
        }
    };
}

fn ops<'a>(ev: &'a [Event], op: &str) -> Vec<&'a Event> {
    ev.iter().filter(|e| e.op == op).collect()
}

/// True when every interval overlaps every other (all ran at the same time at some point).
fn all_overlap(ev: &[&Event]) -> bool {
    let latest_start = ev.iter().map(|e| e.start).max().unwrap_or(0);
    let earliest_end = ev.iter().map(|e| e.end).min().unwrap_or(0);
    latest_start < earliest_end
}

/// The stand-in fails (and logs) a GetState while the restore thread is ptrace-stopped, where
/// NVIDIA's r580 driver never returns: such a call would hang a real dump or restore.
fn assert_no_state_query_while_stopped(ev: &[Event]) {
    let bad = ops(ev, "state");
    assert!(
        bad.is_empty(),
        "GetState while CRIU held the restore thread stopped (hangs on a real driver): {bad:?}"
    );
}

fn span_seconds(ev: &[&Event]) -> f64 {
    let s = ev.iter().map(|e| e.start).min().unwrap_or(0);
    let e = ev.iter().map(|e| e.end).max().unwrap_or(0);
    (e - s) as f64 / 1e9
}

fn index_of(lines: &[String], needle: &str) -> usize {
    lines
        .iter()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no log line with {needle:?} in:\n{}", lines.join("\n")))
}

#[test]
fn four_cuda_processes_are_checkpointed_and_restored_at_once_with_their_device_memory() {
    require_criu!();
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(4, &[]);
    let before: Vec<Vec<u8>> = kids.iter().map(|p| s.dev(*p)).collect();
    let delay = [("FERRY_FAKE_CUDA_DELAY_MS", "300")];

    let (ok, log) = s.dump(root, &[], &delay);
    assert!(ok, "dump failed:\n{}", tail(&log));
    let lines = ferry_lines(&log);
    // Hook order: the non-CUDA root is left to others, every child is locked while CRIU
    // collects the tree, and one batch checkpoints them all afterwards.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("not a CUDA process") && l.contains(&format!("pid={root} "))),
        "{}",
        lines.join("\n")
    );
    let batch = index_of(&lines, "nvidia checkpointed all");
    for p in &kids {
        let locked = index_of(&lines, &format!("nvidia locked pid={p} "));
        assert!(locked < batch, "pid {p} locked after the checkpoint batch");
    }
    assert!(lines[batch].contains("processes=4"), "{}", lines[batch]);
    let ev = s.events();
    let ck = ops(&ev, "checkpoint");
    assert_eq!(ck.len(), 4, "{ev:?}");
    assert!(ck.iter().all(|e| e.rc == 0), "{ck:?}");
    assert!(
        all_overlap(&ck),
        "checkpoints ran one after another: {ck:?}"
    );
    assert!(
        ops(&ev, "lock")
            .iter()
            .all(|e| e.extra.contains("timeout_ms=10000"))
    );
    // Device memory went into the processes' memory (and so into CRIU's image).
    for p in &kids {
        assert!(
            s.dev(*p).iter().all(|b| *b == 0),
            "pid {p}: device memory not moved out"
        );
        assert_eq!(s.state(*p), 2);
    }
    let stats = PluginStats::from_json(&s.log("ferry-dump-stats.json")).unwrap();
    assert_eq!(stats.vendor, GpuVendor::Nvidia);
    assert_eq!(stats.processes.len(), 4, "{stats:?}");
    for p in &stats.processes {
        assert!(kids.contains(&(p.pid as i32)));
        assert!(p.lock_seconds > 0.0 && p.checkpoint_seconds >= 0.3, "{p:?}");
    }
    let image = s.log("ferry-nvidia.json");
    assert!(
        image.contains("GPU-fe4e0000-0000-0000-0000-000000000001"),
        "{image}"
    );
    s.wait_gone();

    // Without the plugin, CRIU refuses the image by name (inventory).
    let (ok, log) = s.restore("nolib", "restore-noplugin.log", &[]);
    assert!(!ok, "restore without the plugin succeeded");
    assert!(
        log.contains("Missing required plugin: ferry"),
        "{}",
        tail(&log)
    );

    s.clear_events();
    let (ok, log) = s.restore("lib", "restore.log", &delay);
    assert!(ok, "restore failed:\n{}", tail(&log));
    let lines = ferry_lines(&log);
    let done = index_of(&lines, "nvidia restored all");
    assert!(lines[done].contains("processes=4"), "{}", lines[done]);
    let ev = s.events();
    let rs = ops(&ev, "restore");
    assert_eq!(rs.len(), 4, "{ev:?}");
    assert!(rs.iter().all(|e| e.rc == 0), "{rs:?}");
    assert!(all_overlap(&rs), "restores ran one after another: {rs:?}");
    assert_no_state_query_while_stopped(&ev);
    let span = span_seconds(&rs);
    assert!(
        span < 0.6,
        "4 restores of 0.3 s took {span:.3} s, not < 2x one"
    );
    assert_eq!(ops(&ev, "unlock").len(), 4);
    for (p, b) in kids.iter().zip(&before) {
        assert_eq!(
            &s.dev(*p),
            b,
            "pid {p}: device memory differs after restore"
        );
    }
    s.assert_running_and_intact(&kids);
    let stats = PluginStats::from_json(&s.log("ferry-restore-stats.json")).unwrap();
    assert_eq!(stats.vendor, GpuVendor::Nvidia);
    assert_eq!(stats.processes.len(), 4, "{stats:?}");
    assert!(
        stats
            .processes
            .iter()
            .all(|p| p.restore_seconds >= 0.3 && p.unlock_seconds > 0.0)
    );
    assert!(
        stats.gpu_phase_seconds >= 0.3 && stats.gpu_phase_seconds < 0.6,
        "{stats:?}"
    );
}

#[test]
fn a_failed_checkpoint_puts_every_process_back_to_running_with_its_memory() {
    require_criu!();
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(2, &[]);
    let before: Vec<Vec<u8>> = kids.iter().map(|p| s.dev(*p)).collect();
    let fail = format!("checkpoint:{}", kids[1]);
    let (ok, log) = s.dump(root, &[], &[("FERRY_FAKE_CUDA_FAIL", &fail)]);
    assert!(!ok, "dump succeeded despite a failed checkpoint");
    let lines = ferry_lines(&log);
    index_of(&lines, "nvidia putting CUDA processes back");
    let ev = s.events();
    // The process that was checkpointed is restored, then unlocked; the other only unlocked.
    let of = |pid: i32| -> Vec<String> {
        ev.iter()
            .filter(|e| e.pid == pid)
            .map(|e| format!("{}:{}", e.op, e.rc))
            .collect()
    };
    assert_eq!(
        of(kids[0]),
        ["lock:0", "checkpoint:0", "restore:0", "unlock:0"]
    );
    assert_eq!(of(kids[1]), ["lock:0", "checkpoint:999", "unlock:0"]);
    assert_no_state_query_while_stopped(&ev);
    for (p, b) in kids.iter().zip(&before) {
        assert_eq!(&s.dev(*p), b, "pid {p}: device memory lost");
    }
    s.assert_running_and_intact(&kids);
}

#[test]
fn a_dump_failing_after_the_checkpoint_restores_and_unlocks_every_process() {
    require_criu!();
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(3, &[]);
    // CRIU's fault injection 3 (FI_DUMP_PAGES) fails the page dump, after CHECKPOINT_DEVICES.
    let (ok, log) = s.dump(
        root,
        &[],
        &[("CRIU_FAULT", "3"), ("FERRY_FAKE_CUDA_DELAY_MS", "200")],
    );
    assert!(!ok, "dump succeeded despite the injected fault");
    let lines = ferry_lines(&log);
    let batch = index_of(&lines, "nvidia checkpointed all");
    let back = index_of(&lines, "nvidia putting CUDA processes back");
    assert!(batch < back);
    let ev = s.events();
    assert_eq!(ops(&ev, "restore").len(), 3, "{ev:?}");
    assert!(
        all_overlap(&ops(&ev, "restore")),
        "roll-back restores ran one after another"
    );
    assert_eq!(ops(&ev, "unlock").len(), 3, "{ev:?}");
    assert_no_state_query_while_stopped(&ev);
    s.assert_running_and_intact(&kids);
}

#[test]
fn a_leave_running_dump_puts_the_processes_back_and_they_go_on() {
    require_criu!();
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(2, &[]);
    let (ok, log) = s.dump(root, &["-R"], &[]);
    assert!(ok, "dump -R failed:\n{}", tail(&log));
    let lines = ferry_lines(&log);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("leave_running=true leave_running_from=Cmdline")),
        "{}",
        lines.join("\n")
    );
    index_of(&lines, "nvidia rolled back");
    let ev = s.events();
    assert_eq!(ops(&ev, "restore").len(), 2, "{ev:?}");
    assert_eq!(ops(&ev, "unlock").len(), 2, "{ev:?}");
    assert_no_state_query_while_stopped(&ev);
    s.assert_running_and_intact(&kids);
    // The image is complete all the same.
    assert!(
        s.log("ferry-nvidia.json")
            .contains(&format!("\"pid\": {}", kids[0]))
    );
}

#[test]
fn a_restore_refuses_a_node_without_the_dumped_gpu_and_remaps_with_a_newer_driver() {
    require_criu!();
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(1, &[]);
    let gpu_a = "GPU-aaaaaaaa-0000-0000-0000-000000000001";
    let gpu_b = "GPU-bbbbbbbb-0000-0000-0000-000000000002";
    let (ok, log) = s.dump(root, &[], &[("FERRY_FAKE_CUDA_GPUS", gpu_a)]);
    assert!(ok, "{}", tail(&log));
    s.wait_gone();

    let (ok, log) = s.restore("lib", "restore-old.log", &[("FERRY_FAKE_CUDA_GPUS", gpu_b)]);
    assert!(!ok, "restore onto the wrong GPU succeeded");
    assert!(
        log.contains(gpu_a) && log.contains("r580"),
        "{}",
        tail(&log)
    );
    assert!(
        ops(&s.events(), "restore").is_empty(),
        "the driver was asked to restore anyway"
    );
    s.wait_gone();

    let (ok, log) = s.restore(
        "lib",
        "restore-remap.log",
        &[
            ("FERRY_FAKE_CUDA_GPUS", gpu_b),
            ("FERRY_FAKE_CUDA_VERSION", "13000"),
        ],
    );
    assert!(ok, "remapped restore failed:\n{}", tail(&log));
    let ev = s.events();
    let rs = ops(&ev, "restore");
    assert_eq!(rs.len(), 1);
    let pair = format!(
        "pairs={}>{};",
        gpu_a.trim_start_matches("GPU-").replace('-', ""),
        gpu_b.trim_start_matches("GPU-").replace('-', "")
    );
    assert_eq!(rs[0].extra, pair, "the driver got other GPU pairs");
    s.assert_running_and_intact(&kids);
}

#[test]
fn without_a_usable_driver_the_backend_stays_off_with_one_log_line() {
    require_criu!();
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(1, &[]);
    for (env, why) in [
        (
            (FERRY_CUDA_LIB, "/nonexistent/libcuda.so.1"),
            "cannot load the CUDA driver",
        ),
        (("FERRY_FAKE_CUDA_VERSION", "12040"), "needs 12050 (r555)"),
    ] {
        let (ok, log) = s.dump(root, &["-R"], &[env]);
        assert!(ok, "{}", tail(&log));
        let nv: Vec<String> = ferry_lines(&log)
            .into_iter()
            .filter(|l| l.contains("nvidia"))
            .collect();
        assert_eq!(nv.len(), 1, "{nv:?}");
        assert!(
            nv[0].contains("nvidia backend disabled") && nv[0].contains(why),
            "{nv:?}"
        );
        std::fs::remove_dir_all(s.path("img")).unwrap();
        std::fs::create_dir(s.path("img")).unwrap();
    }
    assert!(s.events().is_empty(), "the stand-in was called");
    s.assert_running_and_intact(&kids);
}

/// A driver call that never returns (stand-in: one that takes 6 s, past a 500 ms call
/// timeout) fails the restore in about the timeout instead of hanging CRIU; the image is
/// intact and a second restore works.
#[test]
fn a_driver_restore_that_does_not_return_fails_the_restore_instead_of_hanging_criu() {
    require_criu!();
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(2, &[]);
    let before: Vec<Vec<u8>> = kids.iter().map(|p| s.dev(*p)).collect();
    let (ok, log) = s.dump(root, &[], &[]);
    assert!(ok, "dump failed:\n{}", tail(&log));
    s.wait_gone();

    let t = std::time::Instant::now();
    let (ok, log) = s.restore(
        "lib",
        "restore-hung.log",
        &[
            ("FERRY_FAKE_CUDA_DELAY_MS", "6000"),
            (FERRY_CUDA_CALL_TIMEOUT_MS, "500"),
        ],
    );
    let took = t.elapsed();
    assert!(!ok, "the restore succeeded without the GPU memory");
    assert!(
        took < std::time::Duration::from_secs(5),
        "CRIU waited {took:?} for the driver"
    );
    let lines = ferry_lines(&log);
    for p in &kids {
        let i = index_of(
            &lines,
            &format!(
                "the CUDA driver did not finish restore + unlock of process {p} within 500 ms"
            ),
        );
        // Pinned: a late return from the driver cannot land in unmapped plugin code.
        assert!(!lines[i].contains("could not pin"), "{}", lines[i]);
    }
    s.wait_gone();

    let (ok, log) = s.restore("lib", "restore.log", &[]);
    assert!(ok, "the second restore failed:\n{}", tail(&log));
    for (p, b) in kids.iter().zip(&before) {
        assert_eq!(&s.dev(*p), b, "pid {p}: device memory lost");
    }
    s.assert_running_and_intact(&kids);
}

/// The same on the dump side: the dump fails in about the timeout, and the process the
/// driver never returned from is not touched again (a rollback call could block as well).
#[test]
fn a_driver_checkpoint_that_does_not_return_fails_the_dump_instead_of_hanging_criu() {
    require_criu!();
    let _g = serial();
    let mut s = Scenario::new();
    let (root, kids) = s.spawn(1, &[]);
    let t = std::time::Instant::now();
    let (ok, log) = s.dump(
        root,
        &[],
        &[
            ("FERRY_FAKE_CUDA_DELAY_MS", "6000"),
            (FERRY_CUDA_CALL_TIMEOUT_MS, "500"),
        ],
    );
    let took = t.elapsed();
    assert!(!ok, "the dump succeeded without the GPU memory");
    assert!(
        took < std::time::Duration::from_secs(5),
        "CRIU waited {took:?} for the driver"
    );
    let lines = ferry_lines(&log);
    index_of(
        &lines,
        &format!(
            "the CUDA driver did not finish checkpoint of process {} within 500 ms",
            kids[0]
        ),
    );
    index_of(
        &lines,
        "not rolling back a process the driver never returned from",
    );
    let ev = s.events();
    assert!(
        ops(&ev, "restore").is_empty() && ops(&ev, "unlock").is_empty(),
        "rolled back a process still in the driver: {ev:?}"
    );
}
