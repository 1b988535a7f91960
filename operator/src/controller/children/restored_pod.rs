//! The pod a migration restores on the target node: the source pod's spec, detached from the
//! source's controller and from the request, bound to the target.

use ferry_api::names::{annotation, label};
use ferry_api::{CheckpointInfo, CheckpointRequest};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use crate::controller::placement::affinity;

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
        affinity::strip_selector_pins(selector);
        if selector.is_empty() {
            spec.node_selector = None;
        }
    }
    affinity::strip_affinity_pins(&mut spec.affinity);
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
    let Some(digest) = checkpoint.image.sha256.as_deref() else {
        return;
    };
    let namespace = request.namespace().unwrap_or_default();
    let Some(spec) = pod.spec.as_mut() else {
        return;
    };
    for container in spec
        .containers
        .iter_mut()
        .filter(|c| checkpoint.image.archive_containers.contains(&c.name))
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
            image: ferry_api::ImageSummary {
                sha256: Some("cd".repeat(32)),
                archive_containers: vec!["app".into()],
                ..Default::default()
            },
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
}
