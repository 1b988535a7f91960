//! Render nodes (`/dev/dri/renderD<minor>`) and device classification.
//!
//! The `drm` crate opens nothing for us but gives the safe `DRM_IOCTL_VERSION` wrapper
//! (`Device::get_driver`) used to confirm a render node belongs to `amdgpu`; everything
//! amdgpu-specific on the node (BO import, VA, command submission) goes through
//! libdrm_amdgpu ([`super::ioctl`]), as upstream does, because the `drm` crate has no amdgpu
//! ioctls.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};

use crate::error::{PluginError, Result};

/// First and last render-node minors (`DRM_FIRST_RENDER_NODE`, `DRM_LAST_RENDER_NODE`).
pub const FIRST_RENDER_MINOR: u32 = 128;
pub const LAST_RENDER_MINOR: u32 = 255;
/// The DRM character-device major.
pub const DRM_MAJOR: u32 = 226;

/// What a device fd or mapping is, from its `st_rdev`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceKind {
    /// `/dev/kfd`.
    Kfd,
    /// A DRM render node with this minor.
    Render(u32),
    /// Something else.
    Other,
}

/// Classifies `rdev` against the local `/dev/kfd`'s `kfd_rdev` (None when absent). The
/// KFD is the character device with kfd's major and minor 0, as upstream checks.
pub fn classify(rdev: u64, kfd_rdev: Option<u64>) -> DeviceKind {
    let (maj, min) = (rustix::fs::major(rdev), rustix::fs::minor(rdev));
    if kfd_rdev.is_some_and(|k| maj == rustix::fs::major(k) && min == 0) {
        return DeviceKind::Kfd;
    }
    if maj == DRM_MAJOR && (FIRST_RENDER_MINOR..=LAST_RENDER_MINOR).contains(&min) {
        return DeviceKind::Render(min);
    }
    DeviceKind::Other
}

/// `<dev_root>/dri/renderD<minor>`.
pub fn render_path(dev_root: &Path, minor: u32) -> PathBuf {
    dev_root.join("dri").join(format!("renderD{minor}"))
}

/// An open render node.
pub struct RenderNode(OwnedFd);

impl AsFd for RenderNode {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl ::drm::Device for RenderNode {}

impl RenderNode {
    /// Opens render node `minor` read-write (close-on-exec).
    pub fn open(dev_root: &Path, minor: u32) -> Result<RenderNode> {
        if !(FIRST_RENDER_MINOR..=LAST_RENDER_MINOR).contains(&minor) {
            return Err(PluginError::invalid(format!(
                "DRM render minor {minor} is outside {FIRST_RENDER_MINOR}..={LAST_RENDER_MINOR}"
            )));
        }
        let path = render_path(dev_root, minor);
        let fd = rustix::fs::open(&path, OFlags::RDWR | OFlags::CLOEXEC, Mode::empty()).map_err(|e| {
            let hint = if e == rustix::io::Errno::ACCESS {
                " (is the user in the \"render\"/\"video\" group, and is the device in the container?)"
            } else {
                ""
            };
            PluginError::io(format!("open {}{hint}", path.display()), e.into())
        })?;
        Ok(RenderNode(fd))
    }

    /// Opens render node `minor` and checks that `amdgpu` drives it (a wrong minor — e.g.
    /// from a stale topology — would otherwise surface as an obscure libdrm error).
    pub fn open_amdgpu(dev_root: &Path, minor: u32) -> Result<RenderNode> {
        let node = Self::open(dev_root, minor)?;
        let name = node.driver_name()?;
        if name != "amdgpu" {
            return Err(PluginError::Device(format!(
                "renderD{minor} is driven by {name:?}, not amdgpu; the KFD topology and /dev/dri disagree"
            )));
        }
        Ok(node)
    }

    /// The kernel driver's name (`DRM_IOCTL_VERSION`), e.g. `amdgpu`.
    pub fn driver_name(&self) -> Result<String> {
        use ::drm::Device;
        let d = self
            .get_driver()
            .map_err(|e| PluginError::io("DRM_IOCTL_VERSION on render node", e))?;
        Ok(d.name().to_string_lossy().into_owned())
    }

    /// Moves the fd to a number `>= min` (so it cannot clash with fds CRIU restores later
    /// in the task); `min <= 0` keeps it where it is.
    pub fn into_fd_at_least(self, min: RawFd) -> Result<OwnedFd> {
        if min <= 0 {
            return Ok(self.0);
        }
        rustix::io::fcntl_dupfd_cloexec(&self.0, min).map_err(|e| {
            PluginError::io(format!("F_DUPFD_CLOEXEC render fd to >= {min}"), e.into())
        })
    }

    pub fn into_fd(self) -> OwnedFd {
        self.0
    }
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfd_render_nodes_and_other_devices_are_told_apart_by_rdev() {
        let kfd = rustix::fs::makedev(235, 0);
        assert_eq!(classify(kfd, Some(kfd)), DeviceKind::Kfd);
        assert_eq!(
            classify(rustix::fs::makedev(226, 129), Some(kfd)),
            DeviceKind::Render(129)
        );
        // card nodes (minor < 128) are not render nodes
        assert_eq!(
            classify(rustix::fs::makedev(226, 1), Some(kfd)),
            DeviceKind::Other
        );
        assert_eq!(
            classify(rustix::fs::makedev(1, 3), Some(kfd)),
            DeviceKind::Other
        );
        // without /dev/kfd nothing is the KFD
        assert_eq!(classify(kfd, None), DeviceKind::Other);
    }

    #[test]
    fn render_minors_outside_the_render_range_are_refused() {
        let e = match RenderNode::open(Path::new("/dev"), 12) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("opened minor 12"),
        };
        assert!(e.contains("outside 128..=255"), "{e}");
    }
}
