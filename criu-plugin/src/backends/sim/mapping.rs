//! Shared mappings of simulated device memory (the one `unsafe` of the sim backend: `mmap`).
#![allow(unsafe_code)]

use std::fs::File;
use std::os::fd::AsFd;
use std::ptr::NonNull;

use rustix::mm::{MapFlags, ProtFlags, mmap, munmap};

use crate::error::{PluginError, Result};

/// A `MAP_SHARED` read/write mapping of a whole file, unmapped on drop.
pub struct SharedMap {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; access goes through &/&mut self.
unsafe impl Send for SharedMap {}

impl SharedMap {
    /// Maps `len` bytes of `file` shared, so writes land in the file (device memory) and
    /// CRIU sees a file-backed shared mapping whose contents it does not dump.
    pub fn new(file: &File, len: usize) -> Result<Self> {
        if len == 0 {
            return Err(PluginError::invalid("cannot map an empty buffer"));
        }
        // SAFETY: a fresh mapping at an address the kernel picks, of a file we hold open;
        // nothing else in this process aliases it.
        let p = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                file.as_fd(),
                0,
            )
        }
        .map_err(|e| PluginError::io("mmap simulated device memory", e.into()))?;
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| PluginError::Device("mmap returned null".into()))?;
        Ok(SharedMap { ptr, len })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr..ptr+len is our live mapping for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SharedMap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the region mmap returned; no references outlive self.
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
