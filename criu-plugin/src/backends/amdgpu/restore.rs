//! The restore side of the backend, in the restored task: KFD RESTORE onto the matched local
//! GPUs (render fds kept open in the task at numbers that cannot clash), the BOs' copy plan,
//! render nodes, and the new mapping offsets of moved BOs.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{Mutex, MutexGuard};

use super::devices::Devices;
use super::hsakmt::restore_hsakmt_shared_mem;
use super::images;
use super::ioctl::{self, KfdCriuDeviceBucket};
use super::kfd::{self, GpuTarget};
use super::proto::{CriuKfd, CriuRenderNode};
use super::render::RenderNode;
use super::topology::{self, GpuMap, Topology};
use crate::contract::{Backend, Ctx, VmaUpdate};
use crate::error::{PluginError, Result};

/// Restore-side state (in the restored task, except `lib`).
#[derive(Default)]
struct RestoreState {
    dest: Option<Topology>,
    map: Option<GpuMap>,
    /// Render fds kept open in the restored task, by actual gpu_id: KFD RESTORE and the
    /// BOs' mmaps need the fd that created them.
    render_fds: HashMap<u32, OwnedFd>,
    /// Lowest fd number the plugin may use in the task.
    fd_next: i32,
    moves: Vec<kfd::VmaMove>,
}

/// The restore side's state of one CRIU run.
#[derive(Default)]
pub struct Restorer {
    state: Mutex<RestoreState>,
}

