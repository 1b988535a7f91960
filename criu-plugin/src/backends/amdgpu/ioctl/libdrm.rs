//! Every `unsafe` of the AMDGPU backend: the KFD ioctls (`#[repr(C)]` mirrors of
//! `<linux/kfd_ioctl.h>`), libdrm_amdgpu loaded at run time (`#[repr(C)]` mirrors of
//! `<libdrm/amdgpu.h>`), the page-aligned host staging buffer, and CRIU's
//! `find_unused_fd_pid` export. Each item is a safe function or an RAII handle; the rest of
//! the backend is safe Rust.
//!
//! Struct sizes are pinned with `const _: () = assert!(...)`; sizes, field offsets and ioctl
//! numbers are also compared against the C headers by `tests/amdgpu_uapi.rs`, which compiles
//! a small C program at test time.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, c_void};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::Arc;

use rustix::ioctl::{Opcode, Updater, ioctl};

// ---------------------------------------------------------------------------------------
// ioctl numbers, the kernel's way (include/uapi/asm-generic/ioctl.h)
// ---------------------------------------------------------------------------------------

const IOC_NRBITS: u32 = 8;
const IOC_TYPEBITS: u32 = 8;
const IOC_SIZEBITS: u32 = 14;
const IOC_NRSHIFT: u32 = 0;
const IOC_TYPESHIFT: u32 = IOC_NRSHIFT + IOC_NRBITS;
const IOC_SIZESHIFT: u32 = IOC_TYPESHIFT + IOC_TYPEBITS;
const IOC_DIRSHIFT: u32 = IOC_SIZESHIFT + IOC_SIZEBITS;
const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    assert!(
        size < (1 << IOC_SIZEBITS),
        "ioctl argument too large for _IOC"
    );
    (dir << IOC_DIRSHIFT)
        | ((ty as u32) << IOC_TYPESHIFT)
        | ((nr as u32) << IOC_NRSHIFT)
        | ((size as u32) << IOC_SIZESHIFT)
}

/// `_IO(type, nr)`.
pub const fn io_none(ty: u8, nr: u8) -> u32 {
    ioc(IOC_NONE, ty, nr, 0)
}

/// `_IOR(type, nr, T)`.
pub const fn ior<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_READ, ty, nr, size_of::<T>())
}

/// `_IOW(type, nr, T)`.
pub const fn iow<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_WRITE, ty, nr, size_of::<T>())
}

/// `_IOWR(type, nr, T)`.
pub const fn iowr<T>(ty: u8, nr: u8) -> u32 {
    ioc(IOC_READ | IOC_WRITE, ty, nr, size_of::<T>())
}

// ---------------------------------------------------------------------------------------
// KFD UAPI (<linux/kfd_ioctl.h>)
// ---------------------------------------------------------------------------------------

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

fn len_u32(n: usize, what: &str) -> io::Result<u32> {
    u32::try_from(n)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("too many {what}")))
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

// ---------------------------------------------------------------------------------------
// CRIU export used only by this backend
// ---------------------------------------------------------------------------------------

/// CRIU's `find_unused_fd_pid(pid)`: the lowest fd number above every fd the restored task
/// will get, so fds the plugin keeps in the task never clash with them. `None` outside CRIU.
pub fn criu_find_unused_fd(pid: u32) -> Option<RawFd> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only reads symbol tables.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"find_unused_fd_pid".as_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: CRIU 4.x exports `int find_unused_fd_pid(pid_t pid)` (criu/include/files.h).
    let f = unsafe {
        std::mem::transmute::<*mut c_void, unsafe extern "C" fn(libc::pid_t) -> c_int>(p)
    };
    // SAFETY: a plain call with an integer argument; CRIU looks the pid up in its own tables.
    let fd = unsafe { f(pid as libc::pid_t) };
    (fd > 0).then_some(fd)
}

