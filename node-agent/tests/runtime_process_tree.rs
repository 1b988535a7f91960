//! Path (c) with real CRIU 4.2 and ferry's plugin: the sim-GPU workload is checkpointed
//! through the agent's `ProcessTree` into the image store, published, and restored from the
//! published image with parallel restore; it verifies its host and device memory afterwards.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_common;

use std::time::Duration;

use ferry_agent::runtime::checkpoint::{CheckpointJob, Checkpointer, ContainerTarget};
use ferry_agent::runtime::criu::Criu;
use ferry_agent::runtime::process_tree::ProcessTree;
use ferry_agent::runtime::restore::{RestoreJob, Restorer};
use ferry_agent::store::{ImageKind, ImageSource, Store};
use ferry_api::stats::{Operation, RestoreMode};
use runtime_common::*;

/// One CRIU run at a time: restores reuse pids, and the runs are heavy on 2 cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn sim_gpu_workload_checkpoints_into_the_store_and_restores_in_parallel_with_plugin_stats() {
    require(&["criu"]);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = scratch();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let criu = Criu::new(CRIU).with_libdir(plugin_libdir(tmp.path()));
    let runtime = ProcessTree::new(criu);

    let work = tmp.path().join("workload");
    std::fs::create_dir_all(&work).unwrap();
    let mut workload = SimWorkload::start(
        &work,
        &["--devices", "1", "--device-mib", "8", "--host-mib", "16"],
    );
    let before = workload.verify();
    assert!(before.host_ok && before.devices_ok == [true]);

    let staging = store.stage("default/trainer/ckpt-1").unwrap();
    let mut job = CheckpointJob::new(
        ImageSource {
            node: "node-a".into(),
            namespace: "default".into(),
            pod: "trainer".into(),
            containers: vec![],
        },
        vec![ContainerTarget::Process {
            name: "main".into(),
            pid: workload.pid,
        }],
    );
    job.env = SimWorkload::env(&work);
    let called = jiff::Timestamp::now();
    let out = runtime.checkpoint(&job, &staging).expect("checkpoint");
    let returned = jiff::Timestamp::now();

    // The freeze instant lies within the call; the dump stopped the workload.
    assert!(
        out.frozen_at >= called && out.frozen_at <= returned,
        "frozen_at {} outside [{called}, {returned}]",
        out.frozen_at
    );
    assert!(!out.still_running);
    assert_eq!(out.meta.kind, ImageKind::Criu);
    assert_eq!(out.meta.source.containers, ["main"]);
    assert!(
        out.meta
            .criu_version
            .as_deref()
            .is_some_and(|v| v.starts_with('4')),
        "criu version {:?}",
        out.meta.criu_version
    );
    let dump_stats = out.plugin_stats.clone().expect("the plugin's dump stats");
    assert_eq!(dump_stats.operation, Operation::Dump);
    assert_eq!(dump_stats.vendor.as_str(), "sim");
    assert_eq!(out.meta.gpu_vendor, Some(dump_stats.vendor));
    let log = out.containers[0].log.clone().unwrap();
    assert!(
        log.starts_with(staging.dir()),
        "dump log {log:?} not in the image"
    );

    let manifest = staging.build_manifest(out.meta.clone()).unwrap();
    assert!(
        manifest
            .files
            .iter()
            .any(|f| f.path == "main/criu-dump.log")
    );
    assert!(
        manifest
            .files
            .iter()
            .any(|f| f.path == "main/ferry-dump-stats.json")
    );
    let image = staging.publish(&manifest).unwrap();
    let published = snapshot(&image.dir);

    // The dumped process is gone; its pid must be free for CRIU; its "VRAM" is gone too.
    workload.reap();
    workload.wipe_devices();

    let mut rjob = RestoreJob::new(tmp.path().join("restore-work"));
    rjob.parallel_restore = true;
    rjob.env = SimWorkload::env(&work);
    let restored = runtime.restore(&rjob, &image).expect("restore");
    let pid = restored.restored[0].pid.unwrap();
    let _guard = KillOnDrop(pid);
    assert_eq!(pid, workload.pid, "CRIU restores the tree under its pid");
    assert!(alive(pid));

    let after = workload.verify();
    assert!(after.host_ok, "host memory differs after restore");
    assert_eq!(
        after.devices_ok,
        [true],
        "device memory differs after restore"
    );
    assert!(
        after.counter >= before.counter,
        "the workload's step counter went back: {} < {}",
        after.counter,
        before.counter
    );

    let stats = restored
        .plugin_stats
        .clone()
        .expect("the plugin's restore stats");
    assert_eq!(stats.operation, Operation::Restore);
    assert_eq!(stats.vendor.as_str(), "sim");
    assert_eq!(stats.mode, RestoreMode::Parallel);
    assert_eq!(stats.total_bytes(), 8 << 20);
    let host = restored.host_restore.expect("host restore seconds");
    let gpu = restored.gpu_restore.expect("gpu phase seconds");
    assert!(
        host > Duration::ZERO && gpu > Duration::ZERO,
        "{host:?} {gpu:?}"
    );
    assert!(restored.duration >= gpu);
    assert_eq!(restored.restored[0].plugin_stats.as_ref(), Some(&stats));
    // CRIU's restore log is in the restore dir, not in the image.
    assert!(restored.restored[0].log.starts_with(&rjob.work_dir));
    assert!(restored.restored[0].log.exists());

    assert_image_intact(&store, &image, &published);
}

