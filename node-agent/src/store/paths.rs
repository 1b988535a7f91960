//! The store's layout on disk and its path safety: the names it reserves (`manifest.json`,
//! `*.partial`), the check every path from outside goes through ([`validate_relative`]), and
//! joins that refuse symlinks, so nothing resolves outside the store's root.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::error::{Result, StoreError, io_err};

/// The manifest's file name inside an image directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Suffix of an image directory that is still being written (or received).
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Longest relative path the store accepts (PATH_MAX).
const MAX_PATH_LEN: usize = 4096;

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
