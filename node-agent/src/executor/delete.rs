//! A Delete task: the image goes from the store (a missing image is not an error).

use std::sync::Arc;

use ferry_api::{NodeTask, TaskResult};
use tracing::info;

use crate::executor::context::Context;
use crate::executor::error::TaskError;
use crate::executor::task::TaskOutcome;

/// Runs a Delete task.
pub fn run(ctx: &Context, task: Arc<NodeTask>) -> TaskOutcome {
    let store = ctx.store(&task.spec.image.storage)?;
    let location = task.spec.image.location.clone();
    let found = store
        .delete(&location)
        .map_err(|source| TaskError::Delete {
            location: location.clone(),
            source,
        })?;
    info!(location = %location, found, "image deleted");
    Ok(TaskResult::default())
}
