//! Disk space: failing fast when an image cannot fit, recognizing a full disk in a write
//! error, and naming the filesystem in the message.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::store::{Manifest, Staging};
use crate::transfer::error::{Result, TransferError, io_err};

/// Whether a write failed because the filesystem (or the quota) is full.
pub(super) fn is_no_space(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(code) if code == libc::ENOSPC || code == libc::EDQUOT)
}

/// Fails fast when the image cannot fit, before a byte is written.
pub(super) fn check_free_space(staging: &Staging, manifest: &Manifest) -> Result<()> {
    let mut needed = 0u64;
    for entry in &manifest.files {
        let have = staging
            .file_path(&entry.path)
            .ok()
            .and_then(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .filter(|&len| len <= entry.size)
            .unwrap_or(0);
        needed += entry.size - have;
    }
    let stat = rustix::fs::statvfs(staging.dir())
        .map_err(|e| io_err(format!("statvfs {}", staging.dir().display()))(io::Error::from(e)))?;
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    if needed > free {
        return Err(TransferError::NoSpace {
            fs: mount_point(staging.dir()).display().to_string(),
            detail: format!("the image needs {needed} more bytes, {free} are free"),
        });
    }
    Ok(())
}

/// The mount point of the filesystem holding `path` (for error messages).
pub(super) fn mount_point(path: &Path) -> PathBuf {
    let Ok(dev) = fs::metadata(path).map(|m| m.dev()) else {
        return path.to_path_buf();
    };
    let mut current = path;
    while let Some(parent) = current.parent() {
        match fs::metadata(parent) {
            Ok(m) if m.dev() == dev => current = parent,
            _ => break,
        }
    }
    current.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_or_quota_is_no_space_and_the_mount_point_contains_the_path() {
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(is_no_space(&io::Error::from_raw_os_error(libc::EDQUOT)));
        assert!(!is_no_space(&io::Error::from_raw_os_error(libc::EIO)));
        let tmp = tempfile::tempdir().unwrap();
        assert!(tmp.path().starts_with(mount_point(tmp.path())));
    }
}
