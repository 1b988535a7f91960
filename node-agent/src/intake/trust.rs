//! What the agent checks of a NodeTask before it runs it (issue #14, finding 10).
//!
//! The agent acts on the task's fields as root on the node, so it does not take them on trust:
//! a task it refuses fails with the reason, and nothing (store, pod, image) is touched.
//! - `spec.nodeName` must be this node: the `ferry.dev/node` label only selects what the agent
//!   watches; a task labelled for this node but written for another is not its to run.
//! - `spec.pod.namespace` must be the task's own namespace: the task's owner is a request of
//!   that namespace, and may checkpoint or restore only its own pods.
//! - `spec.image.location` must be `<task namespace>/<spec.checkpointRequest>`, the location
//!   the operator gives every task: a Delete of `b` or `b/x`, or a checkpoint into another
//!   namespace's path, is refused.

use ferry_api::NodeTask;

use crate::executor::error::TaskError;

/// `Ok` when `task` (in `namespace`) may run on `node`; else why not.
pub(crate) fn check(task: &NodeTask, namespace: &str, node: &str) -> Result<(), TaskError> {
    let spec = &task.spec;
    if spec.node_name != node {
        return Err(TaskError::NotThisNode {
            task_node: spec.node_name.clone(),
            node: node.to_string(),
        });
    }
    if spec.pod.namespace != namespace {
        return Err(TaskError::PodNamespace {
            pod_namespace: spec.pod.namespace.clone(),
            namespace: namespace.to_string(),
        });
    }
    let want = format!("{namespace}/{}", spec.checkpoint_request);
    if spec.image.location != want || spec.checkpoint_request.is_empty() {
        return Err(TaskError::Location {
            location: spec.image.location.clone(),
            want,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferry_api::{ImageRef, NodeTaskSpec, PodReference, StorageSpec, TaskOperation};

    fn task(node: &str, pod_ns: &str, request: &str, location: &str) -> NodeTask {
        NodeTask::new(
            "t",
            NodeTaskSpec {
                node_name: node.into(),
                operation: TaskOperation::Delete,
                checkpoint_request: request.into(),
                pod: PodReference {
                    namespace: pod_ns.into(),
                    name: "p".into(),
                    uid: None,
                },
                containers: vec![],
                source: None,
                image: ImageRef {
                    storage: StorageSpec::default(),
                    location: location.into(),
                },
                options: Default::default(),
            },
        )
    }

    #[test]
    fn only_this_nodes_tasks_for_their_own_namespace_and_request_pass() {
        check(&task("n", "a", "r", "a/r"), "a", "n").unwrap();
        for (t, what) in [
            (task("m", "a", "r", "a/r"), "not this agent's node"),
            (task("n", "b", "r", "a/r"), "not in the task's namespace"),
            (task("n", "a", "r", "a"), "is not this task's request's"),
            (task("n", "a", "r", "b/r"), "is not this task's request's"),
            (
                task("n", "a", "r", "a/r/.."),
                "is not this task's request's",
            ),
            (task("n", "a", "r", "a/x"), "is not this task's request's"),
            (task("n", "a", "", "a/"), "is not this task's request's"),
        ] {
            let e = check(&t, "a", "n").unwrap_err().to_string();
            assert!(e.contains(what), "{e}");
        }
    }
}
