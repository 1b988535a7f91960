//! The dump side of the backend: `/dev/kfd` (pause the queues, KFD CHECKPOINT, device and BO
//! entries, BO contents per GPU in parallel threads through SDMA) and render nodes, and the
//! rule that unpauses the queues once every kfd and render fd of the dump was handled.

use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ferry_api::stats::DeviceStats;

use super::devices::Devices;
use super::hsakmt::hsakmt_shared_mem;
use super::ioctl::{self, KfdCriuBoBucket, KfdCriuDeviceBucket, LibDrmAmdgpu};
use super::proto::{self, CriuKfd, CriuRenderNode};
use super::render::RenderNode;
use super::topology::{GpuMap, Topology};
use super::{images, kfd, sdma};
use crate::contract::{Claim, Ctx};
use crate::error::{PluginError, Result};

/// Dump-side state of one CRIU run.
#[derive(Default)]
struct DumpState {
    topology: Option<Topology>,
    /// (user gpu_id, actual gpu_id) from CHECKPOINT's device buckets.
    map: GpuMap,
    /// kfd + render fds still to dump before the queues may restart (upstream's count:
    /// one kfd fd plus one render fd per GPU).
    remaining: Option<usize>,
    /// Dups of the kfd fds whose queues are paused.
    paused: Vec<(u32, OwnedFd)>,
}

/// The dump side's state of one CRIU run.
#[derive(Default)]
pub struct Dumper {
    state: Mutex<DumpState>,
}

