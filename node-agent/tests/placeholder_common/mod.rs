//! Shared by the placeholder-restore tests: runc bundles of the usual kind (busybox, the
//! host's libraries, the sim GPU's device), a network namespace by path, pipe readers, the
//! sim workload's verify, and the placeholder run by `runc run` in the foreground.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::runtime_common::*;

/// Where the control directory is in the placeholder.
pub const CONTROL: &str = "/ferry-control";

/// The supervisor binary: from the target dir, or built into a private one.
pub fn supervisor_binary() -> PathBuf {
    let bin = target_dir().join("debug/ferry-supervisor");
    if bin.exists() {
        return bin;
    }
    let private = Path::new(env!("CARGO_TARGET_TMPDIR")).join("supervisor-build");
    let bin = private.join("debug/ferry-supervisor");
    if !bin.exists() {
        let out = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "ferry-supervisor",
                "--bin",
                "ferry-supervisor",
            ])
            .arg("--manifest-path")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml"))
            .arg("--target-dir")
            .arg(&private)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct NetNs(pub String);
impl NetNs {
    pub fn new(tag: &str) -> NetNs {
        let name = format!("ferry-{}-{tag}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .unwrap();
        assert!(ok.success(), "ip netns add {name}");
        NetNs(name)
    }
    pub fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }
}
impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Everything a pipe's reader got, collected by a thread.
#[derive(Clone, Default)]
pub struct Collected(pub Arc<Mutex<String>>);
impl Collected {
    pub fn drain(&self, mut from: impl Read + Send + 'static) {
        let me = self.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = from.read(&mut buf) {
                if n == 0 {
                    break;
                }
                me.0.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
    }
    pub fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }
    /// The `tick N` lines, in order.
    pub fn ticks(&self) -> Vec<u64> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("tick ")?.trim().parse().ok())
            .collect()
    }
}

/// The device the sim GPU borrows its numbers from (the plugin's donor list, in order).
pub fn donor() -> (&'static str, u64, u64) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    for d in ["/dev/kvm", "/dev/fuse", "/dev/loop-control", "/dev/vsock"] {
        if let Ok(m) = std::fs::metadata(d)
            && m.file_type().is_char_device()
        {
            let rdev = m.rdev();
            return (d, libc::major(rdev) as u64, libc::minor(rdev) as u64);
        }
    }
    panic!("no misc character device for the sim GPU");
}

/// A bundle of the usual kind: busybox, the host's libraries bound read-only (for the
/// dynamically linked test binaries), `sim` bound at its own path, the sim GPU's donor device
/// allowed (and `CAP_MKNOD`: the workload makes its device node), the network namespace `netns`.
pub fn bundle(dir: &Path, sim: &Path, netns: &Path, args: serde_json::Value) -> PathBuf {
    let bundle = busybox_bundle(dir);
    let rootfs = bundle.join("rootfs");
    std::os::unix::fs::symlink("usr/lib", rootfs.join("lib")).unwrap();
    std::os::unix::fs::symlink("usr/lib64", rootfs.join("lib64")).unwrap();
    for a in ["kill", "wait"] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a));
    }
    std::fs::copy(plugin_artifacts().1, rootfs.join("bin/ferry-sim-workload")).unwrap();
    std::fs::copy(supervisor_binary(), rootfs.join("bin/ferry-supervisor")).unwrap();
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["args"] = args;
    let env = spec["process"]["env"].as_array_mut().unwrap();
    for (k, v) in SimWorkload::env(sim) {
        env.push(format!("{k}={v}").into());
    }
    let caps = &mut spec["process"]["capabilities"];
    for set in ["bounding", "effective", "permitted"] {
        caps[set].as_array_mut().unwrap().push("CAP_MKNOD".into());
    }
    let mounts = spec["mounts"].as_array_mut().unwrap();
    for (p, opts) in [("/usr/lib", "ro"), ("/usr/lib64", "ro")] {
        mounts.push(serde_json::json!({"destination": p, "type": "bind", "source": p, "options": ["rbind", opts]}));
    }
    let s = sim.display().to_string();
    mounts.push(serde_json::json!({"destination": s, "type": "bind", "source": s, "options": ["rbind", "rw"]}));
    let (dev, major, minor) = donor();
    spec["linux"]["devices"] = serde_json::json!([{"path": dev, "type": "c", "major": major, "minor": minor, "fileMode": 0o666, "uid": 0, "gid": 0}]);
    spec["linux"]["resources"]["devices"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"}));
    for ns in spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if ns["type"] == "network" {
            ns["path"] = netns.display().to_string().into();
        }
    }
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    bundle
}

