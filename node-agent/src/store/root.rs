//! One store: a root directory holding images by relative location. Opening, staging,
//! reading, holding and deleting images; listing and GC are in `entries` and `gc`.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use super::digest::sha256_hex;
use super::error::{Result, StoreError, io_err};
use super::image::Image;
use super::in_use;
use super::manifest::{MAX_MANIFEST_BYTES, Manifest};
use super::marker;
use super::paths::{MANIFEST_FILE, open_beneath, partial_name, safe_join, validate_location};
use super::staging::Staging;

/// The store: a root directory holding images by relative location.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating it if needed) the store at `root`. A directory without the store
    /// marker is claimed if it is empty or holds only ferry's images, and refused otherwise
    /// ([`StoreError::ForeignDirectory`]; see `marker`).
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(format!("create {}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(io_err(format!("resolve {}", root.display())))?;
        marker::claim(&root)?;
        Ok(Store { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the image at `location` (published or not).
    pub fn image_dir(&self, location: &str) -> Result<PathBuf> {
        validate_location(location)?;
        safe_join(&self.root, location)
    }

    /// Bytes free for the agent on the store's filesystem (`statvfs`'s `f_bavail`).
    pub fn free_bytes(&self) -> Result<u64> {
        let stat = rustix::fs::statvfs(&self.root)
            .map_err(|e| io_err(format!("statvfs {}", self.root.display()))(e.into()))?;
        Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
    }

    /// Fails with [`StoreError::NoSpace`] unless `need` bytes are free for `what`.
    pub fn ensure_room(&self, need: u64, what: &str) -> Result<()> {
        let free = self.free_bytes()?;
        if need > free {
            return Err(StoreError::NoSpace {
                root: self.root.display().to_string(),
                what: what.to_string(),
                need,
                free,
            });
        }
        Ok(())
    }

    /// Whether a published image exists at `location`.
    pub fn exists(&self, location: &str) -> Result<bool> {
        Ok(self.image_dir(location)?.join(MANIFEST_FILE).is_file())
    }

    /// Starts a new image at `location`: an empty `<location>.partial` directory (a stale one
    /// from a crashed attempt is removed). Fails if the image is already published.
    pub fn stage(&self, location: &str) -> Result<Staging> {
        let staging = self.staging(location)?;
        if staging.partial.exists() {
            fs::remove_dir_all(&staging.partial).map_err(io_err(format!(
                "remove stale {}",
                staging.partial.display()
            )))?;
        }
        fs::create_dir_all(&staging.partial)
            .map_err(io_err(format!("create {}", staging.partial.display())))?;
        Ok(staging)
    }

    /// Like [`Store::stage`], but keeps what an earlier attempt left in `<location>.partial`
    /// (a transfer resumes from it).
    pub fn resume(&self, location: &str) -> Result<Staging> {
        let staging = self.staging(location)?;
        fs::create_dir_all(&staging.partial)
            .map_err(io_err(format!("create {}", staging.partial.display())))?;
        Ok(staging)
    }

    fn staging(&self, location: &str) -> Result<Staging> {
        let dir = self.image_dir(location)?;
        if dir.exists() {
            return Err(StoreError::AlreadyExists(location.to_string()));
        }
        let partial = partial_name(&dir);
        if fs::symlink_metadata(&partial).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(StoreError::InvalidPath {
                path: location.to_string(),
                reason: "its .partial directory is a symlink",
            });
        }
        Ok(Staging {
            location: location.to_string(),
            root: self.root.clone(),
            target: dir,
            partial,
        })
    }

    /// Opens the published image at `location` and parses its manifest (read beneath the
    /// root with symlinks refused, and at most [`MAX_MANIFEST_BYTES`] + 1 of it).
    pub fn open_image(&self, location: &str) -> Result<Image> {
        let dir = self.image_dir(location)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let file = match open_beneath(&self.root, &format!("{location}/{MANIFEST_FILE}")) {
            Ok(file) => file,
            Err(StoreError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(location.to_string()));
            }
            Err(e) => return Err(e),
        };
        let mut bytes = Vec::new();
        file.take(MAX_MANIFEST_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(io_err(format!("read {}", manifest_path.display())))?;
        let manifest = Manifest::from_bytes(location, &bytes)?;
        Ok(Image {
            location: location.to_string(),
            digest: sha256_hex(&bytes),
            dir,
            manifest,
            manifest_bytes: bytes,
            root: self.root.clone(),
        })
    }

    /// Marks the image at `location` in use (GC spares it) until the [`in_use::Hold`] drops.
    pub fn hold(&self, location: &str) -> Result<in_use::Hold> {
        Ok(in_use::hold(self.image_dir(location)?))
    }

    /// Records that the image at `location` was just used (served): GC spares it for
    /// [`in_use::RECENT`].
    pub fn touch(&self, location: &str) -> Result<()> {
        in_use::touch(&self.image_dir(location)?);
        Ok(())
    }

    /// Deletes the image at `location` and any partial of it. Returns whether there was one.
    pub fn delete(&self, location: &str) -> Result<bool> {
        let dir = self.image_dir(location)?;
        let mut found = false;
        for path in [partial_name(&dir), dir] {
            match fs::remove_dir_all(&path) {
                Ok(()) => found = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
            }
        }
        Ok(found)
    }
}
