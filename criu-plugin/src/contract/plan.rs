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

/// Most devices one plan may name (a node has a few dozen GPUs or GPU partitions at most).
pub const MAX_DEVICES: usize = 4096;
/// Most buffers one plan may carry (the wire protocol's payload bound allows about 500k).
pub const MAX_BUFFERS: usize = 1 << 20;

impl CopyPlan {
    /// Checks counts against [`MAX_DEVICES`]/[`MAX_BUFFERS`], device indices, that no
    /// buffer's `read_offset + size` or `write_offset + size` overflows, and that each
    /// device's buffers tile its payload without overlap. O(n log n) in the buffers.
    pub fn validate(&self) -> Result<()> {
        if self.devices.len() > MAX_DEVICES || self.buffers.len() > MAX_BUFFERS {
            return Err(PluginError::invalid(format!(
                "copy plan has {} devices and {} buffers, more than the {MAX_DEVICES} and {MAX_BUFFERS} allowed",
                self.devices.len(),
                self.buffers.len()
            )));
        }
        // (device, start, end) of every buffer's span in its device's pages payload.
        let mut spans: Vec<(u32, u64, u64)> = Vec::with_capacity(self.buffers.len());
        for (i, b) in self.buffers.iter().enumerate() {
            if b.device as usize >= self.devices.len() {
                return Err(PluginError::invalid(format!(
                    "copy plan buffer {i} names device {} but the plan has {} devices",
                    b.device,
                    self.devices.len()
                )));
            }
            let end = b.read_offset.checked_add(b.size).ok_or_else(|| {
                PluginError::invalid(format!("copy plan buffer {i}: offset + size overflows"))
            })?;
            b.write_offset.checked_add(b.size).ok_or_else(|| {
                PluginError::invalid(format!(
                    "copy plan buffer {i}: write offset + size overflows"
                ))
            })?;
            spans.push((b.device, b.read_offset, end));
        }
        spans.sort_unstable();
        for w in spans.windows(2) {
            let (a, b) = (w[0], w[1]);
            if a.0 == b.0 && b.1 < a.2 {
                return Err(PluginError::invalid(format!(
                    "copy plan device {}: buffers overlap in the pages image at {}",
                    b.0, b.1
                )));
            }
        }
        Ok(())
    }

    /// Bytes the plan reads from device `d`'s pages image; saturates at `u64::MAX` (a
    /// validated plan's buffers of one device never overlap, so their sum fits).
    pub fn device_bytes(&self, d: usize) -> u64 {
        self.buffers
            .iter()
            .filter(|b| b.device as usize == d)
            .fold(0u64, |acc, b| acc.saturating_add(b.size))
    }
}