/// Creates (or opens) the POSIX named semaphore `name` with value 1 and closes it again:
/// ROCt's `hsakmt_semaphore`, which must exist when the restored process resumes.
pub fn ensure_named_semaphore(name: &std::ffi::CStr) -> io::Result<()> {
    // SAFETY: a NUL-terminated name; the variadic mode and value have the types sem_open
    // reads for O_CREAT (mode_t promoted to c_uint, unsigned value).
    let sem = unsafe { libc::sem_open(name.as_ptr(), libc::O_CREAT, 0o666 as c_uint, 1 as c_uint) };
    if sem == libc::SEM_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `sem` is the valid handle sem_open just returned, closed once.
    unsafe { libc::sem_close(sem) };
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Host staging buffer
// ---------------------------------------------------------------------------------------

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf only reads a system constant.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|n| *n > 0).unwrap_or(4096)
}

/// Page-aligned anonymous memory, usable as a userptr BO (SDMA reads and writes it).
pub struct HostBuffer {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone; moving it between threads is fine.
unsafe impl Send for HostBuffer {}

impl HostBuffer {
    /// Maps `len` bytes (rounded up to whole pages; at least one page).
    pub fn new(len: usize) -> io::Result<HostBuffer> {
        let page = page_size();
        let len = len.max(1).div_ceil(page) * page;
        // SAFETY: a fresh private anonymous mapping at an address the kernel picks; nothing
        // else refers to it.
        let p = unsafe {
            rustix::mm::mmap_anonymous(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::PRIVATE,
            )
        }?;
        let ptr = NonNull::new(p.cast::<u8>())
            .ok_or_else(|| io::Error::other("mmap returned a null mapping"))?;
        Ok(HostBuffer { ptr, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` maps `len` readable bytes for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` maps `len` writable bytes; `&mut self` makes this the only view.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    fn as_mut_ptr(&mut self) -> *mut c_void {
        self.ptr.as_ptr().cast()
    }
}

impl Drop for HostBuffer {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `new`, which no slice outlives.
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

// ---------------------------------------------------------------------------------------
// libdrm_amdgpu (<libdrm/amdgpu.h>), loaded at run time
// ---------------------------------------------------------------------------------------

/// The shared object loaded for BO import, VA mapping and command submission.
pub const LIBDRM_AMDGPU: &str = "libdrm_amdgpu.so.1";

/// `enum amdgpu_bo_handle_type::amdgpu_bo_handle_type_dma_buf_fd`.
pub const AMDGPU_BO_HANDLE_TYPE_DMA_BUF_FD: c_uint = 2;
/// `enum amdgpu_gpu_va_range::amdgpu_gpu_va_range_general`.
pub const AMDGPU_GPU_VA_RANGE_GENERAL: c_uint = 0;
/// `AMDGPU_VA_OP_MAP` / `AMDGPU_VA_OP_UNMAP` (amdgpu_drm.h).
pub const AMDGPU_VA_OP_MAP: u32 = 1;
pub const AMDGPU_VA_OP_UNMAP: u32 = 2;
/// `AMDGPU_HW_IP_DMA`.
pub const AMDGPU_HW_IP_DMA: c_uint = 2;
/// `AMDGPU_GEM_DOMAIN_GTT`.
pub const AMDGPU_GEM_DOMAIN_GTT: u32 = 0x2;
/// `AMDGPU_FAMILY_AI` (Vega10): from here on SDMA v4+ packet rules apply.
pub const AMDGPU_FAMILY_AI: u32 = 141;
/// `AMDGPU_TIMEOUT_INFINITE`.
pub const AMDGPU_TIMEOUT_INFINITE: u64 = u64::MAX;

type Handle = *mut c_void;

/// `struct amdgpu_bo_alloc_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AmdgpuBoAllocRequest {
    pub alloc_size: u64,
    pub phys_alignment: u64,
    pub preferred_heap: u32,
    pub flags: u64,
}
const _: () = assert!(size_of::<AmdgpuBoAllocRequest>() == 32);

/// `struct amdgpu_bo_import_result`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AmdgpuBoImportResult {
    pub buf_handle: Handle,
    pub alloc_size: u64,
}
const _: () = assert!(size_of::<AmdgpuBoImportResult>() == 16);

/// `struct amdgpu_cs_ib_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct AmdgpuCsIbInfo {
    pub flags: u64,
    pub ib_mc_address: u64,
    pub size: u32,
}
const _: () = assert!(size_of::<AmdgpuCsIbInfo>() == 24);

/// `struct amdgpu_cs_fence_info`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AmdgpuCsFenceInfo {
    pub handle: Handle,
    pub offset: u64,
}
const _: () = assert!(size_of::<AmdgpuCsFenceInfo>() == 16);

/// `struct amdgpu_cs_fence`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AmdgpuCsFence {
    pub context: Handle,
    pub ip_type: u32,
    pub ip_instance: u32,
    pub ring: u32,
    pub fence: u64,
}
const _: () = assert!(size_of::<AmdgpuCsFence>() == 32);

