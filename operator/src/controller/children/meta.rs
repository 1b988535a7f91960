//! The metadata every owned child of a request shares: its labels (which request, managed by
//! ferry, and for node-bound children which node) and the request as its controller, so that
//! deleting the request deletes it and its changes wake the request's reconcile.

use std::collections::BTreeMap;

use ferry_api::CheckpointRequest;
use ferry_api::names::label;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::ObjectMeta;
use kube::{Resource, ResourceExt};

/// The owner reference that makes `request` the controller of a child.
pub fn owner(request: &CheckpointRequest) -> Option<OwnerReference> {
    request.controller_owner_ref(&())
}

/// Metadata of the child `name` of `request`, labelled with `node` where it is bound to one.
pub fn child_meta(request: &CheckpointRequest, name: String, node: Option<&str>) -> ObjectMeta {
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
