//! Writing an image: files go into `<location>.partial`, the manifest is built from them (or
//! received), and [`Staging::publish`] fsyncs everything and renames the directory into place
//! with `RENAME_NOREPLACE`, so a reader never sees half an image and a published image is
//! never overwritten.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use jiff::Timestamp;

use super::digest::{hash_reader, sha256_hex};
use super::error::{Result, StoreError, io_err};
use super::image::Image;
use super::manifest::{FileEntry, ImageMeta, MANIFEST_VERSION, Manifest};
use super::paths::{MANIFEST_FILE, PARTIAL_SUFFIX, list_files, open_beneath, safe_join};

/// An image being written: files go into [`Staging::dir`], then [`Staging::publish`].
#[derive(Debug)]
pub struct Staging {
    pub(super) location: String,
    /// The store's root (staged files are opened beneath it).
    pub(super) root: PathBuf,
    /// Where the image goes when published.
    pub(super) target: PathBuf,
    pub(super) partial: PathBuf,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync {}", dir.display())))
}

impl Staging {
    /// The directory to write the image's files into (`<location>.partial`).
    pub fn dir(&self) -> &Path {
        &self.partial
    }

    /// The image's location in the store.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Opens a staged file beneath the store's root, symlinks refused (`paths::open_beneath`).
    fn open_staged(&self, rel: &str) -> Result<File> {
        open_beneath(
            &self.root,
            &format!("{}{PARTIAL_SUFFIX}/{rel}", self.location),
        )
    }

    /// A file's path inside the staging directory; `rel` is validated (it may come from a
    /// remote manifest). Parent directories are created.
    pub fn file_path(&self, rel: &str) -> Result<PathBuf> {
        let path = safe_join(&self.partial, rel)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        }
        Ok(path)
    }

    /// Hashes every file written so far into a manifest with `meta`.
    pub fn build_manifest(&self, meta: ImageMeta) -> Result<Manifest> {
        let mut files = Vec::new();
        for rel in list_files(&self.partial)? {
            let path = self.partial.join(&rel);
            let (size, sha256) = hash_reader(self.open_staged(&rel)?)
                .map_err(io_err(format!("hash {}", path.display())))?;
            files.push(FileEntry {
                path: rel,
                size,
                sha256,
            });
        }
        Ok(Manifest {
            version: MANIFEST_VERSION,
            created_at: Timestamp::now(),
            meta,
            files,
        })
    }

    /// Publishes the image with `manifest`: checks that the staged files are exactly the
    /// manifest's (names and sizes; digests are the caller's job, done while writing or by
    /// [`Staging::build_manifest`]), writes the manifest, fsyncs everything and renames the
    /// directory into place. Never replaces an existing image.
    pub fn publish(self, manifest: &Manifest) -> Result<Image> {
        let bytes = manifest.to_bytes();
        self.publish_bytes(manifest, bytes)
    }

    /// Like [`Staging::publish`], but stores `bytes` as the manifest verbatim: `manifest` must
    /// be what they parse to ([`Manifest::from_bytes`]). A transfer publishes the source's
    /// manifest bytes unchanged, so the image keeps its digest (a re-serialization could differ,
    /// e.g. in a float's last digit or in the order of keys of a JSON value).
    pub fn publish_bytes(self, manifest: &Manifest, bytes: Vec<u8>) -> Result<Image> {
        let staged = list_files(&self.partial)?;
        let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        if staged.iter().map(String::as_str).ne(listed.iter().copied()) {
            let missing: Vec<&str> = listed
                .iter()
                .filter(|p| !staged.iter().any(|s| s == *p))
                .copied()
                .collect();
            return Err(StoreError::BadManifest {
                location: self.location.clone(),
                reason: format!(
                    "staged files differ from the manifest (missing: {missing:?}, staged {} files, manifest {})",
                    staged.len(),
                    listed.len()
                ),
            });
        }
        let mut dirs = HashSet::new();
        for entry in &manifest.files {
            let path = self.partial.join(&entry.path);
            let file = self.open_staged(&entry.path)?;
            let size = file
                .metadata()
                .map_err(io_err(format!("stat {}", path.display())))?
                .len();
            entry.check_size(size)?;
            file.sync_all()
                .map_err(io_err(format!("fsync {}", path.display())))?;
            if let Some(parent) = path.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        let manifest_path = self.partial.join(MANIFEST_FILE);
        {
            let mut file = File::create(&manifest_path)
                .map_err(io_err(format!("create {}", manifest_path.display())))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_err(format!("write {}", manifest_path.display())))?;
        }
        dirs.insert(self.partial.clone());
        for dir in &dirs {
            fsync_dir(dir)?;
        }
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &self.partial,
            rustix::fs::CWD,
            &self.target,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                StoreError::AlreadyExists(self.location.clone())
            } else {
                io_err(format!(
                    "rename {} to {}",
                    self.partial.display(),
                    self.target.display()
                ))(e.into())
            }
        })?;
        if let Some(parent) = self.target.parent() {
            fsync_dir(parent)?;
        }
        Ok(Image {
            location: self.location,
            root: self.root,
            dir: self.target,
            digest: sha256_hex(&bytes),
            manifest: manifest.clone(),
            manifest_bytes: bytes,
        })
    }

    /// Removes the staged files.
    pub fn discard(self) -> Result<()> {
        match fs::remove_dir_all(&self.partial) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove {}", self.partial.display()))(e)),
        }
    }
}
