//! AMD GPUs through KFD (`/dev/kfd`) and DRM render nodes: ferry's port of CRIU's amdgpu
//! plugin, writing the same images (CRIU 4.2.1's `criu-amdgpu.proto`, plus criu-dev's
//! additive fields; see `proto/criu-amdgpu.proto`).
//!
//! | hook | process | what |
//! |---|---|---|
//! | DUMP_EXT_FILE (kfd) | main criu | PROCESS_INFO (pauses queues) → CHECKPOINT → device and BO entries → BO contents per GPU in parallel threads (SDMA) → `amdgpu-kfd-<id>.img`, `amdgpu-pages-<id>-<gpu>.img` |
//! | DUMP_EXT_FILE (renderD) | main criu | `amdgpu-renderD-<id>.img` |
//! | HANDLE_DEVICE_VMA | main criu | claims mappings of /dev/kfd and AMD render nodes |
//! | RESTORE_EXT_FILE | restored task | topology match → KFD RESTORE → [`CopyPlan`](crate::engine::plan::CopyPlan) to the engine |
//! | UPDATE_VMA_MAP | restored task | new mmap offsets (and render fds) of moved BOs |
//! | RESUME_DEVICES_LATE | main criu | KFD RESUME |
//!
//! Queues are unpaused once every kfd and render fd of the dump was handled (upstream's
//! rule), immediately when this backend's part of a dump fails, and in `fini` for anything
//! still paused — a failed dump never leaves the workload paused.
//!
//! Settings (environment, read once):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `KFD_FW_VER_CHECK`, `KFD_SDMA_FW_VER_CHECK`, `KFD_CACHES_COUNT_CHECK`, `KFD_NUM_GWS_CHECK`, `KFD_VRAM_SIZE_CHECK`, `KFD_NUMA_CHECK`, `KFD_CAPABILITY_CHECK` | `1` | upstream's topology-match switches |
//! | `KFD_MAX_BUFFER_SIZE` | `0` (= 64M) | host staging buffer per GPU (suffix K, M, G) |
//! | `FERRY_KFD_TOPOLOGY` | `/sys/class/kfd/kfd/topology` | topology root (tests) |
//! | `FERRY_AMDGPU_DEV` | `/dev` | where `kfd` and `dri/renderD*` are |

pub mod images;
pub mod ioctl;
pub mod kfd;
pub mod proto;
pub mod render;
pub mod sdma;
pub mod topology;

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use ferry_api::stats::{DeviceStats, GpuVendor};

use crate::abi::Stage;
use crate::backends::{Backend, BackendId, Claim, CopyEngine, Ctx, VmaUpdate};
use crate::config::parse_size;
use crate::error::{PluginError, Result};

use self::ioctl::{KfdCriuBoBucket, KfdCriuDeviceBucket, LibDrmAmdgpu};
use self::kfd::GpuTarget;
use self::proto::{CriuKfd, CriuRenderNode};
use self::render::{DeviceKind, RenderNode};
use self::topology::{Checks, GpuMap, Topology};

/// `/dev/shm/hsakmt_shared_mem` (ROCt's shared state) and its semaphore.
const HSAKMT_SHM: &str = "/dev/shm/hsakmt_shared_mem";
const HSAKMT_SEM: &std::ffi::CStr = c"hsakmt_semaphore";

/// The backend's settings.
#[derive(Clone, Debug)]
pub struct AmdConfig {
    pub checks: Checks,
    /// `KFD_MAX_BUFFER_SIZE` (0 = unset).
    pub max_buffer_size: u64,
    pub topology_root: PathBuf,
    pub dev_root: PathBuf,
}

impl AmdConfig {
    /// Reads the settings through `get` (invalid values are logged and ignored, as upstream).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> AmdConfig {
        let max_buffer_size = match get("KFD_MAX_BUFFER_SIZE") {
            Some(v) => parse_size("KFD_MAX_BUFFER_SIZE", &v).unwrap_or_else(|e| {
                tracing::warn!("ignoring {e}");
                0
            }),
            None => 0,
        };
        AmdConfig {
            checks: Checks::from_lookup(&get),
            max_buffer_size,
            topology_root: get("FERRY_KFD_TOPOLOGY")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(topology::DEFAULT_TOPOLOGY_ROOT)),
            dev_root: get("FERRY_AMDGPU_DEV")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/dev")),
        }
    }

    pub fn kfd_path(&self) -> PathBuf {
        self.dev_root.join("kfd")
    }
}

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

