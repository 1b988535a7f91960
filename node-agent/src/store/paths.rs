//! The store's layout on disk and its path safety: the names it reserves (`manifest.json`,
//! `*.partial`), the check every path from outside goes through ([`validate_relative`]), and
//! joins that refuse symlinks, and [`open_beneath`], which opens a file under the root with
//! the kernel refusing every symlink on the way (no check-then-open race).

use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::error::{Result, StoreError, io_err};

/// The manifest's file name inside an image directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Suffix of an image directory that is still being written (or received).
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Longest relative path the store accepts (PATH_MAX).
const MAX_PATH_LEN: usize = 4096;
/// The file at a store's root that says ferry owns the directory: GC deletes only under a root
/// that has it ([`super::marker`]).
pub const MARKER_FILE: &str = ".ferry-store";
/// Where GC moves image directories whose manifest does not parse, instead of deleting them.
/// Its leading dot keeps it apart from every location (namespaces never start with a dot).
pub const QUARANTINE_DIR: &str = ".ferry-quarantine";

/// Checks that `path` is a plain relative path: not empty, not absolute, no `.`/`..`/empty
/// segments, no NUL, no `.partial` segment (the store's own staging names).
pub fn validate_relative(path: &str) -> Result<()> {
    let refuse = |reason| {
        Err(StoreError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return refuse("empty");
    }
    if path.len() > MAX_PATH_LEN {
        return refuse("longer than PATH_MAX");
    }
    if path.contains('\0') {
        return refuse("contains NUL");
    }
    if path.starts_with('/') {
        return refuse("absolute");
    }
    for segment in path.split('/') {
        match segment {
            "" => return refuse("empty segment"),
            "." | ".." => return refuse("'.' or '..' segment"),
            s if s.ends_with(PARTIAL_SUFFIX) => return refuse("a '.partial' segment"),
            _ => {}
        }
    }
    // Belt and braces: the segment checks above imply only Normal components.
    if !Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return refuse("not a plain relative path");
    }
    Ok(())
}

/// Checks an image location: a [`validate_relative`] path whose first segment does not start
/// with a dot, so no location names the store's own files ([`MARKER_FILE`], [`QUARANTINE_DIR`]).
pub fn validate_location(location: &str) -> Result<()> {
    validate_relative(location)?;
    if location.starts_with('.') {
        return Err(StoreError::InvalidPath {
            path: location.to_string(),
            reason: "a location may not start with '.' (the store's own names)",
        });
    }
    Ok(())
}

/// Opens the regular file `rel` under `root` read-only. The kernel resolves `rel` beneath
/// `root` and refuses any symlink on the way (`openat2` with `RESOLVE_BENEATH |
/// RESOLVE_NO_SYMLINKS`), so a link planted in an image, or swapped in for one of its
/// directories between a check and the open, cannot make the store read outside its root.
/// `rel` is not validated here (staged files sit under `*.partial`): the kernel's resolution is
/// the guard.
pub(super) fn open_beneath(root: &Path, rel: &str) -> Result<File> {
    let refuse = |reason| StoreError::InvalidPath {
        path: rel.to_string(),
        reason,
    };
    let dir = rustix::fs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_err(format!("open {}", root.display()))(e.into()))?;
    // NONBLOCK: opening a FIFO planted in an image must not hang the agent; regular files
    // ignore it.
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    // EAGAIN: a rename raced the lookup; the kernel asks for a retry.
    let mut tries = 0;
    let fd = loop {
        match rustix::fs::openat2(&dir, rel, flags, Mode::empty(), resolve) {
            Err(Errno::AGAIN) if tries < 8 => tries += 1,
            Err(Errno::LOOP) => return Err(refuse("goes through a symlink")),
            Err(Errno::XDEV) => return Err(refuse("resolves outside the store")),
            Err(e) => {
                return Err(io_err(format!("open {}", root.join(rel).display()))(
                    e.into(),
                ));
            }
            Ok(fd) => break fd,
        }
    };
    let stat = rustix::fs::fstat(&fd)
        .map_err(|e| io_err(format!("stat {}", root.join(rel).display()))(e.into()))?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        return Err(refuse("not a regular file"));
    }
    Ok(File::from(fd))
}

/// Joins `rel` (validated) onto `base`, refusing a symlink at any existing component below
/// `base`, so a planted link cannot redirect a write or a read outside the store.
pub(super) fn safe_join(base: &Path, rel: &str) -> Result<PathBuf> {
    validate_relative(rel)?;
    let mut path = base.to_path_buf();
    for segment in rel.split('/') {
        path.push(segment);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(StoreError::InvalidPath {
                    path: rel.to_string(),
                    reason: "goes through a symlink",
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
        }
    }
    Ok(base.join(rel))
}

/// `<dir>.partial`: where the image that goes to `dir` is written.
pub(super) fn partial_name(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(PARTIAL_SUFFIX);
    PathBuf::from(name)
}

/// Every regular file under `dir`, as sorted `/`-separated relative paths (the manifest
/// excluded). Symlinks and special files are refused: an image is plain files only.
pub(super) fn list_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let entries = fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(io_err(format!("stat {}", path.display())))?;
            let rel = path
                .strip_prefix(root)
                .ok()
                .and_then(|p| p.to_str())
                .ok_or_else(|| StoreError::InvalidPath {
                    path: path.display().to_string(),
                    reason: "not UTF-8",
                })?
                .to_string();
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                if rel != MANIFEST_FILE {
                    out.push(rel);
                }
            } else {
                return Err(StoreError::InvalidPath {
                    path: rel,
                    reason: "not a regular file or directory",
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_are_validated() {
        for ok in ["a", "ns/req", "ns/req/c/pages-1.img", "a.b/c-d_e"] {
            validate_relative(ok).unwrap();
        }
        for bad in [
            "",
            "/abs",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a/./b",
            "x.partial",
            "a/b.partial/c",
            "a\0b",
        ] {
            assert!(
                matches!(validate_relative(bad), Err(StoreError::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
    }
}
