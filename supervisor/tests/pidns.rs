//! The supervisor with real processes: PID 1 of a fresh pid namespace adopting an orphaned
//! workload, forwarding SIGTERM and passing on exit codes; the agent's failure report; no
//! agent at all; a stop signal before the restore; and outside a pid namespace, as a child
//! subreaper.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ferry_supervisor::control::{self, State};
use ferry_supervisor::exit;
use rustix::process::Signal;

const T: Duration = Duration::from_secs(15);

/// Starts the workload inside the placeholder's pid namespace as an orphan (its parent shell
/// exits at once), reports it as restored and waits for the adoption; returns its pid in the
/// namespace.
fn adopt_orphan(ph: &Placeholder, dir: &std::path::Path) -> i32 {
    assert_ne!(probe(&ph.control), 0, "probe passed before any restore");
    let script = workload_script(dir);
    let out = in_pid_namespace(
        ph.host_pid,
        "",
        &format!(
            "sh {} </dev/null >/dev/null 2>&1 & echo $!",
            script.display()
        ),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert!(wait_until(T, || dir.join("ready").exists()));
    control::write_restored(&ph.control, pid).unwrap();
    assert!(
        wait_until(T, || probe(&ph.control) == 0),
        "probe never passed: {}",
        ph.log_text()
    );
    assert_eq!(
        control::read_state(&ph.control).unwrap(),
        Some(State::Running { pid })
    );
    pid
}

#[test]
fn adopts_an_orphan_forwards_sigterm_and_exits_with_its_code() {
    if skip(
        "adopts_an_orphan_forwards_sigterm_and_exits_with_its_code",
        false,
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ph = Placeholder::start(dir.path(), &[], None);
    let pid = adopt_orphan(&ph, dir.path());
    let host = host_pid_of_child(ph.host_pid, pid).expect("the workload is the supervisor's child");
    assert_eq!(status_field(host, "PPid"), vec![ph.host_pid]);

    kill(ph.host_pid, Signal::TERM);
    assert_eq!(ph.wait_exit(T), Some(3), "{}", ph.log_text());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("term")).unwrap(),
        "got-term\n"
    );
    let log = ph.log_text();
    assert!(
        log.contains(&format!("restored pid={pid} adopted")),
        "{log}"
    );
    assert!(
        log.contains(&format!("forwarded SIGTERM to pid={pid}")),
        "{log}"
    );
    assert!(log.contains("exiting code=3"), "{log}");
    assert_eq!(
        control::read_state(&ph.control).unwrap(),
        Some(State::Exited { code: 3 })
    );
    assert_ne!(probe(&ph.control), 0, "probe passes after the exit");
}

