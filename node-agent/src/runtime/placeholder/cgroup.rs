//! Which `cgroup.procs` files put a process into another process's cgroups: one per v1
//! hierarchy of `/proc/<pid>/cgroup`, and the unified (v2) hierarchy's, each under the
//! hierarchy's mount point read from the agent's `/proc/self/mountinfo`.

use std::path::{Path, PathBuf};

use crate::runtime::error::{Result, RuntimeError, io_err};

/// A cgroup filesystem mounted in the agent's mount namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupMount {
    /// Where it is mounted.
    pub mount_point: PathBuf,
    /// The cgroup path its mount shows as `/` (mountinfo's root field).
    pub root: String,
    /// v1: its controllers and `name=` options; empty for the unified (v2) hierarchy.
    pub controllers: Vec<String>,
    /// The unified hierarchy (`cgroup2`).
    pub unified: bool,
}

/// The cgroup filesystems in a mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<CgroupMount> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = left.split_whitespace().collect();
        let right: Vec<&str> = right.split_whitespace().collect();
        let (Some(root), Some(mount_point), Some(fstype)) =
            (fields.get(3), fields.get(4), right.first())
        else {
            continue;
        };
        let unified = match *fstype {
            "cgroup2" => true,
            "cgroup" => false,
            _ => continue,
        };
        let controllers = if unified {
            Vec::new()
        } else {
            right
                .get(2)
                .map(|opts| {
                    opts.split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro") && !o.contains("xattr"))
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default()
        };
        out.push(CgroupMount {
            mount_point: PathBuf::from(unescape(mount_point)),
            root: unescape(root),
            controllers,
            unified,
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `cgroup.procs` files of the cgroups in a `/proc/<pid>/cgroup` text, one per hierarchy
/// that is mounted in `mounts` (a hierarchy the agent cannot see is skipped: nothing can be
/// joined there). A cgroup outside a mount's root is an error: the agent cannot reach it.
pub fn procs_files(proc_cgroup: &str, mounts: &[CgroupMount]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for line in proc_cgroup.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let mount = if id == "0" && controllers.is_empty() {
            mounts.iter().find(|m| m.unified)
        } else {
            let wanted: Vec<&str> = controllers.split(',').filter(|c| !c.is_empty()).collect();
            if wanted.is_empty() {
                continue;
            }
            mounts
                .iter()
                .find(|m| !m.unified && wanted.iter().all(|w| m.controllers.iter().any(|c| c == w)))
        };
        let Some(mount) = mount else {
            tracing::debug!(line, "cgroup hierarchy not mounted here; not joined");
            continue;
        };
        let rel = if mount.root == "/" {
            Some(path)
        } else {
            path.strip_prefix(mount.root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        let Some(rel) = rel else {
            return Err(RuntimeError::Invalid(format!(
                "cgroup {path} is outside the agent's view of its hierarchy (mounted from {} at {})",
                mount.root,
                mount.mount_point.display()
            )));
        };
        let rel = rel.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return Err(RuntimeError::Invalid(format!("odd cgroup path {path:?}")));
        }
        let file = mount.mount_point.join(rel).join("cgroup.procs");
        if !out.contains(&file) {
            out.push(file);
        }
    }
    Ok(out)
}

/// The `cgroup.procs` files of `pid`'s cgroups, as the agent's mount namespace shows them.
pub fn procs_files_of(pid: i32) -> Result<Vec<PathBuf>> {
    let read =
        |p: &Path| std::fs::read_to_string(p).map_err(io_err(format!("read {}", p.display())));
    let cgroup = read(Path::new(&format!("/proc/{pid}/cgroup")))?;
    let mounts = parse_mountinfo(&read(Path::new("/proc/self/mountinfo"))?);
    let files = procs_files(&cgroup, &mounts)?;
    if files.is_empty() {
        return Err(RuntimeError::Invalid(format!(
            "no mounted cgroup hierarchy of pid {pid} to join"
        )));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const HYBRID: &str = "\
25 30 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:24 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:25 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
28 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
29 25 0:27 /kubepods /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
30 25 0:28 / /sys/fs/cgroup/with\\040space rw - cgroup cgroup rw,pids
";

    #[test]
    fn every_mounted_hierarchy_of_a_hybrid_layout_is_joined() {
        let mounts = parse_mountinfo(HYBRID);
        assert_eq!(mounts.len(), 5);
        let cg = "12:pids:/c1\n4:memory:/kubepods/pod/c1\n3:cpu,cpuacct:/c1\n1:name=systemd:/c1\n0::/c1\n9:misc:/\n";
        let files = procs_files(cg, &mounts).unwrap();
        let s: Vec<String> = files.iter().map(|p| p.display().to_string()).collect();
        assert_eq!(
            s,
            [
                "/sys/fs/cgroup/with space/c1/cgroup.procs",
                "/sys/fs/cgroup/memory/pod/c1/cgroup.procs",
                "/sys/fs/cgroup/cpu,cpuacct/c1/cgroup.procs",
                "/sys/fs/cgroup/systemd/c1/cgroup.procs",
                "/sys/fs/cgroup/unified/c1/cgroup.procs",
            ]
        );
    }

    #[test]
    fn pure_v2_joins_the_unified_hierarchy_and_refuses_escapes() {
        let mounts = parse_mountinfo("35 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        let files = procs_files("0::/kubepods/pod1/c1\n", &mounts).unwrap();
        assert_eq!(
            files,
            [PathBuf::from(
                "/sys/fs/cgroup/kubepods/pod1/c1/cgroup.procs"
            )]
        );
        assert!(procs_files("0::/a/../../etc\n", &mounts).is_err());
        let memory = parse_mountinfo(HYBRID);
        assert!(procs_files("4:memory:/elsewhere/c1\n", &memory).is_err());
        assert!(procs_files("4:memory:/kubepodsX\n", &memory).is_err());
    }
}