/// `struct amdgpu_cs_request`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AmdgpuCsRequest {
    pub flags: u64,
    pub ip_type: c_uint,
    pub ip_instance: c_uint,
    pub ring: u32,
    pub resources: Handle,
    pub number_of_dependencies: u32,
    pub dependencies: *mut AmdgpuCsFence,
    pub number_of_ibs: u32,
    pub ibs: *mut AmdgpuCsIbInfo,
    pub seq_no: u64,
    pub fence_info: AmdgpuCsFenceInfo,
}
const _: () = assert!(size_of::<AmdgpuCsRequest>() == 88);

/// `struct amdgpu_gpu_info` (only `family_id` is read; the rest keeps the layout).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct AmdgpuGpuInfo {
    pub asic_id: u32,
    pub chip_rev: u32,
    pub chip_external_rev: u32,
    pub family_id: u32,
    pub ids_flags: u64,
    pub max_engine_clk: u64,
    pub max_memory_clk: u64,
    pub num_shader_engines: u32,
    pub num_shader_arrays_per_engine: u32,
    pub avail_quad_shader_pipes: u32,
    pub max_quad_shader_pipes: u32,
    pub cache_entries_per_quad_pipe: u32,
    pub num_hw_gfx_contexts: u32,
    pub rb_pipes: u32,
    pub enabled_rb_pipes_mask: u32,
    pub gpu_counter_freq: u32,
    pub backend_disable: [u32; 4],
    pub mc_arb_ramcfg: u32,
    pub gb_addr_cfg: u32,
    pub gb_tile_mode: [u32; 32],
    pub gb_macro_tile_mode: [u32; 16],
    pub pa_sc_raster_cfg: [u32; 4],
    pub pa_sc_raster_cfg1: [u32; 4],
    pub cu_active_number: u32,
    pub cu_ao_mask: u32,
    pub cu_bitmap: [[u32; 4]; 4],
    pub vram_type: u32,
    pub vram_bit_width: u32,
    pub ce_ram_size: u32,
    pub vce_harvest_config: u32,
    pub pci_rev_id: u32,
}
const _: () = assert!(size_of::<AmdgpuGpuInfo>() == 416);

type FnDeviceInitialize = unsafe extern "C" fn(c_int, *mut u32, *mut u32, *mut Handle) -> c_int;
type FnHandleOnly = unsafe extern "C" fn(Handle) -> c_int;
type FnQueryGpuInfo = unsafe extern "C" fn(Handle, *mut AmdgpuGpuInfo) -> c_int;
type FnBoImport = unsafe extern "C" fn(Handle, c_uint, u32, *mut AmdgpuBoImportResult) -> c_int;
type FnCreateBoFromUserMem = unsafe extern "C" fn(Handle, *mut c_void, u64, *mut Handle) -> c_int;
type FnBoAlloc = unsafe extern "C" fn(Handle, *mut AmdgpuBoAllocRequest, *mut Handle) -> c_int;
type FnBoCpuMap = unsafe extern "C" fn(Handle, *mut *mut c_void) -> c_int;
type FnVaRangeAlloc =
    unsafe extern "C" fn(Handle, c_uint, u64, u64, u64, *mut u64, *mut Handle, u64) -> c_int;
