//! Names shared by the operator, the node agent and the tests: condition types, failure
//! reasons, labels, annotations, the finalizer, field managers and metric names.
//!
//! Plain `&str` constants with no dependencies, so every crate (the CRIU plugin included,
//! which builds ferry-api without the `crd` feature) spells them the same way.

/// Condition types on `CheckpointRequest.status.conditions`.
pub mod condition {
    /// The source containers were checkpointed and the image is published.
    pub const CHECKPOINTED: &str = "Checkpointed";
    /// The image is on the target node (migrations only).
    pub const TRANSFERRED: &str = "Transferred";
    /// The restored pod runs on the target node (migrations only).
    pub const RESTORED: &str = "Restored";
    /// The request reached its goal; `False` with a failure reason when it failed.
    pub const READY: &str = "Ready";

    /// Every condition type, in the order a migration sets them.
    pub const ALL: [&str; 4] = [CHECKPOINTED, TRANSFERRED, RESTORED, READY];
}

/// CamelCase failure reasons: a condition's `reason` and the reason of the Event that the
/// operator publishes on the request.
pub mod reason {
    /// `spec.podName` names no pod in the request's namespace.
    pub const POD_NOT_FOUND: &str = "PodNotFound";
    /// The pod exists but is not `Running` (or not yet scheduled).
    pub const POD_NOT_RUNNING: &str = "PodNotRunning";
    /// A name in `spec.containers` is not a container of the pod.
    pub const CONTAINER_NOT_FOUND: &str = "ContainerNotFound";
    /// No ready ferry node agent runs on a node the request needs.
    pub const AGENT_NOT_READY: &str = "AgentNotReady";
    /// `spec.migrate.targetNode` names no node.
    pub const TARGET_NODE_NOT_FOUND: &str = "TargetNodeNotFound";
    /// The target node exists but is not `Ready`.
    pub const TARGET_NODE_NOT_READY: &str = "TargetNodeNotReady";
    /// The target node is cordoned.
    pub const TARGET_NODE_UNSCHEDULABLE: &str = "TargetNodeUnschedulable";
    /// The target node is the node the pod already runs on.
    pub const TARGET_IS_SOURCE: &str = "TargetIsSource";
    /// `spec.storage.pvc.claimName` names no PersistentVolumeClaim.
    pub const PVC_NOT_FOUND: &str = "PvcNotFound";
    /// Another unfinished request already targets the same pod.
    pub const REQUEST_ALREADY_ACTIVE: &str = "RequestAlreadyActive";
    /// No node matches the selector, the pod's node constraints and the checkpoint's GPU
    /// needs (or the given target node does not fit the pod's nodeSelector/node affinity).
    pub const NO_COMPATIBLE_NODE: &str = "NoCompatibleNode";
    /// The checkpoint step failed on the source node.
    pub const CHECKPOINT_FAILED: &str = "CheckpointFailed";
    /// Moving the image to the target node failed.
    pub const TRANSFER_FAILED: &str = "TransferFailed";
    /// The restore step failed on the target node.
    pub const RESTORE_FAILED: &str = "RestoreFailed";
    /// The request ran longer than `spec.timeoutSeconds`.
    pub const TIMEOUT: &str = "Timeout";

    /// Every failure reason.
    pub const ALL: [&str; 15] = [
        POD_NOT_FOUND,
        POD_NOT_RUNNING,
        CONTAINER_NOT_FOUND,
        AGENT_NOT_READY,
        TARGET_NODE_NOT_FOUND,
        TARGET_NODE_NOT_READY,
        TARGET_NODE_UNSCHEDULABLE,
        TARGET_IS_SOURCE,
        PVC_NOT_FOUND,
        REQUEST_ALREADY_ACTIVE,
        NO_COMPATIBLE_NODE,
        CHECKPOINT_FAILED,
        TRANSFER_FAILED,
        RESTORE_FAILED,
        TIMEOUT,
    ];
}

