//! The per-transfer token Secret: the bearer token the target agent pulls the image with,
//! which the source agent checks pulls against.

use std::collections::BTreeMap;

use ferry_api::CheckpointRequest;
use ferry_api::names::annotation;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;

use super::meta::child_meta;
use super::names::image_location;

pub use ferry_api::names::agent::{TOKEN_KEY, token_secret_name};

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

#[cfg(test)]
mod tests {
    use super::*;

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
