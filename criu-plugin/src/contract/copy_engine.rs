//! The engine that writes device memory: the one thing the vendor-neutral copy needs from a
//! backend to refill a device.

use std::os::fd::BorrowedFd;

use crate::error::{PluginError, Result};

/// Writes device memory. Implementations may queue work (SDMA); `finish` waits for it.
pub trait CopyEngine: Send {
    /// Writes `bytes` at `offset` into the buffer behind `dst` (a dma-buf or device buffer fd).
    fn write(&mut self, dst: BorrowedFd<'_>, offset: u64, bytes: &[u8]) -> Result<()>;
    /// Waits until every queued write has landed.
    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
    /// True when the engine can take data straight from the image file
    /// ([`CopyEngine::copy_from_file`]), so the copy needs no bounce buffer. A DMA engine
    /// reads a host staging buffer (one CPU copy: image → staging); an engine that copies
    /// with the CPU should copy image → buffer once, not twice.
    fn direct(&self) -> bool {
        false
    }
    /// Copies `len` bytes of `src` at `src_offset` into the buffer behind `dst` at
    /// `dst_offset`. Only called when [`CopyEngine::direct`] is true.
    fn copy_from_file(
        &mut self,
        _src: &std::fs::File,
        _src_offset: u64,
        _dst: BorrowedFd<'_>,
        _dst_offset: u64,
        _len: usize,
    ) -> Result<()> {
        Err(PluginError::Copy(
            "this copy engine has no direct path".into(),
        ))
    }
}
