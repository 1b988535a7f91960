//! Transfer grants from the API server: the grant Secret the operator mints per request in
//! the agents' own namespace (`ferry-transfer-<namespace>.<request>`: key `token`, annotations
//! `ferry.dev/expires-at`, `ferry.dev/image-location`, `ferry.dev/image-store`, the request's
//! `ferry.dev/request-namespace`, `-name` and `-uid`, and the pulling agent's
//! `ferry.dev/client-cert-sha256`). The source agent checks a pull against it; the target
//! agent reads the token from it to pull. Secrets anywhere else are never read: a tenant can
//! write Secrets in its namespace, not in the agents' (docs/security.md, "Finding 1").

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use tokio::sync::Semaphore;

use crate::transfer::{Grant, GrantLookupError, GrantSource, Token};
use ferry_api::names::{agent, annotation};

/// Reads grants from Secrets of the agents' namespace (`get` only: the agent never lists
/// Secrets, and its RBAC reads them nowhere else).
#[derive(Clone)]
pub struct SecretGrants {
    client: Client,
    namespace: String,
}

impl SecretGrants {
    /// Grants through `client`, from the agents' namespace `namespace`.
    pub fn new(client: Client, namespace: impl Into<String>) -> Self {
        SecretGrants {
            client,
            namespace: namespace.into(),
        }
    }
}

/// The token stored under `key` in `secret`.
pub fn token_of(secret: &Secret, key: &str) -> Option<Token> {
    let bytes = secret.data.as_ref()?.get(key)?;
    let text = std::str::from_utf8(&bytes.0).ok()?.trim();
    (!text.is_empty()).then(|| Token::new(text))
}

/// The grant a grant Secret describes; `Err` says what is malformed (a Secret without its
/// binding is no grant: fail closed).
pub fn grant_of(secret: &Secret) -> Result<Grant, GrantLookupError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let bad = |what: &str| GrantLookupError(format!("transfer grant Secret {name}: {what}"));
    let token = token_of(secret, agent::TOKEN_KEY).ok_or_else(|| bad("no token"))?;
    let notes = secret
        .metadata
        .annotations
        .as_ref()
        .ok_or_else(|| bad("no annotations"))?;
    let note = |key: &str| {
        notes
            .get(key)
            .filter(|v| !v.is_empty())
            .cloned()
            .ok_or_else(|| bad(&format!("no {key} annotation")))
    };
    let expires_at: Timestamp = note(annotation::TOKEN_EXPIRES_AT)?
        .parse()
        .map_err(|_| bad("unparsable expiry"))?;
    Ok(Grant {
        token,
        expires_at,
        location: note(annotation::IMAGE_LOCATION)?,
        store: notes.get(annotation::IMAGE_STORE).cloned(),
        namespace: note(annotation::GRANT_NAMESPACE)?,
        request: note(annotation::GRANT_REQUEST)?,
        request_uid: note(annotation::GRANT_REQUEST_UID)?,
        client_cert_sha256: Some(note(annotation::GRANT_CLIENT_CERT_SHA256)?),
    })
}

impl GrantSource for SecretGrants {
    fn grant<'a>(
        &'a self,
        namespace: &'a str,
        request: &'a str,
    ) -> BoxFuture<'a, Result<Option<Grant>, GrantLookupError>> {
        Box::pin(async move {
            let api: Api<Secret> = Api::namespaced(self.client.clone(), &self.namespace);
            let secret = api
                .get_opt(&agent::grant_secret_name(namespace, request))
                .await
                .map_err(|e| GrantLookupError(format!("reading the transfer grant: {e}")))?;
            secret.as_ref().map(grant_of).transpose()
        })
    }
}

/// How [`CachedGrants`] remembers and limits lookups.
#[derive(Clone, Copy, Debug)]
pub struct CacheLimits {
    /// How long a grant found is remembered.
    pub found_ttl: Duration,
    /// How long a miss is remembered: requests for it meanwhile get a "retry" (503) without
    /// a lookup, so a flood for one name is one API read per `miss_ttl`.
    pub miss_ttl: Duration,
    /// Names remembered at most (found and missed together); beyond it, misses are dropped
    /// first, so a flood of distinct names cannot grow the agent's memory.
    pub max_entries: usize,
    /// Lookups in flight at most; more at once get a "retry" (503): a flood of distinct
    /// names costs the API server at most this many concurrent reads.
    pub max_lookups: usize,
}

impl Default for CacheLimits {
    fn default() -> Self {
        CacheLimits {
            found_ttl: Duration::from_secs(10),
            miss_ttl: Duration::from_secs(1),
            max_entries: 4096,
            max_lookups: 4,
        }
    }
}

enum Entry {
    Found(Instant, Grant),
    Missed(Instant),
}

/// A grant source that remembers each grant it found for `found_ttl`, and each miss for
/// `miss_ttl`: a pull of a CRIU image is one request per file (tens of them), and a flood of
/// bad requests would otherwise each read the API server. The price: a token deleted or
/// rotated by the operator keeps working for up to `found_ttl` (its own expiry is still
/// checked on every request), and a grant created within `miss_ttl` of a miss for its name
/// is answered "retry" (503, which the pulling agent retries) until the miss is forgotten.
pub struct CachedGrants<G> {
    inner: G,
    limits: CacheLimits,
    entries: Mutex<HashMap<(String, String), Entry>>,
    lookups: Semaphore,
}

impl<G: GrantSource> CachedGrants<G> {
    /// Remembers what `inner` finds for `ttl`, with the default limits otherwise.
    pub fn new(inner: G, ttl: Duration) -> Self {
        Self::with_limits(
            inner,
            CacheLimits {
                found_ttl: ttl,
                ..CacheLimits::default()
            },
        )
    }

