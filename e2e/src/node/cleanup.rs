//! Removing what real-node runs leave on the host: processes in the harness cgroups, shims,
//! mounts, cgroups, bridges.

use std::fs::{self};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::names::{BRIDGE_PREFIX, CGROUP_PARENT};

/// Removes the sockets of the shims a containerd with state directory `state` started: they
/// live in containerd's fixed `/run/containerd/s/`, and each task's bundle records its shim's
/// socket in a file named `address` (`unix:///run/containerd/s/<hash>`).
pub(super) fn remove_shim_sockets(state: &Path) {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let Ok(namespaces) = fs::read_dir(&tasks) else {
        return;
    };
    for bundle in namespaces
        .flatten()
        .filter_map(|ns| fs::read_dir(ns.path()).ok())
        .flat_map(|bundles| bundles.flatten())
    {
        let Ok(address) = fs::read_to_string(bundle.path().join("address")) else {
            continue;
        };
        if let Some(socket) = address.trim().strip_prefix("unix://")
            && socket.starts_with("/run/containerd/s/")
        {
            let _ = fs::remove_file(socket);
        }
    }
}

/// Removes what earlier real-node runs left (run under [`NodeLock`], so none of it is live):
/// processes in the harness's cgroups, shims of containerds under a harness directory,
/// mounts under harness node directories, the harness's cgroups and bridges.
pub fn sweep_stale() {
    for hierarchy in cgroup_hierarchies() {
        kill_all(&procs_under(&hierarchy.path(&format!("/{CGROUP_PARENT}"))));
    }
    kill_all(&shims_of(Path::new("/ferry-e2e-")));
    let tmp = std::env::temp_dir();
    for mount in mount_points() {
        let stale = mount
            .strip_prefix(&tmp)
            .ok()
            .and_then(|rest| rest.iter().next().map(|first| (first, rest)))
            .is_some_and(|(first, rest)| {
                first.to_string_lossy().starts_with("ferry-e2e-")
                    && rest.iter().nth(1).is_some_and(|s| s == "nodes")
            });
        if stale {
            unmount(&mount);
        }
    }
    remove_cgroups(&format!("/{CGROUP_PARENT}"));
    if let Ok(links) = fs::read_dir("/sys/class/net") {
        for link in links.flatten() {
            let name = link.file_name().to_string_lossy().into_owned();
            if name.starts_with(BRIDGE_PREFIX) {
                delete_link(&name);
            }
        }
    }
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone)]
pub(super) struct Hierarchy {
    pub(super) mount: PathBuf,
    /// The v1 controllers bound to it (`name=systemd` style names too); empty for v2.
    pub(super) controllers: Vec<String>,
    pub(super) v2: bool,
}

impl Hierarchy {
    pub(super) fn path(&self, cgroup: &str) -> PathBuf {
        self.mount.join(cgroup.trim_start_matches('/'))
    }
}

/// The cgroup hierarchies mounted on this machine, from `/proc/self/mountinfo`. v2's
/// controllers come from its root's `cgroup.controllers`.
pub(super) fn cgroup_hierarchies() -> Vec<Hierarchy> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <dev> <root> <mount point> <opts> [optional...] - <fstype> <src> <super opts>"
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            let super_opts = right.nth(1).unwrap_or("");
            let mut left = left.split_whitespace();
            let root = left.nth(3)?;
            let mount = unescape(left.next()?);
            // Bind mounts of a sub-cgroup (containers) are not the hierarchy's root.
            if root != "/" || !seen.insert(mount.clone()) {
                return None;
            }
            match fstype {
                "cgroup2" => {
                    let controllers =
                        fs::read_to_string(Path::new(&mount).join("cgroup.controllers"))
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(str::to_string)
                            .collect();
                    Some(Hierarchy {
                        mount: mount.into(),
                        controllers,
                        v2: true,
                    })
                }
                "cgroup" => {
                    let controllers = super_opts
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro" | "relatime" | "noatime"))
                        .map(str::to_string)
                        .collect();
                    Some(Hierarchy {
                        mount: mount.into(),
                        controllers,
                        v2: false,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Mount points as listed in `/proc/self/mountinfo` (octal escapes decoded).
pub(super) fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .nth(4)
                .map(|m| PathBuf::from(unescape(m)))
        })
        .collect()
}

pub(super) fn unescape(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(value) = u8::from_str_radix(&digits, 8)
            {
                out.push(char::from(value));
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Every pid in `dir`'s `cgroup.procs` and its descendants'.
pub(super) fn procs_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Pids of `containerd-shim-runc-v2` processes whose command line names `address` (a shim
/// is started with `-address <containerd socket>`; a prefix matches every socket under it).
pub(super) fn shims_of(address: &Path) -> Vec<u32> {
    let needle = address.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && args.iter().any(|a| a.contains(&needle))
        })
        .collect()
}

pub(super) fn kill_all(pids: &[u32]) {
    for pid in pids {
        if let Some(pid) = i32::try_from(*pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    // Give the kernel a moment to reap them, so their cgroups can be removed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|p| crate::process::process_exists(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lazily unmounts every mount at or under `dir`, deepest first.
pub(super) fn unmount_under(dir: &Path) {
    let mut mounts: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    for mount in mounts {
        unmount(&mount);
    }
}

pub(super) fn unmount(path: &Path) {
    // A path can be mounted over several times (the kubelet's rshared bind of its root dir);
    // unmount until it is no longer a mount point, a few times at most.
    for _ in 0..8 {
        if rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).is_err() {
            break;
        }
    }
}

/// Removes `cgroup` and its descendants in every hierarchy (deepest first; a cgroup with
/// processes left in it stays, with a note on stderr).
pub fn remove_cgroups(cgroup: &str) {
    for hierarchy in cgroup_hierarchies() {
        let top = hierarchy.path(cgroup);
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(dir);
        }
        for dir in dirs.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("ferry-e2e: could not remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

pub(super) fn delete_link(name: &str) {
    if !Path::new("/sys/class/net").join(name).exists() {
        return;
    }
    let status = Command::new("ip")
        .args(["link", "delete", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("ferry-e2e: could not delete the network link {name}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\04"), r"/odd\04");
    }
}
