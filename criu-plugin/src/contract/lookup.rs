//! The narrow view of the plugin's state that the restore engine gets: the active backends
//! and the context to call them with, nothing else of the state.

use super::backend::{Backend, Ctx};
use super::backend_id::BackendId;
use crate::error::Result;

/// What the restore engine's worker needs to run a copy plan received from a restored task.
pub trait BackendLookup: Send + Sync {
    /// The active backend with this id.
    fn backend(&self, id: BackendId) -> Result<&dyn Backend>;
    /// The context to call the backends with.
    fn ctx(&self) -> Ctx<'_>;
}
