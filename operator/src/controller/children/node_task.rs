//! The NodeTasks of a request: one checkpoint, restore or image deletion on one node, for
//! that node's agent to run.

use ferry_api::{
    CheckpointRequest, ImageRef, NodeTask, NodeTaskSpec, PodReference, SecretKeyRef, TaskOperation,
    TaskOptions, TransferSource,
};
use kube::ResourceExt;

use super::meta::child_meta;
use super::names::image_location;
use super::transfer_secret::{TOKEN_KEY, grant_name};

/// One NodeTask of `request`.
pub fn node_task(
    request: &CheckpointRequest,
    name: String,
    node: &str,
    operation: TaskOperation,
    pod: PodReference,
    source: Option<TransferSource>,
) -> NodeTask {
    let spec = &request.spec;
    let leave_running = match operation {
        // A migration's checkpoint leaves the source running: it is deleted only once the
        // restored pod runs, so any failure leaves the workload where it was.
        TaskOperation::Checkpoint if spec.is_migration() => true,
        _ => spec.leave_running,
    };
    NodeTask {
        metadata: child_meta(request, name, Some(node)),
        spec: NodeTaskSpec {
            node_name: node.to_string(),
            operation,
            checkpoint_request: request.name_any(),
            pod,
            containers: spec.containers.clone(),
            source,
            image: ImageRef {
                storage: spec.storage.clone(),
                location: image_location(request),
            },
            options: TaskOptions {
                leave_running,
                parallel_restore: spec.gpu.parallel_restore,
                timeout_seconds: spec.timeout_seconds,
            },
        },
        status: None,
    }
}

/// The transfer source of a restore: the source agent's endpoint and pinned certificate, the
/// token Secret, and the digest the pulled image must have.
pub fn transfer_source(
    request: &CheckpointRequest,
    endpoint: String,
    cert_sha256: Option<String>,
    image_sha256: Option<String>,
) -> TransferSource {
    TransferSource {
        endpoint,
        token_secret_ref: SecretKeyRef {
            name: grant_name(request),
            key: TOKEN_KEY.to_string(),
        },
        cert_sha256,
        image_sha256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_migrations_checkpoint_leaves_the_source_running() {
        let mut spec = ferry_api::CheckpointRequestSpec::for_pod("p");
        spec.migrate = Some(ferry_api::MigrateSpec::default());
        let request = CheckpointRequest::new("req", spec);
        let pod = PodReference {
            namespace: "ns".into(),
            name: "p".into(),
            uid: None,
        };
        let task = node_task(
            &request,
            "t".into(),
            "a",
            TaskOperation::Checkpoint,
            pod,
            None,
        );
        assert!(task.spec.options.leave_running);
    }

    #[test]
    fn leave_running_follows_the_request_except_for_a_migrations_checkpoint() {
        // (migration, spec.leaveRunning, operation, the task's leaveRunning)
        let table = [
            (false, true, TaskOperation::Checkpoint, true),
            (false, false, TaskOperation::Checkpoint, false),
            (true, false, TaskOperation::Checkpoint, true),
            (true, false, TaskOperation::Restore, false),
            (false, false, TaskOperation::Delete, false),
        ];
        for (migrate, leave_running, operation, expected) in table {
            let mut spec = ferry_api::CheckpointRequestSpec::for_pod("p");
            spec.leave_running = leave_running;
            spec.migrate = migrate.then(ferry_api::MigrateSpec::default);
            let mut request = CheckpointRequest::new("req", spec);
            request.metadata.namespace = Some("ns".into());
            let pod = PodReference {
                namespace: "ns".into(),
                name: "p".into(),
                uid: None,
            };
            let task = node_task(&request, "t".into(), "a", operation, pod, None);
            assert_eq!(
                task.spec.options.leave_running, expected,
                "{migrate} {leave_running} {operation:?}"
            );
            assert_eq!(task.spec.image.location, "ns/req");
            assert_eq!(
                task.labels()
                    .get(ferry_api::names::label::NODE)
                    .map(String::as_str),
                Some("a")
            );
        }
    }
}
