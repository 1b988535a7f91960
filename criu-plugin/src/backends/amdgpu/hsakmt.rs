//! ROCt's (libhsakmt's) process-shared state: `/dev/shm/hsakmt_shared_mem` and its named
//! semaphore, recorded at dump time and re-created on restore, as upstream's plugin does.

use std::io::Write;
use std::path::Path;

use super::ioctl;
use crate::error::{PluginError, Result};

/// `/dev/shm/hsakmt_shared_mem` (ROCt's shared state) and its semaphore.
const HSAKMT_SHM: &str = "/dev/shm/hsakmt_shared_mem";
const HSAKMT_SEM: &std::ffi::CStr = c"hsakmt_semaphore";

/// Size and magic of ROCt's shared memory file at dump time ((0, 0) when absent).
pub fn hsakmt_shared_mem() -> (u64, u32) {
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

/// Re-creates ROCt's shared memory file (if it was there at dump time) and its semaphore.
pub fn restore_hsakmt_shared_mem(size: u64, magic: u32) -> Result<()> {
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
