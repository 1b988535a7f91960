//! The transfer step of a Restore task: the image pulled from the source agent unless the
//! store already holds it (with the digest the task names).

use std::time::Instant;

use ferry_api::{NodeTask, TransferSource, TransferStats};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, ResourceExt};
use tracing::info;

use crate::cluster::grants;
use crate::executor::context::Context;
use crate::executor::error::TaskError;
use crate::executor::result::Pulled;
use crate::executor::task::Attempt;
use crate::store::Store;
use crate::transfer::{self, PullReport, PullSpec};

/// Pulls the task's image when the task names a source and the store does not hold it yet.
/// `None`: nothing was pulled (the image is local and must be verified before use).
pub async fn if_needed(
    ctx: &Context,
    task: &NodeTask,
    store: &Store,
    attempt: &Attempt,
) -> Result<Option<Pulled>, TaskError> {
    let Some(source) = task.spec.source.as_ref() else {
        return Ok(None);
    };
    let present = store.open_image(&task.spec.image.location).ok();
    let matches = present
        .as_ref()
        .is_some_and(|i| source.image_sha256.as_deref().is_none_or(|d| d == i.digest));
    if matches {
        return Ok(None);
    }
    let report = pull(ctx, task, store, source, attempt).await?;
    Ok(Some(Pulled {
        transfer_ms: Some((report.seconds * 1000.0) as i64),
        stats: Some(TransferStats {
            bytes: Some(report.bytes_transferred as i64),
            bytes_per_second: Some(report.bytes_per_second as i64),
        }),
    }))
}

/// Pulls the task's image from `source` over the pinned connection, with the token from the
/// task's Secret, reporting progress as it goes.
async fn pull(
    ctx: &Context,
    task: &NodeTask,
    store: &Store,
    source: &TransferSource,
    attempt: &Attempt,
) -> Result<PullReport, TaskError> {
    let cert = source
        .cert_sha256
        .clone()
        .ok_or(TaskError::UnpinnedSource)?;
    let namespace = task.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let secret = secrets
        .get_opt(&source.token_secret_ref.name)
        .await
        .map_err(TaskError::ReadToken)?
        .ok_or_else(|| TaskError::TokenSecretMissing {
            secret: source.token_secret_ref.name.clone(),
        })?;
    let token = grants::token_of(&secret, &source.token_secret_ref.key).ok_or_else(|| {
        TaskError::TokenKeyMissing {
            secret: source.token_secret_ref.name.clone(),
            key: source.token_secret_ref.key.clone(),
        }
    })?;
    let spec = PullSpec {
        endpoint: source.endpoint.clone(),
        cert_sha256: cert,
        token,
        namespace,
        request: task.spec.checkpoint_request.clone(),
        location: task.spec.image.location.clone(),
        expected_digest: source.image_sha256.clone(),
    };
    attempt
        .progress
        .say(format!("pulling from {}", source.endpoint));
    let progress = attempt.progress.clone();
    let started = Instant::now();
    let report = transfer::pull(&spec, store, move |done, total| {
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        progress.transfer(
            format!(
                "pulling: {:.0}% of {:.2} GB",
                100.0 * done as f64 / total.max(1) as f64,
                total as f64 / 1e9
            ),
            TransferStats {
                bytes: Some(done as i64),
                bytes_per_second: Some((done as f64 / secs) as i64),
            },
        );
    })
    .await
    .map_err(|source_err| TaskError::Pull {
        endpoint: source.endpoint.clone(),
        source: source_err,
    })?;
    ctx.metrics.pulled(report.bytes_transferred, report.seconds);
    info!(
        bytes = report.bytes_transferred,
        resumed = report.bytes_resumed,
        seconds = report.seconds,
        "image pulled"
    );
    Ok(report)
}
