//! The pure parts of the KFD flows: image entries ↔ ioctl buckets, which BOs carry
//! contents, the mappings UPDATE_VMA_MAP must move, and the restore's [`CopyPlan`].

use std::os::fd::OwnedFd;

use super::images::pages_image;
use super::ioctl::{KFD_INVALID_FD, KfdCriuBoBucket, alloc_flags};
use super::proto::KfdBoEntry;
use crate::contract::{BackendId, CopyPlan, PlanBuffer, PlanDevice};
use crate::error::{PluginError, Result};

/// `KFD_IOCTL_MAJOR_VERSION` the plugin speaks.
pub const KFD_MAJOR: u32 = 1;
/// `MIN_KFD_IOCTL_MINOR_VERSION`: the first KFD with the CRIU ioctls.
pub const KFD_MIN_MINOR: u32 = 8;

/// Checks a KFD ioctl version; the error prints current and minimum like upstream.
pub fn check_version(major: u32, minor: u32) -> Result<()> {
    if major != KFD_MAJOR || minor < KFD_MIN_MINOR {
        return Err(PluginError::Device(format!(
            "checkpoint/restore is not supported by this kernel's KFD (current:{major:02}.{minor:02} \
             min:{KFD_MAJOR:02}.{KFD_MIN_MINOR:02}); use a kernel or amdgpu-dkms with KFD ioctl 1.8 or later"
        )));
    }
    Ok(())
}

/// BOs whose contents live in a pages image (VRAM or GTT).
pub fn has_contents(flags: u32) -> bool {
    flags & (alloc_flags::VRAM | alloc_flags::GTT) != 0
}

/// BOs whose mapping offset changes on restore (contents BOs, doorbells and MMIO).
pub fn needs_vma_update(flags: u32) -> bool {
    flags & (alloc_flags::VRAM | alloc_flags::GTT | alloc_flags::MMIO_REMAP | alloc_flags::DOORBELL)
        != 0
}

/// Image entries of checkpointed BO buckets (`save_bos`).
pub fn bo_entries(buckets: &[KfdCriuBoBucket]) -> Vec<KfdBoEntry> {
    buckets
        .iter()
        .map(|b| KfdBoEntry {
            addr: b.addr,
            size: b.size,
            offset: b.offset,
            alloc_flags: b.alloc_flags,
            gpu_id: b.gpu_id,
            handle: 0,
        })
        .collect()
}

/// Restore buckets from image entries (`restore_bos`).
pub fn bo_buckets(entries: &[KfdBoEntry]) -> Vec<KfdCriuBoBucket> {
    entries
        .iter()
        .map(|e| KfdCriuBoBucket {
            addr: e.addr,
            size: e.size,
            offset: e.offset,
            restored_offset: 0,
            gpu_id: e.gpu_id,
            alloc_flags: e.alloc_flags,
            dmabuf_fd: KFD_INVALID_FD,
            pad: 0,
        })
        .collect()
}

/// Bytes of GPU `user_gpu_id`'s pages image: its contents BOs, in BO order. Saturates at
/// `u64::MAX` (BO sizes from an image may be anything; [`copy_plan_for`] refuses the
/// overflow).
pub fn pages_len(bos: &[KfdBoEntry], user_gpu_id: u32) -> u64 {
    bos.iter()
        .filter(|b| b.gpu_id == user_gpu_id && has_contents(b.alloc_flags))
        .fold(0u64, |acc, b| acc.saturating_add(b.size))
}

/// One GPU of a restore: its image (user) id, the local (actual) id, its render minor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuTarget {
    pub user_gpu_id: u32,
    pub actual_gpu_id: u32,
    pub render_minor: u32,
}

/// The [`PlanDevice::key`] of a GPU: render minor in the high half, actual gpu_id in the
/// low half, so the copy engine (in the main CRIU process, which never parsed the image)
/// can open the right render node from the key alone.
pub fn device_key(t: &GpuTarget) -> u64 {
    (u64::from(t.render_minor) << 32) | u64::from(t.actual_gpu_id)
}

/// Splits a [`device_key`] into (render minor, actual gpu_id).
pub fn split_device_key(key: u64) -> (u32, u32) {
    ((key >> 32) as u32, key as u32)
}

/// A mapping UPDATE_VMA_MAP must move: the BO at `addr` mapped at `old_pgoff` now lives at
/// `new_pgoff` on GPU `actual_gpu_id`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmaMove {
    pub addr: u64,
    pub old_pgoff: u64,
    pub new_pgoff: u64,
    pub actual_gpu_id: u32,
}

/// The moves after KFD RESTORE filled `restored_offset` (`restore_bo_data`'s list).
pub fn vma_moves(buckets: &[KfdCriuBoBucket], targets: &[GpuTarget]) -> Result<Vec<VmaMove>> {
    let mut out = Vec::new();
    for b in buckets.iter().filter(|b| needs_vma_update(b.alloc_flags)) {
        let t = target_for(targets, b.gpu_id)?;
        out.push(VmaMove {
            addr: b.addr,
            old_pgoff: b.offset,
            new_pgoff: b.restored_offset,
            actual_gpu_id: t.actual_gpu_id,
        });
    }
    Ok(out)
}

