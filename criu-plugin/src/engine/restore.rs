//! Refilling device memory on restore, in parallel with host memory or sequentially.
//! (Skeleton; the implementation follows.)

use crate::backends::{Backend, Ctx};
use crate::config::Config;
use crate::engine::plan::CopyPlan;
use crate::error::Result;
use crate::host::Host;
use crate::state::PluginState;

/// Where RESTORE_EXT_FILE hands a backend's copy plan.
pub trait Refill: Sync {
    /// Copies now (sequential) or hands the plan to the main CRIU process (parallel).
    fn refill(&self, cx: &Ctx<'_>, backend: &dyn Backend, plan: CopyPlan) -> Result<()>;
}

/// The restore engine of one CRIU run.
pub struct RestoreEngine {}

impl RestoreEngine {
    pub fn new(_config: &Config) -> Self {
        RestoreEngine {}
    }
    pub fn listen(&self, _host: &Host) -> Result<()> {
        Ok(())
    }
    pub fn start_worker(_state: &std::sync::Arc<PluginState>) -> Result<()> {
        Ok(())
    }
    pub fn join_for(&self, _state: &PluginState, _pid: i32) -> Result<()> {
        Ok(())
    }
    pub fn had_work_for(&self, _pid: i32) -> bool {
        false
    }
    pub fn shutdown(&self, _state: &PluginState) -> Result<()> {
        Ok(())
    }
}

impl Refill for RestoreEngine {
    fn refill(&self, _cx: &Ctx<'_>, _backend: &dyn Backend, _plan: CopyPlan) -> Result<()> {
        Ok(())
    }
}
