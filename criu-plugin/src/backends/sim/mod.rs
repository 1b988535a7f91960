//! The simulated GPU (skeleton).

use ferry_api::stats::GpuVendor;

use crate::backends::{Backend, BackendId, Ctx};
use crate::error::Result;

#[derive(Default)]
pub struct SimBackend {}

impl Backend for SimBackend {
    fn id(&self) -> BackendId {
        BackendId::Sim
    }
    fn vendor(&self) -> GpuVendor {
        GpuVendor::Sim
    }
    fn probe(&self, _cx: &Ctx<'_>) -> Result<bool> {
        Ok(true)
    }
}
