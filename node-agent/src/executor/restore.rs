//! A Restore task: pull the image if it is not here (else verify the local one), then restore
//! it through this mode's [`crate::runtime::restore::Restorer`] in the task's work directory.
//! The image is never modified and always kept.

use std::sync::Arc;

use ferry_api::NodeTask;
use tracing::info;

use crate::executor::checkpoint::check_image_owner;
use crate::executor::context::{Context, tool_timeout};
use crate::executor::error::TaskError;
use crate::executor::pull;
use crate::executor::result::{import_result, restore_result};
use crate::executor::task::{Attempt, TaskOutcome};
use crate::runtime::restore::{RestoreJob, RestoreTarget};

/// Runs a Restore task.
pub async fn run(ctx: &Context, task: Arc<NodeTask>, attempt: Attempt) -> TaskOutcome {
    let (store, _in_use) = ctx.held_store(&task)?;
    let location = task.spec.image.location.clone();
    let marker = ctx.restore_marker(&task);
    if attempt.resumed && marker.exists() {
        return Err(TaskError::RestoreInterrupted);
    }
    let pulled = pull::if_needed(ctx, &task, &store, &attempt).await?;
    let image = store
        .open_image(&location)
        .map_err(|source| TaskError::Image {
            location: location.clone(),
            source,
        })?;
    // A local image under a re-used request name is an earlier request's, not this one's.
    check_image_owner(&task, &image, false)?;
    if pulled.is_none() {
        // A pulled image was verified file by file as it arrived; a local one is checked
        // now, before anything is restored from it.
        attempt.progress.say("verifying the image");
        let check = image.clone();
        tokio::task::spawn_blocking(move || check.verify())
            .await
            .map_err(|source| TaskError::Worker {
                what: "verify",
                source,
            })?
            .map_err(|source| TaskError::Corrupt {
                location: location.clone(),
                source,
            })?;
    }
    let plan = ctx
        .config
        .runtime
        .restore_plan(&ctx.config.criu, &task, &image)?;
    attempt.progress.say(plan.says.as_str());

    // The task's work dir, set up once for every mechanism: a fresh directory, and for a
    // restore that must not be repeated the marker saying it has begun.
    let work_dir = ctx.work_dir(&task);
    let _ = std::fs::remove_dir_all(&work_dir);
    std::fs::create_dir_all(&work_dir).map_err(|source| TaskError::WorkDir {
        path: work_dir.clone(),
        source,
    })?;
    let repeatable = plan.restorer.repeatable();
    if !repeatable {
        std::fs::write(&marker, b"restoring\n").map_err(|source| TaskError::WorkDir {
            path: ctx.config.work_dir.clone(),
            source,
        })?;
    }
    let references: Vec<String> = plan
        .targets
        .iter()
        .filter_map(|t| match t {
            RestoreTarget::CheckpointImage { reference, .. } => Some(reference.clone()),
            _ => None,
        })
        .collect();
    let mut job = RestoreJob::new(&work_dir);
    job.containers = plan.targets;
    job.parallel_restore = task.spec.options.parallel_restore;
    job.env = ctx.config.plugin_env.clone();
    job.timeout = tool_timeout(&task);
    job.control = attempt.control.clone();
    let restorer = plan.restorer;
    let restore_image = image.clone();
    let result = tokio::task::spawn_blocking(move || restorer.restore(&job, &restore_image))
        .await
        .map_err(|source| TaskError::Worker {
            what: if plan.imports_checkpoint_images {
                "import"
            } else {
                "restore"
            },
            source,
        });
    if !repeatable {
        let _ = std::fs::remove_file(&marker);
    }
    let outcome = result?.map_err(TaskError::Restore)?;
    let seconds = outcome.duration.as_secs_f64();
    ctx.metrics.restore(seconds, outcome.plugin_stats.as_ref());
    let pulled = pulled.unwrap_or_default();
    if plan.imports_checkpoint_images {
        info!(seconds, images = %references.join(","), "checkpoint images imported; the kubelet restores the containers");
        return Ok(import_result(&image, &outcome, pulled));
    }
    let pids: Vec<String> = outcome
        .restored
        .iter()
        .filter_map(|r| r.pid.map(|p| format!("{}={p}", r.name)))
        .collect();
    info!(seconds, pids = %pids.join(","), "restored");
    Ok(restore_result(&image, &outcome, pulled))
}
