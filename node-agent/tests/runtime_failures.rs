//! Failures with real CRIU keep things intact: the error names CRIU's own error lines and the
//! log, and a failed restore leaves the published image as it was.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod runtime_common;

use std::process::{Command, Stdio};

use ferry_agent::runtime::RuntimeError;
use ferry_agent::runtime::checkpoint::{CheckpointJob, Checkpointer, ContainerTarget};
use ferry_agent::runtime::criu::Criu;
use ferry_agent::runtime::process_tree::ProcessTree;
use ferry_agent::runtime::restore::{RestoreJob, RestoreTarget, Restorer};
use ferry_agent::store::{ImageSource, Store};
use runtime_common::*;

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn process_job(pid: i32, leave_running: bool) -> CheckpointJob {
    let mut job = CheckpointJob::new(
        ImageSource::default(),
        vec![ContainerTarget::Process {
            name: "main".into(),
            pid,
        }],
    );
    job.leave_running = leave_running;
    job
}

#[test]
fn dumping_a_pid_that_does_not_exist_fails_with_criu_s_error_line() {
    require(&["criu"]);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = scratch();
    let store = Store::open(tmp.path().join("store")).unwrap();
    // A pid above every pid in use (pid_max is at most 2^22).
    let pid = (1..64)
        .map(|i| 4_194_304 - i)
        .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
        .unwrap();
    let staging = store.stage("ns/p/missing").unwrap();
    let err = ProcessTree::new(Criu::new(CRIU))
        .checkpoint(&process_job(pid, false), &staging)
        .expect_err("dumping a missing pid must fail");
    let (tool, op, message, log) = tool_failure(&err);
    eprintln!("dump error: {err}");
    assert_eq!((tool, op), ("criu", "dump"));
    assert!(message.starts_with("Error ("), "{message}");
    assert!(!message.contains('\n'));
    // The log is kept in the staged image, and the error (the task's message) names it.
    assert!(log.starts_with(staging.dir()) && log.exists());
    assert!(err.to_string().contains(&log.display().to_string()));
    let text = std::fs::read_to_string(log).unwrap();
    let last = text.lines().rfind(|l| l.contains("Error (")).unwrap();
    assert!(
        message.ends_with(last.split_once(") ").unwrap().1.trim()),
        "{message} vs {last}"
    );
    staging.discard().unwrap();
}

#[test]
fn a_restore_that_fails_reports_criu_s_errors_and_keeps_the_image() {
    require(&["criu"]);
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = scratch();
    let store = Store::open(tmp.path().join("store")).unwrap();
    // A daemon with no tty and its stdio on /dev/null: dumpable without options.
    let mut child = Command::new("setsid")
        .args(["sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    wait_for("sleep to exec", std::time::Duration::from_secs(10), || {
        std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "sleep")
    });
    let runtime = ProcessTree::new(Criu::new(CRIU));
    let staging = store.stage("ns/p/live").unwrap();
    let out = runtime
        .checkpoint(&process_job(pid, true), &staging)
        .expect("leave-running dump");
    assert!(
        out.still_running && alive(pid),
        "leave-running stopped the process"
    );
    let manifest = staging.build_manifest(out.meta).unwrap();
    let image = staging.publish(&manifest).unwrap();
    let published = snapshot(&image.dir);

    // The original still holds the pid: CRIU cannot restore the tree under it.
    let job = RestoreJob::new(tmp.path().join("work"));
    let err = runtime
        .restore(&job, &image)
        .expect_err("a restore onto a live pid must fail");
    let (tool, op, message, log) = tool_failure(&err);
    eprintln!("restore error: {err}");
    assert_eq!((tool, op), ("criu", "restore"));
    assert!(message.contains("Error ("), "{message}");
    assert!(log.starts_with(&job.work_dir) && log.exists(), "{log:?}");
    assert!(alive(pid), "the failed restore hurt the original");
    assert_image_intact(&store, &image, &published);

    // Asking for a container the image does not have fails before CRIU runs.
    let mut job = RestoreJob::new(tmp.path().join("work2"));
    job.containers = vec![RestoreTarget::Process {
        name: "nope".into(),
    }];
    assert!(matches!(
        runtime.restore(&job, &image),
        Err(RuntimeError::Invalid(_))
    ));

    // Once the original is gone the same image restores.
    let _ = child.kill();
    let _ = child.wait();
    let job = RestoreJob::new(tmp.path().join("work3"));
    let restored = runtime
        .restore(&job, &image)
        .expect("restore after the pid is free");
    let _guard = KillOnDrop(restored.restored[0].pid.unwrap());
    assert_eq!(restored.restored[0].pid, Some(pid));
    assert!(alive(pid));
    assert!(restored.plugin_stats.is_none());
    assert_image_intact(&store, &image, &published);
}
