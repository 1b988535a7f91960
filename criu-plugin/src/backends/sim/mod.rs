//! The simulated GPU backend: what CRIU does with it is what it does with a real GPU (see
//! [`device`] for why the device is shaped this way). Always built; active wherever a sim
//! node could be made (root, a misc device to borrow numbers from).

pub mod config;
pub mod device;
pub mod mapping;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ferry_api::stats::{DeviceStats, GpuVendor};

use ferry_api::plugin_env::FERRY_TEST_FAULT;

use self::config::SimConfig;
use self::device::{ContextMeta, SimPaths};
use crate::config::Fault;
use crate::contract::images;
use crate::contract::{
    Backend, BackendId, Claim, CopyEngine, CopyPlan, Ctx, PlanBuffer, PlanDevice,
};
use crate::error::{IoContext, PluginError, Result};

/// Image with a context's metadata, per CRIU ext-file id.
pub fn ctx_image(id: u32) -> String {
    format!("sim-ctx-{id}.img")
}

/// Pages image of one context (one device).
pub fn pages_image(id: u32, device: u32) -> String {
    format!("sim-pages-{id}-{device}.img")
}

/// Largest metadata image accepted.
const MAX_META: u64 = 1 << 20;

/// The sim backend, with its settings.
#[derive(Default)]
pub struct SimBackend {
    cfg: SimConfig,
}

impl SimBackend {
    pub fn new(cfg: SimConfig) -> Self {
        SimBackend { cfg }
    }

    /// Settings from the process environment.
    pub fn from_env() -> Result<Self> {
        SimConfig::from_env().map(Self::new)
    }

    fn paths(&self) -> SimPaths {
        SimPaths::new(&self.cfg.root, &self.cfg.mem)
    }
}

impl Backend for SimBackend {
    fn id(&self) -> BackendId {
        BackendId::Sim
    }

    fn vendor(&self) -> GpuVendor {
        GpuVendor::Sim
    }

    fn probe(&self, _cx: &Ctx<'_>) -> Result<bool> {
        // Claims only fds under FERRY_SIM_ROOT, so it is safe to keep on everywhere.
        Ok(true)
    }

    fn dump_file(&self, cx: &Ctx<'_>, fd: BorrowedFd<'_>, id: u32) -> Result<Claim> {
        let link = PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()));
        let Ok(target) = std::fs::read_link(&link) else {
            return Ok(Claim::NotMine);
        };
        let p = self.paths();
        let Some(uuid) = p.uuid_of_node(&target) else {
            return Ok(Claim::NotMine);
        };
        if cx.config.fault == Some(Fault::Panic) {
            panic!("{FERRY_TEST_FAULT}=panic: sim DUMP_EXT_FILE panics on purpose");
        }
        let started = Instant::now();
        let meta = p.read_meta(&uuid)?;
        let text = serde_json::to_vec(&meta)
            .map_err(|e| PluginError::invalid(format!("encode sim context: {e}")))?;
        let name = ctx_image(id);
        let mut f = cx.host.create_image(&name)?;
        images::write_sized(&mut f, &name, &text)?;

        let pages = pages_image(id, meta.device);
        let mut out = cx.host.create_image(&pages)?;
        let total: u64 = meta.buffers.iter().map(|b| b.size).sum();
        out.write_all(&total.to_le_bytes())
            .ctx(|| format!("write {pages}"))?;
        for b in &meta.buffers {
            let src = p.buffer(&uuid, &b.name);
            let mut f = File::open(&src).ctx(|| format!("open {}", src.display()))?;
            let n = std::io::copy(&mut f, &mut out)
                .ctx(|| format!("copy {} into {pages}", src.display()))?;
            if n != b.size {
                return Err(PluginError::Device(format!(
                    "sim buffer {} holds {n} bytes, its metadata says {}",
                    src.display(),
                    b.size
                )));
            }
        }
        out.sync_data().ctx(|| format!("sync {pages}"))?;
        let seconds = started.elapsed().as_secs_f64();
        tracing::info!(id, uuid = %uuid, device = meta.device, bytes = total, seconds, "sim device context dumped");
        if let Ok(mut s) = cx.stats.lock() {
            s.devices.push(DeviceStats {
                device: format!("sim{}", meta.device),
                pid: 0,
                buffers: meta.buffers.len() as u32,
                bytes: total,
                copy_seconds: seconds,
            });
        }
        Ok(Claim::Done)
    }

    fn restore_file(&self, cx: &Ctx<'_>, id: u32) -> Result<Option<OwnedFd>> {
        let name = ctx_image(id);
        if !cx.host.image_exists(&name) {
            return Ok(None);
        }
        let text = images::read_sized(cx.host.open_image(&name)?, &name, MAX_META)?;
        let meta: ContextMeta = serde_json::from_slice(&text)
            .map_err(|e| PluginError::invalid(format!("image {name} is not a sim context: {e}")))?;
        if meta.version != 1 {
            return Err(PluginError::invalid(format!(
                "image {name} has sim context version {}, this plugin reads 1",
                meta.version
            )));
        }
        // Sizes come from the image: their sum (the pages payload) must fit in 64 bits
        // before any buffer is created.
        meta.buffers
            .iter()
            .try_fold(0u64, |acc, b| acc.checked_add(b.size))
            .ok_or_else(|| {
                PluginError::invalid(format!(
                    "image {name}: sim buffer sizes add up past 2^64 bytes"
                ))
            })?;
        let p = self.paths();
        let files = p.recreate(&meta)?;
        let handle = p.open_node(&meta.uuid)?;
        let mut read_offset = 0u64;
        let mut buffers = Vec::with_capacity(files.len());
        for (b, f) in meta.buffers.iter().zip(files) {
            buffers.push(PlanBuffer {
                device: 0,
                read_offset,
                write_offset: 0,
                size: b.size,
                fd: OwnedFd::from(f),
            });
            read_offset += b.size; // no overflow: the sum was checked above
        }
        let plan = CopyPlan {
            backend: BackendId::Sim,
            ext_id: id,
            pid: std::process::id(),
            devices: vec![PlanDevice {
                key: u64::from(meta.device),
                label: format!("sim{}", meta.device),
                pages_image: pages_image(id, meta.device),
            }],
            buffers,
        };
        tracing::info!(id, uuid = %meta.uuid, device = meta.device, "sim device context recreated");
        cx.refill.refill(cx, self, plan)?;
        Ok(Some(OwnedFd::from(handle)))
    }

    fn copy_engine(&self, cx: &Ctx<'_>, device_key: u64) -> Result<Box<dyn CopyEngine>> {
        Ok(Box::new(SimCopy {
            device: device_key,
            bandwidth: self.cfg.bandwidth,
            fail: cx.config.fault == Some(Fault::CopyError),
            started: None,
            written: 0,
        }))
    }
}

