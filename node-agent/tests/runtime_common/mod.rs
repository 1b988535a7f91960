//! Shared by the runtime tests: real CRIU, real runc, ferry's plugin and the sim workload.
//! A test that cannot run here fails with the reason (it never passes silently).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_agent::runtime::RuntimeError;
use ferry_agent::store::{Image, Store};
use ferry_api::plugin_env;

pub const CRIU: &str = "/usr/local/sbin/criu";
pub const RUNC: &str = "/usr/sbin/runc";
pub const BUSYBOX: &str = "/usr/bin/busybox";

/// Panics with the reason when the machine lacks what the real-runtime tests need.
pub fn require(what: &[&str]) {
    assert!(
        rustix::process::geteuid().is_root(),
        "the runtime tests need root (CRIU, runc): run them as root"
    );
    for w in what {
        let path = match *w {
            "criu" => CRIU,
            "runc" => RUNC,
            "busybox" => BUSYBOX,
            other => other,
        };
        assert!(
            Path::new(path).exists(),
            "{path} is missing: run scripts/install-deps (it installs CRIU, runc and busybox-static)"
        );
    }
}

/// Scratch space on the target dir's filesystem (ext4 here; /tmp and /dev/shm may be
/// `nodev`, which the sim GPU's device nodes need).
pub fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// The cargo target dir these tests were built into.
pub fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    // <target>/<profile>/deps/<test binary>
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// The plugin cdylib and the sim workload from `ferry-criu-plugin`. Taken from the target dir
/// when a build left them there (`target/debug/deps/libferry_criu_plugin.so`, as
/// `cargo test -p ferry-criu-plugin` or `cargo build -p ferry-criu-plugin` produce it);
/// otherwise built into a private target dir (the running `cargo test` holds the main one's
/// lock).
pub fn plugin_artifacts() -> (PathBuf, PathBuf) {
    static A: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    A.get_or_init(|| {
        let find = |target: &Path| {
            let debug = target.join("debug");
            let so = [
                debug.join("deps/libferry_criu_plugin.so"),
                debug.join("libferry_criu_plugin.so"),
            ]
            .into_iter()
            .find(|p| p.exists());
            let bin = debug.join("ferry-sim-workload");
            so.filter(|_| bin.exists()).map(|so| (so, bin))
        };
        if let Some(found) = find(&target_dir()) {
            return found;
        }
        let private = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-build");
        if let Some(found) = find(&private) {
            return found;
        }
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "ferry-criu-plugin",
                "--lib",
                "--bins",
            ])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(&private)
            .output()
            .expect("run cargo build -p ferry-criu-plugin");
        assert!(
            out.status.success(),
            "building ferry-criu-plugin failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        find(&private).expect("cargo build left no plugin .so / ferry-sim-workload")
    })
    .clone()
}

/// A plugin dir holding only ferry's `.so` (CRIU loads every `.so` in `--libdir`).
pub fn plugin_libdir(root: &Path) -> PathBuf {
    let dir = root.join("criu-lib");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin_artifacts().0, dir.join("libferry_criu_plugin.so")).unwrap();
    dir
}

pub fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// True when `pid` is a live (not zombie) process.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

pub fn kill(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
    }
}

/// Kills a restored process (not our child: init reaps it) and waits until it is gone.
pub struct KillOnDrop(pub i32);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill(self.0);
        let t = Instant::now();
        while Path::new(&format!("/proc/{}", self.0)).exists()
            && t.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Every file of an image directory with its bytes' hash, manifest included: equal before and
/// after a restore means the restore wrote, removed and changed nothing in the image.
pub fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            if e.file_type().unwrap().is_dir() {
                walk(base, &p, out);
            } else {
                let rel = p.strip_prefix(base).unwrap().display().to_string();
                out.insert(rel, ferry_agent::store::hash_file(&p).unwrap().1);
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(dir, dir, &mut m);
    m
}

/// The image still verifies against its manifest and no file was added or changed.
pub fn assert_image_intact(store: &Store, image: &Image, before: &BTreeMap<String, String>) {
    image.verify().expect("image verifies against its manifest");
    store
        .open_image(&image.location)
        .unwrap()
        .verify()
        .expect("the stored image verifies");
    assert_eq!(
        &snapshot(&image.dir),
        before,
        "the restore touched the image dir"
    );
}

