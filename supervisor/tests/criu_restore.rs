//! The real thing: a counter workload that is the init of its own pid namespace is dumped by
//! CRIU, then restored by CRIU **into a running placeholder** (the supervisor as PID 1 of a
//! fresh pid namespace, in its own memory cgroup) with the recipe of
//! `docs/placeholder-restore.md`. The restored root must be the supervisor's child, count on
//! from the checkpoint with no repeat and no gap, open the startup gate, take the SIGTERM sent
//! to the supervisor, and hand its exit status to the supervisor.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use ferry_supervisor::control::{self, State};
use rustix::process::Signal;

const T: Duration = Duration::from_secs(20);

fn counter_lines(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("not a count: {l:?}")))
        .collect()
}

/// A child memory cgroup (v1) of the test's own, removed on drop; `None` without a v1 memory
/// hierarchy.
struct TestCgroup(PathBuf);

impl TestCgroup {
    fn new() -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let path = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
            ctrls
                .split(',')
                .any(|c| c == "memory")
                .then(|| path.to_string())
        })?;
        let dir = Path::new("/sys/fs/cgroup/memory")
            .join(path.trim_start_matches('/'))
            .join(format!("ferry-supervisor-test-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        Some(Self(dir))
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // The last task leaves the cgroup a moment after it is reaped.
        wait_until(Duration::from_secs(5), || {
            std::fs::remove_dir(&self.0).is_ok()
        });
    }
}

/// `echo $$ > …/cgroup.procs` for every hierarchy `pid` is in (v1 controllers and the v2
/// unified one), so the process that execs CRIU joins the placeholder's cgroups.
fn join_cgroups_of(pid: i32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, ctrls, path) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        let root = if ctrls.is_empty() {
            ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.join("cgroup.procs").exists())
        } else {
            let name = ctrls.trim_start_matches("name=");
            [ctrls, name]
                .into_iter()
                .map(|c| Path::new("/sys/fs/cgroup").join(c))
                .find(|p| p.exists())
        };
        let Some(root) = root else { continue };
        let procs = root.join(path.trim_start_matches('/')).join("cgroup.procs");
        out.push_str(&format!("echo $$ > {} || exit 1; ", procs.display()));
    }
    out
}

