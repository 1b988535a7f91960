//! Shared by the plugin's integration tests: the built cdylib, real CRIU, the sim workload.
#![allow(dead_code, clippy::expect_used, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use ferry_api::plugin_env::{FERRY_SIM_MEM, FERRY_SIM_ROOT};

/// The plugin cdylib. `cargo test` builds it fresh into `deps/` beside the test binaries (it
/// does not copy it up to `target/<profile>/`, which may hold a stale one). If it is missing,
/// build it into a separate target dir (the outer cargo holds the main one's lock).
pub fn plugin_so() -> PathBuf {
    static SO: OnceLock<PathBuf> = OnceLock::new();
    SO.get_or_init(|| {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("libferry_criu_plugin.so")));
        if let Some(p) = beside.filter(|p| p.exists()) {
            return p;
        }
        let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cdylib");
        let out = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--lib", "--manifest-path"])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
            .arg("--target-dir")
            .arg(&target)
            .output()
            .expect("run cargo build for the plugin cdylib");
        assert!(
            out.status.success(),
            "building the plugin cdylib failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug").join("libferry_criu_plugin.so")
    })
    .clone()
}

/// A fresh plugin dir holding only our `.so` (CRIU loads every `.so` in `--libdir`).
pub fn plugin_libdir(root: &Path) -> PathBuf {
    let dir = root.join("lib");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(plugin_so(), dir.join("libferry_criu_plugin.so")).unwrap();
    dir
}

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

/// Why a real-CRIU test cannot run here, if it cannot.
pub fn skip_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("needs root for CRIU (run scripts/test as root)".into());
    }
    if criu().is_none() {
        return Some("criu not installed (run scripts/install-deps)".into());
    }
    None
}

/// Prints why a test is skipped and returns true.
pub fn skip(test: &str) -> bool {
    match skip_reason() {
        Some(r) => {
            eprintln!("SKIP {test}: {r}");
            true
        }
        None => false,
    }
}

/// Sim device locations private to one test.
pub struct SimEnv {
    pub dir: tempfile::TempDir,
}

impl SimEnv {
    pub fn new() -> Self {
        // Under the target dir (ext4 here), not /tmp or /dev/shm, which may be `nodev`.
        let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(base).unwrap();
        SimEnv {
            dir: tempfile::tempdir_in(base).unwrap(),
        }
    }
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("sim-root")
    }
    pub fn mem(&self) -> PathBuf {
        self.dir.path().join("sim-mem")
    }
    pub fn images(&self) -> PathBuf {
        let p = self.dir.path().join("images");
        std::fs::create_dir_all(&p).unwrap();
        p
    }
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (FERRY_SIM_ROOT.into(), self.root().display().to_string()),
            (FERRY_SIM_MEM.into(), self.mem().display().to_string()),
        ]
    }
    /// Drops every simulated device context: "VRAM" is gone, as after a migration.
    pub fn wipe_devices(&self) {
        let _ = std::fs::remove_dir_all(self.mem());
        let _ = std::fs::remove_dir_all(self.root().join("ctx"));
    }
}

/// A running sim workload (setsid: its own session, no tty, so CRIU needs no --shell-job).
pub struct Workload {
    pub pid: i32,
    pub status: PathBuf,
    child: Option<Child>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub pid: u32,
    pub counter: u64,
    pub host_ok: bool,
    pub devices_ok: Vec<bool>,
    pub device_steps: Vec<u64>,
}

impl Workload {
    pub fn start(env: &SimEnv, args: &[&str]) -> Workload {
        let status = env.dir.path().join("status.json");
        let log = std::fs::File::create(env.dir.path().join("workload.log")).unwrap();
        let child = Command::new("setsid")
            .arg(env!("CARGO_BIN_EXE_ferry-sim-workload"))
            .args(args)
            .arg("--status")
            .arg(&status)
            .envs(env.env())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let w = Workload {
            pid,
            status,
            child: Some(child),
        };
        wait_for("workload ready", Duration::from_secs(60), || {
            w.status.exists()
        });
        w
    }

    /// Asks the process to verify all its memory and returns the fresh status.
    pub fn verify(&self) -> Status {
        verify_at(&self.status)
    }

    /// Reaps the original process after a dump killed it, so its pid is free for restore.
    pub fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Triggers a verify for the status file `status` and waits for a newer status.
pub fn verify_at(status: &Path) -> Status {
    let before = std::fs::metadata(status).and_then(|m| m.modified()).ok();
    let trigger = PathBuf::from(format!("{}.verify", status.display()));
    std::fs::write(&trigger, b"").unwrap();
    wait_for("workload verify", Duration::from_secs(60), || {
        !trigger.exists() && std::fs::metadata(status).and_then(|m| m.modified()).ok() != before
    });
    serde_json::from_slice(&std::fs::read(status).unwrap()).unwrap()
}

impl Drop for Workload {
    fn drop(&mut self) {
        kill(self.pid);
        self.reap();
    }
}

pub fn kill(pid: i32) {
    if let Some(p) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
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

pub fn wait_for(what: &str, limit: Duration, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Result of one CRIU run.
pub struct Run {
    pub ok: bool,
    pub log: String,
    pub wall: Duration,
    pub output: Output,
}

/// Runs criu with a hard time limit (a hang is a test failure, not a stuck CI).
pub fn run_criu(args: &[&str], env: &[(String, String)], log: &Path) -> Run {
    let t = Instant::now();
    let output = Command::new("timeout")
        .arg("120")
        .arg(criu().expect("criu"))
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let wall = t.elapsed();
    assert_ne!(
        output.status.code(),
        Some(124),
        "criu {args:?} hung and was killed after 120 s"
    );
    let log = std::fs::read_to_string(log).unwrap_or_default();
    Run {
        ok: output.status.success(),
        log,
        wall,
        output,
    }
}

pub fn dump(
    pid: i32,
    images: &Path,
    libdir: &Path,
    env: &[(String, String)],
    extra: &[&str],
) -> Run {
    let mut args = vec![
        "dump".to_string(),
        "-t".into(),
        pid.to_string(),
        "-D".into(),
        images.display().to_string(),
        "-o".into(),
        "dump.log".into(),
        "-v4".into(),
        "-L".into(),
        libdir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run_criu(&a, env, &images.join("dump.log"))
}

pub fn restore(images: &Path, libdir: &Path, env: &[(String, String)]) -> Run {
    let img = images.display().to_string();
    let lib = libdir.display().to_string();
    run_criu(
        &[
            "restore",
            "-D",
            &img,
            "-o",
            "restore.log",
            "-v4",
            "-L",
            &lib,
            "-d",
        ],
        env,
        &images.join("restore.log"),
    )
}

/// SHA-like fingerprint (size + FNV) of every image file except logs and our stats, to
/// prove a failed restore left the image untouched.
pub fn image_fingerprint(images: &Path) -> BTreeMap<String, (u64, u64)> {
    let mut m = BTreeMap::new();
    for e in std::fs::read_dir(images).unwrap() {
        let e = e.unwrap();
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".log") || name.starts_with("ferry-") || name.starts_with("stats-") {
            continue;
        }
        let bytes = std::fs::read(e.path()).unwrap();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in &bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        m.insert(name, (bytes.len() as u64, h));
    }
    m
}

/// Lines of a CRIU log that came from this plugin.
pub fn ferry_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("ferry: ")).collect()
}
