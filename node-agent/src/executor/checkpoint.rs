//! A Checkpoint task: the pod's containers through this mode's [`Checkpointer`] into a staged
//! image, published when the checkpoint succeeded.

use std::sync::Arc;
use std::time::Instant;

use ferry_api::NodeTask;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tracing::{info, warn};

use crate::executor::context::{Context, tool_timeout};
use crate::executor::error::TaskError;
use crate::executor::result::checkpoint_result;
use crate::executor::task::{Attempt, TaskOutcome};
use crate::runtime::RuntimeError;
use crate::runtime::checkpoint::CheckpointJob;
use crate::store::{ImageSource, StoreError};

/// Runs a Checkpoint task.
pub async fn run(ctx: &Context, task: Arc<NodeTask>, attempt: Attempt) -> TaskOutcome {
    let (store, _in_use) = ctx.held_store(&task)?;
    let location = task.spec.image.location.clone();
    let pod_ref = &task.spec.pod;
    // Idempotent: an image this request already published is not redone.
    match store.open_image(&location) {
        Ok(image)
            if image.manifest.meta.source.namespace == pod_ref.namespace
                && image.manifest.meta.source.pod == pod_ref.name =>
        {
            info!(location = %location, "image already published; not checkpointing again");
            return Ok(checkpoint_result(&image, None, None));
        }
        Ok(_) => return Err(TaskError::ImageOfAnotherPod { location }),
        Err(StoreError::NotFound(_)) => {}
        Err(e) => return Err(TaskError::Store(e)),
    }
    let pod = ctx.pod(&task).await?;
    let targets = ctx.config.runtime.checkpoint_targets(&task, &pod)?;
    attempt.progress.say(format!(
        "checkpointing {} container(s){}",
        targets.len(),
        if attempt.resumed {
            " (retry after an agent restart; the partial image was discarded)"
        } else {
            ""
        }
    ));
    let source = ImageSource {
        node: ctx.config.node.clone(),
        namespace: pod_ref.namespace.clone(),
        pod: pod_ref.name.clone(),
        containers: Vec::new(),
    };
    let mut job = CheckpointJob::new(source, targets);
    job.leave_running = task.spec.options.leave_running;
    job.env = ctx.config.plugin_env.clone();
    job.timeout = tool_timeout(&task);
    let checkpointer = ctx.config.runtime.checkpointer(&ctx.config.criu);
    let started = Instant::now();
    let (image, outcome) = tokio::task::spawn_blocking(move || {
        let staging = store.stage(&location)?;
        match checkpointer.checkpoint(&job, &staging) {
            Ok(outcome) => {
                let manifest = staging.build_manifest(outcome.meta.clone())?;
                let image = staging.publish(&manifest)?;
                Ok((image, outcome))
            }
            Err(e) => {
                // Keep CRIU's log in the message; the partial goes (a retry starts over).
                if let Err(d) = staging.discard() {
                    warn!(error = %d, "could not remove the partial image");
                }
                Err(e)
            }
        }
    })
    .await
    .map_err(|source| TaskError::Worker {
        what: "checkpoint",
        source,
    })?
    .map_err(|e: RuntimeError| TaskError::Checkpoint(e))?;
    let seconds = started.elapsed().as_secs_f64();
    let vendor = image.manifest.meta.gpu_vendor.unwrap_or_default();
    ctx.metrics
        .checkpoint(vendor.as_str(), seconds, image.manifest.total_bytes());
    info!(
        location = %image.location,
        bytes = image.manifest.total_bytes(),
        seconds,
        digest = %image.digest,
        "checkpoint published"
    );
    Ok(checkpoint_result(
        &image,
        Some(outcome.duration),
        Some(MicroTime(outcome.frozen_at)),
    ))
}
