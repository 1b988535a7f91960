//! The kube API calls the phases make, each idempotent so that a re-run reconcile (after an
//! error or an operator restart) converges instead of failing on what the last run did.
//!
//! Children are created three ways (see `operator/README.md`, "Children"):
//! * NodeTasks by server-side apply ([`apply_node_task`]): their spec is a pure function of
//!   the request and its status, the operator is its only writer, and re-applying the same
//!   spec is a no-op.
//! * The token Secret and the restored pod by create, AlreadyExists meaning done
//!   ([`create_ignoring_existing`]): they must be created once and then kept. An apply would
//!   replace a token the source agent already checks pulls against, and would re-apply a
//!   copied spec onto a running pod (whose spec is immutable), besides needing `patch` on
//!   every pod in the cluster.

use ferry_api::{CheckpointRequest, CheckpointRequestStatus, NodeTask};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::{Api, Resource, ResourceExt};

use crate::{Error, Result};

/// The field manager of everything the operator writes.
pub const FIELD_MANAGER: &str = ferry_api::names::field_manager::OPERATOR;

/// The request's namespace (every stored request has one).
pub fn namespace(req: &CheckpointRequest) -> Result<String> {
    req.namespace()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))
}

/// `namespace/name`: the request's key in the phase metrics.
pub fn key(req: &CheckpointRequest) -> String {
    format!("{}/{}", req.namespace().unwrap_or_default(), req.name_any())
}

/// Creates `obj`; one that exists already counts as created (and is kept as it is).
pub async fn create_ignoring_existing<K>(api: &Api<K>, obj: &K) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            },
            obj,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates `obj` and returns what the API server stored (its UID), or `None` when something
/// of that name exists already (which this call did not create).
pub async fn create_new<K>(api: &Api<K>, obj: &K) -> Result<Option<K>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    match api.create(&params, obj).await {
        Ok(created) => Ok(Some(created)),
        Err(kube::Error::Api(s)) if s.is_already_exists() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Creates or re-applies a NodeTask's metadata and spec (server-side apply, field manager
/// [`FIELD_MANAGER`]); its status is the agent's and is not part of the apply.
pub async fn apply_node_task(api: &Api<NodeTask>, task: &NodeTask) -> Result<()> {
    let name = task
        .metadata
        .name
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(task),
    )
    .await?;
    Ok(())
}

/// Deletes `name` (in the background); one that is gone already counts as deleted.
pub async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<()>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// What a delete with a UID precondition came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// The object with that UID is being deleted.
    Deleted,
    /// Nothing has the name.
    Gone,
    /// Another object (another UID) has the name: left as it is.
    Replaced,
}

/// Deletes `name` only if its UID is `uid` (a precondition the API server checks, so an
/// object re-created under the name in between is never hit).
pub async fn delete_with_uid<K>(api: &Api<K>, name: &str, uid: &str) -> Result<Deletion>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::background()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(Deletion::Deleted),
        Err(kube::Error::Api(s)) if s.is_not_found() => Ok(Deletion::Gone),
        // 409 Conflict: the precondition failed, the name holds another object.
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(Deletion::Replaced),
        Err(e) => Err(e.into()),
    }
}

/// Writes the whole status (server-side apply, field manager [`FIELD_MANAGER`]).
pub async fn write_status(
    client: &kube::Client,
    req: &CheckpointRequest,
    st: &CheckpointRequestStatus,
) -> Result<()> {
    let api: Api<CheckpointRequest> = Api::namespaced(client.clone(), &namespace(req)?);
    let body = serde_json::json!({
        "apiVersion": CheckpointRequest::api_version(&()),
        "kind": CheckpointRequest::kind(&()),
        "status": st,
    });
    api.patch_status(
        &req.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    Ok(())
}
