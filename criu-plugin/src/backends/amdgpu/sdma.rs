//! BO contents through the GPU's SDMA engine: COPY_LINEAR packets (pure encoding, golden
//! tested) and the engines that use libdrm_amdgpu to run them — [`SdmaWriter`] (restore:
//! host staging buffer → BO, the backend's `CopyEngine`) and [`SdmaReader`] (dump: BO →
//! staging → pages image).
//!
//! Packet: 7 dwords — header `SDMA_PACKET(COPY, LINEAR, 0)`, count, parameter (0), src lo,
//! src hi, dst lo, dst hi — at most 2 MiB each; the IB is padded with NOPs to a multiple of
//! 8 dwords. The count field is `bytes - 1` on SDMA v4 and later (family ≥ AI, Vega) and
//! `bytes` before, as the kernel's `sdma_v4_0_emit_copy_buffer` / `sdma_v3_0_...` and
//! libdrm's tests encode it. (Upstream CRIU writes `bytes` for every family.)

use std::io::Write;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::contract::CopyEngine;
use crate::error::{PluginError, Result};

use super::ioctl::{
    AMDGPU_FAMILY_AI, Bo, BoList, Context, Device, HostBuffer, LibDrmAmdgpu, VaMapping,
};

/// `SDMA_OPCODE_COPY`.
pub const SDMA_OPCODE_COPY: u32 = 1;
/// `SDMA_COPY_SUB_OPCODE_LINEAR`.
pub const SDMA_COPY_SUB_OPCODE_LINEAR: u32 = 0;
/// `SDMA_NOP`.
pub const SDMA_NOP: u32 = 0;
/// `SDMA_LINEAR_COPY_MAX_SIZE`: bytes per COPY_LINEAR packet.
pub const SDMA_LINEAR_COPY_MAX_SIZE: u64 = 1 << 21;
/// Dwords per COPY_LINEAR packet.
pub const PACKET_DWORDS: usize = 7;
/// Staging buffer when `KFD_MAX_BUFFER_SIZE` is unset (upstream uses the largest BO, which
/// can be gigabytes; ferry bounds it).
pub const DEFAULT_STAGING: u64 = 64 << 20;

/// `SDMA_PACKET(op, sub_op, e)`.
pub const fn sdma_packet(op: u32, sub_op: u32, e: u32) -> u32 {
    ((e & 0xFFFF) << 16) | ((sub_op & 0xFF) << 8) | (op & 0xFF)
}

/// Bytes one packet may copy on a GPU of `family_id`.
pub fn max_copy_size(family_id: u32) -> u64 {
    if family_id >= AMDGPU_FAMILY_AI {
        SDMA_LINEAR_COPY_MAX_SIZE
    } else {
        SDMA_LINEAR_COPY_MAX_SIZE - 1
    }
}

/// Appends COPY_LINEAR packets copying `len` bytes from `src` to `dst` (GPU VAs), split
/// at [`max_copy_size`]. Returns the number of packets.
pub fn encode_copy_linear(
    ib: &mut Vec<u32>,
    family_id: u32,
    src: u64,
    dst: u64,
    len: u64,
) -> usize {
    let max = max_copy_size(family_id);
    let mut done = 0u64;
    let mut packets = 0;
    while done < len {
        let n = (len - done).min(max);
        let (s, d) = (src + done, dst + done);
        let count = if family_id >= AMDGPU_FAMILY_AI {
            n - 1
        } else {
            n
        };
        ib.extend_from_slice(&[
            sdma_packet(SDMA_OPCODE_COPY, SDMA_COPY_SUB_OPCODE_LINEAR, 0),
            count as u32,
            0,
            s as u32,
            (s >> 32) as u32,
            d as u32,
            (d >> 32) as u32,
        ]);
        done += n;
        packets += 1;
    }
    packets
}

/// Pads the IB with NOPs to a multiple of 8 dwords.
pub fn pad_ib(ib: &mut Vec<u32>) {
    while !ib.len().is_multiple_of(8) {
        ib.push(SDMA_NOP);
    }
}