/// Adds a bind mount to a bundle's spec.
pub fn add_bind(bundle: &Path, source: &Path, dest: &str) {
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["mounts"].as_array_mut().unwrap().push(serde_json::json!({"destination": dest, "type": "bind", "source": source.display().to_string(), "options": ["rbind", "rw"]}));
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

/// The workload: a shell (the container's init) that prints `tick N` every 100 ms, with the
/// sim-GPU workload as its child; on SIGTERM it stops the child and exits 3.
pub fn workload_args(sim: &Path) -> serde_json::Value {
    let status = sim.join("status.json");
    serde_json::json!([
        "/bin/sh",
        "-c",
        format!(
            "/bin/ferry-sim-workload --devices 1 --device-mib 8 --buffers 2 --host-mib 8 --interval-ms 20 --status {} & w=$!; \
             trap 'kill $w; wait $w; exit 3' TERM; \
             i=0; while true; do i=$((i+1)); echo \"tick $i\"; sleep 0.1; done",
            status.display()
        )
    ])
}

#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub pid: u32,
    pub counter: u64,
    pub host_ok: bool,
    pub devices_ok: Vec<bool>,
    pub device_steps: Vec<u64>,
    pub device_bytes: u64,
}

/// Asks the sim workload to verify host and device memory; returns its fresh status.
pub fn verify(sim: &Path) -> Status {
    let status = sim.join("status.json");
    let before = std::fs::metadata(&status).and_then(|m| m.modified()).ok();
    let trigger = sim.join("status.json.verify");
    std::fs::write(&trigger, b"").unwrap();
    wait_for("the workload's verify", Duration::from_secs(60), || {
        !trigger.exists() && std::fs::metadata(&status).and_then(|m| m.modified()).ok() != before
    });
    serde_json::from_slice(&std::fs::read(&status).unwrap()).unwrap()
}

/// The placeholder, run by `runc run` in the foreground (its exit status is the container's).
pub struct Foreground {
    pub child: Option<Child>,
    pub stdout: Collected,
    pub stderr: Collected,
}
impl Foreground {
    pub fn start(root: &Path, id: &str, bundle: &Path) -> Foreground {
        let mut child = Command::new(RUNC)
            .arg("--root")
            .arg(root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let (stdout, stderr) = (Collected::default(), Collected::default());
        stdout.drain(child.stdout.take().unwrap());
        stderr.drain(child.stderr.take().unwrap());
        Foreground {
            child: Some(child),
            stdout,
            stderr,
        }
    }
    /// The container's exit code, waiting at most `limit`.
    pub fn exit_code(&mut self, limit: Duration) -> Option<i32> {
        let t = Instant::now();
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                self.child = None;
                return st.code();
            }
            if t.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
impl Drop for Foreground {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The pid runc reports for a running container.
pub fn init_pid(c: &RuncContainers, id: &str) -> i32 {
    let out = c.runc(&["state", id]);
    assert!(out.status.success(), "runc state {id}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["pid"].as_i64().unwrap() as i32
}

pub fn field(pid: i32, key: &str) -> String {
    proc_status(pid, key).unwrap_or_else(|| panic!("no {key} for pid {pid}"))
}

pub fn link(p: String) -> String {
    std::fs::read_link(&p).unwrap().display().to_string()
}