impl Dumper {
    fn lock(&self) -> Result<MutexGuard<'_, DumpState>> {
        self.state
            .lock()
            .map_err(|_| PluginError::Device("amdgpu backend state poisoned".into()))
    }

    /// This node's topology, parsed once per dump.
    pub fn dump_topology(&self, dev: &Devices) -> Result<Topology> {
        let mut g = self.lock()?;
        if let Some(t) = &g.topology {
            return Ok(t.clone());
        }
        let t = dev.parse_local_topology()?;
        g.remaining.get_or_insert(1 + t.gpu_count());
        g.topology = Some(t.clone());
        Ok(t)
    }

    /// One more kfd/render fd done; unpauses everything once the count reaches zero.
    fn file_done(&self) -> Result<()> {
        let paused = {
            let mut g = self.lock()?;
            let r = g.remaining.get_or_insert(1);
            *r = r.saturating_sub(1);
            if *r > 0 {
                return Ok(());
            }
            std::mem::take(&mut g.paused)
        };
        unpause_all(paused)
    }

    /// DUMP_EXT_FILE of an AMD render node.
    pub fn dump_render(&self, dev: &Devices, cx: &Ctx<'_>, minor: u32, id: u32) -> Result<Claim> {
        let topo = self.dump_topology(dev)?;
        let Some(node) = topo.by_render_minor(minor) else {
            // A render node of a GPU KFD does not know: not ours.
            return Ok(Claim::NotMine);
        };
        let user = self.lock()?.map.src(node.gpu_id);
        let Some(user) = user else {
            return Err(PluginError::Device(format!(
                "render node renderD{minor} (GPU 0x{:04x}) was dumped before its process's /dev/kfd fd; \
                 the KFD checkpoint provides the gpu_id the image must record",
                node.gpu_id
            )));
        };
        let msg = CriuRenderNode {
            gpu_id: user,
            id,
            drm_render_minor: minor,
            num_of_bos: 0,
            bo_entries: Vec::new(),
        };
        images::write_message(cx.host, &images::render_node_image(id), &msg)?;
        tracing::info!(gpu_id = user, image = %images::render_node_image(id), "render node dumped");
        self.file_done()?;
        Ok(Claim::Done)
    }

    /// DUMP_EXT_FILE of `/dev/kfd`: pause, checkpoint, write the images.
    pub fn dump_kfd(
        &self,
        dev: &Devices,
        cx: &Ctx<'_>,
        fd: BorrowedFd<'_>,
        id: u32,
    ) -> Result<Claim> {
        let topo = self.dump_topology(dev)?;
        dev.check_kernel(None)?;
        // Fail before pausing anything when libdrm_amdgpu is missing.
        let lib = dev.lib()?;
        let info = ioctl::kfd_process_info(fd)
            .map_err(|e| PluginError::io("KFD CRIU PROCESS_INFO (pause)", e))?;
        // From here the queues are paused: every exit path unpauses or registers the fd.
        let keep = match fd.try_clone_to_owned() {
            Ok(k) => k,
            Err(e) => {
                unpause_after_failure(fd, info.pid);
                return Err(PluginError::io("dup kfd fd", e));
            }
        };
        match self.dump_paused(dev, cx, fd, id, &topo, &lib, info) {
            Ok(()) => {
                self.lock()?.paused.push((info.pid, keep));
                self.file_done()?;
                Ok(Claim::Done)
            }
            Err(e) => {
                unpause_after_failure(keep.as_fd(), info.pid);
                Err(e)
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn dump_paused(
        &self,
        dev: &Devices,
        cx: &Ctx<'_>,
        fd: BorrowedFd<'_>,
        id: u32,
        topo: &Topology,
        lib: &Arc<LibDrmAmdgpu>,
        info: ioctl::ProcessInfo,
    ) -> Result<()> {
        tracing::info!(
            pid = info.pid,
            devices = info.num_devices,
            bos = info.num_bos,
            objects = info.num_objects,
            priv_data = info.priv_data_size,
            "KFD process info"
        );
        let mut devices = vec![KfdCriuDeviceBucket::default(); info.num_devices as usize];
        let mut bos = vec![KfdCriuBoBucket::default(); info.num_bos as usize];
        let mut priv_data = vec![0u8; info.priv_data_size as usize];
        let fds =
            ioctl::kfd_checkpoint(fd, info.num_objects, &mut devices, &mut bos, &mut priv_data)
                .map_err(|e| PluginError::io("KFD CRIU CHECKPOINT", e))?;
        {
            let mut g = self.lock()?;
            for d in &devices {
                if g.map.src(d.actual_gpu_id).is_none() {
                    g.map.gpus.push((d.user_gpu_id, d.actual_gpu_id));
                }
            }
        }
        let map = self.lock()?.map.clone();
        let device_entries = topo.to_device_entries(|actual| map.src(actual))?;
        let entries = kfd::bo_entries(&bos);

        // BO contents: one thread per GPU, each writing its own pages image.
        let results: Vec<Result<DeviceStats>> = std::thread::scope(|s| {
            let handles: Vec<_> = devices
                .iter()
                .map(|d| {
                    let (entries, fds, bos) = (&entries, &fds, &bos);
                    let minor = topo.by_gpu_id(d.actual_gpu_id).map(|n| n.drm_render_minor);
                    let user = d.user_gpu_id;
                    let actual = d.actual_gpu_id;
                    std::thread::Builder::new()
                        .name(format!("ferry-amdgpu-dump-{actual:04x}"))
                        .spawn_scoped(s, move || {
                            let minor = minor.ok_or_else(|| {
                                PluginError::Device(format!(
                                    "GPU 0x{actual:04x} from KFD is not in the topology"
                                ))
                            })?;
                            self.dump_gpu_pages(
                                dev, cx, lib, id, user, minor, info.pid, entries, bos, fds,
                            )
                        })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| match h {
                    Ok(h) => h.join().unwrap_or_else(|_| {
                        Err(PluginError::Device("GPU dump thread panicked".into()))
                    }),
                    Err(e) => Err(PluginError::io("spawn GPU dump thread", e)),
                })
                .collect()
        });
        drop(fds);
        for r in results {
            let st = r?;
            if let Ok(mut s) = cx.stats.lock() {
                s.devices.push(st);
            }
        }

        let (shared_mem_size, shared_mem_magic) = hsakmt_shared_mem();
        let num_of_gpus = info.num_devices;
        let msg = CriuKfd {
            pid: info.pid,
            num_of_gpus,
            num_of_cpus: (device_entries.len() as u32).saturating_sub(num_of_gpus),
            device_entries,
            num_of_bos: u64::from(info.num_bos),
            bo_entries: entries,
            num_of_objects: info.num_objects,
            shared_mem_size,
            shared_mem_magic,
            priv_data,
        };
        images::write_message(cx.host, &images::kfd_image(id), &msg)?;
        tracing::info!(pid = info.pid, image = %images::kfd_image(id), "KFD state dumped");
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn dump_gpu_pages(
        &self,
        dev: &Devices,
        cx: &Ctx<'_>,
        lib: &Arc<LibDrmAmdgpu>,
        id: u32,
        user_gpu_id: u32,
        minor: u32,
        pid: u32,
        entries: &[proto::KfdBoEntry],
        bos: &[KfdCriuBoBucket],
        fds: &[Option<OwnedFd>],
    ) -> Result<DeviceStats> {
        let start = Instant::now();
        let total = kfd::pages_len(entries, user_gpu_id);
        let largest = entries
            .iter()
            .filter(|b| b.gpu_id == user_gpu_id && kfd::has_contents(b.alloc_flags))
            .map(|b| b.size)
            .max()
            .unwrap_or(0);
        let name = images::pages_image(id, user_gpu_id);
        let mut file = images::create_pages(cx.host, &name, total)?;
        let mut n = 0u32;
        if total > 0 {
            let render = RenderNode::open_amdgpu(&dev.cfg.dev_root, minor)?;
            let mut reader = sdma::SdmaReader::new(
                lib,
                render.as_fd(),
                user_gpu_id,
                sdma::staging_size(dev.cfg.max_buffer_size, largest),
            )?;
            for (i, b) in bos.iter().enumerate() {
                if b.gpu_id != user_gpu_id || !kfd::has_contents(b.alloc_flags) {
                    continue;
                }
                let fd = fds.get(i).and_then(|f| f.as_ref()).ok_or_else(|| {
                    PluginError::Device(format!("KFD gave no dma-buf fd for BO {i}"))
                })?;
                reader.drain(fd.as_fd(), b.size, &mut file)?;
                n += 1;
            }
        }
        file.flush()
            .map_err(|e| PluginError::io(format!("flush {name}"), e))?;
        tracing::info!(gpu_id = user_gpu_id, bos = n, bytes = total, image = %name, "GPU memory dumped");
        Ok(DeviceStats {
            device: format!("0x{user_gpu_id:04x}"),
            pid,
            buffers: n,
            bytes: total,
            copy_seconds: start.elapsed().as_secs_f64(),
        })
    }

    /// End of the dump: unpauses whatever is still paused (a failed dump never leaves the
    /// workload paused).
    pub fn fini(&self, ret: i32) {
        let paused = match self.state.lock() {
            Ok(mut g) => std::mem::take(&mut g.paused),
            Err(_) => return,
        };
        if paused.is_empty() {
            return;
        }
        if ret == 0 {
            tracing::warn!(
                processes = paused.len(),
                "dump finished with GPU queues still paused (fewer render fds than GPUs); unpausing"
            );
        }
        if let Err(e) = unpause_all(paused) {
            tracing::error!("{e}");
        }
    }
}

fn unpause_after_failure(fd: BorrowedFd<'_>, pid: u32) {
    match ioctl::kfd_unpause(fd) {
        Ok(()) => tracing::info!(pid, "GPU queues unpaused after the failed dump"),
        Err(e) => tracing::error!(pid, "KFD CRIU UNPAUSE after the failed dump failed: {e}"),
    }
}

fn unpause_all(paused: Vec<(u32, OwnedFd)>) -> Result<()> {
    let mut first = None;
    for (pid, fd) in paused {
        match ioctl::kfd_unpause(fd.as_fd()) {
            Ok(()) => tracing::info!(pid, "GPU queues unpaused"),
            Err(e) => {
                tracing::error!(pid, "KFD CRIU UNPAUSE failed: {e}");
                first.get_or_insert(PluginError::io(format!("KFD CRIU UNPAUSE (pid {pid})"), e));
            }
        }
    }
    first.map_or(Ok(()), Err)
}
