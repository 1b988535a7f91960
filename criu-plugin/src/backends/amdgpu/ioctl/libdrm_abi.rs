//! `#[repr(C)]` mirrors of `<libdrm/amdgpu.h>` (sizes pinned here and compared against the C
//! header by `tests/amdgpu_uapi.rs`), the constants the backend passes, and the C signatures
//! of the entry points it loads.

use std::ffi::{c_int, c_uint, c_void};
use std::mem::size_of;

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

/// An opaque libdrm handle (`amdgpu_device_handle`, `amdgpu_bo_handle`, ...).
pub type Handle = *mut c_void;

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

pub type FnDeviceInitialize = unsafe extern "C" fn(c_int, *mut u32, *mut u32, *mut Handle) -> c_int;
pub type FnHandleOnly = unsafe extern "C" fn(Handle) -> c_int;
pub type FnQueryGpuInfo = unsafe extern "C" fn(Handle, *mut AmdgpuGpuInfo) -> c_int;
pub type FnBoImport = unsafe extern "C" fn(Handle, c_uint, u32, *mut AmdgpuBoImportResult) -> c_int;
pub type FnCreateBoFromUserMem =
    unsafe extern "C" fn(Handle, *mut c_void, u64, *mut Handle) -> c_int;
pub type FnBoAlloc = unsafe extern "C" fn(Handle, *mut AmdgpuBoAllocRequest, *mut Handle) -> c_int;
pub type FnBoCpuMap = unsafe extern "C" fn(Handle, *mut *mut c_void) -> c_int;
pub type FnVaRangeAlloc =
    unsafe extern "C" fn(Handle, c_uint, u64, u64, u64, *mut u64, *mut Handle, u64) -> c_int;
pub type FnBoVaOp = unsafe extern "C" fn(Handle, u64, u64, u64, u64, u32) -> c_int;
pub type FnBoListCreate =
    unsafe extern "C" fn(Handle, u32, *mut Handle, *mut u8, *mut Handle) -> c_int;
pub type FnCtxCreate = unsafe extern "C" fn(Handle, *mut Handle) -> c_int;
pub type FnCsSubmit = unsafe extern "C" fn(Handle, u64, *mut AmdgpuCsRequest, u32) -> c_int;
pub type FnQueryFence = unsafe extern "C" fn(*mut AmdgpuCsFence, u64, u64, *mut u32) -> c_int;
