//! Shared by the supervisor's process tests: the built binary, placeholders (the supervisor
//! as PID 1 of a fresh pid namespace, started by `unshare`), namespace entry and `/proc`
//! reads. Every process started here is SIGKILLed and reaped on drop.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_ferry-supervisor");

pub fn criu() -> Option<PathBuf> {
    [
        "/usr/local/sbin/criu",
        "/usr/sbin/criu",
        "/usr/local/bin/criu",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Prints why a test is skipped and returns true: pid namespaces need root, CRIU tests CRIU.
pub fn skip(test: &str, needs_criu: bool) -> bool {
    let reason = if !rustix::process::geteuid().is_root() {
        Some("needs root for pid namespaces and CRIU (run scripts/test as root)")
    } else if needs_criu && criu().is_none() {
        Some("criu not installed (run scripts/install-deps)")
    } else {
        None
    };
    match reason {
        Some(r) => {
            eprintln!("SKIP {test}: {r}");
            true
        }
        None => false,
    }
}

pub fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn kill(pid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// `/proc/<pid>/task/<pid>/children`.
pub fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// A `Name:` field of `/proc/<pid>/status`, split on whitespace.
pub fn status_field(pid: i32, name: &str) -> Vec<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The host pid of `parent`'s child whose pid in `parent`'s pid namespace is `ns_pid` (its
/// NSpid entry at `parent`'s depth; a child that is the init of a nested namespace has one
/// more entry after it).
pub fn host_pid_of_child(parent: i32, ns_pid: i32) -> Option<i32> {
    children_of(parent).into_iter().find(|c| {
        let nspid = status_field(*c, "NSpid");
        let depth = status_field(parent, "NSpid").len();
        nspid.get(depth - 1) == Some(&ns_pid)
    })
}

pub fn probe(control: &Path) -> i32 {
    let out = Command::new(BIN)
        .args(["probe", "--control"])
        .arg(control)
        .output()
        .unwrap();
    out.status.code().unwrap_or(-1)
}

/// Runs `script` with `sh` inside the pid namespace of host pid `target`, in a private copy of
/// the caller's mount namespace with `/proc` remounted for that pid namespace (the recipe of
/// `docs/placeholder-restore.md`). `prelude` runs first, in the caller's namespaces.
pub fn in_pid_namespace(target: i32, prelude: &str, script: &str) -> Output {
    let inner = format!("mount -t proc proc /proc && {script}");
    let outer = format!(
        "{prelude} exec nsenter -t {target} -p -- unshare -m --propagation private sh -c '{}'",
        inner.replace('\'', r"'\''")
    );
    Command::new("sh")
        .args(["-c", &outer])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// The supervisor as PID 1 of a fresh pid namespace (with its own `/proc`), the stand-in for a
/// placeholder container; stderr (the container log) goes to `<dir>/supervisor.log`.
pub struct Placeholder {
    unshare: Child,
    pub host_pid: i32,
    pub control: PathBuf,
    pub log: PathBuf,
    exited: Option<i32>,
}

impl Placeholder {
    /// Starts it, first moving the shell that becomes `unshare` into `cgroup` if given.
    pub fn start(dir: &Path, args: &[&str], cgroup: Option<&Path>) -> Self {
        let control = dir.join("control");
        std::fs::create_dir_all(&control).unwrap();
        let log = dir.join("supervisor.log");
        let join = cgroup.map_or(String::new(), |cg| {
            format!("echo $$ > {}/cgroup.procs && ", cg.display())
        });
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!(
                "{join}exec unshare --pid --fork --mount-proc \"$@\"",
            ))
            .arg("sh")
            .args([BIN, "run", "--control"])
            .arg(&control)
            .args(["--poll-interval", "20ms"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let unshare = cmd.spawn().unwrap();
        let upid = unshare.id() as i32;
        let mut host_pid = 0;
        let found = wait_until(Duration::from_secs(10), || {
            host_pid = children_of(upid).first().copied().unwrap_or(0);
            host_pid != 0 && control.join("state").exists()
        });
        let me = Self {
            unshare,
            host_pid,
            control,
            log,
            exited: None,
        };
        assert!(found, "the supervisor did not start: {}", me.log_text());
        assert_eq!(
            status_field(me.host_pid, "NSpid").last(),
            Some(&1),
            "not PID 1"
        );
        me
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The supervisor's exit code (`unshare --fork` exits with its child's), waiting up to
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        if self.exited.is_some() {
            return self.exited;
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.unshare.try_wait().unwrap() {
                self.exited = Some(status.code().unwrap_or(-1));
                return self.exited;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Placeholder {
    fn drop(&mut self) {
        if self.unshare.try_wait().ok().flatten().is_none() {
            // PID 1 dying takes the whole namespace (and any restored tree) with it.
            kill(self.host_pid, rustix::process::Signal::KILL);
            let _ = self.unshare.kill();
            let _ = self.unshare.wait();
        }
    }
}

/// A child process killed and reaped on drop, plus other host pids to kill with it.
pub struct Guard {
    pub child: Child,
    pub also: Vec<i32>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        for pid in &self.also {
            kill(*pid, rustix::process::Signal::KILL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A shell workload that records SIGTERM in `<dir>/term` and exits 3 on it, and writes its pid
/// (as its own namespace sees it) to `<dir>/ready` once the trap is set.
pub fn workload_script(dir: &Path) -> PathBuf {
    let d = dir.display();
    let path = dir.join("workload.sh");
    std::fs::write(
        &path,
        format!(
            "trap 'echo got-term > {d}/term; exit 3' TERM\n\
             echo $$ > {d}/ready.tmp && mv {d}/ready.tmp {d}/ready\n\
             while :; do sleep 0.05; done\n"
        ),
    )
    .unwrap();
    path
}