// ---- the sim-GPU workload ----

pub struct SimWorkload {
    pub dir: PathBuf,
    pub pid: i32,
    pub status: PathBuf,
    child: Option<Child>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimStatus {
    pub pid: u32,
    pub counter: u64,
    pub host_ok: bool,
    pub devices_ok: Vec<bool>,
}

impl SimWorkload {
    pub fn env(dir: &Path) -> Vec<(String, String)> {
        vec![
            (
                plugin_env::FERRY_SIM_ROOT.into(),
                dir.join("sim-root").display().to_string(),
            ),
            (
                plugin_env::FERRY_SIM_MEM.into(),
                dir.join("sim-mem").display().to_string(),
            ),
        ]
    }

    /// Starts the workload in its own session with no tty and its stdio on a file, so CRIU
    /// dumps it without `--shell-job` and without inherited fds.
    pub fn start(dir: &Path, args: &[&str]) -> SimWorkload {
        let status = dir.join("status.json");
        let log = std::fs::File::create(dir.join("workload.log")).unwrap();
        let child = Command::new("setsid")
            .arg(plugin_artifacts().1)
            .args(args)
            .arg("--status")
            .arg(&status)
            .envs(Self::env(dir))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let w = SimWorkload {
            dir: dir.to_path_buf(),
            pid: child.id() as i32,
            status,
            child: Some(child),
        };
        wait_for("sim workload ready", Duration::from_secs(60), || {
            w.status.exists()
        });
        w
    }

    /// Asks the process to verify its host and device memory; returns the fresh status.
    pub fn verify(&self) -> SimStatus {
        let before = std::fs::metadata(&self.status)
            .and_then(|m| m.modified())
            .ok();
        let trigger = PathBuf::from(format!("{}.verify", self.status.display()));
        std::fs::write(&trigger, b"").unwrap();
        wait_for("workload verify", Duration::from_secs(60), || {
            !trigger.exists()
                && std::fs::metadata(&self.status)
                    .and_then(|m| m.modified())
                    .ok()
                    != before
        });
        serde_json::from_slice(&std::fs::read(&self.status).unwrap()).unwrap()
    }

    /// Reaps the dumped original so its pid is free for the restore.
    pub fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Drops the simulated devices' memory, as a move to another node does.
    pub fn wipe_devices(&self) {
        let _ = std::fs::remove_dir_all(self.dir.join("sim-mem"));
        let _ = std::fs::remove_dir_all(self.dir.join("sim-root/ctx"));
    }
}

impl Drop for SimWorkload {
    fn drop(&mut self) {
        kill(self.pid);
        self.reap();
    }
}

// ---- runc containers ----

/// A busybox bundle whose init counts in a shell variable and writes it to `/data/counter`
/// every 100 ms: after a restore the count goes on from the dumped value (memory state), a
/// fresh start would begin at 1.
pub fn busybox_bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "proc", "sys", "dev", "tmp", "data"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    let out = Command::new(RUNC)
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "runc spec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /data/counter; sleep 0.1; done"
    ]);
    spec["root"]["readonly"] = false.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    bundle
}

