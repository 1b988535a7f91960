//! The device backends (`sim`, `amdgpu`, `nvidia`), each behind
//! [`Backend`] and each reading and holding its own settings.

pub mod amdgpu;
pub mod nvidia;
pub mod sim;

use crate::contract::Backend;
use crate::error::Result;

/// Every backend compiled in, in the order hooks try them, with its settings read from the
/// environment.
pub fn all() -> Result<Vec<Box<dyn Backend>>> {
    Ok(vec![
        Box::new(sim::SimBackend::from_env()?),
        Box::new(amdgpu::AmdgpuBackend::from_env()),
        Box::new(nvidia::NvidiaBackend::default()),
    ])
}
