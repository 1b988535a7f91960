//! Transfer grants from the API server: the per-transfer token Secret the operator mints
//! (`<request>-transfer-token`: key `token`, annotations `ferry.dev/expires-at` and
//! `ferry.dev/image-location`). The source agent checks a pull against it; the target agent
//! reads the token from it to pull.

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};

use crate::transfer::{Grant, GrantLookupError, GrantSource, Token};
use ferry_api::names::{agent, annotation};

/// Reads grants from Secrets (`get` only: the agent never lists Secrets).
#[derive(Clone)]
pub struct SecretGrants {
    client: Client,
}

impl SecretGrants {
    /// Grants through `client`.
    pub fn new(client: Client) -> Self {
        SecretGrants { client }
    }
}

/// The token stored under `key` in `secret`.
pub fn token_of(secret: &Secret, key: &str) -> Option<Token> {
    let bytes = secret.data.as_ref()?.get(key)?;
    let text = std::str::from_utf8(&bytes.0).ok()?.trim();
    (!text.is_empty()).then(|| Token::new(text))
}

/// The grant a token Secret describes; `Err` says what is malformed.
pub fn grant_of(secret: &Secret) -> Result<Grant, GrantLookupError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bad = |what: &str| GrantLookupError(format!("transfer Secret {name}: {what}"));
    let token = token_of(secret, agent::TOKEN_KEY).ok_or_else(|| bad("no token"))?;
    let notes = secret
        .metadata
        .annotations
        .as_ref()
        .ok_or_else(|| bad("no annotations"))?;
    let expires_at: Timestamp = notes
        .get(annotation::TOKEN_EXPIRES_AT)
        .ok_or_else(|| bad("no expiry annotation"))?
        .parse()
        .map_err(|_| bad("unparsable expiry"))?;
    let location = notes
        .get(annotation::IMAGE_LOCATION)
        .ok_or_else(|| bad("no image-location annotation"))?
        .clone();
    Ok(Grant {
        token,
        expires_at,
        location,
    })
}

impl GrantSource for SecretGrants {
    fn grant<'a>(
        &'a self,
        namespace: &'a str,
        request: &'a str,
    ) -> BoxFuture<'a, Result<Option<Grant>, GrantLookupError>> {
        Box::pin(async move {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
            let secret = api
                .get_opt(&agent::token_secret_name(request))
                .await
                .map_err(|e| GrantLookupError(format!("reading the transfer Secret: {e}")))?;
            secret.as_ref().map(grant_of).transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;

    #[test]
    fn a_token_secret_becomes_a_grant() {
        let mut secret = Secret::default();
        secret.metadata.name = Some("r-transfer-token".into());
        secret.data = Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(b"abc123\n".to_vec()),
        )]));
        assert!(grant_of(&secret).is_err(), "no annotations yet");
        secret.metadata.annotations = Some(BTreeMap::from([
            (
                annotation::TOKEN_EXPIRES_AT.to_string(),
                "2030-01-01T00:00:00Z".to_string(),
            ),
            (annotation::IMAGE_LOCATION.to_string(), "ns/r".to_string()),
        ]));
        let grant = grant_of(&secret).unwrap();
        assert!(grant.token.matches(b"abc123"));
        assert_eq!(grant.location, "ns/r");
        assert_eq!(grant.expires_at.to_string(), "2030-01-01T00:00:00Z");
        assert!(!format!("{grant:?}").contains("abc123"), "token leaked");
    }
}
