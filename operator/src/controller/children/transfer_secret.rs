//! The per-transfer grant Secret: the bearer token the target agent pulls the image with, and
//! what the source agent checks a pull against (docs/security.md, "Finding 1").
//!
//! It lives in the agents' namespace, where tenants cannot write, so a tenant cannot forge
//! one; its name is derived from the request's namespace and name
//! ([`ferry_api::names::agent::grant_secret_name`]) so grants of two namespaces never
//! collide, and its annotations bind it to the request (namespace, name, UID), the image
//! location and the certificate of the one agent allowed to pull with it. A Secret cannot be
//! owned across namespaces: the operator deletes it at cleanup (and it expires anyway).

use std::collections::BTreeMap;

use ferry_api::CheckpointRequest;
use ferry_api::names::{annotation, label};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::ObjectMeta;

use super::names::image_location;

pub use ferry_api::names::agent::TOKEN_KEY;

/// The name of `request`'s grant Secret (in the agents' namespace).
pub fn grant_name(request: &CheckpointRequest) -> String {
    ferry_api::names::agent::grant_secret_name(
        &request.namespace().unwrap_or_default(),
        &request.name_any(),
    )
}

/// Whether `secret` is the grant of this very request (not one left by an earlier request
/// of the same name, which must not be reused).
pub fn is_grant_of(secret: &Secret, request: &CheckpointRequest) -> bool {
    let notes = secret.metadata.annotations.as_ref();
    let uid = notes.and_then(|n| n.get(annotation::GRANT_REQUEST_UID));
    uid.is_some() && uid.cloned() == request.uid()
}

/// The grant Secret of `request` in `agent_namespace`: its token, until when it is good, the
/// image and store it reads, the request it was minted for and the SHA-256 of the pulling
/// agent's certificate (`client_cert_sha256`, from the target agent's Lease).
pub fn token_secret(
    request: &CheckpointRequest,
    agent_namespace: &str,
    client_cert_sha256: &str,
    token: String,
    expires_at: Timestamp,
) -> Secret {
    let labels = BTreeMap::from([
        (label::CHECKPOINT_REQUEST.to_string(), request.name_any()),
        (
            label::MANAGED_BY.to_string(),
            label::MANAGED_BY_VALUE.to_string(),
        ),
    ]);
    let mut annotations = BTreeMap::from([
        (
            annotation::TOKEN_EXPIRES_AT.to_string(),
            expires_at.to_string(),
        ),
        (
            annotation::IMAGE_LOCATION.to_string(),
            image_location(request),
        ),
        (
            annotation::GRANT_NAMESPACE.to_string(),
            request.namespace().unwrap_or_default(),
        ),
        (annotation::GRANT_REQUEST.to_string(), request.name_any()),
        (
            annotation::GRANT_REQUEST_UID.to_string(),
            request.uid().unwrap_or_default(),
        ),
        (
            annotation::GRANT_CLIENT_CERT_SHA256.to_string(),
            client_cert_sha256.to_string(),
        ),
    ]);
    // The source agent serves the image from the store the checkpoint wrote it to.
    if let Some(host) = &request.spec.storage.host_path {
        annotations.insert(annotation::IMAGE_STORE.to_string(), host.path.clone());
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(grant_name(request)),
            namespace: Some(agent_namespace.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        },
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

#[cfg(test)]
mod tests {
    use super::*;

    fn request(ns: &str, name: &str, uid: &str) -> CheckpointRequest {
        let mut spec = ferry_api::CheckpointRequestSpec::for_pod("p");
        spec.storage = ferry_api::StorageSpec::host_path("/data/ferry");
        let mut request = CheckpointRequest::new(name, spec);
        request.metadata.namespace = Some(ns.into());
        request.metadata.uid = Some(uid.into());
        request
    }

    #[test]
    fn the_grant_lives_with_the_agents_and_is_bound_to_the_request_image_and_target() {
        let request = request("ns", "req", "uid-1");
        let cert = "ab".repeat(32);
        let secret = token_secret(
            &request,
            "ferry-system",
            &cert,
            "t".into(),
            Timestamp::now(),
        );
        assert_eq!(secret.metadata.namespace.as_deref(), Some("ferry-system"));
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("ferry-transfer-ns.req")
        );
        // No owner: an ownerReference cannot cross namespaces (cleanup deletes it).
        assert!(secret.metadata.owner_references.is_none());
        let notes = secret.metadata.annotations.clone().unwrap_or_default();
        let get = |k: &str| notes.get(k).map(String::as_str);
        assert_eq!(get(annotation::IMAGE_STORE), Some("/data/ferry"));
        assert_eq!(get(annotation::IMAGE_LOCATION), Some("ns/req"));
        assert_eq!(get(annotation::GRANT_NAMESPACE), Some("ns"));
        assert_eq!(get(annotation::GRANT_REQUEST), Some("req"));
        assert_eq!(get(annotation::GRANT_REQUEST_UID), Some("uid-1"));
        assert_eq!(
            get(annotation::GRANT_CLIENT_CERT_SHA256),
            Some(cert.as_str())
        );
        assert!(is_grant_of(&secret, &request));
        // A re-created request of the same name (another UID) does not reuse it.
        assert!(!is_grant_of(&secret, &self::request("ns", "req", "uid-2")));
        // Two namespaces' requests of one name never share a grant.
        assert_ne!(
            grant_name(&self::request("a", "req", "u")),
            grant_name(&self::request("b", "req", "u"))
        );
    }

    #[test]
    fn tokens_are_random_and_hex() {
        let (a, b) = (random_token().unwrap(), random_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
    }
}
