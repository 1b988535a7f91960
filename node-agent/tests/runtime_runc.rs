//! Path (b) with real runc 1.1 and CRIU 4.2: a busybox container the test builds is
//! checkpointed through the agent's `Runc` into the image store and restored from the
//! published image under a new id; it continues counting from its dumped state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_common;

use std::time::Duration;

use ferry_agent::checkpoint::{CheckpointJob, Checkpointer, ContainerTarget};
use ferry_agent::criu::{Criu, RuntimeError};
use ferry_agent::restore::{RestoreJob, RestoreTarget, Restorer};
use ferry_agent::runc::Runc;
use ferry_agent::store::{Image, ImageSource, Store};
use runtime_common::*;

/// One container test at a time (2 cores; CRIU runs are heavy).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Fields drop in order: the containers go before the scratch dir holding their runc state.
struct Setup {
    containers: RuncContainers,
    store: Store,
    runc: Runc,
    bundle: std::path::PathBuf,
    tmp: tempfile::TempDir,
}

fn setup() -> Setup {
    require(&["criu", "runc", "busybox", "/usr/sbin/iptables"]);
    let tmp = scratch();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let root = tmp.path().join("runc-root");
    let runc = Runc::new(RUNC, &root, Criu::new(CRIU));
    let bundle = busybox_bundle(tmp.path());
    Setup {
        containers: RuncContainers::new(root),
        tmp,
        store,
        runc,
        bundle,
    }
}

/// Starts the counter container and waits until it has counted to `at_least`.
fn start_counting(s: &Setup, id: &str, at_least: u64) {
    s.containers.run(id, &s.bundle);
    wait_for("the container to count", Duration::from_secs(30), || {
        counter(&s.bundle).is_some_and(|c| c >= at_least)
    });
}

fn job(id: &str, leave_running: bool) -> CheckpointJob {
    let mut job = CheckpointJob::new(
        ImageSource {
            node: "node-a".into(),
            namespace: "default".into(),
            pod: "counter".into(),
            containers: vec![],
        },
        vec![ContainerTarget::Runc {
            name: "app".into(),
            id: id.into(),
        }],
    );
    job.leave_running = leave_running;
    job
}

fn checkpoint(s: &Setup, location: &str, id: &str, leave_running: bool) -> Image {
    let staging = s.store.stage(location).unwrap();
    let called = jiff::Timestamp::now();
    let out = s
        .runc
        .checkpoint(&job(id, leave_running), &staging)
        .expect("runc checkpoint through the agent");
    let returned = jiff::Timestamp::now();
    assert!(
        out.frozen_at >= called && out.frozen_at <= returned,
        "frozen_at {} outside [{called}, {returned}]",
        out.frozen_at
    );
    assert_eq!(out.still_running, leave_running);
    assert!(out.meta.criu_version.is_some());
    assert!(out.plugin_stats.is_none(), "no GPU in a busybox container");
    let manifest = staging.build_manifest(out.meta).unwrap();
    for f in ["app/dump.log", "app/descriptors.json", "app/inventory.img"] {
        assert!(
            manifest.files.iter().any(|e| e.path == f),
            "{f} missing from the image"
        );
    }
    staging.publish(&manifest).unwrap()
}

fn restore_job(s: &Setup, id: &str, work: &str) -> RestoreJob {
    let mut job = RestoreJob::new(s.tmp.path().join(work));
    job.containers = vec![RestoreTarget::Runc {
        name: "app".into(),
        id: id.into(),
        bundle: s.bundle.clone(),
    }];
    job
}

#[test]
fn a_runc_container_restored_under_a_new_id_continues_its_count() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let id = unique_id("count");
    start_counting(&s, &id, 20);

    let image = checkpoint(&s, "default/counter/ckpt-1", &id, false);
    let published = snapshot(&image.dir);
    // The dump stopped the container: runc forgot it and the count stands still.
    assert_eq!(s.containers.state(&id), None, "runc still knows {id}");
    let at_dump = counter(&s.bundle).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        counter(&s.bundle),
        Some(at_dump),
        "the container kept counting"
    );

    let new_id = unique_id("count-restored");
    s.containers.track(&new_id);
    let out = s
        .runc
        .restore(&restore_job(&s, &new_id, "work-1"), &image)
        .expect("runc restore through the agent");
    let r = &out.restored[0];
    assert_eq!(r.container_id.as_deref(), Some(new_id.as_str()));
    assert!(alive(r.pid.unwrap()));
    assert_eq!(s.containers.state(&new_id).as_deref(), Some("running"));
    assert!(r.log.exists() && r.log.starts_with(s.tmp.path().join("work-1")));

    // The count continues from the dumped value (a fresh start would restart at 1).
    wait_for(
        "the restored container to count",
        Duration::from_secs(10),
        || counter(&s.bundle).is_some_and(|c| c > at_dump),
    );
    let first = counter(&s.bundle).unwrap();
    assert!(
        first > at_dump && first <= at_dump + 20,
        "after restore the counter is {first}, dumped at {at_dump}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let later = counter(&s.bundle).unwrap();
    assert!(
        later > first,
        "the restored container stopped counting ({later} <= {first})"
    );

    assert_image_intact(&s.store, &image, &published);
}

#[test]
fn leave_running_keeps_the_original_running_and_a_busy_id_fails_the_restore_intact() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    let id = unique_id("live");
    start_counting(&s, &id, 5);

    let image = checkpoint(&s, "default/counter/live", &id, true);
    let published = snapshot(&image.dir);
    assert_eq!(s.containers.state(&id).as_deref(), Some("running"));
    let c0 = counter(&s.bundle).unwrap();
    wait_for(
        "the original to keep counting",
        Duration::from_secs(10),
        || counter(&s.bundle).is_some_and(|c| c > c0 + 2),
    );

    // Restoring into the id of the running original fails; the error carries runc's reason,
    // the image is untouched and the original still runs.
    let err = s
        .runc
        .restore(&restore_job(&s, &id, "work-busy"), &image)
        .expect_err("a restore into a busy id must fail");
    match &err {
        RuntimeError::Tool {
            tool, op, message, ..
        } => {
            assert_eq!((*tool, *op), ("runc", "restore"));
            assert!(message.contains("runc: "), "{message}");
            assert!(message.contains("exists"), "{message}");
        }
        other => panic!("unexpected error {other}"),
    }
    assert_eq!(s.containers.state(&id).as_deref(), Some("running"));
    assert_image_intact(&s.store, &image, &published);
}