/// Label keys.
pub mod label {
    /// On a NodeTask: the node whose agent runs it. Agents watch only their own node's tasks
    /// through this label, so the value is the node name.
    pub const NODE: &str = "ferry.dev/node";
    /// On NodeTasks and restored pods: the name of the owning CheckpointRequest. Label values
    /// are at most 63 characters, which is why the CRD limits request names to 63.
    pub const CHECKPOINT_REQUEST: &str = "ferry.dev/checkpoint-request";
    /// On everything ferry creates; the value is [`MANAGED_BY_VALUE`].
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// The value of [`MANAGED_BY`] on objects ferry creates.
    pub const MANAGED_BY_VALUE: &str = "ferry";
    /// On a Node: its migration pool (docs/security.md, "Migration pools"). A migration goes
    /// only to a node whose value equals the source node's, and a node without the label takes
    /// pods only from nodes without it: nodes of one pool trust each other with root (CRIU
    /// restores what an image says), nodes of different pools do not. Under the
    /// `node-restriction.kubernetes.io/` prefix, which the NodeRestriction admission plugin
    /// forbids kubelets to set: a compromised node cannot move itself into another pool.
    pub const MIGRATION_POOL: &str = "node-restriction.kubernetes.io/ferry-migration-pool";
}

/// Annotation keys.
pub mod annotation {
    /// On a restored pod: `<namespace>/<pod>` of the pod it was restored from.
    pub const RESTORED_FROM: &str = "ferry.dev/restored-from";
    /// On a restored pod: the name of the CheckpointRequest that restored it.
    pub const CHECKPOINT_REQUEST: &str = "ferry.dev/checkpoint-request";
    /// On a checkpoint image built from a kubelet/CRIU archive: the container it holds. The
    /// runtimes (containerd restore-via-create, CRI-O) read this exact key.
    pub const CRIU_CHECKPOINT_CONTAINER_NAME: &str = "org.criu.checkpoint.container.name";
    /// On an agent's Lease: the base URL of its transfer server (e.g. `https://10.0.0.7:9443`).
    pub const TRANSFER_ENDPOINT: &str = "ferry.dev/transfer-endpoint";
    /// On an agent's Lease: SHA-256 (hex) of its transfer server's certificate, which the
    /// operator copies into Restore tasks so that the pulling agent pins it.
    pub const TRANSFER_CERT_SHA256: &str = "ferry.dev/transfer-cert-sha256";
    /// On a transfer token Secret: when the token stops being accepted (RFC 3339).
    pub const TOKEN_EXPIRES_AT: &str = "ferry.dev/expires-at";
    /// On a transfer token Secret: the image location the token may pull.
    pub const IMAGE_LOCATION: &str = "ferry.dev/image-location";
    /// On a transfer token Secret: the hostPath of the store holding the image (absent: the
    /// source agent's main store).
    pub const IMAGE_STORE: &str = "ferry.dev/image-store";
    /// On a transfer grant Secret: the namespace of the request it was minted for.
    pub const GRANT_NAMESPACE: &str = "ferry.dev/request-namespace";
    /// On a transfer grant Secret: the name of the request it was minted for.
    pub const GRANT_REQUEST: &str = "ferry.dev/request-name";
    /// On a transfer grant Secret: the `metadata.uid` of the request it was minted for (the
    /// source serves only an image whose manifest records that UID).
    pub const GRANT_REQUEST_UID: &str = "ferry.dev/request-uid";
    /// On a transfer grant Secret: SHA-256 (hex) of the pulling (target) agent's certificate,
    /// from its Lease: the only client certificate the source serves the grant to.
    pub const GRANT_CLIENT_CERT_SHA256: &str = "ferry.dev/client-cert-sha256";
}

/// The contract between the operator and the node agents (operator/README.md, "Agent
/// readiness"; node-agent/README.md).
pub mod agent {
    /// Namespace of the agents' Leases unless configured otherwise.
    pub const DEFAULT_NAMESPACE: &str = "ferry-system";
    /// Prefix of an agent's Lease name; the rest is the node name.
    pub const LEASE_PREFIX: &str = "ferry-agent-";
    /// The transfer server's port when the Lease names no endpoint.
    pub const DEFAULT_TRANSFER_PORT: u16 = 9443;
    /// Key of the token in a transfer token Secret.
    pub const TOKEN_KEY: &str = "token";