type FnBoVaOp = unsafe extern "C" fn(Handle, u64, u64, u64, u64, u32) -> c_int;
type FnBoListCreate = unsafe extern "C" fn(Handle, u32, *mut Handle, *mut u8, *mut Handle) -> c_int;
type FnCtxCreate = unsafe extern "C" fn(Handle, *mut Handle) -> c_int;
type FnCsSubmit = unsafe extern "C" fn(Handle, u64, *mut AmdgpuCsRequest, u32) -> c_int;
type FnQueryFence = unsafe extern "C" fn(*mut AmdgpuCsFence, u64, u64, *mut u32) -> c_int;

/// libdrm_amdgpu's entry points, resolved once.
pub struct LibDrmAmdgpu {
    _lib: libloading::Library,
    device_initialize: FnDeviceInitialize,
    device_deinitialize: FnHandleOnly,
    query_gpu_info: FnQueryGpuInfo,
    bo_import: FnBoImport,
    create_bo_from_user_mem: FnCreateBoFromUserMem,
    bo_alloc: FnBoAlloc,
    bo_free: FnHandleOnly,
    bo_cpu_map: FnBoCpuMap,
    bo_cpu_unmap: FnHandleOnly,
    va_range_alloc: FnVaRangeAlloc,
    va_range_free: FnHandleOnly,
    bo_va_op: FnBoVaOp,
    bo_list_create: FnBoListCreate,
    bo_list_destroy: FnHandleOnly,
    cs_ctx_create: FnCtxCreate,
    cs_ctx_free: FnHandleOnly,
    cs_submit: FnCsSubmit,
    cs_query_fence_status: FnQueryFence,
}

/// Why libdrm_amdgpu could not be used.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot use {name}: {reason}; install libdrm-amdgpu1 (Debian/Ubuntu) or libdrm (RHEL) on the node"
)]
pub struct LoadError {
    pub name: String,
    pub reason: String,
}

macro_rules! load_sym {
    ($lib:expr, $name:literal, $ty:ty, $file:expr) => {{
        // SAFETY: the symbol is libdrm_amdgpu's exported function with exactly this C
        // signature (libdrm/amdgpu.h, stable ABI of libdrm_amdgpu.so.1); the Library is kept
        // alive in the same struct as the copied pointer.
        let s: libloading::Symbol<'_, $ty> = unsafe { $lib.get($name) }.map_err(|e| LoadError {
            name: $file.to_string(),
            reason: format!(
                "missing symbol {}: {e}",
                String::from_utf8_lossy(&$name[..$name.len() - 1])
            ),
        })?;
        *s
    }};
}

impl LibDrmAmdgpu {
    /// Loads [`LIBDRM_AMDGPU`].
    pub fn load() -> Result<Arc<LibDrmAmdgpu>, LoadError> {
        Self::load_from(LIBDRM_AMDGPU)
    }