fn target_for(targets: &[GpuTarget], user_gpu_id: u32) -> Result<&GpuTarget> {
    targets
        .iter()
        .find(|t| t.user_gpu_id == user_gpu_id)
        .ok_or_else(|| {
            PluginError::invalid(format!(
                "BO on GPU 0x{user_gpu_id:04x}, which the image's device list does not have"
            ))
        })
}

/// The restore's copy plan: one device per GPU that has contents BOs (in `targets` order),
/// each reading its own pages image from offset 0; VRAM/GTT BOs only, each with its
/// dma-buf fd. `fds[i]` belongs to `bos[i]`; fds of other BOs are closed here.
pub fn copy_plan_for(
    ext_id: u32,
    pid: u32,
    bos: &[KfdBoEntry],
    targets: &[GpuTarget],
    fds: Vec<Option<OwnedFd>>,
) -> Result<CopyPlan> {
    if fds.len() != bos.len() {
        return Err(PluginError::invalid(format!(
            "{} dma-buf fds for {} BOs",
            fds.len(),
            bos.len()
        )));
    }
    let mut devices = Vec::new();
    let mut device_of = Vec::new(); // user gpu_id -> (plan device index, next read offset)
    for t in targets {
        if pages_len(bos, t.user_gpu_id) == 0 {
            continue;
        }
        device_of.push((t.user_gpu_id, devices.len() as u32, 0u64));
        devices.push(PlanDevice {
            key: device_key(t),
            label: format!("0x{:04x}", t.actual_gpu_id),
            pages_image: pages_image(ext_id, t.user_gpu_id),
        });
    }
    let mut buffers = Vec::new();
    for (i, (b, fd)) in bos.iter().zip(fds).enumerate() {
        if !has_contents(b.alloc_flags) {
            continue;
        }
        let Some(slot) = device_of.iter_mut().find(|d| d.0 == b.gpu_id) else {
            return Err(PluginError::invalid(format!(
                "BO {i} is on GPU 0x{:04x}, which the image's device list does not have",
                b.gpu_id
            )));
        };
        let fd = fd.ok_or_else(|| {
            PluginError::Device(format!(
                "KFD restored BO {i} (GPU 0x{:04x}, {} bytes) without a dma-buf fd",
                b.gpu_id, b.size
            ))
        })?;
        let next = slot.2.checked_add(b.size).ok_or_else(|| {
            PluginError::invalid(format!(
                "BO {i} (GPU 0x{:04x}, {} bytes) ends past 2^64 bytes of its pages image",
                b.gpu_id, b.size
            ))
        })?;
        buffers.push(PlanBuffer {
            device: slot.1,
            read_offset: slot.2,
            write_offset: 0,
            size: b.size,
            fd,
        });
        slot.2 = next;
    }
    let plan = CopyPlan {
        backend: BackendId::Amdgpu,
        ext_id,
        pid,
        devices,
        buffers,
    };
    plan.validate()?;
    Ok(plan)
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfd_older_than_1_8_is_refused_with_current_and_minimum_versions() {
        assert!(check_version(1, 8).is_ok());
        assert!(check_version(1, 17).is_ok());
        let e = check_version(1, 7).unwrap_err().to_string();
        assert!(e.contains("current:01.07 min:01.08"), "{e}");
        assert!(check_version(2, 9).is_err());
    }

    #[test]
    fn doorbell_and_mmio_bos_move_on_restore_but_carry_no_contents() {
        assert!(has_contents(alloc_flags::VRAM));
        assert!(has_contents(alloc_flags::GTT | (1 << 31)));
        assert!(!has_contents(alloc_flags::DOORBELL));
        assert!(!has_contents(alloc_flags::USERPTR));
        assert!(needs_vma_update(alloc_flags::DOORBELL));
        assert!(needs_vma_update(alloc_flags::MMIO_REMAP));
        assert!(!needs_vma_update(alloc_flags::USERPTR));
    }

    #[test]
    fn device_keys_round_trip_minor_and_gpu_id() {
        let t = GpuTarget {
            user_gpu_id: 1,
            actual_gpu_id: 0xbeef,
            render_minor: 130,
        };
        assert_eq!(split_device_key(device_key(&t)), (130, 0xbeef));
    }

    fn bo(gpu_id: u32, size: u64) -> KfdBoEntry {
        KfdBoEntry {
            addr: 0,
            size,
            offset: 0,
            alloc_flags: alloc_flags::VRAM,
            gpu_id,
            handle: 0,
        }
    }

    /// Regression: BO sizes from an image that add up past `u64::MAX` overflowed
    /// `pages_len`'s sum and the plan's running read offset (a panic in debug builds).
    #[test]
    fn bo_sizes_that_overflow_u64_are_refused_not_a_panic() {
        let bos = [bo(1, u64::MAX), bo(1, 2)];
        assert_eq!(pages_len(&bos, 1), u64::MAX);
        let t = GpuTarget {
            user_gpu_id: 1,
            actual_gpu_id: 0xa1,
            render_minor: 128,
        };
        let fds = (0..2)
            .map(|_| Some(OwnedFd::from(tempfile::tempfile().unwrap())))
            .collect();
        let e = copy_plan_for(3, 7, &bos, &[t], fds)
            .unwrap_err()
            .to_string();
        assert!(e.contains("past 2^64"), "{e}");
    }
}
