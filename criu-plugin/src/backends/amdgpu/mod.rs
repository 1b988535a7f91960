//! AMD GPUs through KFD (`/dev/kfd`) and DRM render nodes: ferry's port of CRIU's amdgpu
//! plugin, writing the same images (CRIU 4.2.1's `criu-amdgpu.proto`, plus criu-dev's
//! additive fields; see `proto/criu-amdgpu.proto`). Each hook is routed to [`dump`] or
//! [`restore`]; the backend's settings are read and held in [`config`], `docs/amdgpu.md` has the
//! whole picture.
//!
//! | hook | process | what |
//! |---|---|---|
//! | DUMP_EXT_FILE (kfd) | main criu | PROCESS_INFO (pauses queues) → CHECKPOINT → device and BO entries → BO contents per GPU in parallel threads (SDMA) → `amdgpu-kfd-<id>.img`, `amdgpu-pages-<id>-<gpu>.img` |
//! | DUMP_EXT_FILE (renderD) | main criu | `amdgpu-renderD-<id>.img` |
//! | HANDLE_DEVICE_VMA | main criu | claims mappings of /dev/kfd and AMD render nodes |
//! | RESTORE_EXT_FILE | restored task | topology match → KFD RESTORE → [`CopyPlan`](crate::contract::CopyPlan) to the engine |
//! | UPDATE_VMA_MAP | restored task | new mmap offsets (and render fds) of moved BOs |
//! | RESUME_DEVICES_LATE | main criu | KFD RESUME |
//!
//! Queues are unpaused once every kfd and render fd of the dump was handled (upstream's
//! rule), immediately when this backend's part of a dump fails, and in `fini` for anything
//! still paused — a failed dump never leaves the workload paused.

pub mod config;
pub mod devices;
pub mod dump;
pub mod hsakmt;
pub mod images;
pub mod ioctl;
pub mod kfd;
pub mod proto;
pub mod render;
pub mod restore;
pub mod sdma;
pub mod topology;

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use ferry_api::stats::GpuVendor;

use self::config::AmdConfig;
use self::devices::Devices;
use self::dump::Dumper;
use self::render::{DeviceKind, RenderNode};
use self::restore::Restorer;
use crate::contract::{Backend, BackendId, Claim, CopyEngine, Ctx, Stage, VmaUpdate};
use crate::error::{PluginError, Result};

/// The AMDGPU backend.
pub struct AmdgpuBackend {
    dev: Devices,
    dump: Dumper,
    restore: Restorer,
}

impl AmdgpuBackend {
    pub fn new(cfg: AmdConfig) -> Self {
        AmdgpuBackend {
            dev: Devices::new(cfg),
            dump: Dumper::default(),
            restore: Restorer::default(),
        }
    }

    /// Settings from the process environment.
    pub fn from_env() -> Self {
        Self::new(AmdConfig::from_env())
    }
}

/// Normalises `//` in CRIU's VMA paths (it sometimes reports `//dev/dri/renderD128`).
pub fn normalise_path(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    let mut last_slash = false;
    for c in p.chars() {
        if c == '/' && last_slash {
            continue;
        }
        last_slash = c == '/';
        out.push(c);
    }
    out
}

impl Backend for AmdgpuBackend {
    fn id(&self) -> BackendId {
        BackendId::Amdgpu
    }

    fn vendor(&self) -> GpuVendor {
        GpuVendor::Amd
    }

