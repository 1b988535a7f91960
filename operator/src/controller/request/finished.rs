//! Succeeded or Failed: nothing is left but `ttlSecondsAfterFinished`, after which the
//! request is deleted (and its finalizer cleans up).

use ferry_api::CheckpointRequest;
use jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};
use tracing::info;

use super::{api, deadlines};
use crate::Result;
use crate::controller::context::Context;

/// Deletes the request once its TTL passed, else looks again when it will have.
pub async fn run(req: &CheckpointRequest, ctx: &Context) -> Result<Action> {
    let st = req.status.clone().unwrap_or_default();
    if deadlines::ttl_expired(req, &st, Timestamp::now()) {
        let requests: Api<CheckpointRequest> =
            Api::namespaced(ctx.client.clone(), &api::namespace(req)?);
        info!("ttlSecondsAfterFinished passed; deleting the request");
        api::delete_ignoring_missing(&requests, &req.name_any()).await?;
        return Ok(Action::await_change());
    }
    Ok(deadlines::ttl_action(req, &st, Timestamp::now()))
}
