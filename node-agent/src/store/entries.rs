//! What a store holds: every published image and every partial, with its age and size, for
//! GC and status.

use std::fs;
use std::path::Path;

use jiff::Timestamp;

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

impl Store {
    /// Every published image and every partial, for GC and status.
    pub fn list(&self) -> Result<Vec<Entry>> {
        fn walk(store: &Store, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
            let entries = fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
            for entry in entries {
                let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
                let path = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if !is_dir {
                    continue;
                }
                let Some(rel) = path
                    .strip_prefix(store.root())
                    .ok()
                    .and_then(|p| p.to_str())
                    .map(str::to_string)
                else {
                    continue;
                };
                if let Some(location) = rel.strip_suffix(PARTIAL_SUFFIX) {
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| Timestamp::try_from(t).ok())
                        .unwrap_or(Timestamp::UNIX_EPOCH);
                    out.push(Entry {
                        location: location.to_string(),
                        partial: true,
                        created_at: modified,
                        bytes: dir_bytes(&path),
                    });
                } else if path.join(MANIFEST_FILE).is_file() {
                    match store.open_image(&rel) {
                        Ok(image) => out.push(Entry {
                            location: rel,
                            partial: false,
                            created_at: image.manifest.created_at,
                            bytes: image.manifest.total_bytes(),
                        }),
                        Err(e) => {
                            tracing::warn!(location = %rel, error = %e, "unreadable image manifest; GC treats it as old");
                            out.push(Entry {
                                location: rel,
                                partial: false,
                                created_at: Timestamp::UNIX_EPOCH,
                                bytes: dir_bytes(&path),
                            });
                        }
                    }
                } else {
                    walk(store, &path, out)?;
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(self, self.root(), &mut out)?;
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    list_files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}
