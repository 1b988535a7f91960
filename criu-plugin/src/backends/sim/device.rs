//! The simulated GPU's "driver", shared by the workload (which uses the device) and the
//! plugin (which checkpoints and restores it).
//!
//! Why this shape: the hook sequence must be the one a real GPU gets.
//! * The process holds a **device handle fd** of a character device CRIU does not know:
//!   a node `<FERRY_SIM_ROOT>/ctx/<uuid>` made with `mknod` from the numbers of an existing
//!   misc device (`/dev/kvm`, `/dev/fuse`, ...). CRIU cannot dump it and asks plugins
//!   (DUMP_EXT_FILE / RESTORE_EXT_FILE), exactly as for `/dev/kfd`. One node per context,
//!   so its path identifies the context like a KFD process context.
//! * **Device memory** is files under `<FERRY_SIM_MEM>/<uuid>/`, mapped `MAP_SHARED` by the
//!   process like VRAM BOs. CRIU records a shared file mapping by path and never dumps its
//!   contents as process memory; the plugin dumps them into its own pages image and, on
//!   restore, recreates the files in RESTORE_EXT_FILE (before CRIU maps them in
//!   `open_vmas`, as KFD RESTORE recreates BOs) and refills them through the copy engine.
//! * The **copy engine** writes with a configurable bandwidth (`FERRY_SIM_BANDWIDTH`), to
//!   model an SDMA engine, so the parallel-vs-sequential comparison means something on CPUs.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::backends::sim::mapping::SharedMap;
use crate::error::{IoContext, PluginError, Result};

/// Devices whose numbers a sim node may borrow: misc devices CRIU has no dumper for.
const DONORS: &[&str] = &["/dev/kvm", "/dev/fuse", "/dev/loop-control", "/dev/vsock"];

/// One buffer of a context, as recorded in its metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferMeta {
    pub name: String,
    pub size: u64,
}

/// A context's metadata (`meta.json` beside its buffers; also the dump image's payload).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextMeta {
    pub version: u32,
    pub uuid: String,
    pub device: u32,
    pub buffers: Vec<BufferMeta>,
}

/// Where sim contexts live.
#[derive(Clone, Debug)]
pub struct SimPaths {
    pub root: PathBuf,
    pub mem: PathBuf,
}

impl SimPaths {
    pub fn new(root: impl Into<PathBuf>, mem: impl Into<PathBuf>) -> Self {
        SimPaths {
            root: root.into(),
            mem: mem.into(),
        }
    }

    pub fn node(&self, uuid: &str) -> PathBuf {
        self.root.join("ctx").join(uuid)
    }

    pub fn mem_dir(&self, uuid: &str) -> PathBuf {
        self.mem.join(uuid)
    }

    pub fn buffer(&self, uuid: &str, name: &str) -> PathBuf {
        self.mem_dir(uuid).join(name)
    }

    /// The context uuid if `path` is a sim context node.
    pub fn uuid_of_node(&self, path: &Path) -> Option<String> {
        let rest = path.strip_prefix(self.root.join("ctx")).ok()?;
        let s = rest.to_str()?;
        valid_uuid(s).then(|| s.to_string())
    }

    pub fn read_meta(&self, uuid: &str) -> Result<ContextMeta> {
        let p = self.mem_dir(uuid).join("meta.json");
        let text = fs::read_to_string(&p).ctx(|| format!("read {}", p.display()))?;
        serde_json::from_str(&text)
            .map_err(|e| PluginError::invalid(format!("{} is not valid: {e}", p.display())))
    }

    fn write_meta(&self, meta: &ContextMeta) -> Result<()> {
        let p = self.mem_dir(&meta.uuid).join("meta.json");
        let text = serde_json::to_string(meta)
            .map_err(|e| PluginError::invalid(format!("encode sim metadata: {e}")))?;
        fs::write(&p, text).ctx(|| format!("write {}", p.display()))
    }

