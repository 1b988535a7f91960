//! A published image: its directory, its manifest as stored (whose SHA-256 is the image's
//! identity), safe access to its files and re-verification against the manifest.

use std::fs::File;
use std::path::PathBuf;

use super::digest::hash_reader;
use super::error::{Result, StoreError, io_err};
use super::manifest::{FileEntry, Manifest};
use super::paths::{open_beneath, safe_join, validate_relative};

/// A published image.
#[derive(Clone, Debug)]
pub struct Image {
    /// Its location in the store.
    pub location: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The manifest's bytes as stored (what a transfer sends).
    pub manifest_bytes: Vec<u8>,
    /// SHA-256 (hex) of [`Image::manifest_bytes`]: the image's identity.
    pub digest: String,
    /// The store's root (files are opened beneath it).
    pub(super) root: PathBuf,
}

impl Image {
    /// The path of one of the image's files (`rel` validated; symlinks refused).
    pub fn file_path(&self, rel: &str) -> Result<PathBuf> {
        safe_join(&self.dir, rel)
    }

    /// Opens one of the image's files for reading, resolved by the kernel beneath the store's
    /// root with every symlink refused (see `paths::open_beneath`): what serving and
    /// verifying read is the image's own file, even if its directories are swapped meanwhile.
    pub fn open_file(&self, rel: &str) -> Result<File> {
        validate_relative(rel)?;
        open_beneath(&self.root, &format!("{}/{rel}", self.location))
    }

    /// The manifest entry for `rel`.
    pub fn entry(&self, rel: &str) -> Option<&FileEntry> {
        self.manifest.files.iter().find(|f| f.path == rel)
    }

    /// Re-hashes every file and compares with the manifest.
    pub fn verify(&self) -> Result<()> {
        for entry in &self.manifest.files {
            let file = self.open_file(&entry.path)?;
            let (size, sha256) = hash_reader(file).map_err(io_err(format!(
                "hash {}",
                self.dir.join(&entry.path).display()
            )))?;
            entry.check_size(size)?;
            if sha256 != entry.sha256 {
                return Err(StoreError::Mismatch {
                    path: entry.path.clone(),
                    what: "sha256",
                    expected: entry.sha256.clone(),
                    actual: sha256,
                });
            }
        }
        Ok(())
    }
}