/// Dwords an IB needs for `len` bytes, padding included.
pub fn ib_dwords_for(family_id: u32, len: u64) -> usize {
    let packets = len.div_ceil(max_copy_size(family_id)).max(1) as usize;
    (packets * PACKET_DWORDS).div_ceil(8) * 8
}

/// The staging size: `KFD_MAX_BUFFER_SIZE` (0 = unset) bounded by the largest BO.
pub fn staging_size(max_buffer_size: u64, largest_bo: u64) -> u64 {
    let cap = if max_buffer_size > 0 {
        max_buffer_size
    } else {
        DEFAULT_STAGING
    };
    cap.min(largest_bo.max(1))
}

fn dev_err(what: String) -> impl FnOnce(std::io::Error) -> PluginError {
    move |e| PluginError::Device(format!("{what}: {e}"))
}

/// One GPU's SDMA queue with a staging buffer and an IB.
struct Sdma {
    ctx: Context,
    ib_va: VaMapping,
    ib: Bo,
    staging_va: VaMapping,
    staging: Bo,
    dev: Device,
    family_id: u32,
    gpu_id: u32,
}

impl Sdma {
    fn new(
        lib: &Arc<LibDrmAmdgpu>,
        render: BorrowedFd<'_>,
        gpu_id: u32,
        staging: u64,
    ) -> Result<Sdma> {
        let dev = Device::initialize(lib, render).map_err(dev_err(format!(
            "GPU 0x{gpu_id:04x}: amdgpu_device_initialize"
        )))?;
        let family_id = dev
            .family_id()
            .map_err(dev_err(format!("GPU 0x{gpu_id:04x}: query gpu info")))?;
        let host = HostBuffer::new(staging as usize).map_err(|e| {
            PluginError::io(
                format!("allocate {staging}-byte staging buffer (lower KFD_MAX_BUFFER_SIZE)"),
                e,
            )
        })?;
        let staging = dev
            .userptr(host)
            .map_err(dev_err(format!("GPU 0x{gpu_id:04x}: userptr staging BO")))?;
        let staging_va = staging.map_va().map_err(dev_err("map staging BO".into()))?;
        let ib_bytes = (ib_dwords_for(family_id, staging.size()) * 4).max(4096) as u64;
        let ib = dev
            .alloc_gtt_mapped(ib_bytes)
            .map_err(dev_err("allocate IB".into()))?;
        let ib_va = ib.map_va().map_err(dev_err("map IB".into()))?;
        let ctx = dev
            .context()
            .map_err(dev_err("create SDMA context".into()))?;
        Ok(Sdma {
            ctx,
            ib_va,
            ib,
            staging_va,
            staging,
            dev,
            family_id,
            gpu_id,
        })
    }

    fn staging_len(&self) -> u64 {
        self.staging.size()
    }

    /// Copies `len` bytes `src` → `dst` (GPU VAs) with one submission and waits for it.
    fn copy(&mut self, list: &BoList, src: u64, dst: u64, len: u64) -> Result<()> {
        let mut ib = Vec::with_capacity(ib_dwords_for(self.family_id, len));
        encode_copy_linear(&mut ib, self.family_id, src, dst, len);
        pad_ib(&mut ib);
        self.ib
            .write_dwords(&ib)
            .map_err(dev_err("write IB".into()))?;
        self.ctx
            .submit_dma_and_wait(list, self.ib_va.addr(), ib.len() as u32)
            .map_err(dev_err(format!(
                "GPU 0x{:04x}: SDMA copy of {len} bytes",
                self.gpu_id
            )))
    }
}

/// The BO currently being filled (imported from its dma-buf), keyed by the dma-buf's inode.
struct Target {
    list: BoList,
    va: VaMapping,
    bo: Bo,
    key: (u64, u64),
}

fn fd_key(fd: BorrowedFd<'_>) -> Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// Restore: writes image bytes into BOs (the backend's `CopyEngine`).
pub struct SdmaWriter {
    target: Option<Target>,
    sdma: Sdma,
    _render: OwnedFd,
}