    fn probe(&self, cx: &Ctx<'_>) -> Result<bool> {
        let kfd = self.dev.cfg.kfd_path();
        if !kfd.exists() {
            tracing::debug!(path = %kfd.display(), "no KFD device: amdgpu backend off");
            return Ok(false);
        }
        if cx.stage == Stage::Restore {
            // The restore's checks run where they matter (RESTORE_EXT_FILE), so that a
            // node that merely has /dev/kfd never blocks other backends.
            return Ok(true);
        }
        match self.dev.check_kernel(None) {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::warn!("amdgpu backend off: {e}");
                Ok(false)
            }
        }
    }

    fn dump_file(&self, cx: &Ctx<'_>, fd: BorrowedFd<'_>, id: u32) -> Result<Claim> {
        let Ok(st) = rustix::fs::fstat(fd) else {
            return Ok(Claim::NotMine);
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFCHR {
            return Ok(Claim::NotMine);
        }
        match render::classify(st.st_rdev, self.dev.kfd_rdev()) {
            DeviceKind::Kfd => self.dump.dump_kfd(&self.dev, cx, fd, id),
            DeviceKind::Render(minor) => self.dump.dump_render(&self.dev, cx, minor, id),
            DeviceKind::Other => Ok(Claim::NotMine),
        }
    }

    fn handle_device_vma(
        &self,
        _cx: &Ctx<'_>,
        _fd: BorrowedFd<'_>,
        st: &libc::stat,
    ) -> Result<Claim> {
        match render::classify(st.st_rdev, self.dev.kfd_rdev()) {
            DeviceKind::Kfd => Ok(Claim::Done),
            DeviceKind::Render(minor) => {
                let topo = self.dump.dump_topology(&self.dev)?;
                Ok(if topo.by_render_minor(minor).is_some() {
                    Claim::Done
                } else {
                    Claim::NotMine
                })
            }
            DeviceKind::Other => Ok(Claim::NotMine),
        }
    }

    fn restore_file(&self, cx: &Ctx<'_>, id: u32) -> Result<Option<OwnedFd>> {
        let kfd_name = images::kfd_image(id);
        if cx.host.image_exists(&kfd_name) {
            return self
                .restore
                .restore_kfd(&self.dev, cx, self, id, &kfd_name)
                .map(Some);
        }
        let rd_name = images::render_node_image(id);
        if cx.host.image_exists(&rd_name) {
            return self
                .restore
                .restore_render(&self.dev, cx, &rd_name)
                .map(Some);
        }
        Ok(None)
    }

    fn update_vma_map(
        &self,
        _cx: &Ctx<'_>,
        path: &str,
        addr: u64,
        old_pgoff: u64,
    ) -> Result<Option<VmaUpdate>> {
        let path = normalise_path(path);
        let kfd = self.dev.cfg.kfd_path();
        let render_prefix = self.dev.cfg.dev_root.join("dri").join("renderD");
        let is_kfd = Path::new(&path) == kfd;
        let is_render = path.starts_with(&*render_prefix.to_string_lossy());
        if !is_kfd && !is_render {
            return Ok(None);
        }
        self.restore.vma_update(&path, addr, old_pgoff, is_render)
    }

    fn resume_devices_late(&self, _cx: &Ctx<'_>, pid: i32) -> Result<Claim> {
        let Ok(fd) = self.dev.open_kfd() else {
            return Ok(Claim::NotMine);
        };
        match ioctl::kfd_resume(fd.as_fd(), pid as u32) {
            Ok(()) => {
                tracing::info!(pid, "GPU queues resumed");
                Ok(Claim::Done)
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(Claim::NotMine),
            Err(e) => Err(PluginError::io(format!("KFD CRIU RESUME (pid {pid})"), e)),
        }
    }

    fn fini(&self, _cx: &Ctx<'_>, ret: i32) {
        self.dump.fini(ret);
    }

    fn copy_engine(&self, cx: &Ctx<'_>, device_key: u64) -> Result<Box<dyn CopyEngine>> {
        let (minor, actual) = kfd::split_device_key(device_key);
        let lib = self.dev.lib()?;
        let render = RenderNode::open_amdgpu(&self.dev.cfg.dev_root, minor)?;
        let staging = sdma::staging_size(self.dev.cfg.max_buffer_size, cx.config.chunk_size as u64);
        Ok(Box::new(sdma::SdmaWriter::new(
            &lib,
            render.into_fd(),
            actual,
            staging,
        )?))
    }
}
