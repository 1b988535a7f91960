//! A copy plan: which bytes of which pages image go into which device buffer.
//!
//! Offsets are **per device**: each device has its own pages image starting at offset 0
//! (upstream's parallel restore summed offsets across GPUs, which breaks the second GPU).

use std::os::fd::OwnedFd;

use super::backend_id::BackendId;
use crate::error::{PluginError, Result};

/// One device's part of a plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanDevice {
    /// Backend-specific device key (sim device index, AMD gpu_id, ...).
    pub key: u64,
    /// Human label for logs and stats.
    pub label: String,
    /// The pages image holding this device's buffer contents (8-byte size header first).
    pub pages_image: String,
}

/// One buffer to fill.
#[derive(Debug)]
pub struct PlanBuffer {
    /// Index into [`CopyPlan::devices`].
    pub device: u32,
    /// Offset of the buffer's bytes in its device's pages payload (after the header).
    pub read_offset: u64,
    /// Offset in the destination buffer.
    pub write_offset: u64,
    pub size: u64,
    /// The buffer (dma-buf or device buffer fd).
    pub fd: OwnedFd,
}

/// Everything one RESTORE_EXT_FILE call hands to the copy path.
#[derive(Debug)]
pub struct CopyPlan {
    pub backend: BackendId,
    /// CRIU's ext-file id of the device fd.
    pub ext_id: u32,
    /// The restored task.
    pub pid: u32,
    pub devices: Vec<PlanDevice>,
    pub buffers: Vec<PlanBuffer>,
}

impl CopyPlan {
    /// Checks indices and that each device's buffers tile its payload without overlap.
    pub fn validate(&self) -> Result<()> {
        for (i, b) in self.buffers.iter().enumerate() {
            if b.device as usize >= self.devices.len() {
                return Err(PluginError::invalid(format!(
                    "copy plan buffer {i} names device {} but the plan has {} devices",
                    b.device,
                    self.devices.len()
                )));
            }
            b.read_offset.checked_add(b.size).ok_or_else(|| {
                PluginError::invalid(format!("copy plan buffer {i}: offset + size overflows"))
            })?;
        }
        for d in 0..self.devices.len() {
            let mut spans: Vec<(u64, u64)> = self
                .buffers
                .iter()
                .filter(|b| b.device as usize == d)
                .map(|b| (b.read_offset, b.read_offset + b.size))
                .collect();
            spans.sort_unstable();
            for w in spans.windows(2) {
                if w[1].0 < w[0].1 {
                    return Err(PluginError::invalid(format!(
                        "copy plan device {d}: buffers overlap in the pages image at {}",
                        w[1].0
                    )));
                }
            }
        }
        Ok(())
    }

    /// Bytes the plan reads from device `d`'s pages image.
    pub fn device_bytes(&self, d: usize) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.device as usize == d)
            .map(|b| b.size)
            .sum()
    }
}