    /// Loads libdrm_amdgpu from `file` (a name the dynamic loader resolves, or a path).
    pub fn load_from(file: &str) -> Result<Arc<LibDrmAmdgpu>, LoadError> {
        // SAFETY: loading libdrm_amdgpu runs its ELF constructors, which only initialise
        // libdrm's own state.
        let lib = unsafe { libloading::Library::new(file) }.map_err(|e| LoadError {
            name: file.to_string(),
            reason: e.to_string(),
        })?;
        let l = LibDrmAmdgpu {
            device_initialize: load_sym!(
                lib,
                b"amdgpu_device_initialize\0",
                FnDeviceInitialize,
                file
            ),
            device_deinitialize: load_sym!(
                lib,
                b"amdgpu_device_deinitialize\0",
                FnHandleOnly,
                file
            ),
            query_gpu_info: load_sym!(lib, b"amdgpu_query_gpu_info\0", FnQueryGpuInfo, file),
            bo_import: load_sym!(lib, b"amdgpu_bo_import\0", FnBoImport, file),
            create_bo_from_user_mem: load_sym!(
                lib,
                b"amdgpu_create_bo_from_user_mem\0",
                FnCreateBoFromUserMem,
                file
            ),
            bo_alloc: load_sym!(lib, b"amdgpu_bo_alloc\0", FnBoAlloc, file),
            bo_free: load_sym!(lib, b"amdgpu_bo_free\0", FnHandleOnly, file),
            bo_cpu_map: load_sym!(lib, b"amdgpu_bo_cpu_map\0", FnBoCpuMap, file),
            bo_cpu_unmap: load_sym!(lib, b"amdgpu_bo_cpu_unmap\0", FnHandleOnly, file),
            va_range_alloc: load_sym!(lib, b"amdgpu_va_range_alloc\0", FnVaRangeAlloc, file),
            va_range_free: load_sym!(lib, b"amdgpu_va_range_free\0", FnHandleOnly, file),
            bo_va_op: load_sym!(lib, b"amdgpu_bo_va_op\0", FnBoVaOp, file),
            bo_list_create: load_sym!(lib, b"amdgpu_bo_list_create\0", FnBoListCreate, file),
            bo_list_destroy: load_sym!(lib, b"amdgpu_bo_list_destroy\0", FnHandleOnly, file),
            cs_ctx_create: load_sym!(lib, b"amdgpu_cs_ctx_create\0", FnCtxCreate, file),
            cs_ctx_free: load_sym!(lib, b"amdgpu_cs_ctx_free\0", FnHandleOnly, file),
            cs_submit: load_sym!(lib, b"amdgpu_cs_submit\0", FnCsSubmit, file),
            cs_query_fence_status: load_sym!(
                lib,
                b"amdgpu_cs_query_fence_status\0",
                FnQueryFence,
                file
            ),
            _lib: lib,
        };
        Ok(Arc::new(l))
    }
}

fn check(what: &str, r: c_int) -> io::Result<()> {
    if r == 0 {
        Ok(())
    } else {
        // libdrm returns -errno.
        let e = io::Error::from_raw_os_error(r.checked_neg().unwrap_or(libc::EIO));
        Err(io::Error::new(e.kind(), format!("{what}: {e}")))
    }
}

struct DeviceInner {
    lib: Arc<LibDrmAmdgpu>,
    handle: Handle,
}

// SAFETY: an amdgpu_device_handle is reference-counted and locked inside libdrm; it may be
// used from any thread. Each `Device` is used by one thread at a time (`&mut` methods).
unsafe impl Send for DeviceInner {}
// SAFETY: as above; libdrm serialises its own device state.
unsafe impl Sync for DeviceInner {}

impl Drop for DeviceInner {
    fn drop(&mut self) {
        // SAFETY: `handle` came from amdgpu_device_initialize and every BO/context holding an
        // Arc to this value is gone, so this is the last use.
        unsafe { (self.lib.device_deinitialize)(self.handle) };
    }
}

/// An initialised amdgpu device on a render-node fd.
pub struct Device {
    inner: Arc<DeviceInner>,
}

impl Device {
    /// `amdgpu_device_initialize(fd)`. libdrm dups the fd; `fd` may be closed afterwards.
    pub fn initialize(lib: &Arc<LibDrmAmdgpu>, fd: BorrowedFd<'_>) -> io::Result<Device> {
        let (mut major, mut minor) = (0u32, 0u32);
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: valid out-pointers to locals; `fd` is open for the call.
        let r =
            unsafe { (lib.device_initialize)(fd.as_raw_fd(), &mut major, &mut minor, &mut handle) };
        check("amdgpu_device_initialize", r)?;
        if handle.is_null() {
            return Err(io::Error::other(
                "amdgpu_device_initialize returned no device",
            ));
        }
        Ok(Device {
            inner: Arc::new(DeviceInner {
                lib: lib.clone(),
                handle,
            }),
        })
    }

