//! What the plugin needs from its host process: image files, the inventory, the fdstore and
//! the log. Inside `criu` these are CRIU's exports; in the plugin-host harness (no CRIU) they
//! fall back to `FERRY_IMAGES_DIR`, no inventory, and fds inherited across `fork`.
//!
//! Files in the image directory are opened with `O_NOFOLLOW | O_CLOEXEC`: a symbolic link
//! planted there cannot make the plugin read or write outside it (the open fails with
//! `ELOOP`, reported as such).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Mutex;

use rustix::fs::{Mode, OFlags};

use crate::error::{PluginError, Result};
use crate::sys::criu::{CriuExports, criu};

/// The host services.
pub struct Host {
    exports: &'static CriuExports,
    images_dir: Option<PathBuf>,
    /// Harness fallback for the fdstore: fds kept open here are inherited by forked children.
    kept: Mutex<Vec<OwnedFd>>,
}

impl Host {
    /// Binds to CRIU's exports (or the harness fallbacks).
    pub fn new(images_dir: Option<PathBuf>) -> Self {
        let exports = criu();
        // CRIU closes its image-dir service fd before calling `fini`, where the stats file is
        // written, so remember the directory's path now (no fd kept: it would leak into the
        // restored tasks).
        let images_dir = exports
            .image_dir()
            .and_then(|fd| {
                use std::os::fd::AsRawFd;
                std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()
            })
            .or(images_dir);
        Host {
            exports,
            images_dir,
            kept: Mutex::new(Vec::new()),
        }
    }

    /// True inside a real `criu` process.
    pub fn in_criu(&self) -> bool {
        self.exports.in_criu()
    }

    fn check_name(name: &str) -> Result<()> {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(PluginError::invalid(format!(
                "image name {name:?} is not a plain file name"
            )));
        }
        Ok(())
    }

    fn dir_fd(&self) -> Result<DirFd<'_>> {
        if let Some(fd) = self.exports.image_dir() {
            return Ok(DirFd::Borrowed(fd));
        }
        let Some(dir) = &self.images_dir else {
            return Err(PluginError::invalid(
                "no image directory: CRIU's image dir is closed or absent and FERRY_IMAGES_DIR is unset",
            ));
        };
        let fd = rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| PluginError::io(format!("open image dir {}", dir.display()), e.into()))?;
        Ok(DirFd::Owned(fd))
    }

    /// Opens `name` in the image dir without following a symbolic link.
    fn open_in_dir(&self, name: &str, flags: OFlags, mode: Mode, what: &str) -> Result<File> {
        let dir = self.dir_fd()?;
        let fd = rustix::fs::openat(
            dir.as_fd(),
            name,
            flags | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            mode,
        )
        .map_err(|e| match e {
            rustix::io::Errno::LOOP => PluginError::io(
                format!(
                    "{what} {name}: it is a symbolic link, and the plugin does not follow links in the image directory"
                ),
                e.into(),
            ),
            e => PluginError::io(format!("{what} {name}"), e.into()),
        })?;
        Ok(File::from(fd))
    }

    /// Opens an image file for reading (never through a symbolic link).
    pub fn open_image(&self, name: &str) -> Result<File> {
        Self::check_name(name)?;
        self.open_in_dir(name, OFlags::RDONLY, Mode::empty(), "open image")
    }

    /// True when the image file exists. A symbolic link counts (without being followed), so
    /// opening it then fails loudly instead of the image being skipped.
    pub fn image_exists(&self, name: &str) -> bool {
        let Ok(dir) = self.dir_fd() else { return false };
        Self::check_name(name).is_ok()
            && rustix::fs::statat(dir.as_fd(), name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    /// Creates an image file for writing (fails if it exists: images are never overwritten).
    pub fn create_image(&self, name: &str) -> Result<File> {
        Self::check_name(name)?;
        self.open_in_dir(
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL,
            Mode::from_raw_mode(0o600),
            "create image",
        )
    }

    /// Writes a whole image file atomically enough for CRIU's use (create-exclusive + write).
    pub fn write_image(&self, name: &str, bytes: &[u8]) -> Result<()> {
        use std::io::Write;
        let mut f = self.create_image(name)?;
        f.write_all(bytes)
            .map_err(|e| PluginError::io(format!("write image {name}"), e))
    }

    /// Replaces a small metadata file (stats) in the image dir.
    pub fn replace_file(&self, name: &str, bytes: &[u8]) -> Result<()> {
        Self::check_name(name)?;
        let dir = self.dir_fd()?;
        let tmp = format!("{name}.partial");
        let fd = self.open_in_dir(
            &tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
            Mode::from_raw_mode(0o644),
            "create",
        )?;
        std::io::Write::write_all(&mut &fd, bytes)
            .map_err(|e| PluginError::io(format!("write {tmp}"), e))?;
        rustix::fs::renameat(dir.as_fd(), &tmp, dir.as_fd(), name)
            .map_err(|e| PluginError::io(format!("rename {tmp}"), e.into()))
    }

    /// Records the plugin in the dump's inventory so a restore without it fails clearly.
    pub fn add_inventory(&self) {
        if self.exports.add_inventory(crate::PLUGIN_NAME) == Some(false) {
            tracing::warn!("add_inventory_plugin failed");
        }
    }

    /// On restore: was the plugin recorded at dump time? `None` outside CRIU.
    pub fn check_inventory(&self) -> Option<bool> {
        self.exports.check_inventory(crate::PLUGIN_NAME)
    }

    /// Keeps `fd` so restored tasks can get it back with [`Host::fdstore_get`].
    pub fn fdstore_add(&self, fd: OwnedFd) -> Result<i32> {
        if self.in_criu() {
            return self
                .exports
                .fdstore_add(fd.as_fd())
                .ok_or_else(|| PluginError::Device("criu fdstore_add failed".into()));
        }
        let raw = {
            use std::os::fd::AsRawFd;
            fd.as_raw_fd()
        };
        // The harness forks after init; a non-CLOEXEC fd kept open here reaches the child.
        self.kept
            .lock()
            .map_err(|_| PluginError::Device("fd keeper poisoned".into()))?
            .push(fd);
        Ok(raw)
    }

    /// Gets a new fd for an fdstore entry.
    pub fn fdstore_get(&self, id: i32) -> Result<OwnedFd> {
        if self.in_criu() {
            return self
                .exports
                .fdstore_get(id)
                .ok_or_else(|| PluginError::Device(format!("criu fdstore_get({id}) failed")));
        }
        // SAFETY-free fallback: the harness passed the raw fd number through fork.
        let kept = self
            .kept
            .lock()
            .map_err(|_| PluginError::Device("fd keeper poisoned".into()))?;
        let fd = kept
            .iter()
            .find(|f| {
                use std::os::fd::AsRawFd;
                f.as_raw_fd() == id
            })
            .ok_or_else(|| PluginError::Device(format!("no kept fd {id}")))?;
        fd.try_clone()
            .map_err(|e| PluginError::io(format!("dup kept fd {id}"), e))
    }

    /// Writes a line to CRIU's log; false outside CRIU.
    pub fn log(&self, level: u32, line: &str) -> bool {
        self.exports.print(level, line)
    }
}

enum DirFd<'a> {
    Borrowed(BorrowedFd<'a>),
    Owned(OwnedFd),
}

impl AsFd for DirFd<'_> {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            DirFd::Borrowed(b) => *b,
            DirFd::Owned(o) => o.as_fd(),
        }
    }
}
