#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The installed CRIU works on this machine: `criu check` passes and a real child process is
//! dumped and restored with its memory state. Skipped only when not root (with that reason).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn criu() -> PathBuf {
    ["/usr/local/sbin/criu", "/usr/sbin/criu"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("criu is not installed: run scripts/install-deps (as root)"))
}

fn root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn criu_check_passes_on_this_machine() {
    if !root() {
        eprintln!("SKIP criu check: needs root");
        return;
    }
    let out = Command::new(criu()).arg("check").output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "criu check failed:\n{text}");
    assert!(text.contains("Looks good"), "{text}");
    let v = Command::new(criu()).arg("--version").output().unwrap();
    let v = String::from_utf8_lossy(&v.stdout).to_string();
    let ver = v
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap_or("0");
    let mut parts = ver.trim().split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    assert!((major, minor) >= (4, 2), "criu {ver} is older than 4.2");
}

#[test]
fn a_child_process_is_dumped_and_restored_with_its_counter() {
    if !root() {
        eprintln!("SKIP criu dump/restore: needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("count");
    // A shell loop whose state (i) lives only in its memory; it writes i every 50 ms.
    let script = format!(
        "i=0; while :; do i=$((i+1)); echo $i > {0}.tmp; mv {0}.tmp {0}; sleep 0.05; done",
        out.display()
    );
    let mut child = Command::new("setsid")
        .args(["bash", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let read = || -> u64 {
        std::fs::read_to_string(&out)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    };
    wait_for("the counter to reach 5", || read() >= 5);
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let pid = child.id().to_string();
    let img = images.display().to_string();
    let dump = Command::new(criu())
        .args(["dump", "-t", &pid, "-D", &img, "-o", "dump.log"])
        .status()
        .unwrap();
    let log = || std::fs::read_to_string(images.join("dump.log")).unwrap_or_default();
    assert!(dump.success(), "criu dump failed:\n{}", log());
    let _ = child.wait();
    // Every task of the dumped tree (core-<pid>.img) must be gone — orphans are reaped by
    // init — before the restore recreates the same pids.
    let pids: Vec<String> = std::fs::read_dir(&images)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_prefix("core-")?
                .strip_suffix(".img")
                .map(str::to_string)
        })
        .collect();
    assert!(!pids.is_empty());
    wait_for("the dumped tasks to be reaped", || {
        pids.iter()
            .all(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
    });
    let at_dump = read();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(read(), at_dump, "the process kept running after the dump");

    let restore = Command::new(criu())
        .args(["restore", "-D", &img, "-o", "restore.log", "-d"])
        .status()
        .unwrap();
    assert!(
        restore.success(),
        "criu restore failed:\n{}",
        std::fs::read_to_string(images.join("restore.log")).unwrap_or_default()
    );
    wait_for("the restored counter to move on", || read() > at_dump + 2);
    let _ = Command::new("kill").args(["-9", &pid]).status();
}