#[test]
fn a_sigkilled_workload_gives_137() {
    if skip("a_sigkilled_workload_gives_137", false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ph = Placeholder::start(dir.path(), &[], None);
    let pid = adopt_orphan(&ph, dir.path());
    let host = host_pid_of_child(ph.host_pid, pid).unwrap();
    kill(host, Signal::KILL);
    assert_eq!(ph.wait_exit(T), Some(137), "{}", ph.log_text());
    assert!(ph.log_text().contains("killed signal=9, exiting code=137"));
}

#[test]
fn other_signals_are_forwarded_too() {
    if skip("other_signals_are_forwarded_too", false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ph = Placeholder::start(dir.path(), &[], None);
    let pid = adopt_orphan(&ph, dir.path());
    // The shell has no trap for SIGUSR1: it dies of it (138), which proves it got it.
    kill(ph.host_pid, Signal::USR1);
    assert_eq!(
        ph.wait_exit(T),
        Some(128 + libc::SIGUSR1),
        "{}",
        ph.log_text()
    );
    assert!(
        ph.log_text()
            .contains(&format!("forwarded SIGUSR1 to pid={pid}"))
    );
}

#[test]
fn a_failed_restore_exits_with_the_reason() {
    if skip("a_failed_restore_exits_with_the_reason", false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ph = Placeholder::start(dir.path(), &[], None);
    control::write_failed(&ph.control, "criu restore: exit status 1 (see restore.log)").unwrap();
    assert_eq!(ph.wait_exit(T), Some(i32::from(exit::RESTORE_FAILED)));
    let log = ph.log_text();
    assert!(
        log.contains("error: restore failed: criu restore: exit status 1"),
        "{log}"
    );
    assert!(matches!(
        control::read_state(&ph.control).unwrap(),
        Some(State::Failed { reason }) if reason.contains("exit status 1")
    ));
    assert_ne!(probe(&ph.control), 0);
}

#[test]
fn sigterm_before_the_restore_stops_it() {
    if skip("sigterm_before_the_restore_stops_it", false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut ph = Placeholder::start(dir.path(), &[], None);
    kill(ph.host_pid, Signal::TERM);
    assert_eq!(ph.wait_exit(T), Some(143), "{}", ph.log_text());
    assert!(
        ph.log_text()
            .contains("stopped by SIGTERM before the restore")
    );
}

#[test]
fn no_agent_times_out_outside_a_pid_namespace() {
    // No root needed: no namespace, no CRIU.
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(BIN)
        .args(["run", "--timeout", "1s", "--control"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let took = started.elapsed();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(exit::TIMEOUT)), "{log}");
    assert!(log.contains("pid1=false"), "{log}");
    assert!(
        log.contains("timed out after 1s waiting for the agent"),
        "{log}"
    );
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(probe(dir.path()), 1);
}

#[test]
fn a_missing_control_dir_is_an_internal_error() {
    let out = Command::new(BIN)
        .args([
            "run",
            "--timeout",
            "1s",
            "--control",
            "/nonexistent/ferry-control",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(i32::from(exit::INTERNAL)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("writing the state file"));
}

/// Outside a pid namespace the supervisor is a child subreaper: a workload orphaned by one of
/// its descendants comes to it and is supervised as in a container.
#[test]
fn outside_a_pid_namespace_it_adopts_as_a_subreaper() {
    if skip("outside_a_pid_namespace_it_adopts_as_a_subreaper", false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let control = d.join("control");
    std::fs::create_dir(&control).unwrap();
    let script = workload_script(d);
    // The subshell (a child of the pid that execs the supervisor) waits for the supervisor's
    // state file, starts the workload in the background and exits: the workload is orphaned.
    let spawner = format!(
        "(while [ ! -e {c}/state ]; do sleep 0.02; done; sh {s} </dev/null >/dev/null 2>&1 & \
         echo $! > {d}/pid.tmp; mv {d}/pid.tmp {d}/pid) & exec {BIN} run --control {c}",
        c = control.display(),
        s = script.display(),
        d = d.display()
    );
    let child = Command::new("sh")
        .args(["-c", &spawner])
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(d.join("log")).unwrap())
        .spawn()
        .unwrap();
    let sup = child.id() as i32;
    let mut guard = Guard {
        child,
        also: vec![],
    };
    assert!(wait_until(T, || d.join("pid").exists() && d.join("ready").exists()));
    let pid: i32 = std::fs::read_to_string(d.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    guard.also.push(pid);
    assert!(
        wait_until(T, || status_field(pid, "PPid") == vec![sup]),
        "not reparented"
    );
    control::write_restored(&control, pid).unwrap();
    assert!(wait_until(T, || probe(&control) == 0));
    kill(sup, Signal::TERM);
    let status = guard.child.wait().unwrap();
    let log = std::fs::read_to_string(d.join("log")).unwrap();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("pid1=false"), "{log}");
    assert_eq!(
        std::fs::read_to_string(d.join("term")).unwrap(),
        "got-term\n"
    );
}

#[test]
fn a_pid_that_is_not_its_child_is_refused() {
    if skip("a_pid_that_is_not_its_child_is_refused", false) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stranger = Command::new("sleep").arg("30").spawn().unwrap();
    let stranger = Guard {
        child: stranger,
        also: vec![],
    };
    let out = Command::new(BIN)
        .args(["run", "--adopt-grace", "200ms", "--control"])
        .arg(dir.path())
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(T, || dir.path().join("state").exists()));
    control::write_restored(dir.path(), stranger.child.id() as i32).unwrap();
    let out = out.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(exit::BAD_CONTROL)),
        "{log}"
    );
    assert!(log.contains("is not a child of the supervisor"), "{log}");
}
