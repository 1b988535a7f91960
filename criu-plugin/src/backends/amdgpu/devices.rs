//! This node's AMD devices as the backend reaches them: `/dev/kfd` (its device number, our
//! own fd, the KFD ioctl version check), the KFD topology, and libdrm_amdgpu loaded once.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};

use super::config::AmdConfig;
use super::ioctl::{self, LibDrmAmdgpu};
use super::kfd;
use super::topology::Topology;
use crate::error::{PluginError, Result};

/// The backend's settings and what it loads from the node.
pub struct Devices {
    pub cfg: AmdConfig,
    lib: Mutex<Option<Arc<LibDrmAmdgpu>>>,
}

impl Devices {
    pub fn new(cfg: AmdConfig) -> Self {
        Devices {
            cfg,
            lib: Mutex::new(None),
        }
    }

    /// The device number of `/dev/kfd`, if it exists.
    pub fn kfd_rdev(&self) -> Option<u64> {
        rustix::fs::stat(self.cfg.kfd_path())
            .ok()
            .map(|s| s.st_rdev)
    }

    /// Opens our own `/dev/kfd`.
    pub fn open_kfd(&self) -> Result<OwnedFd> {
        let p = self.cfg.kfd_path();
        rustix::fs::open(
            &p,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| PluginError::io(format!("open {}", p.display()), e.into()))
    }

    /// Opens our own /dev/kfd (the task's fd only takes CRIU ioctls) and checks the version.
    pub fn check_kernel(&self, fd: Option<BorrowedFd<'_>>) -> Result<()> {
        let own;
        let fd = match fd {
            Some(f) => f,
            None => {
                own = self.open_kfd()?;
                own.as_fd()
            }
        };
        let v =
            ioctl::kfd_get_version(fd).map_err(|e| PluginError::io("AMDKFD_IOC_GET_VERSION", e))?;
        tracing::debug!(
            major = v.major_version,
            minor = v.minor_version,
            "KFD ioctl version"
        );
        kfd::check_version(v.major_version, v.minor_version)
    }

    /// libdrm_amdgpu, loaded on first use.
    pub fn lib(&self) -> Result<Arc<LibDrmAmdgpu>> {
        let mut g = self
            .lib
            .lock()
            .map_err(|_| PluginError::Device("amdgpu backend state poisoned".into()))?;
        if let Some(l) = &*g {
            return Ok(l.clone());
        }
        let l = LibDrmAmdgpu::load().map_err(|e| PluginError::Device(e.to_string()))?;
        *g = Some(l.clone());
        Ok(l)
    }

    /// This node's KFD topology.
    pub fn parse_local_topology(&self) -> Result<Topology> {
        Topology::parse(&self.cfg.topology_root)
    }
}
