//! A Delete task: the image goes from the store (a missing image is not an error).

use std::sync::Arc;

use ferry_api::{NodeTask, TaskResult};
use kube::ResourceExt;
use tracing::info;

use crate::executor::context::Context;
use crate::executor::error::TaskError;
use crate::executor::task::TaskOutcome;
use crate::store::StoreError;

/// Runs a Delete task.
pub fn run(ctx: &Context, task: Arc<NodeTask>) -> TaskOutcome {
    let store = ctx.store(&task.spec.image.storage)?;
    let location = task.spec.image.location.clone();
    check_location(&task, &location).map_err(|source| TaskError::Delete {
        location: location.clone(),
        source,
    })?;
    let found = store
        .delete(&location)
        .map_err(|source| TaskError::Delete {
            location: location.clone(),
            source,
        })?;
    info!(location = %location, found, "image deleted");
    Ok(TaskResult::default())
}

/// A Delete removes one image of the task's own namespace: `<namespace>/<name>`, as the
/// operator names every image. A bare namespace (all its images) or another namespace's
/// location is refused.
fn check_location(task: &NodeTask, location: &str) -> Result<(), StoreError> {
    let namespace = task.namespace().unwrap_or_default();
    let ok = location
        .split_once('/')
        .is_some_and(|(ns, name)| ns == namespace && !name.is_empty() && !name.contains('/'));
    if ok {
        return Ok(());
    }
    Err(StoreError::InvalidPath {
        path: location.to_string(),
        reason: "a Delete task removes one image of its own namespace: <namespace>/<request>",
    })
}
