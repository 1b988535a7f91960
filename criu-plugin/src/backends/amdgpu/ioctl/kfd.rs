//! The KFD ioctls: `#[repr(C)]` mirrors of `<linux/kfd_ioctl.h>` (sizes pinned here and
//! compared against the C header by `tests/amdgpu_uapi.rs`) and one safe function per CRIU op.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use rustix::ioctl::{Opcode, Updater, ioctl};

use super::ioc::{ior, iowr, len_u32};

/// `AMDKFD_IOCTL_BASE`.
pub const AMDKFD_IOCTL_BASE: u8 = b'K';

/// `struct kfd_ioctl_get_version_args`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KfdGetVersionArgs {
    pub major_version: u32,
    pub minor_version: u32,
}
const _: () = assert!(size_of::<KfdGetVersionArgs>() == 8);

/// `struct kfd_ioctl_criu_args` (56 bytes: 4 bytes of tail padding after `op`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KfdCriuArgs {
    pub devices: u64,
    pub bos: u64,
    pub priv_data: u64,
    pub priv_data_size: u64,
    pub num_devices: u32,
    pub num_bos: u32,
    pub num_objects: u32,
    pub pid: u32,
    pub op: u32,
}
const _: () = assert!(size_of::<KfdCriuArgs>() == 56);

/// `struct kfd_criu_device_bucket`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KfdCriuDeviceBucket {
    pub user_gpu_id: u32,
    pub actual_gpu_id: u32,
    pub drm_fd: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<KfdCriuDeviceBucket>() == 16);

/// `struct kfd_criu_bo_bucket`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KfdCriuBoBucket {
    pub addr: u64,
    pub size: u64,
    pub offset: u64,
    pub restored_offset: u64,
    /// The user gpu_id (the id the process saw when it first started).
    pub gpu_id: u32,
    pub alloc_flags: u32,
    pub dmabuf_fd: u32,
    pub pad: u32,
}
const _: () = assert!(size_of::<KfdCriuBoBucket>() == 48);

/// `AMDKFD_IOC_GET_VERSION` = `_IOR('K', 0x01, struct kfd_ioctl_get_version_args)`.
pub const AMDKFD_IOC_GET_VERSION: u32 = ior::<KfdGetVersionArgs>(AMDKFD_IOCTL_BASE, 0x01);
/// `AMDKFD_IOC_CRIU_OP` = `_IOWR('K', 0x22, struct kfd_ioctl_criu_args)`.
pub const AMDKFD_IOC_CRIU_OP: u32 = iowr::<KfdCriuArgs>(AMDKFD_IOCTL_BASE, 0x22);

/// `KFD_INVALID_FD`.
pub const KFD_INVALID_FD: u32 = 0xffff_ffff;

/// `enum kfd_criu_op`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CriuOp {
    ProcessInfo = 0,
    Checkpoint = 1,
    Unpause = 2,
    Restore = 3,
    Resume = 4,
}

/// `KFD_IOC_ALLOC_MEM_FLAGS_*` the backend needs.
pub mod alloc_flags {
    pub const VRAM: u32 = 1 << 0;
    pub const GTT: u32 = 1 << 1;
    pub const USERPTR: u32 = 1 << 2;
    pub const DOORBELL: u32 = 1 << 3;
    pub const MMIO_REMAP: u32 = 1 << 4;
}

const OP_GET_VERSION: Opcode = AMDKFD_IOC_GET_VERSION as Opcode;
const OP_CRIU: Opcode = AMDKFD_IOC_CRIU_OP as Opcode;

/// Calls `f` again on EINTR/EAGAIN, at most 200 times (upstream's `kmtIoctl` bound).
fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    let mut left = 200;
    loop {
        match f() {
            Err(e)
                if left > 0 && (e == rustix::io::Errno::INTR || e == rustix::io::Errno::AGAIN) =>
            {
                left -= 1;
            }
            r => return r.map_err(io::Error::from),
        }
    }
}

/// `AMDKFD_IOC_GET_VERSION`.
#[doc(alias = "AMDKFD_IOC_GET_VERSION")]
pub fn kfd_get_version(fd: BorrowedFd<'_>) -> io::Result<KfdGetVersionArgs> {
    let mut args = KfdGetVersionArgs::default();
    retry(|| {
        // SAFETY: AMDKFD_IOC_GET_VERSION is a read ioctl whose argument is exactly
        // `struct kfd_ioctl_get_version_args`, mirrored (and size-checked) above.
        unsafe {
            ioctl(
                fd,
                Updater::<OP_GET_VERSION, KfdGetVersionArgs>::new(&mut args),
            )
        }
    })?;
    Ok(args)
}

fn criu_op(fd: BorrowedFd<'_>, args: &mut KfdCriuArgs) -> io::Result<()> {
    retry(|| {
        // SAFETY: AMDKFD_IOC_CRIU_OP's argument is `struct kfd_ioctl_criu_args`; every caller
        // in this module points `devices`/`bos`/`priv_data` at live buffers whose lengths
        // match `num_devices`/`num_bos`/`priv_data_size`, or leaves them 0 for ops that do
        // not read them.
        unsafe { ioctl(fd, Updater::<OP_CRIU, KfdCriuArgs>::new(args)) }
    })
}