#[derive(Default)]
struct Inner {
    dump: DumpState,
    restore: RestoreState,
    lib: Option<Arc<LibDrmAmdgpu>>,
}

/// The AMDGPU backend.
pub struct AmdgpuBackend {
    cfg: AmdConfig,
    inner: Mutex<Inner>,
}

impl AmdgpuBackend {
    pub fn new(cfg: AmdConfig) -> Self {
        AmdgpuBackend {
            cfg,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Settings from the process environment.
    pub fn from_env() -> Self {
        Self::new(AmdConfig::from_lookup(|k| std::env::var(k).ok()))
    }

    fn lock(&self) -> Result<MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| PluginError::Device("amdgpu backend state poisoned".into()))
    }

    fn kfd_rdev(&self) -> Option<u64> {
        rustix::fs::stat(self.cfg.kfd_path())
            .ok()
            .map(|s| s.st_rdev)
    }

    fn open_kfd(&self) -> Result<OwnedFd> {
        let p = self.cfg.kfd_path();
        rustix::fs::open(
            &p,
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| PluginError::io(format!("open {}", p.display()), e.into()))
    }

    /// Opens our own /dev/kfd (the task's fd only takes CRIU ioctls) and checks the version.
    fn check_kernel(&self, fd: Option<BorrowedFd<'_>>) -> Result<()> {
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

    fn lib(&self) -> Result<Arc<LibDrmAmdgpu>> {
        let mut g = self.lock()?;
        if let Some(l) = &g.lib {
            return Ok(l.clone());
        }
        let l = LibDrmAmdgpu::load().map_err(|e| PluginError::Device(e.to_string()))?;
        g.lib = Some(l.clone());
        Ok(l)
    }

    fn parse_local_topology(&self) -> Result<Topology> {
        Topology::parse(&self.cfg.topology_root)
    }

    // -----------------------------------------------------------------------------------
    // dump
    // -----------------------------------------------------------------------------------

    fn dump_topology(&self) -> Result<Topology> {
        let mut g = self.lock()?;
        if let Some(t) = &g.dump.topology {
            return Ok(t.clone());
        }
        let t = self.parse_local_topology()?;
        g.dump.remaining.get_or_insert(1 + t.gpu_count());
        g.dump.topology = Some(t.clone());
        Ok(t)
    }

    /// One more kfd/render fd done; unpauses everything once the count reaches zero.
    fn file_done(&self) -> Result<()> {
        let paused = {
            let mut g = self.lock()?;
            let r = g.dump.remaining.get_or_insert(1);
            *r = r.saturating_sub(1);
            if *r > 0 {
                return Ok(());
            }
            std::mem::take(&mut g.dump.paused)
        };
        unpause_all(paused)
    }

    fn dump_render(&self, cx: &Ctx<'_>, minor: u32, id: u32) -> Result<Claim> {
        let topo = self.dump_topology()?;
        let Some(node) = topo.by_render_minor(minor) else {
            // A render node of a GPU KFD does not know: not ours.
            return Ok(Claim::NotMine);
        };
        let user = self.lock()?.dump.map.src(node.gpu_id);
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

    fn dump_kfd(&self, cx: &Ctx<'_>, fd: BorrowedFd<'_>, id: u32) -> Result<Claim> {
        let topo = self.dump_topology()?;
        self.check_kernel(None)?;
        // Fail before pausing anything when libdrm_amdgpu is missing.
        let lib = self.lib()?;
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
        match self.dump_paused(cx, fd, id, &topo, &lib, info) {
            Ok(()) => {
                self.lock()?.dump.paused.push((info.pid, keep));
                self.file_done()?;
                Ok(Claim::Done)
            }
            Err(e) => {
                unpause_after_failure(keep.as_fd(), info.pid);
                Err(e)
            }
        }
    }

    fn dump_paused(
        &self,
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
                if g.dump.map.src(d.actual_gpu_id).is_none() {
                    g.dump.map.gpus.push((d.user_gpu_id, d.actual_gpu_id));
                }
            }
        }
        let map = self.lock()?.dump.map.clone();
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
                                cx, lib, id, user, minor, info.pid, entries, bos, fds,
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
            let render = RenderNode::open_amdgpu(&self.cfg.dev_root, minor)?;
            let mut reader = sdma::SdmaReader::new(
                lib,
                render.as_fd(),
                user_gpu_id,
                sdma::staging_size(self.cfg.max_buffer_size, largest),
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

    // -----------------------------------------------------------------------------------
    // restore
    // -----------------------------------------------------------------------------------

    /// Opens (once) the render node of local GPU `actual` in the restored task, at an fd
    /// number that cannot clash with the task's own fds; returns its number. The fd stays
    /// open in the task: KFD RESTORE and the BOs' mmaps need the fd that created them.
    fn render_fd(&self, g: &mut Inner, actual: u32, minor: u32) -> Result<RawFd> {
        if let Some(fd) = g.restore.render_fds.get(&actual) {
            return Ok(fd.as_raw_fd());
        }
        let node = RenderNode::open_amdgpu(&self.cfg.dev_root, minor)?;
        let fd = node.into_fd_at_least(g.restore.fd_next)?;
        let raw = fd.as_raw_fd();
        if g.restore.fd_next > 0 {
            g.restore.fd_next = raw + 1;
        }
        g.restore.render_fds.insert(actual, fd);
        Ok(raw)
    }

    fn restore_kfd(&self, cx: &Ctx<'_>, id: u32, name: &str) -> Result<OwnedFd> {
        let kfd_fd = self.open_kfd()?;
        self.check_kernel(Some(kfd_fd.as_fd()))?;
        let mut img: CriuKfd = images::read_message(cx.host, name)?;
        let src = Topology::from_device_entries(&img.device_entries);
        let dest = self.parse_local_topology()?;
        let map = topology::restore_gpu_map(&src, &dest, &self.cfg.checks)?;
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
            g.restore.fd_next = ioctl::criu_find_unused_fd(img.pid).unwrap_or(0);
            for t in &targets {
                let fd = self.render_fd(&mut g, t.actual_gpu_id, t.render_minor)?;
                devices.push(KfdCriuDeviceBucket {
                    user_gpu_id: t.user_gpu_id,
                    actual_gpu_id: t.actual_gpu_id,
                    drm_fd: fd as u32,
                    pad: 0,
                });
            }
            g.restore.dest = Some(dest);
            g.restore.map = Some(map);
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
        self.lock()?.restore.moves.extend(moves);

        let plan = kfd::copy_plan_for(id, img.pid, &img.bo_entries, &targets, fds)?;
        tracing::info!(
            pid = img.pid,
            gpus = plan.devices.len(),
            buffers = plan.buffers.len(),
            "BOs recreated, handing contents to the copy engine"
        );
        cx.refill.refill(cx, self, plan)?;
        restore_hsakmt_shared_mem(img.shared_mem_size, img.shared_mem_magic)?;
        Ok(kfd_fd)
    }

    fn restore_render(&self, cx: &Ctx<'_>, name: &str) -> Result<OwnedFd> {
        let msg: CriuRenderNode = images::read_message(cx.host, name)?;
        let mut g = self.lock()?;
        let (Some(map), Some(dest)) = (g.restore.map.clone(), g.restore.dest.clone()) else {
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
        self.render_fd(&mut g, actual, minor)?;
        // CRIU dups and closes what we return; the kept original serves the BO mmaps.
        g.restore
            .render_fds
            .get(&actual)
            .ok_or_else(|| PluginError::Device(format!("no render fd for GPU 0x{actual:04x}")))?
            .try_clone()
            .map_err(|e| PluginError::io("dup render fd", e))
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

fn hsakmt_shared_mem() -> (u64, u32) {
    let Ok(md) = std::fs::metadata(HSAKMT_SHM) else {
        return (0, 0);
    };
    let mut magic = [0u8; 4];
    let ok = std::fs::File::open(HSAKMT_SHM)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok();
    if !ok {
        tracing::warn!("could not read the magic of {HSAKMT_SHM}");
    }
    (md.len(), u32::from_ne_bytes(magic))
}

fn restore_hsakmt_shared_mem(size: u64, magic: u32) -> Result<()> {
    if size == 0 {
        return Ok(());
    }
    let p = Path::new(HSAKMT_SHM);
    if !p.exists() {
        tracing::warn!(
            "{HSAKMT_SHM} was missing; re-creating it (performance counters may be lost)"
        );
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(p)
            .map_err(|e| PluginError::io(format!("create {HSAKMT_SHM}"), e))?;
        f.set_len(size)
            .map_err(|e| PluginError::io(format!("size {HSAKMT_SHM}"), e))?;
        f.write_all(&magic.to_ne_bytes())
            .map_err(|e| PluginError::io(format!("write {HSAKMT_SHM}"), e))?;
    }
    ioctl::ensure_named_semaphore(HSAKMT_SEM)
        .map_err(|e| PluginError::io("create named semaphore hsakmt_semaphore", e))
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
        let kfd = self.cfg.kfd_path();
        if !kfd.exists() {
            tracing::debug!(path = %kfd.display(), "no KFD device: amdgpu backend off");
            return Ok(false);
        }
        if cx.stage == Stage::Restore {
            // The restore's checks run where they matter (RESTORE_EXT_FILE), so that a
            // node that merely has /dev/kfd never blocks other backends.
            return Ok(true);
        }
        match self.check_kernel(None) {
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
        match render::classify(st.st_rdev, self.kfd_rdev()) {
            DeviceKind::Kfd => self.dump_kfd(cx, fd, id),
            DeviceKind::Render(minor) => self.dump_render(cx, minor, id),
            DeviceKind::Other => Ok(Claim::NotMine),
        }
    }

    fn handle_device_vma(
        &self,
        _cx: &Ctx<'_>,
        _fd: BorrowedFd<'_>,
        st: &libc::stat,
    ) -> Result<Claim> {
        match render::classify(st.st_rdev, self.kfd_rdev()) {
            DeviceKind::Kfd => Ok(Claim::Done),
            DeviceKind::Render(minor) => {
                let topo = self.dump_topology()?;
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
            return self.restore_kfd(cx, id, &kfd_name).map(Some);
        }
        let rd_name = images::render_node_image(id);
        if cx.host.image_exists(&rd_name) {
            return self.restore_render(cx, &rd_name).map(Some);
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
        let kfd = self.cfg.kfd_path();
        let render_prefix = self.cfg.dev_root.join("dri").join("renderD");
        let is_kfd = Path::new(&path) == kfd;
        let is_render = path.starts_with(&*render_prefix.to_string_lossy());
        if !is_kfd && !is_render {
            return Ok(None);
        }
        let g = self.lock()?;
        let Some(m) = g
            .restore
            .moves
            .iter()
            .find(|m| m.addr == addr && m.old_pgoff == old_pgoff)
        else {
            tracing::debug!(path, addr, old_pgoff, "no moved BO at this mapping");
            return Ok(None);
        };
        let fd = if is_render {
            let f = g.restore.render_fds.get(&m.actual_gpu_id).ok_or_else(|| {
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

    fn resume_devices_late(&self, _cx: &Ctx<'_>, pid: i32) -> Result<Claim> {
        let Ok(fd) = self.open_kfd() else {
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
        let paused = match self.inner.lock() {
            Ok(mut g) => std::mem::take(&mut g.dump.paused),
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

    fn copy_engine(&self, cx: &Ctx<'_>, device_key: u64) -> Result<Box<dyn CopyEngine>> {
        let (minor, actual) = kfd::split_device_key(device_key);
        let lib = self.lib()?;
        let render = RenderNode::open_amdgpu(&self.cfg.dev_root, minor)?;
        let staging = sdma::staging_size(self.cfg.max_buffer_size, cx.config.chunk_size as u64);
        Ok(Box::new(sdma::SdmaWriter::new(
            &lib,
            render.into_fd(),
            actual,
            staging,
        )?))
    }
}
