//! Transfer grants from the API server: the per-transfer token Secret the operator mints
//! (`<request>-transfer-token`: key `token`, annotations `ferry.dev/expires-at` and
//! `ferry.dev/image-location`). The source agent checks a pull against it; the target agent
//! reads the token from it to pull.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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
        store: notes.get(annotation::IMAGE_STORE).cloned(),
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

/// A grant source that remembers each grant it found for `ttl`: a pull of a CRIU image is one
/// request per file (tens of them), and each would otherwise read the Secret from the API
/// server. The price: a token deleted or rotated by the operator keeps working for up to
/// `ttl` (its own expiry is still checked on every request). Misses are never remembered,
/// so a Secret created just before the first pull is found at once.
pub struct CachedGrants<G> {
    inner: G,
    ttl: Duration,
    found: Mutex<HashMap<(String, String), (Instant, Grant)>>,
}

impl<G: GrantSource> CachedGrants<G> {
    /// Remembers what `inner` finds for `ttl`.
    pub fn new(inner: G, ttl: Duration) -> Self {
        CachedGrants {
            inner,
            ttl,
            found: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<Grant> {
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        found.retain(|_, (at, _)| at.elapsed() < self.ttl);
        found.get(key).map(|(_, g)| g.clone())
    }
}

impl<G: GrantSource> GrantSource for CachedGrants<G> {
    fn grant<'a>(
        &'a self,
        namespace: &'a str,
        request: &'a str,
    ) -> BoxFuture<'a, Result<Option<Grant>, GrantLookupError>> {
        Box::pin(async move {
            let key = (namespace.to_string(), request.to_string());
            if let Some(g) = self.cached(&key) {
                return Ok(Some(g));
            }
            let grant = self.inner.grant(namespace, request).await?;
            if let Some(g) = &grant {
                self.found
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(key, (Instant::now(), g.clone()));
            }
            Ok(grant)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Counts lookups; answers from a StaticGrants.
    struct Counting(crate::transfer::StaticGrants, Arc<AtomicUsize>);

    impl GrantSource for Counting {
        fn grant<'a>(
            &'a self,
            namespace: &'a str,
            request: &'a str,
        ) -> BoxFuture<'a, Result<Option<Grant>, GrantLookupError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.grant(namespace, request)
        }
    }

    #[tokio::test]
    async fn grants_found_are_remembered_for_the_ttl_and_misses_never() {
        let grants = crate::transfer::StaticGrants::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = CachedGrants::new(
            Counting(grants.clone(), calls.clone()),
            Duration::from_millis(300),
        );
        // A miss is asked again every time.
        assert!(cache.grant("ns", "r").await.unwrap().is_none());
        assert!(cache.grant("ns", "r").await.unwrap().is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        grants.insert(
            "ns",
            "r",
            Grant {
                token: Token::new("t0k3n"),
                expires_at: Timestamp::now() + jiff::SignedDuration::from_hours(1),
                location: "ns/r".into(),
                store: None,
            },
        );
        for _ in 0..20 {
            assert_eq!(
                cache.grant("ns", "r").await.unwrap().unwrap().location,
                "ns/r"
            );
        }
        assert_eq!(calls.load(Ordering::SeqCst), 3, "one read for 20 requests");
        // After the TTL the source is asked again: a deleted token stops working.
        grants.remove("ns", "r");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert!(cache.grant("ns", "r").await.unwrap().is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

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