#[test]
fn criu_restores_into_the_placeholder_and_the_supervisor_takes_over() {
    if skip(
        "criu_restores_into_the_placeholder_and_the_supervisor_takes_over",
        true,
    ) {
        return;
    }
    let criu = criu().unwrap();
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().canonicalize().unwrap();
    let (img, counter, term) = (d.join("img"), d.join("counter"), d.join("term"));
    std::fs::create_dir(&img).unwrap();

    // The source: `setsid` inside, so the session leader is in the dumped pid namespace.
    let workload = format!(
        "trap 'echo got-term > {t}; exit 3' TERM; i=0; \
         while :; do i=$((i+1)); echo $i >> {c}; sleep 0.02; done",
        t = term.display(),
        c = counter.display()
    );
    let source = Command::new("unshare")
        .args(["--pid", "--fork", "setsid", "sh", "-c", &workload])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let upid = source.id() as i32;
    let mut source = Guard {
        child: source,
        also: vec![],
    };
    let mut root = 0;
    assert!(wait_until(T, || {
        root = children_of(upid).first().copied().unwrap_or(0);
        root != 0 && counter_lines(&counter).len() >= 10
    }));
    source.also.push(root);
    assert_eq!(
        status_field(root, "NSpid").last(),
        Some(&1),
        "the source is not a pidns init"
    );

    let dump = Command::new(&criu)
        .args(["dump", "-t", &root.to_string(), "-D"])
        .arg(&img)
        .args(["-o", "dump.log", "-v4", "--leave-stopped"])
        .output()
        .unwrap();
    let log = std::fs::read_to_string(img.join("dump.log")).unwrap_or_default();
    assert!(dump.status.success(), "criu dump failed:\n{}", tail(&log));
    let at_dump = counter_lines(&counter);
    let checkpointed = *at_dump.last().unwrap();
    // One running copy at a time: the source stays stopped, then goes.
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        counter_lines(&counter),
        at_dump,
        "the source ran on after the dump"
    );
    drop(source);

    // The placeholder, in its own memory cgroup when there is a v1 memory hierarchy.
    let cgroup = TestCgroup::new();
    let mut ph = Placeholder::start(&d, &[], cgroup.as_ref().map(|c| c.0.as_path()));
    assert_ne!(probe(&ph.control), 0, "probe passed before the restore");

    // The agent's part: CRIU joins the placeholder's cgroups, enters its pid namespace, and
    // runs in a private mount namespace whose /proc is that pid namespace's.
    let pidfile = d.join("restored.pid");
    let restore = format!(
        "exec {criu} restore -D {img} -o restore.log -v4 --restore-detached \
         --manage-cgroups=ignore --pidfile {pidfile}",
        criu = criu.display(),
        img = img.display(),
        pidfile = pidfile.display()
    );
    let t0 = Instant::now();
    let out = in_pid_namespace(ph.host_pid, &join_cgroups_of(ph.host_pid), &restore);
    let restore_ms = t0.elapsed().as_millis();
    let log = std::fs::read_to_string(img.join("restore.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "criu restore failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        tail(&log)
    );
    let ns_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    control::write_restored(&ph.control, ns_pid).unwrap();
    assert!(
        wait_until(T, || probe(&ph.control) == 0),
        "gate closed: {}",
        ph.log_text()
    );
    assert_eq!(
        control::read_state(&ph.control).unwrap(),
        Some(State::Running { pid: ns_pid })
    );

    // The restored root: the supervisor's child, init of a nested pid namespace, in the
    // placeholder's cgroups.
    let host = host_pid_of_child(ph.host_pid, ns_pid).expect("restored root under the supervisor");
    assert_eq!(status_field(host, "PPid"), vec![ph.host_pid]);
    let nspid = status_field(host, "NSpid");
    assert_eq!(
        (nspid.len(), nspid[1], nspid[2]),
        (3, ns_pid, 1),
        "NSpid {nspid:?}"
    );
    if let Some(cg) = &cgroup {
        let want = cg.0.file_name().unwrap().to_string_lossy().into_owned();
        let restored_cg = std::fs::read_to_string(format!("/proc/{host}/cgroup")).unwrap();
        let memory = restored_cg
            .lines()
            .find(|l| l.contains(":memory:"))
            .unwrap();
        assert!(
            memory.ends_with(&want),
            "restored root in {memory}, not {want}"
        );
    }

    // The counter goes on from the checkpoint: the whole file is 1, 2, 3, … with no repeat
    // and no gap.
    assert!(wait_until(T, || counter_lines(&counter).len() as u64
        >= checkpointed + 10));
    kill(ph.host_pid, Signal::TERM);
    let code = ph.wait_exit(T);
    let lines = counter_lines(&counter);
    let want: Vec<u64> = (1..=lines.len() as u64).collect();
    assert_eq!(
        lines, want,
        "the count repeated or skipped (checkpointed at {checkpointed})"
    );

    // SIGTERM reached the workload through the supervisor; its exit code 3 is the
    // supervisor's.
    let slog = ph.log_text();
    assert_eq!(code, Some(3), "supervisor log:\n{slog}");
    assert_eq!(std::fs::read_to_string(&term).unwrap(), "got-term\n");
    assert!(
        slog.contains(&format!("restored pid={ns_pid} adopted")),
        "{slog}"
    );
    assert!(
        slog.contains(&format!("forwarded SIGTERM to pid={ns_pid}")),
        "{slog}"
    );
    assert!(slog.contains("exiting code=3"), "{slog}");
    eprintln!(
        "criu placeholder restore: checkpointed at {checkpointed}, counted to {}, \
         restore {restore_ms} ms, cgroup {}, whole test {} ms",
        lines.len(),
        cgroup
            .as_ref()
            .map_or("shared".into(), |c| c.0.display().to_string()),
        started.elapsed().as_millis()
    );
    drop(ph);
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