    /// `amdgpu_query_gpu_info(..).family_id`.
    pub fn family_id(&self) -> io::Result<u32> {
        let mut info = std::mem::MaybeUninit::<AmdgpuGpuInfo>::zeroed();
        // SAFETY: a live device handle and a zeroed struct of the header's layout.
        let r = unsafe { (self.inner.lib.query_gpu_info)(self.inner.handle, info.as_mut_ptr()) };
        check("amdgpu_query_gpu_info", r)?;
        // SAFETY: all-zero is a valid AmdgpuGpuInfo (plain integers), then filled by libdrm.
        Ok(unsafe { info.assume_init() }.family_id)
    }

    /// `amdgpu_bo_import(dma_buf_fd)`: the BO behind a dma-buf, with its size.
    pub fn import_dmabuf(&self, fd: BorrowedFd<'_>) -> io::Result<Bo> {
        let mut res = AmdgpuBoImportResult {
            buf_handle: std::ptr::null_mut(),
            alloc_size: 0,
        };
        // SAFETY: live device, an open dma-buf fd, a valid out-struct.
        let r = unsafe {
            (self.inner.lib.bo_import)(
                self.inner.handle,
                AMDGPU_BO_HANDLE_TYPE_DMA_BUF_FD,
                fd.as_raw_fd() as u32,
                &mut res,
            )
        };
        check("amdgpu_bo_import", r)?;
        Ok(Bo {
            dev: self.inner.clone(),
            handle: res.buf_handle,
            size: res.alloc_size,
            cpu: None,
            host: None,
        })
    }

    /// `amdgpu_create_bo_from_user_mem(buffer)`: a userptr BO over the staging buffer (which
    /// the BO keeps alive).
    pub fn userptr(&self, mut buffer: HostBuffer) -> io::Result<Bo> {
        let mut handle: Handle = std::ptr::null_mut();
        let size = buffer.len() as u64;
        // SAFETY: the buffer is page-aligned, `size` bytes long, and moves into the returned
        // Bo, so it outlives the userptr BO.
        let r = unsafe {
            (self.inner.lib.create_bo_from_user_mem)(
                self.inner.handle,
                buffer.as_mut_ptr(),
                size,
                &mut handle,
            )
        };
        check("amdgpu_create_bo_from_user_mem", r)?;
        Ok(Bo {
            dev: self.inner.clone(),
            handle,
            size,
            cpu: None,
            host: Some(buffer),
        })
    }

    /// `amdgpu_bo_alloc` in GTT plus `amdgpu_bo_cpu_map` (the indirect buffer).
    pub fn alloc_gtt_mapped(&self, size: u64) -> io::Result<Bo> {
        let mut req = AmdgpuBoAllocRequest {
            alloc_size: size,
            phys_alignment: 0x1000,
            preferred_heap: AMDGPU_GEM_DOMAIN_GTT,
            flags: 0,
        };
        let mut handle: Handle = std::ptr::null_mut();
        // SAFETY: live device; valid request and out-pointer.
        let r = unsafe { (self.inner.lib.bo_alloc)(self.inner.handle, &mut req, &mut handle) };
        check("amdgpu_bo_alloc", r)?;
        let mut bo = Bo {
            dev: self.inner.clone(),
            handle,
            size,
            cpu: None,
            host: None,
        };
        let mut cpu: *mut c_void = std::ptr::null_mut();
        // SAFETY: a live BO handle and a valid out-pointer.
        let r = unsafe { (self.inner.lib.bo_cpu_map)(handle, &mut cpu) };
        check("amdgpu_bo_cpu_map", r)?;
        bo.cpu = NonNull::new(cpu.cast::<u32>());
        Ok(bo)
    }

    /// `amdgpu_bo_list_create` over `bos`.
    pub fn bo_list(&self, bos: &[&Bo]) -> io::Result<BoList> {
        let mut handles: Vec<Handle> = bos.iter().map(|b| b.handle).collect();
        let mut list: Handle = std::ptr::null_mut();
        // SAFETY: live device; `handles` holds live BO handles for the call.
        let r = unsafe {
            (self.inner.lib.bo_list_create)(
                self.inner.handle,
                len_u32(handles.len(), "BOs")?,
                handles.as_mut_ptr(),
                std::ptr::null_mut(),
                &mut list,
            )
        };
        check("amdgpu_bo_list_create", r)?;
        Ok(BoList {
            dev: self.inner.clone(),
            handle: list,
        })
    }