impl Restorer {
    fn lock(&self) -> Result<MutexGuard<'_, RestoreState>> {
        self.state
            .lock()
            .map_err(|_| PluginError::Device("amdgpu backend state poisoned".into()))
    }

    /// RESTORE_EXT_FILE of `/dev/kfd`: match the topology, KFD RESTORE, hand the BOs'
    /// contents to `cx.refill` as `backend`'s copy plan.
    pub fn restore_kfd(
        &self,
        dev: &Devices,
        cx: &Ctx<'_>,
        backend: &dyn Backend,
        id: u32,
        name: &str,
    ) -> Result<OwnedFd> {
        let kfd_fd = dev.open_kfd()?;
        dev.check_kernel(Some(kfd_fd.as_fd()))?;
        let mut img: CriuKfd = images::read_kfd(cx.host, name)?;
        let src = Topology::from_device_entries(&img.device_entries);
        let dest = dev.parse_local_topology()?;
        let map = topology::restore_gpu_map(&src, &dest, &dev.cfg.checks)?;
        tracing::info!(map = ?map.gpus, "GPU map");

        let mut targets = Vec::new();
        for e in img.device_entries.iter().filter(|e| e.gpu_id != 0) {
            let actual = map.dest(e.gpu_id).ok_or_else(|| {
                PluginError::Device(format!("GPU 0x{:04x} has no local GPU", e.gpu_id))
            })?;
            let node = dest.by_gpu_id(actual).ok_or_else(|| {
                PluginError::Device(format!(
                    "local GPU 0x{actual:04x} vanished from the topology"
                ))
            })?;
            targets.push(GpuTarget {
                user_gpu_id: e.gpu_id,
                actual_gpu_id: actual,
                render_minor: node.drm_render_minor,
            });
        }

        let mut devices = Vec::with_capacity(targets.len());
        {
            let mut g = self.lock()?;
            g.fd_next = ioctl::criu_find_unused_fd(img.pid).unwrap_or(0);
            for t in &targets {
                let fd = render_fd(dev, &mut g, t.actual_gpu_id, t.render_minor)?;
                devices.push(KfdCriuDeviceBucket {
                    user_gpu_id: t.user_gpu_id,
                    actual_gpu_id: t.actual_gpu_id,
                    drm_fd: fd as u32,
                    pad: 0,
                });
            }
            g.dest = Some(dest);
            g.map = Some(map);
        }

        let mut bos = kfd::bo_buckets(&img.bo_entries);
        let fds = ioctl::kfd_restore(
            kfd_fd.as_fd(),
            img.num_of_objects,
            &mut devices,
            &mut bos,
            &mut img.priv_data,
        )
        .map_err(|e| PluginError::io("KFD CRIU RESTORE", e))?;
        let moves = kfd::vma_moves(&bos, &targets)?;
        self.lock()?.moves.extend(moves);

        let plan = kfd::copy_plan_for(id, img.pid, &img.bo_entries, &targets, fds)?;
        tracing::info!(
            pid = img.pid,
            gpus = plan.devices.len(),
            buffers = plan.buffers.len(),
            "BOs recreated, handing contents to the copy engine"
        );
        cx.refill.refill(cx, backend, plan)?;
        restore_hsakmt_shared_mem(img.shared_mem_size, img.shared_mem_magic)?;
        Ok(kfd_fd)
    }

    /// RESTORE_EXT_FILE of a render node: the kept fd of its local GPU, duplicated.
    pub fn restore_render(&self, dev: &Devices, cx: &Ctx<'_>, name: &str) -> Result<OwnedFd> {
        let msg: CriuRenderNode = images::read_message(cx.host, name)?;
        let mut g = self.lock()?;
        let (Some(map), Some(dest)) = (g.map.clone(), g.dest.clone()) else {
            return Err(PluginError::Device(format!(
                "{name}: render node restored before the task's /dev/kfd fd, so no GPU map exists yet"
            )));
        };
        let actual = map.dest(msg.gpu_id).ok_or_else(|| {
            PluginError::Device(format!("{name}: GPU 0x{:04x} has no local GPU", msg.gpu_id))
        })?;
        let minor = dest
            .by_gpu_id(actual)
            .map(|n| n.drm_render_minor)
            .ok_or_else(|| {
                PluginError::Device(format!("local GPU 0x{actual:04x} not in topology"))
            })?;
        render_fd(dev, &mut g, actual, minor)?;
        // CRIU dups and closes what we return; the kept original serves the BO mmaps.
        g.render_fds
            .get(&actual)
            .ok_or_else(|| PluginError::Device(format!("no render fd for GPU 0x{actual:04x}")))?
            .try_clone()
            .map_err(|e| PluginError::io("dup render fd", e))
    }

    /// UPDATE_VMA_MAP: the new offset (and, for a render node, fd) of a moved BO's mapping.
    pub fn vma_update(
        &self,
        path: &str,
        addr: u64,
        old_pgoff: u64,
        is_render: bool,
    ) -> Result<Option<VmaUpdate>> {
        let g = self.lock()?;
        let Some(m) = g
            .moves
            .iter()
            .find(|m| m.addr == addr && m.old_pgoff == old_pgoff)
        else {
            tracing::debug!(path, addr, old_pgoff, "no moved BO at this mapping");
            return Ok(None);
        };
        let fd = if is_render {
            let f = g.render_fds.get(&m.actual_gpu_id).ok_or_else(|| {
                PluginError::Device(format!("no render fd for GPU 0x{:04x}", m.actual_gpu_id))
            })?;
            Some(
                f.try_clone()
                    .map_err(|e| PluginError::io("dup render fd", e))?,
            )
        } else {
            None
        };
        Ok(Some(VmaUpdate {
            new_pgoff: m.new_pgoff,
            fd,
        }))
    }
}

/// Opens (once) the render node of local GPU `actual` in the restored task, at an fd
/// number that cannot clash with the task's own fds; returns its number. The fd stays
/// open in the task: KFD RESTORE and the BOs' mmaps need the fd that created them.
fn render_fd(dev: &Devices, g: &mut RestoreState, actual: u32, minor: u32) -> Result<RawFd> {
    if let Some(fd) = g.render_fds.get(&actual) {
        return Ok(fd.as_raw_fd());
    }
    let node = RenderNode::open_amdgpu(&dev.cfg.dev_root, minor)?;
    let fd = node.into_fd_at_least(g.fd_next)?;
    let raw = fd.as_raw_fd();
    if g.fd_next > 0 {
        g.fd_next = raw + 1;
    }
    g.render_fds.insert(actual, fd);
    Ok(raw)
}