/// The sim copy engine: `pwrite` paced to a bandwidth, like a DMA engine of that speed.
pub struct SimCopy {
    device: u64,
    bandwidth: u64,
    fail: bool,
    started: Option<Instant>,
    written: u64,
}

impl SimCopy {
    fn check_fault(&self) -> Result<()> {
        if self.fail && self.written > 0 {
            return Err(PluginError::Copy(format!(
                "sim{}: injected copy error ({FERRY_TEST_FAULT}=copy-error) after {} bytes",
                self.device, self.written
            )));
        }
        Ok(())
    }

    /// Sleeps until `written` bytes are due at the configured bandwidth.
    fn pace(&mut self, start: Instant, bytes: usize) {
        self.written += bytes as u64;
        let due = Duration::from_secs_f64(self.written as f64 / self.bandwidth as f64);
        let spent = start.elapsed();
        if due > spent {
            std::thread::sleep(due - spent);
        }
    }
}

impl CopyEngine for SimCopy {
    // The sim engine copies with the CPU; taking data straight from the image (one copy in
    // the kernel) keeps its CPU cost at what a DMA engine's host side costs (image → staging).
    fn direct(&self) -> bool {
        true
    }

    fn copy_from_file(
        &mut self,
        src: &File,
        src_offset: u64,
        dst: BorrowedFd<'_>,
        dst_offset: u64,
        len: usize,
    ) -> Result<()> {
        let start = *self.started.get_or_insert_with(Instant::now);
        self.check_fault()?;
        let (mut off_in, mut off_out, mut left) = (src_offset, dst_offset, len);
        while left > 0 {
            let n = match rustix::fs::copy_file_range(
                src,
                Some(&mut off_in),
                dst,
                Some(&mut off_out),
                left,
            ) {
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                // Across filesystems (image on ext4, buffer on tmpfs) older kernels refuse;
                // fall back to sendfile from the image's offset at the buffer's position.
                Err(
                    rustix::io::Errno::XDEV
                    | rustix::io::Errno::OPNOTSUPP
                    | rustix::io::Errno::INVAL,
                ) => {
                    rustix::fs::seek(dst, rustix::fs::SeekFrom::Start(off_out))
                        .map_err(|e| PluginError::io("seek sim buffer", e.into()))?;
                    let n = rustix::fs::sendfile(dst, src, Some(&mut off_in), left)
                        .map_err(|e| PluginError::io("sendfile into sim buffer", e.into()))?;
                    off_out += n as u64;
                    n
                }
                Err(e) => {
                    return Err(PluginError::io(
                        format!("copy into sim{} buffer at {off_out}", self.device),
                        e.into(),
                    ));
                }
            };
            if n == 0 {
                return Err(PluginError::Copy(format!(
                    "sim{}: the image ended at {off_in} with {left} bytes to go",
                    self.device
                )));
            }
            left -= n;
        }
        self.pace(start, len);
        Ok(())
    }

    fn write(&mut self, dst: BorrowedFd<'_>, offset: u64, bytes: &[u8]) -> Result<()> {
        let start = *self.started.get_or_insert_with(Instant::now);
        self.check_fault()?;
        let mut done = 0usize;
        while done < bytes.len() {
            match rustix::io::pwrite(dst, &bytes[done..], offset + done as u64) {
                Ok(0) => {
                    return Err(PluginError::Copy(format!(
                        "sim{}: buffer ended at {} while writing",
                        self.device,
                        offset + done as u64
                    )));
                }
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => {
                    return Err(PluginError::io(
                        format!("write sim{} buffer at {offset}", self.device),
                        e.into(),
                    ));
                }
            }
        }
        self.pace(start, bytes.len());
        Ok(())
    }
}
