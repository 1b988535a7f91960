//! The CUDA driver's process checkpoint API (r555+), loaded at run time from `libcuda.so.1`
//! with `libloading`, so the plugin builds and loads on nodes without NVIDIA's driver.
//!
//! This is the only module of the NVIDIA backend that calls into the driver. Every entry
//! point is wrapped in a safe method returning [`CuError`] with the call, the `CUresult` and
//! the driver's own text for it.
//!
//! Layouts (cuda.h, x86-64):
//! - `CUcheckpointLockArgs { unsigned timeoutMs; unsigned reserved0; cuuint64_t reserved1[7]; }`
//!   (64 bytes; NVIDIA's driver API docs).
//! - `CUcheckpointCheckpointArgs`, `CUcheckpointUnlockArgs`: `cuuint64_t reserved[8]` (64 bytes).
//! - `CUcheckpointRestoreArgs` (CUDA 13 headers, r580 drivers): `{ CUcheckpointGpuPair *gpuPairs;
//!   unsigned gpuPairsCount; char reserved[52 - sizeof(CUcheckpointGpuPair *)]; cuuint64_t
//!   reserved1; }` = 64 bytes, the same size as the older `cuuint64_t reserved[8]`, so passing it
//!   with zero pairs is what older drivers expect. **UNVERIFIED** against a real cuda.h here
//!   (taken from NVIDIA's published struct docs as mirrored in public sources): the offsets of
//!   `gpuPairs` (0) and `gpuPairsCount` (8), and that r580 (`cuDriverGetVersion` >= 13000) is
//!   the first driver that reads them.
//! - `CUcheckpointGpuPair { CUuuid oldUuid; CUuuid newUuid; }` (2 × 16 bytes).
#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uint};
use std::path::Path;

use libloading::Library;

/// `CUresult` (an enum in cuda.h, an `int` on every ABI CUDA supports).
type CuResult = c_int;
const CUDA_SUCCESS: CuResult = 0;

/// Oldest driver with the checkpoint API (r555 reports CUDA 12.5).
pub const MIN_DRIVER_VERSION: i32 = 12050;
/// Oldest driver assumed to read GPU pairs in the restore args (r580 reports CUDA 13.0).
/// UNVERIFIED: taken from the CUDA 13 headers that first declare `gpuPairs`.
pub const REMAP_DRIVER_VERSION: i32 = 13000;

/// `CUcheckpointLockArgs`.
#[repr(C)]
#[derive(Debug, Default)]
struct LockArgs {
    timeout_ms: c_uint,
    reserved0: c_uint,
    reserved1: [u64; 7],
}

/// `CUcheckpointCheckpointArgs` and `CUcheckpointUnlockArgs`.
#[repr(C)]
#[derive(Debug, Default)]
struct ReservedArgs {
    reserved: [u64; 8],
}

/// `CUcheckpointGpuPair`: restore memory of GPU `old` onto GPU `new`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuPair {
    pub old: [u8; 16],
    pub new: [u8; 16],
}

/// `CUcheckpointRestoreArgs` as of CUDA 13.
#[repr(C)]
struct RestoreArgs {
    gpu_pairs: *const GpuPair,
    gpu_pairs_count: c_uint,
    reserved: [u8; 52 - 8],
    reserved1: u64,
}

const _: () = assert!(size_of::<LockArgs>() == 64);
const _: () = assert!(size_of::<ReservedArgs>() == 64);
const _: () = assert!(size_of::<RestoreArgs>() == 64);
const _: () = assert!(std::mem::offset_of!(RestoreArgs, gpu_pairs_count) == 8);
const _: () = assert!(std::mem::offset_of!(RestoreArgs, reserved1) == 56);
const _: () = assert!(size_of::<GpuPair>() == 32);

/// `CUprocessState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    Locked,
    Checkpointed,
    Failed,
}

impl ProcessState {
    fn from_raw(v: c_int) -> Option<ProcessState> {
        match v {
            0 => Some(ProcessState::Running),
            1 => Some(ProcessState::Locked),
            2 => Some(ProcessState::Checkpointed),
            3 => Some(ProcessState::Failed),
            _ => None,
        }
    }

    /// The word `cuda-checkpoint --get-state` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcessState::Running => "running",
            ProcessState::Locked => "locked",
            ProcessState::Checkpointed => "checkpointed",
            ProcessState::Failed => "failed",
        }
    }
}