impl SdmaWriter {
    /// Opens an engine on the GPU whose render node is `render`.
    pub fn new(
        lib: &Arc<LibDrmAmdgpu>,
        render: OwnedFd,
        gpu_id: u32,
        staging: u64,
    ) -> Result<Self> {
        use std::os::fd::AsFd;
        let sdma = Sdma::new(lib, render.as_fd(), gpu_id, staging)?;
        Ok(SdmaWriter {
            target: None,
            sdma,
            _render: render,
        })
    }

    /// Imports `dst` unless it is the current target; returns (BO size, BO GPU VA).
    fn target(&mut self, dst: BorrowedFd<'_>) -> Result<(u64, u64)> {
        let key = fd_key(dst)?;
        if let Some(t) = self.target.as_ref().filter(|t| t.key == key) {
            return Ok((t.bo.size(), t.va.addr()));
        }
        self.target = None;
        let gpu = self.sdma.gpu_id;
        let bo = self
            .sdma
            .dev
            .import_dmabuf(dst)
            .map_err(dev_err(format!("GPU 0x{gpu:04x}: import BO dma-buf")))?;
        let va = bo
            .map_va()
            .map_err(dev_err(format!("GPU 0x{gpu:04x}: map BO")))?;
        let list = self
            .sdma
            .dev
            .bo_list(&[&self.sdma.staging, &bo, &self.sdma.ib])
            .map_err(dev_err("create BO list".into()))?;
        let out = (bo.size(), va.addr());
        self.target = Some(Target { list, va, bo, key });
        Ok(out)
    }
}

impl CopyEngine for SdmaWriter {
    fn write(&mut self, dst: BorrowedFd<'_>, offset: u64, bytes: &[u8]) -> Result<()> {
        let (bo_size, dst_va) = self.target(dst)?;
        let end = offset.saturating_add(bytes.len() as u64);
        if end > bo_size {
            return Err(PluginError::Copy(format!(
                "GPU 0x{:04x}: write of {} bytes at {offset} overruns a {bo_size}-byte BO",
                self.sdma.gpu_id,
                bytes.len()
            )));
        }
        let step = self.sdma.staging_len() as usize;
        let src_va = self.sdma.staging_va.addr();
        let mut done = 0usize;
        while done < bytes.len() {
            let n = (bytes.len() - done).min(step);
            let host = self
                .sdma
                .staging
                .host_mut()
                .ok_or_else(|| PluginError::Copy("staging BO has no host memory".into()))?;
            host[..n].copy_from_slice(&bytes[done..done + n]);
            let Some(t) = self.target.as_ref() else {
                return Err(PluginError::Copy("copy target vanished".into()));
            };
            self.sdma
                .copy(&t.list, src_va, dst_va + offset + done as u64, n as u64)?;
            done += n;
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        // Every submission was waited for; release the last BO's import.
        self.target = None;
        Ok(())
    }
}

/// Dump: drains BOs into a pages image.
pub struct SdmaReader {
    sdma: Sdma,
}

impl SdmaReader {
    pub fn new(
        lib: &Arc<LibDrmAmdgpu>,
        render: BorrowedFd<'_>,
        gpu_id: u32,
        staging: u64,
    ) -> Result<Self> {
        Ok(SdmaReader {
            sdma: Sdma::new(lib, render, gpu_id, staging)?,
        })
    }

