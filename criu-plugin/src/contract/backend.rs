//! The [`Backend`] trait: one GPU vendor (or the simulated GPU) behind every hook, the
//! [`Ctx`] its hooks get, what they answer ([`Claim`], [`VmaUpdate`]) and the [`Refill`] path
//! a restored backend hands its copy plan to. `Ctx` holds a `&dyn Refill` whose method takes a
//! `&Ctx`, so the two live in one module.
//!
//! `engine` and `state` never name a vendor; each backend recognises its own fds, VMAs and
//! pids and answers [`Claim::NotMine`] for the rest, which CRIU reads as "ask the next plugin".

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Mutex;

use ferry_api::stats::{GpuVendor, PluginStats};

use super::backend_id::BackendId;
use super::copy_engine::CopyEngine;
use super::plan::CopyPlan;
use super::stage::Stage;
use crate::config::Config;
use crate::error::{PluginError, Result};
use crate::host::Host;

/// Whether a hook's subject belonged to this backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Not ours: CRIU moves on to the next plugin (`-ENOTSUP`).
    NotMine,
    /// Handled (`0`).
    Done,
}

/// A new mapping offset (and fd) for a device VMA whose backing object moved on restore.
#[derive(Debug)]
pub struct VmaUpdate {
    pub new_pgoff: u64,
    /// The fd CRIU should map instead of opening the path (render nodes), if any.
    pub fd: Option<OwnedFd>,
}

/// Services a backend may use during a hook.
pub struct Ctx<'a> {
    pub stage: Stage,
    pub config: &'a Config,
    pub host: &'a Host,
    /// Stats of this CRIU run; backends append device and process entries.
    pub stats: &'a Mutex<PluginStats>,
    /// Restore only: hands buffer contents to the copy path (parallel or sequential).
    pub refill: &'a dyn Refill,
}

/// Where RESTORE_EXT_FILE hands a backend's copy plan (the restore engine).
pub trait Refill: Sync {
    /// Copies now (sequential) or hands the plan to the main CRIU process (parallel).
    fn refill(&self, cx: &Ctx<'_>, backend: &dyn Backend, plan: CopyPlan) -> Result<()>;
}

/// One GPU vendor (or the simulated GPU). Every hook defaults to "not mine".
pub trait Backend: Send + Sync {
    fn id(&self) -> BackendId;
    fn vendor(&self) -> GpuVendor;

    /// Called once in `init` with the stage; a backend whose hardware or driver is absent
    /// returns `Ok(false)` and is left out (one log line, never an error).
    fn probe(&self, cx: &Ctx<'_>) -> Result<bool>;

    /// DUMP_EXT_FILE: `fd` is CRIU's copy of the task's fd; `id` names its image files.
    fn dump_file(&self, _cx: &Ctx<'_>, _fd: BorrowedFd<'_>, _id: u32) -> Result<Claim> {
        Ok(Claim::NotMine)
    }
    /// HANDLE_DEVICE_VMA: a mapping of a device file CRIU does not know.
    fn handle_device_vma(
        &self,
        _cx: &Ctx<'_>,
        _fd: BorrowedFd<'_>,
        _st: &libc::stat,
    ) -> Result<Claim> {
        Ok(Claim::NotMine)
    }
    /// PAUSE_DEVICES (dump, per task, before it is frozen).
    fn pause_devices(&self, _cx: &Ctx<'_>, _pid: i32) -> Result<Claim> {
        Ok(Claim::NotMine)
    }
    /// CHECKPOINT_DEVICES (dump, per task, after the tree is collected).
    fn checkpoint_devices(&self, _cx: &Ctx<'_>, _pid: i32) -> Result<Claim> {
        Ok(Claim::NotMine)
    }
    /// RESTORE_EXT_FILE, in the restored task: recreate the device objects, hand their
    /// contents to `cx.refill`, return the fd CRIU installs at the original number.
    fn restore_file(&self, _cx: &Ctx<'_>, _id: u32) -> Result<Option<OwnedFd>> {
        Ok(None)
    }
    /// UPDATE_VMA_MAP, in the restored task.
    fn update_vma_map(
        &self,
        _cx: &Ctx<'_>,
        _path: &str,
        _addr: u64,
        _old_pgoff: u64,
    ) -> Result<Option<VmaUpdate>> {
        Ok(None)
    }
    /// RESUME_DEVICES_LATE, in the main CRIU process, per restored task, after the engine
    /// joined its copies.
    fn resume_devices_late(&self, _cx: &Ctx<'_>, _pid: i32) -> Result<Claim> {
        Ok(Claim::NotMine)
    }
    /// End of the CRIU run (`ret` != 0: it failed); undo what must not outlive a failure.
    fn fini(&self, _cx: &Ctx<'_>, _ret: i32) {}
    /// The copy engine for one device, in whichever process copies (main CRIU in parallel
    /// mode, the restored task in sequential mode).
    fn copy_engine(&self, _cx: &Ctx<'_>, device_key: u64) -> Result<Box<dyn CopyEngine>> {
        Err(PluginError::Device(format!(
            "backend {:?} has no copy engine (device {device_key})",
            self.id()
        )))
    }
}