    /// Remembers and limits lookups of `inner` as `limits` say.
    pub fn with_limits(inner: G, limits: CacheLimits) -> Self {
        CachedGrants {
            inner,
            limits,
            entries: Mutex::new(HashMap::new()),
            lookups: Semaphore::new(limits.max_lookups.max(1)),
        }
    }

    /// `Some(Ok(grant))` for a remembered grant, `Some(Err)` for a remembered miss.
    fn cached(&self, key: &(String, String)) -> Option<Result<Grant, ()>> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key)? {
            Entry::Found(at, g) if at.elapsed() < self.limits.found_ttl => Some(Ok(g.clone())),
            Entry::Missed(at) if at.elapsed() < self.limits.miss_ttl => Some(Err(())),
            _ => {
                entries.remove(key);
                None
            }
        }
    }

    fn remember(&self, key: (String, String), entry: Entry) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= self.limits.max_entries {
            let (found_ttl, miss_ttl) = (self.limits.found_ttl, self.limits.miss_ttl);
            entries.retain(|_, e| match e {
                Entry::Found(at, _) => at.elapsed() < found_ttl,
                Entry::Missed(at) => at.elapsed() < miss_ttl,
            });
        }
        if entries.len() >= self.limits.max_entries {
            entries.retain(|_, e| matches!(e, Entry::Found(..)));
        }
        if entries.len() < self.limits.max_entries {
            entries.insert(key, entry);
        }
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
            let retry = || GrantLookupError("no grant a moment ago; retry".into());
            match self.cached(&key) {
                Some(Ok(g)) => return Ok(Some(g)),
                Some(Err(())) => return Err(retry()),
                None => {}
            }
            let Ok(_permit) = self.lookups.try_acquire() else {
                return Err(GrantLookupError("too many grant lookups at once".into()));
            };
            // Another request may have looked it up while this one waited for nothing.
            match self.cached(&key) {
                Some(Ok(g)) => return Ok(Some(g)),
                Some(Err(())) => return Err(retry()),
                None => {}
            }
            let grant = self.inner.grant(namespace, request).await?;
            let entry = match &grant {
                Some(g) => Entry::Found(Instant::now(), g.clone()),
                None => Entry::Missed(Instant::now()),
            };
            self.remember(key, entry);
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
    async fn grants_found_are_remembered_for_the_ttl_and_misses_briefly() {
        let grants = crate::transfer::StaticGrants::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = CachedGrants::with_limits(
            Counting(grants.clone(), calls.clone()),
            CacheLimits {
                found_ttl: Duration::from_millis(300),
                miss_ttl: Duration::from_millis(100),
                ..CacheLimits::default()
            },
        );
        // A miss is one lookup; asked again at once it is "retry" without a lookup (this
        // used to ask the source every time: a flood of bad names was a flood of API reads).
        assert!(cache.grant("ns", "r").await.unwrap().is_none());
        for _ in 0..50 {
            assert!(cache.grant("ns", "r").await.is_err());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(cache.grant("ns", "r").await.unwrap().is_none());
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(150)).await;
        grants.insert(
            "ns",
            "r",
            Grant::new(
                Token::new("t0k3n"),
                Timestamp::now() + jiff::SignedDuration::from_hours(1),
                "ns",
                "r",
                "uid",
                None,
            ),
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

    #[tokio::test]
    async fn distinct_names_never_grow_the_cache_past_its_cap() {
        let calls = Arc::new(AtomicUsize::new(0));
        let cache = CachedGrants::with_limits(
            Counting(crate::transfer::StaticGrants::new(), calls.clone()),
            CacheLimits {
                max_entries: 16,
                ..CacheLimits::default()
            },
        );
        for i in 0..1000 {
            assert!(cache.grant("ns", &format!("r{i}")).await.unwrap().is_none());
        }
        let len = cache.entries.lock().unwrap().len();
        assert!(len <= 16, "{len} entries");
    }

    #[test]
    fn a_token_secret_becomes_a_grant() {
        let mut secret = Secret::default();
        secret.metadata.name = Some("ferry-transfer-ns.r".into());
        secret.data = Some(BTreeMap::from([(
            "token".to_string(),
            ByteString(b"abc123\n".to_vec()),
        )]));
        assert!(grant_of(&secret).is_err(), "no annotations yet");
        let mut notes = BTreeMap::from([
            (
                annotation::TOKEN_EXPIRES_AT.to_string(),
                "2030-01-01T00:00:00Z".to_string(),
            ),
            (annotation::IMAGE_LOCATION.to_string(), "ns/r".to_string()),
        ]);
        // The old format (no binding to a request and a client) is no grant any more.
        secret.metadata.annotations = Some(notes.clone());
        assert!(grant_of(&secret).is_err(), "unbound grant accepted");
        for (key, value) in [
            (annotation::GRANT_NAMESPACE, "ns"),
            (annotation::GRANT_REQUEST, "r"),
            (annotation::GRANT_REQUEST_UID, "uid-1"),
            (annotation::GRANT_CLIENT_CERT_SHA256, "ab"),
        ] {
            secret.metadata.annotations = Some(notes.clone());
            assert!(grant_of(&secret).is_err(), "accepted without {key}");
            notes.insert(key.to_string(), value.to_string());
        }
        secret.metadata.annotations = Some(notes);
        let grant = grant_of(&secret).unwrap();
        assert!(grant.token.matches(b"abc123"));
        assert_eq!(grant.location, "ns/r");
        assert!(grant.binds("ns", "r"));
        assert_eq!(grant.request_uid, "uid-1");
        assert_eq!(grant.expires_at.to_string(), "2030-01-01T00:00:00Z");
        assert!(!format!("{grant:?}").contains("abc123"), "token leaked");
    }
}
