//! A published image: its directory, its manifest as stored (whose SHA-256 is the image's
//! identity), safe access to its files and re-verification against the manifest.

use std::path::PathBuf;

use super::digest::hash_file;
use super::error::{Result, StoreError, io_err};
use super::manifest::{FileEntry, Manifest};
use super::paths::safe_join;

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
}

impl Image {
    /// The path of one of the image's files (`rel` validated; symlinks refused).
    pub fn file_path(&self, rel: &str) -> Result<PathBuf> {
        safe_join(&self.dir, rel)
    }

    /// The manifest entry for `rel`.
    pub fn entry(&self, rel: &str) -> Option<&FileEntry> {
        self.manifest.files.iter().find(|f| f.path == rel)
    }

    /// Re-hashes every file and compares with the manifest.
    pub fn verify(&self) -> Result<()> {
        for entry in &self.manifest.files {
            let path = self.file_path(&entry.path)?;
            let (size, sha256) =
                hash_file(&path).map_err(io_err(format!("hash {}", path.display())))?;
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