    /// `amdgpu_cs_ctx_create`.
    pub fn context(&self) -> io::Result<Context> {
        let mut ctx: Handle = std::ptr::null_mut();
        // SAFETY: live device; valid out-pointer.
        let r = unsafe { (self.inner.lib.cs_ctx_create)(self.inner.handle, &mut ctx) };
        check("amdgpu_cs_ctx_create", r)?;
        Ok(Context {
            dev: self.inner.clone(),
            handle: ctx,
        })
    }
}

/// A buffer object (imported, userptr or allocated); freed on drop.
pub struct Bo {
    dev: Arc<DeviceInner>,
    handle: Handle,
    size: u64,
    cpu: Option<NonNull<u32>>,
    host: Option<HostBuffer>,
}

// SAFETY: BO handles are plain references into libdrm's locked tables; one owner at a time.
unsafe impl Send for Bo {}

impl Bo {
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The staging memory of a userptr BO.
    pub fn host_mut(&mut self) -> Option<&mut [u8]> {
        self.host.as_mut().map(|h| h.as_mut_slice())
    }

    /// Writes `dwords` at the start of a CPU-mapped BO.
    pub fn write_dwords(&mut self, dwords: &[u32]) -> io::Result<()> {
        let Some(p) = self.cpu else {
            return Err(io::Error::other("BO is not CPU-mapped"));
        };
        if (dwords.len() * 4) as u64 > self.size {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} dwords do not fit a {}-byte BO", dwords.len(), self.size),
            ));
        }
        // SAFETY: the mapping is `size` bytes long, checked above, and owned by `self`.
        unsafe { std::ptr::copy_nonoverlapping(dwords.as_ptr(), p.as_ptr(), dwords.len()) };
        Ok(())
    }

    /// Allocates a GPU VA range of the BO's size and maps the BO there.
    pub fn map_va(&self) -> io::Result<VaMapping> {
        let lib = &self.dev.lib;
        let mut addr = 0u64;
        let mut va: Handle = std::ptr::null_mut();
        // SAFETY: live device; valid out-pointers.
        let r = unsafe {
            (lib.va_range_alloc)(
                self.dev.handle,
                AMDGPU_GPU_VA_RANGE_GENERAL,
                self.size,
                0x1000,
                0,
                &mut addr,
                &mut va,
                0,
            )
        };
        check("amdgpu_va_range_alloc", r)?;
        // SAFETY: a live BO and the VA range just allocated for its whole size.
        let r = unsafe { (lib.bo_va_op)(self.handle, 0, self.size, addr, 0, AMDGPU_VA_OP_MAP) };
        if let Err(e) = check("amdgpu_bo_va_op(MAP)", r) {
            // SAFETY: frees the range allocated above, unused by anything.
            unsafe { (lib.va_range_free)(va) };
            return Err(e);
        }
        Ok(VaMapping {
            lib: lib.clone(),
            bo: self.handle,
            va,
            addr,
            size: self.size,
        })
    }
}

impl Drop for Bo {
    fn drop(&mut self) {
        let lib = &self.dev.lib;
        if self.cpu.is_some() {
            // SAFETY: the BO was CPU-mapped in `alloc_gtt_mapped`; no slice outlives `self`.
            unsafe { (lib.bo_cpu_unmap)(self.handle) };
        }
        // SAFETY: the last use of the handle; VA mappings borrow the BO and are gone.
        unsafe { (lib.bo_free)(self.handle) };
    }
}

/// A BO's GPU VA mapping; unmapped and freed on drop (before the BO: it borrows it).
pub struct VaMapping {
    lib: Arc<LibDrmAmdgpu>,
    bo: Handle,
    va: Handle,
    addr: u64,
    size: u64,
}

// SAFETY: see `Bo`.
unsafe impl Send for VaMapping {}

impl VaMapping {
    pub fn addr(&self) -> u64 {
        self.addr
    }
}

