//! Where a runtime's files go: the names CRIU and runc write into an image or restore
//! directory, and the *restore directory* a restore runs in.
//!
//! **A restore never modifies the image.** CRIU writes into its image directory on restore
//! (`stats-restore`, and ferry's plugin writes `ferry-restore-stats.json` next to the images),
//! so restores do not run in the published image: [`restore_dir`] builds a *restore
//! directory* under the job's `work_dir` holding a **hard link** to each image file (a copy
//! when the work dir is on another filesystem); CRIU reads the images through the links and
//! everything it writes (log, stats, pidfile) is a new file in the restore directory. The
//! names a restore writes are never linked, CRIU opens images read-only on restore, and the
//! plugin replaces its stats file by rename, so nothing writes through a link into the image.
//! Symlinks do not work: CRIU opens some images from inside the restored task after it
//! switched to the container's mount namespace, where an absolute link target does not
//! resolve (`No pagemap-1.img image`, seen with runc). Hard links also keep a restore's input
//! alive if the image is garbage-collected meanwhile. A failed restore leaves the image as it
//! was, and the restore directory (with the log) for the operator.
//!
//! This module names files only; it runs no tool, so every mechanism can use it.

use std::path::Path;

use crate::runtime::error::{Result, RuntimeError, io_err};
use crate::store::MANIFEST_FILE;

/// CRIU's dump log, inside the dumped image directory.
pub const DUMP_LOG: &str = "criu-dump.log";
/// CRIU's restore log, inside the restore directory.
pub const RESTORE_LOG: &str = "criu-restore.log";
/// The pidfile a detached restore writes, inside the restore directory.
pub const RESTORE_PIDFILE: &str = "restore.pid";
/// CRIU's log as runc names it, in the work path.
pub const RUNC_DUMP_LOG: &str = "dump.log";
/// CRIU's restore log as runc names it, in the work path.
pub const RUNC_RESTORE_LOG: &str = "restore.log";
/// runc's stderr during a checkpoint, in the container's image dir.
pub const RUNC_CHECKPOINT_STDERR: &str = "runc-checkpoint.log";
/// runc's stderr during a restore, in the restore dir.
pub const RUNC_RESTORE_STDERR: &str = "runc-restore.log";
/// The restored container's init pid, in the restore dir.
pub const RUNC_PIDFILE: &str = "runc.pid";

/// Files a restore writes into CRIU's image dir; never linked into a restore directory, so a
/// write to one can never go through a link into the image.
const RESTORE_OUTPUTS: &[&str] = &[
    MANIFEST_FILE,
    RESTORE_LOG,
    RESTORE_PIDFILE,
    RUNC_RESTORE_LOG,
    "stats-restore",
    ferry_api::stats::RESTORE_STATS_FILE,
    RUNC_RESTORE_STDERR,
    RUNC_PIDFILE,
];

/// Builds the restore directory `dst` for the image directory `src`: a fresh directory tree
/// with one hard link (or, across filesystems, a copy) per file of `src` (see the module docs). A stale `dst` from an
/// earlier attempt is replaced.
pub fn restore_dir(src: &Path, dst: &Path) -> Result<()> {
    if !src.is_dir() {
        return Err(RuntimeError::Invalid(format!(
            "{} is not an image directory",
            src.display()
        )));
    }
    match std::fs::remove_dir_all(dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove stale {}", dst.display()))(e)),
    }
    link_tree(src, dst)
}

fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io_err(format!("create {}", dst.display())))?;
    let entries = std::fs::read_dir(src).map_err(io_err(format!("read {}", src.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("read {}", src.display())))?;
        let name = entry.file_name();
        let ty = entry
            .file_type()
            .map_err(io_err(format!("stat {}", entry.path().display())))?;
        let to = dst.join(&name);
        if ty.is_dir() {
            link_tree(&entry.path(), &to)?;
        } else if ty.is_file() {
            if RESTORE_OUTPUTS.iter().any(|o| name == *o) {
                continue;
            }
            match std::fs::hard_link(entry.path(), &to) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    // Correct but slow for GPU-sized images: keep the work dir on the store's
                    // filesystem.
                    tracing::warn!(file = %entry.path().display(), restore_dir = %dst.display(), "restore dir is on another filesystem than the image; copying");
                    std::fs::copy(entry.path(), &to)
                        .map_err(io_err(format!("copy {}", to.display())))?;
                }
                Err(e) => return Err(io_err(format!("link {}", to.display()))(e)),
            }
        }
        // Symlinks and special files are not part of a published image (the store refuses
        // them); skip rather than follow.
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_restore_dir_links_every_image_file_but_restore_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("img");
        std::fs::create_dir_all(src.join("c/sub")).unwrap();
        std::fs::write(src.join("c/pages-1.img"), b"p").unwrap();
        std::fs::write(src.join("c/sub/x.img"), b"x").unwrap();
        std::fs::write(src.join("c/stats-restore"), b"old").unwrap();
        std::fs::write(src.join(MANIFEST_FILE), b"{}").unwrap();
        let dst = tmp.path().join("work/c");
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(dst.join("stale"), b"").unwrap();
        restore_dir(&src.join("c"), &dst).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(&dst.join("pages-1.img")),
            ino(&src.join("c/pages-1.img"))
        );
        assert_eq!(std::fs::read(dst.join("sub/x.img")).unwrap(), b"x");
        assert!(!dst.join("stats-restore").exists());
        assert!(!dst.join("stale").exists());
        assert!(restore_dir(&src.join("nope"), &dst).is_err());
    }
}