#[test]
fn sequential_restore_is_reported_as_sequential() {
    require(&["criu"]);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = scratch();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let runtime = ProcessTree::new(Criu::new(CRIU).with_libdir(plugin_libdir(tmp.path())));
    let work = tmp.path().join("workload");
    std::fs::create_dir_all(&work).unwrap();
    let mut workload = SimWorkload::start(
        &work,
        &["--devices", "2", "--device-mib", "4", "--host-mib", "8"],
    );
    let staging = store.stage("ns/p/seq").unwrap();
    let mut job = CheckpointJob::new(
        ImageSource::default(),
        vec![ContainerTarget::Process {
            name: "main".into(),
            pid: workload.pid,
        }],
    );
    job.env = SimWorkload::env(&work);
    let out = runtime.checkpoint(&job, &staging).unwrap();
    let image = staging
        .publish(&staging_manifest(&store, "ns/p/seq", out.meta))
        .unwrap();
    let published = snapshot(&image.dir);
    workload.reap();
    workload.wipe_devices();
    let mut rjob = RestoreJob::new(tmp.path().join("restore-work"));
    rjob.parallel_restore = false;
    rjob.env = SimWorkload::env(&work);
    let restored = runtime.restore(&rjob, &image).unwrap();
    let _guard = KillOnDrop(restored.restored[0].pid.unwrap());
    let after = workload.verify();
    assert!(after.host_ok && after.devices_ok == [true, true]);
    let stats = restored.plugin_stats.unwrap();
    assert_eq!(stats.mode, RestoreMode::Sequential);
    assert_eq!(stats.devices.len(), 2);
    assert_eq!(stats.total_bytes(), 8 << 20);
    assert_image_intact(&store, &image, &published);
}

/// The manifest of the staged image at `location` (a second handle on the same staging dir).
fn staging_manifest(
    store: &Store,
    location: &str,
    meta: ferry_agent::store::ImageMeta,
) -> ferry_agent::store::Manifest {
    store
        .resume(location)
        .unwrap()
        .build_manifest(meta)
        .unwrap()
}

#[test]
fn two_process_trees_in_one_image_restore_from_their_subdirectories() {
    require(&["criu"]);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = scratch();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let runtime = ProcessTree::new(Criu::new(CRIU));
    let mut children: Vec<std::process::Child> = (0..2)
        .map(|_| {
            std::process::Command::new("setsid")
                .args(["sleep", "600"])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let pids: Vec<i32> = children.iter().map(|c| c.id() as i32).collect();
    for pid in &pids {
        wait_for("sleep to exec", Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
        });
    }
    let staging = store.stage("ns/pod/two").unwrap();
    let job = CheckpointJob::new(
        ImageSource::default(),
        vec![
            ContainerTarget::Process {
                name: "a".into(),
                pid: pids[0],
            },
            ContainerTarget::Process {
                name: "b".into(),
                pid: pids[1],
            },
        ],
    );
    let out = runtime.checkpoint(&job, &staging).unwrap();
    assert_eq!(out.containers.len(), 2);
    assert!(out.plugin_stats.is_none(), "no plugin, no GPU");
    let manifest = staging.build_manifest(out.meta).unwrap();
    for c in ["a", "b"] {
        assert!(
            manifest
                .files
                .iter()
                .any(|f| f.path == format!("{c}/criu-dump.log"))
        );
        assert!(
            manifest
                .files
                .iter()
                .any(|f| f.path == format!("{c}/pstree.img"))
        );
    }
    let image = staging.publish(&manifest).unwrap();
    let published = snapshot(&image.dir);
    // The dump killed both; reap them so CRIU can have their pids back.
    for c in &mut children {
        let _ = c.wait();
    }
    // No containers named: every container the image lists.
    let restored = runtime
        .restore(&RestoreJob::new(tmp.path().join("work")), &image)
        .unwrap();
    let _guards: Vec<_> = restored
        .restored
        .iter()
        .map(|r| KillOnDrop(r.pid.unwrap()))
        .collect();
    let got: Vec<_> = restored
        .restored
        .iter()
        .map(|r| (r.name.as_str(), r.pid.unwrap()))
        .collect();
    assert_eq!(got, [("a", pids[0]), ("b", pids[1])]);
    assert!(pids.iter().all(|p| alive(*p)));
    assert_image_intact(&store, &image, &published);
}