impl Drop for VaMapping {
    fn drop(&mut self) {
        // SAFETY: undoes `map_va` exactly; callers drop mappings before their BO.
        unsafe {
            (self.lib.bo_va_op)(self.bo, 0, self.size, self.addr, 0, AMDGPU_VA_OP_UNMAP);
            (self.lib.va_range_free)(self.va);
        }
    }
}

/// A BO list for command submission.
pub struct BoList {
    dev: Arc<DeviceInner>,
    handle: Handle,
}

// SAFETY: see `Bo`.
unsafe impl Send for BoList {}

impl Drop for BoList {
    fn drop(&mut self) {
        // SAFETY: last use of a handle from amdgpu_bo_list_create.
        unsafe { (self.dev.lib.bo_list_destroy)(self.handle) };
    }
}

/// A command-submission context.
pub struct Context {
    dev: Arc<DeviceInner>,
    handle: Handle,
}

// SAFETY: see `Bo`.
unsafe impl Send for Context {}

impl Context {
    /// Submits one IB of `ib_dwords` dwords at GPU address `ib_va` to SDMA ring 0 and
    /// waits for its fence.
    pub fn submit_dma_and_wait(
        &mut self,
        list: &BoList,
        ib_va: u64,
        ib_dwords: u32,
    ) -> io::Result<()> {
        let mut ib = AmdgpuCsIbInfo {
            flags: 0,
            ib_mc_address: ib_va,
            size: ib_dwords,
        };
        let mut req = AmdgpuCsRequest {
            flags: 0,
            ip_type: AMDGPU_HW_IP_DMA,
            ip_instance: 0,
            ring: 0,
            resources: list.handle,
            number_of_dependencies: 0,
            dependencies: std::ptr::null_mut(),
            number_of_ibs: 1,
            ibs: &mut ib,
            seq_no: 0,
            fence_info: AmdgpuCsFenceInfo {
                handle: std::ptr::null_mut(),
                offset: 0,
            },
        };
        let lib = &self.dev.lib;
        // SAFETY: live context; `req` and `ib` live for the call; the BO list holds every BO
        // the IB touches.
        let r = unsafe { (lib.cs_submit)(self.handle, 0, &mut req, 1) };
        check("amdgpu_cs_submit", r)?;
        let mut fence = AmdgpuCsFence {
            context: self.handle,
            ip_type: AMDGPU_HW_IP_DMA,
            ip_instance: 0,
            ring: 0,
            fence: req.seq_no,
        };
        let mut expired = 0u32;
        // SAFETY: valid fence struct and out-pointer.
        let r = unsafe {
            (lib.cs_query_fence_status)(&mut fence, AMDGPU_TIMEOUT_INFINITE, 0, &mut expired)
        };
        check("amdgpu_cs_query_fence_status", r)?;
        if expired == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "SDMA IB did not complete",
            ));
        }
        Ok(())
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: last use of a handle from amdgpu_cs_ctx_create.
        unsafe { (self.dev.lib.cs_ctx_free)(self.handle) };
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
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

    #[test]
    fn missing_libdrm_amdgpu_is_an_error_that_names_the_library() {
        let e = match LibDrmAmdgpu::load_from("libdrm_amdgpu_does_not_exist.so.9") {
            Err(e) => e,
            Ok(_) => panic!("a missing library loaded"),
        };
        let s = e.to_string();
        assert!(s.contains("libdrm_amdgpu_does_not_exist.so.9"), "{s}");
        assert!(s.contains("install"), "{s}");
    }

    #[test]
    fn host_buffer_is_page_aligned_and_writable() {
        let mut b = HostBuffer::new(5000).unwrap();
        assert_eq!(b.len() % page_size(), 0);
        assert!(b.len() >= 5000);
        assert_eq!(b.as_slice().as_ptr() as usize % page_size(), 0);
        b.as_mut_slice()[4999] = 7;
        assert_eq!(b.as_slice()[4999], 7);
    }

    #[test]
    fn criu_find_unused_fd_is_absent_outside_criu() {
        assert_eq!(criu_find_unused_fd(1), None);
    }
}