/// Why the driver could not be used at all (the backend then stays disabled).
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot load the CUDA driver {lib}: {source}")]
    Library {
        lib: String,
        #[source]
        source: libloading::Error,
    },
    #[error(
        "the CUDA driver {lib} lacks {symbol}: the checkpoint API needs an r555 or newer driver"
    )]
    Symbol { lib: String, symbol: &'static str },
    #[error(
        "the CUDA driver {lib} reports version {version}; the checkpoint API needs {MIN_DRIVER_VERSION} (r555) or newer"
    )]
    TooOld { lib: String, version: i32 },
}

/// A driver call that returned an error.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{call}(pid {pid}) failed: {name} ({code})")]
pub struct CuError {
    pub call: &'static str,
    pub pid: i32,
    pub code: i32,
    pub name: String,
}

type FnInit = unsafe extern "C" fn(c_uint) -> CuResult;
type FnGetErrorString = unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult;
type FnDriverGetVersion = unsafe extern "C" fn(*mut c_int) -> CuResult;
type FnPidArgs<A> = unsafe extern "C" fn(c_int, *mut A) -> CuResult;
type FnPidOut = unsafe extern "C" fn(c_int, *mut c_int) -> CuResult;
type FnDeviceGetCount = unsafe extern "C" fn(*mut c_int) -> CuResult;
type FnDeviceGet = unsafe extern "C" fn(*mut c_int, c_int) -> CuResult;
type FnDeviceGetUuid = unsafe extern "C" fn(*mut [u8; 16], c_int) -> CuResult;

/// The loaded driver. Function pointers stay valid while `_lib` is alive (it is dropped last).
pub struct Driver {
    init: FnInit,
    get_error_string: Option<FnGetErrorString>,
    version: i32,
    lock: FnPidArgs<LockArgs>,
    checkpoint: FnPidArgs<ReservedArgs>,
    restore: FnPidArgs<RestoreArgs>,
    unlock: FnPidArgs<ReservedArgs>,
    get_state: FnPidOut,
    get_restore_tid: FnPidOut,
    device_get_count: Option<FnDeviceGetCount>,
    device_get: Option<FnDeviceGet>,
    device_get_uuid: Option<FnDeviceGetUuid>,
    lib_name: String,
    _lib: Library,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("lib", &self.lib_name)
            .field("version", &self.version)
            .finish()
    }
}

/// Looks up `name` and copies the function pointer out of the library.
///
/// # Safety
/// `T` must be the exact C signature of `name` in cuda.h.
unsafe fn symbol<T: Copy>(lib: &Library, name: &'static str) -> Option<T> {
    // SAFETY: the caller guarantees that `T` matches the symbol's C type.
    unsafe { lib.get::<T>(name.as_bytes()) }.ok().map(|s| *s)
}

