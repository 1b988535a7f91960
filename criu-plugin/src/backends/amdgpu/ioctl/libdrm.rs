//! libdrm_amdgpu, loaded at run time with `libloading`, behind RAII handles: the device, BOs
//! (imported, userptr, allocated), their GPU VA mappings, BO lists and command-submission
//! contexts.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use super::ioc::len_u32;
use super::libdrm_abi::*;
use super::staging::HostBuffer;

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

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

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
}
