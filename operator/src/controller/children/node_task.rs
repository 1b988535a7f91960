//! The objects the operator creates for a request, with deterministic names so that every
//! creation is idempotent (AlreadyExists means done) and a restarted operator finds them.

use std::collections::BTreeMap;

use ferry_api::names::{annotation, label};
use ferry_api::{
    CheckpointInfo, CheckpointRequest, ImageRef, NodeTask, NodeTaskSpec, PodReference,
    SecretKeyRef, TaskOperation, TaskOptions, TransferSource,
};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::node_affinity;
pub use ferry_api::names::agent::{TOKEN_KEY, token_secret_name};
use jiff::Timestamp;

/// Labels that controllers put on their pods and select them by: removed from a restored
/// pod so that the source's ReplicaSet or Job does not adopt (and then delete) it.
pub const CONTROLLER_LABELS: [&str; 6] = [
    "pod-template-hash",
    "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name",
    "controller-uid",
    "batch.kubernetes.io/controller-uid",
    "apps.kubernetes.io/pod-index",
];

/// Name of the request's Checkpoint task.
pub fn checkpoint_task_name(request: &str) -> String {
    format!("{request}-checkpoint")
}

/// Name of the request's Restore task.
pub fn restore_task_name(request: &str) -> String {
    format!("{request}-restore")
}

/// Name of the request's Delete task on its source (`target == false`) or target node.
pub fn delete_task_name(request: &str, target: bool) -> String {
    format!(
        "{request}-delete-{}",
        if target { "target" } else { "source" }
    )
}

/// Name of the pod a migration restores: `<pod>-restored-<first 5 characters of the
/// request's uid>`, so two migrations of one pod never collide, cut to the 253 characters of
/// a pod name.
pub fn restored_pod_name(pod: &str, request_uid: &str) -> String {
    let suffix: String = request_uid.chars().filter(|c| *c != '-').take(5).collect();
    let tail = format!("-restored-{suffix}");
    let keep = 253usize.saturating_sub(tail.len());
    let head: String = pod.chars().take(keep).collect();
    format!("{}{tail}", head.trim_end_matches(['-', '.']))
}

/// Image directory of a request, relative to the store root.
pub fn image_location(request: &CheckpointRequest) -> String {
    format!(
        "{}/{}",
        request.namespace().unwrap_or_default(),
        request.name_any()
    )
}

/// The owner reference that makes `request` the controller of a child.
pub fn owner(request: &CheckpointRequest) -> Option<OwnerReference> {
    request.controller_owner_ref(&())
}

fn child_meta(request: &CheckpointRequest, name: String, node: Option<&str>) -> ObjectMeta {
    let mut labels = BTreeMap::from([
        (label::CHECKPOINT_REQUEST.to_string(), request.name_any()),
        (
            label::MANAGED_BY.to_string(),
            label::MANAGED_BY_VALUE.to_string(),
        ),
    ]);
    if let Some(node) = node {
        labels.insert(label::NODE.to_string(), node.to_string());
    }
    ObjectMeta {
        name: Some(name),
        namespace: request.namespace(),
        labels: Some(labels),
        owner_references: owner(request).map(|o| vec![o]),
        ..Default::default()
    }
}

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
            name: token_secret_name(&request.name_any()),
            key: TOKEN_KEY.to_string(),
        },
        cert_sha256,
        image_sha256,
    }
}

/// The per-transfer token Secret, owned by the request (deleted with it). The source agent
/// reads it too: the annotations say until when the token is good and which image it pulls.
pub fn token_secret(request: &CheckpointRequest, token: String, expires_at: Timestamp) -> Secret {
    let mut metadata = child_meta(request, token_secret_name(&request.name_any()), None);
    let mut annotations = BTreeMap::from([
        (
            annotation::TOKEN_EXPIRES_AT.to_string(),
            expires_at.to_string(),
        ),
        (
            annotation::IMAGE_LOCATION.to_string(),
            image_location(request),
        ),
    ]);
    // The source agent serves the image from the store the checkpoint wrote it to.
    if let Some(host) = &request.spec.storage.host_path {
        annotations.insert(annotation::IMAGE_STORE.to_string(), host.path.clone());
    }
    metadata.annotations = Some(annotations);
    Secret {
        metadata,
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), token)])),
        type_: Some("Opaque".to_string()),
        ..Default::default()
    }
}

/// A random 256-bit token, hex.
pub fn random_token() -> crate::Result<String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| crate::Error::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// The restored pod: the source pod's spec bound to `target`, its labels and annotations
/// kept, except the labels its controller selects it by ([`CONTROLLER_LABELS`]), and
/// without ownerReferences, so that neither the source's controller nor the request's
/// deletion removes it. It is annotated with where it came from.
pub fn restored_pod(request: &CheckpointRequest, source: &Pod, name: String, target: &str) -> Pod {
    let mut labels = source.metadata.labels.clone().unwrap_or_default();
    for key in CONTROLLER_LABELS {
        labels.remove(key);
    }
    labels.insert(label::CHECKPOINT_REQUEST.to_string(), request.name_any());
    let mut annotations = source.metadata.annotations.clone().unwrap_or_default();
    annotations.insert(
        annotation::RESTORED_FROM.to_string(),
        format!(
            "{}/{}",
            source.namespace().unwrap_or_default(),
            source.name_any()
        ),
    );
    annotations.insert(
        annotation::CHECKPOINT_REQUEST.to_string(),
        request.name_any(),
    );
    let mut spec = source.spec.clone().unwrap_or_default();
    spec.node_name = Some(target.to_string());
    // A pod pinned to its node (hostname label, `metadata.name` field) would be rejected by
    // the target's kubelet (`NodeAffinity`): the pin names the source, and the migration's
    // target replaces it.
    if let Some(selector) = spec.node_selector.as_mut() {
        node_affinity::strip_selector_pins(selector);
        if selector.is_empty() {
            spec.node_selector = None;
        }
    }
    node_affinity::strip_affinity_pins(&mut spec.affinity);
    // The API server rejects scheduling gates on a pod that already names its node.
    spec.scheduling_gates = None;
    Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: source.namespace(),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
        spec: Some(spec),
        status: None,
    }
}