    /// Creates the context's node (if missing) and opens it: the device handle.
    pub fn open_node(&self, uuid: &str) -> Result<File> {
        let node = self.node(uuid);
        if !node.exists() {
            let dir = self.root.join("ctx");
            fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
            let rdev = donor_rdev()?;
            rustix::fs::mknodat(
                rustix::fs::CWD,
                &node,
                rustix::fs::FileType::CharacterDevice,
                rustix::fs::Mode::from_raw_mode(0o600),
                rdev,
            )
            .map_err(|e| {
                PluginError::io(
                    format!(
                        "mknod {} (the sim device needs root and a filesystem without nodev)",
                        node.display()
                    ),
                    e.into(),
                )
            })?;
        }
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&node)
            .ctx(|| format!("open sim device node {}", node.display()))
    }

    /// Recreates a context's device memory as zeroed buffers of the recorded sizes
    /// (what a driver's BO restore does) and returns the opened buffer files.
    pub fn recreate(&self, meta: &ContextMeta) -> Result<Vec<File>> {
        // The uuid comes from an image and names directories: a plain name only.
        if !valid_uuid(&meta.uuid) {
            return Err(PluginError::invalid(format!(
                "sim context uuid {:?} is not a plain name",
                meta.uuid
            )));
        }
        let dir = self.mem_dir(&meta.uuid);
        fs::create_dir_all(&dir).ctx(|| format!("create {}", dir.display()))?;
        let mut files = Vec::with_capacity(meta.buffers.len());
        for b in &meta.buffers {
            if !valid_name(&b.name) {
                return Err(PluginError::invalid(format!(
                    "sim buffer name {:?} is not a plain name",
                    b.name
                )));
            }
            let p = dir.join(&b.name);
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&p)
                .ctx(|| format!("create sim buffer {}", p.display()))?;
            f.set_len(b.size)
                .ctx(|| format!("size sim buffer {}", p.display()))?;
            files.push(f);
        }
        self.write_meta(meta)?;
        Ok(files)
    }

    /// Removes a context (node and memory).
    pub fn remove(&self, uuid: &str) {
        let _ = fs::remove_file(self.node(uuid));
        let _ = fs::remove_dir_all(self.mem_dir(uuid));
    }
}

fn valid_uuid(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
}

fn valid_name(s: &str) -> bool {
    valid_uuid(s) && s != "meta"
}

/// Device numbers for sim nodes, from the first donor present.
pub fn donor_rdev() -> Result<u64> {
    for d in DONORS {
        if let Ok(m) = fs::metadata(d)
            && m.file_type().is_char_device()
        {
            return Ok(m.rdev());
        }
    }
    Err(PluginError::Device(format!(
        "no misc character device to model the sim GPU on (tried {})",
        DONORS.join(", ")
    )))
}

/// A process's open context on one simulated device: the handle and its mapped buffers.
pub struct SimContext {
    pub paths: SimPaths,
    pub meta: ContextMeta,
    pub handle: File,
    pub buffers: Vec<SharedMap>,
}

impl SimContext {
    /// Opens a new context on `device` with buffers of the given sizes.
    pub fn create(paths: SimPaths, device: u32, sizes: &[u64]) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let uuid = format!("{:x}-{:x}-{device}", std::process::id(), nanos);
        let meta = ContextMeta {
            version: 1,
            uuid: uuid.clone(),
            device,
            buffers: sizes
                .iter()
                .enumerate()
                .map(|(i, s)| BufferMeta {
                    name: format!("buf{i}"),
                    size: *s,
                })
                .collect(),
        };
        let handle = paths.open_node(&uuid)?;
        let files = paths.recreate(&meta)?;
        let buffers = files
            .iter()
            .zip(sizes)
            .map(|(f, s)| SharedMap::new(f, *s as usize))
            .collect::<Result<Vec<_>>>()?;
        Ok(SimContext {
            paths,
            meta,
            handle,
            buffers,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_paths_are_recognised_and_foreign_paths_are_not() {
        let p = SimPaths::new("/var/lib/ferry-sim", "/dev/shm/ferry-sim");
        assert_eq!(
            p.uuid_of_node(Path::new("/var/lib/ferry-sim/ctx/ab-12-0")),
            Some("ab-12-0".into())
        );
        assert_eq!(p.uuid_of_node(Path::new("/dev/kvm")), None);
        assert_eq!(
            p.uuid_of_node(Path::new("/var/lib/ferry-sim/ctx/../x")),
            None
        );
    }

    #[test]
    fn recreate_refuses_buffer_names_that_leave_the_context_dir() {
        let dir = tempfile::tempdir().unwrap();
        let p = SimPaths::new(dir.path().join("root"), dir.path().join("mem"));
        let meta = ContextMeta {
            version: 1,
            uuid: "u1".into(),
            device: 0,
            buffers: vec![BufferMeta {
                name: "../evil".into(),
                size: 4096,
            }],
        };
        assert!(p.recreate(&meta).is_err());
        assert!(!dir.path().join("mem/evil").exists());
    }
}
