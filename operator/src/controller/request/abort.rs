//! Undoes a request that will not finish: stops its unfinished tasks and removes its
//! restored pod. The source pod is never touched, so the workload keeps running where it was.

use ferry_api::{CheckpointRequest, CheckpointRequestStatus, NodeTask};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, ResourceExt};

use super::api;
use crate::Result;
use crate::controller::children::names::{checkpoint_task_name, restore_task_name};
use crate::controller::context::Context;

/// Deletes the Checkpoint and Restore tasks that have not finished (a finished one is kept:
/// its result says what happened) and the restored pod, if the operator created one: only
/// the pod with the UID the status recorded, never another pod that took its name.
pub async fn run(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &CheckpointRequestStatus,
) -> Result<()> {
    let ns = api::namespace(req)?;
    let name = req.name_any();
    let tasks: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &ns);
    for task in [checkpoint_task_name(&name), restore_task_name(&name)] {
        if let Some(t) = tasks.get_opt(&task).await?
            && !t.phase().is_terminal()
        {
            api::delete_ignoring_missing(&tasks, &task).await?;
        }
    }
    if let (Some(restored), Some(uid)) = (&st.restored_pod_name, &st.restored_pod_uid) {
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
        api::delete_with_uid(&pods, restored, uid).await?;
    }
    Ok(())
}