impl Driver {
    /// Loads the driver (`libcuda.so.1`, or the path in `FERRY_CUDA_LIB`) and checks that it has
    /// the checkpoint API. Does not call `cuInit` (see [`Driver::init`]).
    pub fn load(lib: &Path) -> Result<Driver, LoadError> {
        let lib_name = lib.display().to_string();
        // SAFETY: loading libcuda runs its constructors; NVIDIA's driver library is meant to be
        // dlopen'ed by applications and has no unsound initialisers.
        let library =
            unsafe { Library::new(lib.as_os_str()) }.map_err(|source| LoadError::Library {
                lib: lib_name.clone(),
                source,
            })?;
        let missing = |symbol| LoadError::Symbol {
            lib: lib_name.clone(),
            symbol,
        };
        // SAFETY (all lookups below): each type alias is the signature in cuda.h of that name:
        // `CUresult cuInit(unsigned)`, `cuGetErrorString(CUresult, const char **)`,
        // `cuDriverGetVersion(int *)`, `cuCheckpointProcess{Lock,Checkpoint,Restore,Unlock}(int,
        // Args *)`, `cuCheckpointProcessGetState(int, CUprocessState *)` (an int-sized enum),
        // `cuCheckpointProcessGetRestoreThreadId(int, int *)`, `cuDeviceGetCount(int *)`,
        // `cuDeviceGet(CUdevice *, int)` (CUdevice is an int), `cuDeviceGetUuid_v2(CUuuid *,
        // CUdevice)` (CUuuid is 16 bytes).
        let init: FnInit =
            unsafe { symbol(&library, "cuInit") }.ok_or_else(|| missing("cuInit"))?;
        let get_version: FnDriverGetVersion = unsafe { symbol(&library, "cuDriverGetVersion") }
            .ok_or_else(|| missing("cuDriverGetVersion"))?;
        let mut version: c_int = 0;
        // SAFETY: `version` is a valid out-pointer for the call.
        if unsafe { get_version(&mut version) } != CUDA_SUCCESS || version < MIN_DRIVER_VERSION {
            return Err(LoadError::TooOld {
                lib: lib_name,
                version,
            });
        }
        let lock = unsafe { symbol(&library, "cuCheckpointProcessLock") }
            .ok_or_else(|| missing("cuCheckpointProcessLock"))?;
        let checkpoint = unsafe { symbol(&library, "cuCheckpointProcessCheckpoint") }
            .ok_or_else(|| missing("cuCheckpointProcessCheckpoint"))?;
        let restore = unsafe { symbol(&library, "cuCheckpointProcessRestore") }
            .ok_or_else(|| missing("cuCheckpointProcessRestore"))?;
        let unlock = unsafe { symbol(&library, "cuCheckpointProcessUnlock") }
            .ok_or_else(|| missing("cuCheckpointProcessUnlock"))?;
        let get_state = unsafe { symbol(&library, "cuCheckpointProcessGetState") }
            .ok_or_else(|| missing("cuCheckpointProcessGetState"))?;
        let get_restore_tid = unsafe { symbol(&library, "cuCheckpointProcessGetRestoreThreadId") }
            .ok_or_else(|| missing("cuCheckpointProcessGetRestoreThreadId"))?;
        let get_error_string = unsafe { symbol(&library, "cuGetErrorString") };
        let device_get_count = unsafe { symbol(&library, "cuDeviceGetCount") };
        let device_get = unsafe { symbol(&library, "cuDeviceGet") };
        let device_get_uuid = unsafe { symbol::<FnDeviceGetUuid>(&library, "cuDeviceGetUuid_v2") }
            .or_else(|| unsafe { symbol(&library, "cuDeviceGetUuid") });
        Ok(Driver {
            init,
            get_error_string,
            version,
            lock,
            checkpoint,
            restore,
            unlock,
            get_state,
            get_restore_tid,
            device_get_count,
            device_get,
            device_get_uuid,
            lib_name,
            _lib: library,
        })
    }

    /// `cuDriverGetVersion` (e.g. 12080 for CUDA 12.8).
    pub fn version(&self) -> i32 {
        self.version
    }

    /// Whether restore args carry GPU pairs on this driver (UNVERIFIED threshold, see module doc).
    pub fn supports_remap(&self) -> bool {
        self.version >= REMAP_DRIVER_VERSION
    }

    fn check(&self, call: &'static str, pid: i32, r: CuResult) -> Result<(), CuError> {
        if r == CUDA_SUCCESS {
            return Ok(());
        }
        Err(CuError {
            call,
            pid,
            code: r,
            name: self.error_string(r),
        })
    }

