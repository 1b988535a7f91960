//! The host-wide lock real-node clusters take turns on, and the kernel settings a run changes
//! and puts back.

use std::fs::{self, File};
use std::path::Path;

use crate::error::{Error, IoContext, Result};

use super::cleanup::{kill_all, shims_of, sweep_stale, unmount_under};
use super::files::write;
use super::names::LOCK_FILE;

/// The kernel settings a kubelet sets at start (`protectKernelDefaults: false`, its default:
/// with `true` it refuses to start where they differ). They are host-wide, and two of them
/// matter to whatever else the machine runs (`vm.overcommit_memory=1`, `kernel.panic_on_oops=1`),
/// so [`NodeLock`] saves them before real nodes start and puts them back after.
pub const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];

/// Where [`NodeLock`] keeps the saved [`KUBELET_SYSCTLS`] (`name=value` lines) and the
/// [`HOST_DIRS`] its run created (`created=<dir>` lines) while nodes run; a file left by a
/// killed run is restored from, and its directories removed, by the next lock holder.
pub const SAVED_SYSCTLS_FILE: &str = "/run/lock/ferry-e2e-real-nodes.sysctls";

/// The host-wide lock real-node clusters take turns on (released when dropped, after the
/// kernel settings the kubelets changed are put back).
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
    /// [`HOST_DIRS`] that did not exist when the lock was taken: removed when it is released.
    created: Vec<&'static str>,
}

/// Directories kubelets and containerd create outside any configurable root: the kubelet's
/// device-plugin socket directory, and containerd's shim socket and fifo directories.
pub const HOST_DIRS: [&str; 2] = ["/var/lib/kubelet", "/run/containerd"];

impl NodeLock {
    /// Waits for the lock, removes what earlier real-node runs left behind, and saves the
    /// kernel settings kubelets change.
    pub fn acquire() -> Result<Self> {
        Self::lock(true)?.ok_or_else(|| Error::Node {
            node: "-".to_string(),
            what: format!("{LOCK_FILE} was not locked although the lock call blocks"),
        })
    }

    /// [`NodeLock::acquire`] if no other real-node cluster holds the lock, else `None`.
    pub fn try_acquire() -> Result<Option<Self>> {
        Self::lock(false)
    }

    fn lock(block: bool) -> Result<Option<Self>> {
        let path = Path::new(LOCK_FILE);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).io_context("creating the lock directory", parent)?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .io_context("opening the real-node lock", path)?;
        let operation = if block {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&file, operation) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) if !block => return Ok(None),
            Err(e) => {
                return Err(std::io::Error::from(e)).io_context("locking the real-node lock", path);
            }
        }
        sweep_stale();
        // A saved file here was left by a run killed before it could restore: restore from it
        // (it holds the values from before that run) and take over the host directories that
        // run created; then save the current values.
        let saved = Path::new(SAVED_SYSCTLS_FILE);
        let mut created = if saved.exists() {
            restore_sysctls()
        } else {
            Vec::new()
        };
        created.extend(HOST_DIRS.into_iter().filter(|d| !Path::new(d).exists()));
        created.sort_unstable();
        created.dedup();
        let mut contents: String = KUBELET_SYSCTLS
            .iter()
            .filter_map(|name| {
                let value = fs::read_to_string(Path::new("/proc/sys").join(name)).ok()?;
                Some(format!("{name}={}\n", value.trim()))
            })
            .collect();
        for dir in &created {
            contents.push_str(&format!("{CREATED_KEY}={dir}\n"));
        }
        write(saved, &contents)?;
        Ok(Some(Self {
            _file: file,
            created,
        }))
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        let _ = restore_sysctls();
        for dir in &self.created {
            if let Err(e) = fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("ferry-e2e: could not remove {dir}: {e}");
            }
        }
    }
}

/// The key of [`SAVED_SYSCTLS_FILE`] lines that name a created [`HOST_DIRS`] entry.
pub(super) const CREATED_KEY: &str = "created";

/// Writes back the values in [`SAVED_SYSCTLS_FILE`] and removes it (best effort); returns the
/// [`HOST_DIRS`] the file says its run created.
pub(super) fn restore_sysctls() -> Vec<&'static str> {
    let saved = Path::new(SAVED_SYSCTLS_FILE);
    let Ok(values) = fs::read_to_string(saved) else {
        return Vec::new();
    };
    let mut created = Vec::new();
    for line in values.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name == CREATED_KEY {
            created.extend(HOST_DIRS.into_iter().filter(|d| *d == value));
            continue;
        }
        if !KUBELET_SYSCTLS.contains(&name) {
            continue;
        }
        let path = Path::new("/proc/sys").join(name);
        if let Err(e) = fs::write(&path, value) {
            eprintln!("ferry-e2e: could not restore {}: {e}", path.display());
        }
    }
    let _ = fs::remove_file(saved);
    created
}

/// Cleans up after a cluster whose test process died (SIGKILL) while it ran real nodes in
/// `dir`, before `dir` is removed: its kubelets and containerds died with it, but shims,
/// containers and mounts did not. With the lock free, [`NodeLock`]'s sweep does everything
/// (and puts back the kernel settings); with another cluster holding it, only what is
/// certainly `dir`'s: its shims and its mounts.
pub fn reclaim_stale_cluster_dir(dir: &Path) {
    if !dir.join("nodes").exists() {
        return;
    }
    match NodeLock::try_acquire() {
        Ok(Some(lock)) => drop(lock),
        _ => {
            kill_all(&shims_of(dir));
            unmount_under(dir);
        }
    }
}