/// A checkpoint taken through the kubelet (its image holds checkpoint archives) is restored by
/// containerd: each such container of the restored pod runs the checkpoint image the target
/// agent imports, named by [`ferry_api::names::checkpoint_image::reference`]. `Never` pulled:
/// the image exists only in the target node's containerd, and until the Restore task has
/// imported it the kubelet reports `ErrImageNeverPull` and tries again on its next sync.
pub fn use_checkpoint_images(
    pod: &mut Pod,
    request: &CheckpointRequest,
    checkpoint: &CheckpointInfo,
) {
    let Some(digest) = checkpoint.sha256.as_deref() else {
        return;
    };
    let namespace = request.namespace().unwrap_or_default();
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    for container in spec
        .containers
        .iter_mut()
        .filter(|c| checkpoint.archive_containers.contains(&c.name))
    {
        container.image = Some(ferry_api::names::checkpoint_image::reference(
            &namespace,
            &request.name_any(),
            &container.name,
            digest,
        ));
        container.image_pull_policy = Some("Never".to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_containers_run_their_checkpoint_image_and_others_keep_theirs() {
        let mut request =
            CheckpointRequest::new("move", ferry_api::CheckpointRequestSpec::for_pod("p"));
        request.metadata.namespace = Some("ns".into());
        let source: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [
                {"name": "app", "image": "app:1", "imagePullPolicy": "Always"},
                {"name": "side", "image": "side:1"},
            ]},
        }))
        .unwrap();
        let mut pod = restored_pod(&request, &source, "p-restored-x".into(), "b");
        let info = CheckpointInfo {
            sha256: Some("cd".repeat(32)),
            archive_containers: vec!["app".into()],
            ..Default::default()
        };
        use_checkpoint_images(&mut pod, &request, &info);
        let containers = pod.spec.unwrap().containers;
        assert_eq!(
            containers[0].image.as_deref(),
            Some("localhost/ferry-checkpoint/ns/move/app:cdcdcdcdcdcd")
        );
        assert_eq!(containers[0].image_pull_policy.as_deref(), Some("Never"));
        assert_eq!(containers[1].image.as_deref(), Some("side:1"));
    }

    #[test]
    fn a_restored_pod_name_is_unique_per_request_and_fits_a_pod_name() {
        assert_eq!(
            restored_pod_name("trainer-0", "1a2b-3c4d-5e"),
            "trainer-0-restored-1a2b3"
        );
        let long = "a".repeat(253);
        assert!(restored_pod_name(&long, "abcdef").len() <= 253);
    }

    #[test]
    fn a_restored_pod_drops_owners_and_controller_labels_and_binds_to_the_target() {
        let request = CheckpointRequest::new("req", ferry_api::CheckpointRequestSpec::for_pod("p"));
        let source: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "p", "namespace": "ns",
                "labels": {"app": "x", "pod-template-hash": "abc"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u", "controller": true}],
            },
            "spec": {"nodeName": "a", "nodeSelector": {"kubernetes.io/hostname": "a", "gpu": "mi300"},
                     "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                         "nodeSelectorTerms": [{"matchFields": [
                             {"key": "metadata.name", "operator": "In", "values": ["a"]}]}]}}},
                     "containers": [{"name": "c", "image": "i"}]},
        }))
        .unwrap();
        let pod = restored_pod(&request, &source, "p-restored-x".into(), "b");
        assert_eq!(pod.spec.as_ref().and_then(|s| s.affinity.clone()), None);
        let selector = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_selector.clone())
            .unwrap();
        assert_eq!(
            selector.into_iter().collect::<Vec<_>>(),
            [("gpu".to_string(), "mi300".to_string())]
        );
        assert_eq!(
            pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("b")
        );
        assert!(pod.metadata.owner_references.is_none());
        let labels = pod.metadata.labels.unwrap_or_default();
        assert_eq!(labels.get("app").map(String::as_str), Some("x"));
        assert!(!labels.contains_key("pod-template-hash"));
        assert_eq!(
            pod.metadata
                .annotations
                .unwrap_or_default()
                .get(annotation::RESTORED_FROM)
                .map(String::as_str),
            Some("ns/p")
        );
    }

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
    fn the_token_secret_names_the_image_and_its_store() {
        let mut spec = ferry_api::CheckpointRequestSpec::for_pod("p");
        spec.storage = ferry_api::StorageSpec::host_path("/data/ferry");
        let mut request = CheckpointRequest::new("req", spec);
        request.metadata.namespace = Some("ns".into());
        let secret = token_secret(&request, "t".into(), Timestamp::now());
        let notes = secret.metadata.annotations.unwrap_or_default();
        assert_eq!(
            notes.get(annotation::IMAGE_STORE).map(String::as_str),
            Some("/data/ferry")
        );
        assert_eq!(
            notes.get(annotation::IMAGE_LOCATION),
            Some(&image_location(&request))
        );
    }

    #[test]
    fn tokens_are_random_and_hex() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
