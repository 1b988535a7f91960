//! Path (b) with real runc 1.1 and CRIU 4.2: a busybox container the test builds is
//! checkpointed through the agent's `Runc` into the image store and restored from the
//! published image under a new id; it continues counting from its dumped state.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_common;

use std::time::Duration;

use ferry_agent::runtime::checkpoint::{CheckpointJob, Checkpointer, ContainerTarget};
use ferry_agent::runtime::criu::Criu;
use ferry_agent::runtime::restore::{RestoreJob, RestoreTarget, Restorer};
use ferry_agent::runtime::runc::Runc;
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
    let before = count(&s.bundle);

    let image = checkpoint(&s, "default/counter/ckpt-1", &id, false);
    let published = snapshot(&image.dir);
    // The dump stopped the container: runc forgot it and the count stands still. The dump
    // may have frozen the shell between truncating and writing the file (then it is empty
    // until the restored shell finishes that write).
    assert_eq!(s.containers.state(&id), None, "runc still knows {id}");
    let after_dump = counter(&s.bundle);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        counter(&s.bundle),
        after_dump,
        "the container kept counting"
    );
    let at_dump = after_dump.unwrap_or(before);
    assert!(at_dump >= before);

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

    // The count continues from the dumped value: the first value seen is not below it (a
    // fresh start would write 1, 2, …) and it keeps rising past it.
    let first = count(&s.bundle);
    assert!(
        first >= at_dump && first <= at_dump + 20,
        "after restore the counter is {first}, dumped at {at_dump}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let later = count(&s.bundle);
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
    let c0 = count(&s.bundle);
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
    let (tool, op, message, _) = tool_failure(&err);
    assert_eq!((tool, op), ("runc", "restore"));
    assert!(message.contains("runc: "), "{message}");
    assert!(message.contains("exists"), "{message}");
    assert_eq!(s.containers.state(&id).as_deref(), Some("running"));
    assert_image_intact(&s.store, &image, &published);
}

#[test]
fn ferry_s_plugin_runs_under_runc_through_the_org_criu_config_annotation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    // A CRIU config file with ferry's plugin dir, named by the container's annotation.
    let libdir = plugin_libdir(s.tmp.path());
    let conf = s.tmp.path().join("criu.conf");
    std::fs::write(&conf, ferry_agent::runtime::runc::criu_config(&libdir)).unwrap();
    let spec_path = s.bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&spec_path).unwrap()).unwrap();
    spec["annotations"][ferry_agent::runtime::runc::CRIU_CONFIG_ANNOTATION] =
        conf.display().to_string().into();
    std::fs::write(&spec_path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();

    let id = unique_id("plugin");
    start_counting(&s, &id, 5);
    let image = checkpoint(&s, "default/counter/plugin", &id, false);
    let dump_log = std::fs::read_to_string(image.dir.join("app/dump.log")).unwrap();
    assert!(
        dump_log.contains("Plugin \"ferry\"")
            && dump_log.contains("ferry: plugin initialised stage=Dump"),
        "ferry's plugin did not load in runc's CRIU dump"
    );

    // The job's env reaches the plugin through runc: sequential mode shows in its init line.
    let new_id = unique_id("plugin-restored");
    s.containers.track(&new_id);
    let mut job = restore_job(&s, &new_id, "work-plugin");
    job.parallel_restore = false;
    let out = s
        .runc
        .restore(&job, &image)
        .expect("runc restore with the plugin");
    let restore_log = std::fs::read_to_string(&out.restored[0].log).unwrap();
    assert!(
        restore_log.contains("ferry: plugin initialised stage=Restore parallel=false"),
        "the plugin did not load in runc's CRIU restore, or did not get FERRY_PARALLEL_RESTORE=0:\n{}",
        restore_log
            .lines()
            .filter(|l| l.contains("ferry"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // No GPU in the container: no stats, and the container runs on.
    assert!(out.plugin_stats.is_none());
    assert_eq!(s.containers.state(&new_id).as_deref(), Some("running"));
}

#[test]
fn a_failed_runc_checkpoint_names_criu_s_error_and_the_container_keeps_running() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let s = setup();
    // stdout on a host file outside the container's mounts: CRIU cannot dump that fd
    // without --external options, so the dump fails.
    let id = unique_id("unfit");
    let out_file = std::fs::File::create(s.tmp.path().join("host-stdout")).unwrap();
    s.containers
        .run_with_stdout(&id, &s.bundle, std::process::Stdio::from(out_file));
    wait_for("the container to count", Duration::from_secs(30), || {
        counter(&s.bundle).is_some_and(|c| c >= 3)
    });
    let staging = s.store.stage("default/counter/unfit").unwrap();
    let err = s
        .runc
        .checkpoint(&job(&id, false), &staging)
        .expect_err("the dump must fail");
    eprintln!("runc checkpoint error: {err}");
    let (tool, op, message, log) = tool_failure(&err);
    assert_eq!((tool, op), ("runc", "checkpoint"));
    assert!(message.starts_with("runc: "), "{message}");
    assert!(message.contains("criu: Error ("), "{message}");
    assert!(message.contains("Dumping FAILED"), "{message}");
    assert!(!message.contains('\n'), "{message}");
    // CRIU's log stays in the staged image for the operator.
    assert!(log.starts_with(staging.dir()) && log.exists());
    // A failed dump leaves the container running.
    assert_eq!(s.containers.state(&id).as_deref(), Some("running"));
    let c0 = count(&s.bundle);
    wait_for(
        "the container to go on counting",
        Duration::from_secs(10),
        || counter(&s.bundle).is_some_and(|c| c > c0),
    );
    staging.discard().unwrap();
}