    /// Copies the whole BO behind `dmabuf` (`size` bytes as KFD reported) into `out`.
    pub fn drain(&mut self, dmabuf: BorrowedFd<'_>, size: u64, out: &mut impl Write) -> Result<()> {
        let gpu = self.sdma.gpu_id;
        let bo = self
            .sdma
            .dev
            .import_dmabuf(dmabuf)
            .map_err(dev_err(format!("GPU 0x{gpu:04x}: import BO dma-buf")))?;
        let va = bo
            .map_va()
            .map_err(dev_err(format!("GPU 0x{gpu:04x}: map BO")))?;
        let list = self
            .sdma
            .dev
            .bo_list(&[&bo, &self.sdma.staging, &self.sdma.ib])
            .map_err(dev_err("create BO list".into()))?;
        let step = self.sdma.staging_len();
        let dst_va = self.sdma.staging_va.addr();
        let mut done = 0u64;
        while done < size {
            let n = (size - done).min(step);
            self.sdma.copy(&list, va.addr() + done, dst_va, n)?;
            let host = self
                .sdma
                .staging
                .host_mut()
                .ok_or_else(|| PluginError::Copy("staging BO has no host memory".into()))?;
            out.write_all(&host[..n as usize])
                .map_err(|e| PluginError::io(format!("write GPU 0x{gpu:04x} pages"), e))?;
            done += n;
        }
        drop(list);
        drop(va);
        drop(bo);
        Ok(())
    }
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    const NAVI21: u32 = 143; // AMDGPU_FAMILY_NV
    const POLARIS: u32 = 130; // AMDGPU_FAMILY_VI

    #[test]
    fn copy_linear_header_is_op_1_sub_op_0() {
        assert_eq!(
            sdma_packet(SDMA_OPCODE_COPY, SDMA_COPY_SUB_OPCODE_LINEAR, 0),
            0x0000_0001
        );
        assert_eq!(sdma_packet(0x12, 0x34, 0x5678), 0x5678_3412);
    }

    #[test]
    fn one_small_copy_on_vega_and_later_is_one_packet_with_count_minus_one_padded_to_8() {
        let mut ib = Vec::new();
        let n = encode_copy_linear(
            &mut ib,
            NAVI21,
            0x0000_0001_2345_6000,
            0x0000_8000_0000_1000,
            4096,
        );
        pad_ib(&mut ib);
        assert_eq!(n, 1);
        assert_eq!(
            ib,
            vec![
                0x1,
                4095,
                0,
                0x2345_6000,
                0x1,
                0x0000_1000,
                0x8000,
                SDMA_NOP
            ]
        );
    }

    #[test]
    fn pre_vega_count_is_the_byte_count_and_packets_stop_below_2_mib() {
        let mut ib = Vec::new();
        let n = encode_copy_linear(&mut ib, POLARIS, 0, 0x10_0000_0000, 1 << 21);
        assert_eq!(n, 2);
        assert_eq!(ib[1], (1 << 21) - 1);
        assert_eq!(ib[8], 1);
        // second packet starts where the first stopped
        assert_eq!(ib[10], (1 << 21) - 1);
        assert_eq!(ib[12], (1u32 << 21) - 1);
        assert_eq!(ib[13], 0x10);
    }

    #[test]
    fn a_5_mib_copy_is_three_packets_of_at_most_2_mib_with_carry_into_the_high_dword() {
        let mut ib = Vec::new();
        let src = 0xFFFF_F000u64;
        let n = encode_copy_linear(&mut ib, NAVI21, src, 0, 5 << 20);
        pad_ib(&mut ib);
        assert_eq!(n, 3);
        assert_eq!(ib.len(), 24); // 21 dwords + 3 NOPs
        let counts: Vec<u32> = ib.chunks(7).take(3).map(|p| p[1]).collect();
        assert_eq!(counts, vec![(2 << 20) - 1, (2 << 20) - 1, (1 << 20) - 1]);
        // packet 2: src = 0xFFFF_F000 + 2 MiB crosses 4 GiB
        assert_eq!((ib[7 + 3], ib[7 + 4]), (0x001F_F000, 1));
        assert_eq!(&ib[21..], &[SDMA_NOP; 3]);
        assert_eq!(ib_dwords_for(NAVI21, 5 << 20), 24);
    }

    #[test]
    fn staging_follows_kfd_max_buffer_size_and_never_exceeds_the_largest_bo() {
        assert_eq!(staging_size(0, 1 << 30), DEFAULT_STAGING);
        assert_eq!(staging_size(0, 4096), 4096);
        assert_eq!(staging_size(8 << 20, 1 << 30), 8 << 20);
        assert_eq!(staging_size(8 << 20, 1 << 20), 1 << 20);
    }
}
