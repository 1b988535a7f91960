//! What a store holds: every published image and every partial at `<namespace>/<request>`,
//! with its age and size, for GC and status; and the image directories there whose manifest
//! does not parse, which GC moves aside instead of deleting.
//!
//! Only that depth is looked at: the operator puts every image there, and anything else under
//! the root (deeper directories, files, names starting with a dot) is not an image, so it is
//! neither listed nor collected.

use std::fs;
use std::path::Path;

use jiff::Timestamp;
use tracing::warn;

use super::error::{Result, io_err};
use super::paths::{MANIFEST_FILE, PARTIAL_SUFFIX, list_files};
use super::root::Store;

/// An image or a partial in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Location relative to the root.
    pub location: String,
    /// Still being written or received.
    pub partial: bool,
    /// Published (images) or last modified (partials).
    pub created_at: Timestamp,
    /// Bytes of its files.
    pub bytes: u64,
}

/// What a scan of a store found.
#[derive(Clone, Debug, Default)]
pub(super) struct Scan {
    /// Images and partials.
    pub entries: Vec<Entry>,
    /// `<namespace>/<request>` directories with a `manifest.json` that does not parse (or
    /// cannot be read), with why.
    pub unreadable: Vec<(String, String)>,
}

impl Store {
    /// Every published image and every partial at `<namespace>/<request>`, for GC and status.
    /// Image directories whose manifest does not parse are left out (and logged).
    pub fn list(&self) -> Result<Vec<Entry>> {
        let scan = self.scan()?;
        for (location, error) in &scan.unreadable {
            warn!(store = %self.root().display(), location = %location, error = %error, "unreadable image manifest; GC moves it aside");
        }
        Ok(scan.entries)
    }

    /// Reads the store's two levels: `<namespace>` directories, and in each the image
    /// directories and partials. Symlinks are not followed.
    pub(super) fn scan(&self) -> Result<Scan> {
        let mut scan = Scan::default();
        for (ns, ns_path) in subdirs(self.root())? {
            if ns.starts_with('.') {
                // The marker, the quarantine: the store's own, not images.
                continue;
            }
            for (name, path) in subdirs(&ns_path)? {
                if let Some(request) = name.strip_suffix(PARTIAL_SUFFIX) {
                    let modified = fs::symlink_metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| Timestamp::try_from(t).ok())
                        .unwrap_or(Timestamp::UNIX_EPOCH);
                    scan.entries.push(Entry {
                        location: format!("{ns}/{request}"),
                        partial: true,
                        created_at: modified,
                        bytes: dir_bytes(&path),
                    });
                    continue;
                }
                let has_manifest = fs::symlink_metadata(path.join(MANIFEST_FILE))
                    .is_ok_and(|m| m.file_type().is_file());
                if !has_manifest {
                    // Not an image (ferry publishes manifest and files in one rename).
                    continue;
                }
                let location = format!("{ns}/{name}");
                match self.open_image(&location) {
                    Ok(image) => scan.entries.push(Entry {
                        bytes: image.manifest.total_bytes(),
                        created_at: image.manifest.created_at,
                        location,
                        partial: false,
                    }),
                    Err(e) => scan.unreadable.push((location, e.to_string())),
                }
            }
        }
        scan.entries.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(scan)
    }
}

/// The subdirectories of `dir` (not symlinks to one) whose names are UTF-8, by name and path.
fn subdirs(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))? {
        let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if let Ok(name) = entry.file_name().into_string() {
            out.push((name, entry.path()));
        }
    }
    Ok(out)
}

fn dir_bytes(dir: &Path) -> u64 {
    list_files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| fs::symlink_metadata(dir.join(f)).ok())
        .fold(0u64, |sum, m| sum.saturating_add(m.len()))
}