/// The count, waiting out a torn read (the shell truncates the file, then writes).
pub fn count(bundle: &Path) -> u64 {
    let t = Instant::now();
    loop {
        if let Some(c) = counter(bundle) {
            return c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "no count in the counter file"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// The counter file's value; `None` while it is missing or mid-write.
pub fn counter(bundle: &Path) -> Option<u64> {
    std::fs::read_to_string(bundle.join("rootfs/data/counter"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
}

/// Deletes runc containers under `root` on drop (kill + delete -f), whatever the test did.
pub struct RuncContainers {
    pub root: PathBuf,
    pub ids: std::cell::RefCell<Vec<String>>,
}

impl RuncContainers {
    pub fn new(root: PathBuf) -> Self {
        std::fs::create_dir_all(&root).unwrap();
        RuncContainers {
            root,
            ids: Default::default(),
        }
    }

    pub fn track(&self, id: &str) {
        self.ids.borrow_mut().push(id.to_string());
    }

    pub fn runc(&self, args: &[&str]) -> std::process::Output {
        Command::new(RUNC)
            .arg("--root")
            .arg(&self.root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// `runc run -d` of `bundle` as `id`, stdio on /dev/null (what CRIU can dump without
    /// external-file options).
    pub fn run(&self, id: &str, bundle: &Path) {
        self.run_with_stdout(id, bundle, Stdio::null());
    }

    /// `runc run -d` with the container's stdout on `stdout`.
    pub fn run_with_stdout(&self, id: &str, bundle: &Path, stdout: Stdio) {
        self.track(id);
        let status = Command::new(RUNC)
            .arg("--root")
            .arg(&self.root)
            .args(["run", "-d", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "runc run {id} failed");
    }

    /// The container's status (`running`, `stopped`, …), `None` if runc does not know it.
    pub fn state(&self, id: &str) -> Option<String> {
        let out = self.runc(&["state", id]);
        if !out.status.success() {
            return None;
        }
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        v["status"].as_str().map(str::to_string)
    }
}

impl Drop for RuncContainers {
    fn drop(&mut self) {
        for id in self.ids.borrow().iter() {
            let _ = self.runc(&["kill", id, "KILL"]);
            let t = Instant::now();
            while self.state(id).as_deref() == Some("running")
                && t.elapsed() < Duration::from_secs(5)
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.runc(&["delete", "-f", id]);
            // Belt and braces: anything left in the container's cgroup (runc's default
            // cgroupsPath is /<id>) is killed, so no test leaves a counting loop behind.
            for procs in [
                format!("/sys/fs/cgroup/pids/{id}/cgroup.procs"),
                format!("/sys/fs/cgroup/{id}/cgroup.procs"),
            ] {
                if let Ok(text) = std::fs::read_to_string(&procs) {
                    text.lines()
                        .filter_map(|l| l.trim().parse().ok())
                        .for_each(kill);
                }
            }
        }
    }
}

/// A container id unique to this test process.
pub fn unique_id(tag: &str) -> String {
    format!("ferry-test-{}-{tag}", std::process::id())
}

/// The tool, operation, message and kept log of a failed tool run; panics on any other error.
pub fn tool_failure(err: &RuntimeError) -> (&'static str, &'static str, &str, &Path) {
    match err {
        RuntimeError::Tool {
            tool,
            op,
            message,
            log,
            ..
        } => (tool, op, message, log),
        other => panic!("unexpected error: {other}"),
    }
}

// ---- a hung CRIU ----

/// A field of `/proc/<pid>/status` (`TracerPid:`, `State:`).
pub fn proc_status(pid: i32, key: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
}

pub fn state(pid: i32) -> String {
    proc_status(pid, "State:").unwrap_or_default()
}

/// Waits for CRIU to seize `pid` and put its parasite in, then stops CRIU (SIGSTOP): a dump
/// that hangs with the workload frozen. Returns CRIU's pid and its images dir.
pub fn hang_criu_on(pid: i32) -> (i32, PathBuf) {
    let t = Instant::now();
    let criu = loop {
        if let Some(tracer) = proc_status(pid, "TracerPid:").and_then(|v| v.parse::<i32>().ok())
            && tracer != 0
        {
            break tracer;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "CRIU never seized the workload"
        );
        std::thread::sleep(Duration::from_millis(1));
    };
    let cmdline = std::fs::read(format!("/proc/{criu}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let dir = PathBuf::from(&args[args.iter().position(|a| a == "-D").unwrap() + 1]);
    let log = dir.join("criu-dump.log");
    while !std::fs::read_to_string(&log)
        .is_ok_and(|l| l.contains("has been switched to daemon mode"))
    {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "CRIU's parasite never came up"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    kill_with(criu, rustix::process::Signal::STOP);
    eprintln!(
        "criu {criu} stopped mid-dump; workload state {:?}",
        state(pid)
    );
    (criu, dir)
}

pub fn kill_with(pid: i32, signal: rustix::process::Signal) {
    let p = rustix::process::Pid::from_raw(pid).unwrap();
    rustix::process::kill_process(p, signal).unwrap();
}
