//! The transfer step of a Restore task: the image pulled from the source agent unless the
//! store already holds it (with the digest the task names). A task without a well-formed
//! digest pulls nothing and uses nothing local (fail closed: the digest is the pin).
//!
//! The grant Secret is read from the agents' namespace, and the pull presents this node's
//! certificate: both are set once at start-up ([`configure`]).

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
use crate::transfer::{self, PullReport, PullSpec, TransferError};

/// An invalid-task error for `source`'s pull.
fn refused(source: &TransferSource, why: impl Into<String>) -> TaskError {
    TaskError::Pull {
        endpoint: source.endpoint.clone(),
        source: TransferError::Invalid(why.into()),
    }
}

/// The task's image digest if it is a hex SHA-256; anything else fails the task.
fn pinned_digest(source: &TransferSource) -> Result<String, TaskError> {
    transfer::pinned_digest(source.image_sha256.as_deref()).map_err(|e| TaskError::Pull {
        endpoint: source.endpoint.clone(),
        source: e,
    })
}

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
    let digest = pinned_digest(source)?;
    let present = store.open_image(&task.spec.image.location).ok();
    if present.is_some_and(|i| i.digest.eq_ignore_ascii_case(&digest)) {
        return Ok(None);
    }
    let report = pull(ctx, task, store, source, digest, attempt).await?;
    Ok(Some(Pulled {
        transfer_ms: Some((report.seconds * 1000.0) as i64),
        stats: Some(TransferStats {
            bytes: Some(report.bytes_transferred as i64),
            bytes_per_second: Some(report.bytes_per_second as i64),
        }),
    }))
}

/// Pulls the task's image with digest `digest` from `source` over mutual TLS (the source's
/// certificate pinned, this node's presented), with the token from the grant Secret in the
/// agents' namespace, reporting progress as it goes.
async fn pull(
    ctx: &Context,
    task: &NodeTask,
    store: &Store,
    source: &TransferSource,
    digest: String,
    attempt: &Attempt,
) -> Result<PullReport, TaskError> {
    let cert = source
        .cert_sha256
        .clone()
        .ok_or(TaskError::UnpinnedSource)?;
    let Some(me) = ctx.config.pull_identity.as_ref() else {
        return Err(refused(
            source,
            "this agent was started without a transfer identity",
        ));
    };
    let namespace = task.namespace().unwrap_or_default();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &me.namespace);
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
        expected_digest: digest,
    };
    attempt
        .progress
        .say(format!("pulling from {}", source.endpoint));
    let progress = attempt.progress.clone();
    let started = Instant::now();
    let report = transfer::pull(&spec, &me.identity, store, move |done, total| {
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