    /// The driver's text for a `CUresult`.
    pub fn error_string(&self, r: i32) -> String {
        let Some(f) = self.get_error_string else {
            return format!("CUresult {r}");
        };
        let mut p: *const c_char = std::ptr::null();
        // SAFETY: `p` is a valid out-pointer; on success the driver stores a pointer to a static
        // NUL-terminated string.
        if unsafe { f(r, &mut p) } != CUDA_SUCCESS || p.is_null() {
            return format!("CUresult {r}");
        }
        // SAFETY: checked non-null above; the string is static inside the driver.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// `cuInit(0)`: needed by the device queries (and, per NVIDIA's docs, possibly by the
    /// checkpoint calls, which list CUDA_ERROR_NOT_INITIALIZED).
    pub fn init(&self) -> Result<(), CuError> {
        // SAFETY: cuInit takes flags by value; 0 is the only defined value.
        let r = unsafe { (self.init)(0) };
        self.check("cuInit", 0, r)
    }

    /// `cuCheckpointProcessGetRestoreThreadId`; fails for processes that do not use CUDA.
    pub fn restore_thread_id(&self, pid: i32) -> Result<i32, CuError> {
        let mut tid: c_int = 0;
        // SAFETY: `tid` is a valid out-pointer.
        let r = unsafe { (self.get_restore_tid)(pid, &mut tid) };
        self.check("cuCheckpointProcessGetRestoreThreadId", pid, r)?;
        Ok(tid)
    }

    /// `cuCheckpointProcessGetState`.
    pub fn state(&self, pid: i32) -> Result<ProcessState, CuError> {
        let mut s: c_int = -1;
        // SAFETY: `s` is a valid int-sized out-pointer (CUprocessState is an enum).
        let r = unsafe { (self.get_state)(pid, &mut s) };
        self.check("cuCheckpointProcessGetState", pid, r)?;
        ProcessState::from_raw(s).ok_or_else(|| CuError {
            call: "cuCheckpointProcessGetState",
            pid,
            code: s,
            name: format!("unknown process state {s}"),
        })
    }

    /// `cuCheckpointProcessLock` with a timeout (0: wait forever).
    pub fn lock(&self, pid: i32, timeout_ms: u32) -> Result<(), CuError> {
        let mut args = LockArgs {
            timeout_ms,
            ..LockArgs::default()
        };
        // SAFETY: `args` is a valid, zero-reserved CUcheckpointLockArgs for the call's duration.
        let r = unsafe { (self.lock)(pid, &mut args) };
        self.check("cuCheckpointProcessLock", pid, r)
    }

    /// `cuCheckpointProcessCheckpoint`: device memory moves into the process's host memory.
    pub fn checkpoint(&self, pid: i32) -> Result<(), CuError> {
        let mut args = ReservedArgs::default();
        // SAFETY: `args` is a valid, zeroed CUcheckpointCheckpointArgs.
        let r = unsafe { (self.checkpoint)(pid, &mut args) };
        self.check("cuCheckpointProcessCheckpoint", pid, r)
    }

    /// `cuCheckpointProcessRestore`, remapping GPUs by `pairs` (empty: restore where dumped).
    pub fn restore(&self, pid: i32, pairs: &[GpuPair]) -> Result<(), CuError> {
        let mut args = RestoreArgs {
            gpu_pairs: if pairs.is_empty() {
                std::ptr::null()
            } else {
                pairs.as_ptr()
            },
            gpu_pairs_count: pairs.len() as c_uint,
            reserved: [0; 44],
            reserved1: 0,
        };
        // SAFETY: `args` is a valid CUcheckpointRestoreArgs; `pairs` outlives the call.
        let r = unsafe { (self.restore)(pid, &mut args) };
        self.check("cuCheckpointProcessRestore", pid, r)
    }

    /// `cuCheckpointProcessUnlock`.
    pub fn unlock(&self, pid: i32) -> Result<(), CuError> {
        let mut args = ReservedArgs::default();
        // SAFETY: `args` is a valid, zeroed CUcheckpointUnlockArgs.
        let r = unsafe { (self.unlock)(pid, &mut args) };
        self.check("cuCheckpointProcessUnlock", pid, r)
    }

    /// UUIDs of the GPUs this process sees (needs [`Driver::init`]); `None` when the driver
    /// lacks the device queries.
    pub fn device_uuids(&self) -> Result<Option<Vec<[u8; 16]>>, CuError> {
        let (Some(count), Some(get), Some(uuid)) =
            (self.device_get_count, self.device_get, self.device_get_uuid)
        else {
            return Ok(None);
        };
        let mut n: c_int = 0;
        // SAFETY: `n` is a valid out-pointer.
        self.check("cuDeviceGetCount", 0, unsafe { count(&mut n) })?;
        let mut out = Vec::with_capacity(n.max(0) as usize);
        for ordinal in 0..n {
            let mut dev: c_int = 0;
            // SAFETY: `dev` is a valid out-pointer and `ordinal` < count.
            self.check("cuDeviceGet", 0, unsafe { get(&mut dev, ordinal) })?;
            let mut u = [0u8; 16];
            // SAFETY: `u` is a 16-byte CUuuid out-buffer.
            self.check("cuDeviceGetUuid_v2", 0, unsafe { uuid(&mut u, dev) })?;
            out.push(u);
        }
        Ok(Some(out))
    }
}