    /// The name of the Lease of the agent on `node`.
    pub fn lease_name(node: &str) -> String {
        format!("{LEASE_PREFIX}{node}")
    }

    /// Name of the transfer grant Secret of request `namespace`/`request`, in the agents'
    /// namespace (where tenants cannot write). A namespace has no dots, so the name tells
    /// every namespace/request pair apart; request names are at most 63 characters (a CEL
    /// rule), so it stays within the 253 a Secret name may have.
    pub fn grant_secret_name(namespace: &str, request: &str) -> String {
        format!("ferry-transfer-{namespace}.{request}")
    }
}

/// containerd checkpoint images: how the operator (the restored pod's `image`) and the target
/// agent (the `ctr images import`) name the image a kubelet checkpoint archive becomes. One
/// function for both binaries, so the name the kubelet looks up is the name imported.
pub mod checkpoint_image {
    /// Registry-and-path prefix of every checkpoint image; `localhost` is never pulled from.
    pub const PREFIX: &str = "localhost/ferry-checkpoint";

    /// `localhost/ferry-checkpoint/<namespace>/<request>/<container>:<first 12 of digest>`:
    /// deterministic (a retried import or a restarted operator gets the same name) and unique
    /// per request and image content. Kubernetes names (DNS-1123) are valid reference path
    /// components; the digest is lower-case hex, a valid tag.
    pub fn reference(
        namespace: &str,
        request: &str,
        container: &str,
        image_sha256: &str,
    ) -> String {
        let tag: String = image_sha256.chars().take(12).collect();
        format!("{PREFIX}/{namespace}/{request}/{container}:{tag}")
    }
}

/// The finalizer the operator puts on a CheckpointRequest, so that deleting it first removes
/// its NodeTasks and images.
pub const FINALIZER: &str = "ferry.dev/cleanup";

/// Server-side-apply field managers: one per writer, so that the API server reports conflicts
/// between writers instead of silently merging them.
pub mod field_manager {
    /// The operator: CheckpointRequest status, NodeTask spec, restored pods.
    pub const OPERATOR: &str = "ferry-operator";
    /// Prefix of a node agent's field manager; the full name is [`agent`]`(node)`.
    pub const AGENT_PREFIX: &str = "ferry-agent/";

    /// The field manager of the agent on `node`: NodeTask status of that node's tasks.
    pub fn agent(node: &str) -> String {
        format!("{AGENT_PREFIX}{node}")
    }
}

/// Prometheus metric names (ARCHITECTURE.md §6), all prefixed `ferry_`.
pub mod metric {
    // Node agent.
    /// Histogram: seconds of a checkpoint step.
    pub const CHECKPOINT_DURATION_SECONDS: &str = "ferry_checkpoint_duration_seconds";
    /// Histogram: seconds of a restore step.
    pub const RESTORE_DURATION_SECONDS: &str = "ferry_restore_duration_seconds";
    /// Histogram `{vendor,mode}`: seconds spent refilling device memory.
    pub const GPU_RESTORE_DURATION_SECONDS: &str = "ferry_gpu_restore_duration_seconds";
    /// Counter: bytes of device memory restored.
    pub const GPU_RESTORE_BYTES_TOTAL: &str = "ferry_gpu_restore_bytes_total";
    /// Gauge/histogram: device memory restore throughput.
    pub const GPU_RESTORE_THROUGHPUT_BYTES_PER_SECOND: &str =
        "ferry_gpu_restore_throughput_bytes_per_second";
    /// Histogram: seconds CRIU spent restoring host memory.
    pub const HOST_RESTORE_DURATION_SECONDS: &str = "ferry_host_restore_duration_seconds";
    /// Counter: image bytes moved between agents.
    pub const TRANSFER_BYTES_TOTAL: &str = "ferry_transfer_bytes_total";
    /// Histogram: seconds of an image transfer.
    pub const TRANSFER_DURATION_SECONDS: &str = "ferry_transfer_duration_seconds";
    /// Histogram: bytes of a checkpoint image.
    pub const CHECKPOINT_SIZE_BYTES: &str = "ferry_checkpoint_size_bytes";
    /// Counter `{operation,result}`: NodeTasks finished.
    pub const TASKS_TOTAL: &str = "ferry_tasks_total";
    /// Gauge `{store}`: bytes of images (published and partial) in an image store, as of the
    /// last GC round.
    pub const STORE_BYTES: &str = "ferry_store_bytes";
    /// Counter `{kind=store|containerd}`: images GC removed (store images; checkpoint images
    /// imported into containerd, aliases included).
    pub const GC_REMOVED_IMAGES_TOTAL: &str = "ferry_gc_removed_images_total";
    /// Counter: image pulls the transfer server refused for a missing, wrong or expired token.
    pub const TRANSFER_AUTH_FAILURES_TOTAL: &str = "ferry_transfer_auth_failures_total";

