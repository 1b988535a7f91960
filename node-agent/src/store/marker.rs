//! The marker that makes a directory one of ferry's stores (`.ferry-store` at its root).
//!
//! GC deletes under a store's root, and an allowed hostPath may be any directory an
//! administrator names, so the store first claims the directory: an empty one (or one that
//! holds nothing but ferry's own `<namespace>/<request>` images, as a store of an agent older
//! than the marker does) gets the marker; any other content means the directory is not
//! ferry's, and opening it as a store fails, before anything in it can be collected. Adopting
//! only what has ferry's shape keeps upgrades working without a manual step, and nothing
//! foreign is ever under a marked root unless someone puts it there afterwards (GC then looks
//! at `<namespace>/<request>` only and moves what does not parse aside, see `gc`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::error::{Result, StoreError, io_err};
use super::paths::{MANIFEST_FILE, MARKER_FILE, PARTIAL_SUFFIX};

/// What the marker file says, for a person who finds it.
const MARKER_TEXT: &[u8] =
    b"ferry image store: ferry's agent garbage-collects <namespace>/<request> images here\n";

/// Makes sure `root` (an existing directory) is a store: marked already, or claimed now if it
/// is empty or holds only ferry's images. Fails with [`StoreError::ForeignDirectory`]
/// otherwise, touching nothing.
pub(super) fn claim(root: &Path) -> Result<()> {
    let marker = root.join(MARKER_FILE);
    match fs::symlink_metadata(&marker) {
        Ok(m) if m.file_type().is_file() => return Ok(()),
        Ok(_) => {
            return Err(StoreError::ForeignDirectory {
                root: root.display().to_string(),
                found: format!("{MARKER_FILE} that is not a regular file"),
            });
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("stat {}", marker.display()))(e)),
    }
    if let Some(found) = first_foreign(root)? {
        return Err(StoreError::ForeignDirectory {
            root: root.display().to_string(),
            found,
        });
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&marker)
    {
        Ok(mut file) => file
            .write_all(MARKER_TEXT)
            .and_then(|()| file.sync_all())
            .map_err(io_err(format!("write {}", marker.display())))?,
        // Another opener of the same root (the server, GC, a test) claimed it first.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(format!("create {}", marker.display()))(e)),
    }
    fs::File::open(root)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync {}", root.display())))
}

/// The first entry of `root` that ferry did not write, relative to it: anything but
/// `<namespace>/<request>` directories that are published images or partials.
fn first_foreign(root: &Path) -> Result<Option<String>> {
    let read = |dir: &Path| fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())));
    for ns in read(root)? {
        let ns = ns.map_err(io_err(format!("read {}", root.display())))?;
        let ns_name = ns.file_name().to_string_lossy().into_owned();
        let is_dir = ns.file_type().is_ok_and(|t| t.is_dir());
        if !is_dir || ns_name.starts_with('.') {
            return Ok(Some(ns_name));
        }
        for image in read(&ns.path())? {
            let image = image.map_err(io_err(format!("read {}", ns.path().display())))?;
            let name = image.file_name().to_string_lossy().into_owned();
            let rel = format!("{ns_name}/{name}");
            if !image.file_type().is_ok_and(|t| t.is_dir()) {
                return Ok(Some(rel));
            }
            let published = fs::symlink_metadata(image.path().join(MANIFEST_FILE))
                .is_ok_and(|m| m.file_type().is_file());
            if !(published || name.ends_with(PARTIAL_SUFFIX)) {
                return Ok(Some(rel));
            }
        }
    }
    Ok(None)
}