/// Counts returned by `KFD_CRIU_OP_PROCESS_INFO` (which also pauses the process's queues).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessInfo {
    pub num_devices: u32,
    pub num_bos: u32,
    pub num_objects: u32,
    pub priv_data_size: u64,
    pub pid: u32,
}

/// `KFD_CRIU_OP_PROCESS_INFO` on the task's /dev/kfd fd: pauses its queues and returns the
/// sizes CHECKPOINT needs.
pub fn kfd_process_info(fd: BorrowedFd<'_>) -> io::Result<ProcessInfo> {
    let mut args = KfdCriuArgs {
        op: CriuOp::ProcessInfo as u32,
        ..Default::default()
    };
    criu_op(fd, &mut args)?;
    Ok(ProcessInfo {
        num_devices: args.num_devices,
        num_bos: args.num_bos,
        num_objects: args.num_objects,
        priv_data_size: args.priv_data_size,
        pid: args.pid,
    })
}

/// Takes ownership of the dma-buf fds the kernel put into `bos` (and marks them taken).
fn take_dmabuf_fds(bos: &mut [KfdCriuBoBucket]) -> Vec<Option<OwnedFd>> {
    bos.iter_mut()
        .map(|b| {
            let raw = b.dmabuf_fd;
            b.dmabuf_fd = KFD_INVALID_FD;
            if raw == KFD_INVALID_FD || raw > i32::MAX as u32 {
                None
            } else {
                // SAFETY: after a successful CHECKPOINT/RESTORE the kernel installed a new
                // dma-buf fd in this process for each BO bucket that is not KFD_INVALID_FD;
                // nobody else owns it and it is taken exactly once (reset above).
                Some(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
            }
        })
        .collect()
}

/// `KFD_CRIU_OP_CHECKPOINT`: fills `devices`, `bos` and `priv_data` (sized from
/// [`kfd_process_info`]) and returns one dma-buf fd per BO (None where the kernel gave none).
pub fn kfd_checkpoint(
    fd: BorrowedFd<'_>,
    num_objects: u32,
    devices: &mut [KfdCriuDeviceBucket],
    bos: &mut [KfdCriuBoBucket],
    priv_data: &mut [u8],
) -> io::Result<Vec<Option<OwnedFd>>> {
    bucket_op(fd, CriuOp::Checkpoint, num_objects, devices, bos, priv_data)
}

/// `KFD_CRIU_OP_RESTORE` on a fresh /dev/kfd fd of the restored task: recreates the BOs,
/// fills each bucket's `restored_offset`, and returns one dma-buf fd per BO.
pub fn kfd_restore(
    fd: BorrowedFd<'_>,
    num_objects: u32,
    devices: &mut [KfdCriuDeviceBucket],
    bos: &mut [KfdCriuBoBucket],
    priv_data: &mut [u8],
) -> io::Result<Vec<Option<OwnedFd>>> {
    bucket_op(fd, CriuOp::Restore, num_objects, devices, bos, priv_data)
}

/// The CRIU ops that take device and BO buckets and hand back one dma-buf fd per BO.
fn bucket_op(
    fd: BorrowedFd<'_>,
    op: CriuOp,
    num_objects: u32,
    devices: &mut [KfdCriuDeviceBucket],
    bos: &mut [KfdCriuBoBucket],
    priv_data: &mut [u8],
) -> io::Result<Vec<Option<OwnedFd>>> {
    for b in bos.iter_mut() {
        b.dmabuf_fd = KFD_INVALID_FD;
    }
    let mut args = KfdCriuArgs {
        devices: devices.as_mut_ptr() as u64,
        bos: bos.as_mut_ptr() as u64,
        priv_data: priv_data.as_mut_ptr() as u64,
        priv_data_size: priv_data.len() as u64,
        num_devices: len_u32(devices.len(), "devices")?,
        num_bos: len_u32(bos.len(), "BOs")?,
        num_objects,
        pid: 0,
        op: op as u32,
    };
    let r = criu_op(fd, &mut args);
    // Fds the kernel created are closed even when the call failed half-way.
    let fds = take_dmabuf_fds(bos);
    r.map(|()| fds)
}

/// `KFD_CRIU_OP_UNPAUSE`: restarts the queues PROCESS_INFO paused.
pub fn kfd_unpause(fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut args = KfdCriuArgs {
        op: CriuOp::Unpause as u32,
        ..Default::default()
    };
    criu_op(fd, &mut args)
}

/// `KFD_CRIU_OP_RESUME` for `pid` (from the main CRIU process, after the restore).
pub fn kfd_resume(fd: BorrowedFd<'_>, pid: u32) -> io::Result<()> {
    let mut args = KfdCriuArgs {
        pid,
        op: CriuOp::Resume as u32,
        ..Default::default()
    };
    criu_op(fd, &mut args)
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfd_ioctl_numbers_match_the_values_documented_upstream() {
        assert_eq!(AMDKFD_IOC_GET_VERSION, 0x8008_4B01);
        assert_eq!(AMDKFD_IOC_CRIU_OP, 0xC038_4B22);
    }

    #[test]
    fn kfd_ioctls_on_a_file_that_is_not_kfd_fail_with_enotty() {
        let f = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        let e = kfd_get_version(f.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
        let e = kfd_process_info(f.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
        let e = kfd_unpause(f.as_fd()).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTTY), "{e}");
    }
}