    // Operator.
    /// Histogram: seconds of one reconcile.
    pub const RECONCILE_DURATION_SECONDS: &str = "ferry_reconcile_duration_seconds";
    /// Gauge `{phase}`: CheckpointRequests by phase.
    pub const REQUESTS: &str = "ferry_requests";
    /// Histogram: seconds a migrated workload was frozen (checkpoint freeze to restored run).
    pub const MIGRATION_DOWNTIME_SECONDS: &str = "ferry_migration_downtime_seconds";
    /// Counter `{error}`: reconciles that returned an error.
    pub const RECONCILE_ERRORS_TOTAL: &str = "ferry_reconcile_errors_total";

    /// Every metric name.
    pub const ALL: [&str; 17] = [
        CHECKPOINT_DURATION_SECONDS,
        RESTORE_DURATION_SECONDS,
        GPU_RESTORE_DURATION_SECONDS,
        GPU_RESTORE_BYTES_TOTAL,
        GPU_RESTORE_THROUGHPUT_BYTES_PER_SECOND,
        HOST_RESTORE_DURATION_SECONDS,
        TRANSFER_BYTES_TOTAL,
        TRANSFER_DURATION_SECONDS,
        CHECKPOINT_SIZE_BYTES,
        TASKS_TOTAL,
        STORE_BYTES,
        GC_REMOVED_IMAGES_TOTAL,
        TRANSFER_AUTH_FAILURES_TOTAL,
        RECONCILE_DURATION_SECONDS,
        REQUESTS,
        MIGRATION_DOWNTIME_SECONDS,
        RECONCILE_ERRORS_TOTAL,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_image_reference_is_deterministic_and_tagged_by_the_digest() {
        let r = checkpoint_image::reference("ml", "move-trainer", "trainer", &"ab".repeat(32));
        assert_eq!(
            r,
            "localhost/ferry-checkpoint/ml/move-trainer/trainer:abababababab"
        );
        assert_eq!(
            r,
            checkpoint_image::reference("ml", "move-trainer", "trainer", &"ab".repeat(32))
        );
    }

    #[test]
    fn every_metric_name_is_a_valid_prometheus_name_with_the_ferry_prefix() {
        for name in metric::ALL {
            assert!(name.starts_with("ferry_"), "{name}");
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
                "{name}"
            );
        }
        let mut unique = metric::ALL.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), metric::ALL.len(), "duplicate metric name");
    }

    #[test]
    fn reasons_and_condition_types_are_camel_case_and_unique() {
        for name in reason::ALL.iter().chain(condition::ALL.iter()) {
            let first = name.chars().next().unwrap_or('x');
            assert!(first.is_ascii_uppercase(), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_alphanumeric()), "{name}");
        }
        let mut unique = reason::ALL.to_vec();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), reason::ALL.len(), "duplicate reason");
    }

    #[test]
    fn agent_field_manager_names_the_node() {
        assert_eq!(field_manager::agent("gpu-node-7"), "ferry-agent/gpu-node-7");
    }
}
