//! The per-transfer bearer token and the grant it belongs to: the operator mints one per
//! request (a Secret `ferry-transfer-<namespace>.<request>` in the agents' namespace), the
//! source checks it on every request, the target presents it.
//!
//! A token is never logged: [`Token`]'s `Debug` and `Display` print `<redacted>`, and the
//! secret is only reachable through [`Token::expose_secret`].

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use futures::future::BoxFuture;
use jiff::Timestamp;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Random bytes in a minted token (256 bits).
const TOKEN_BYTES: usize = 32;

/// A bearer token. Compared in constant time, printed as `<redacted>`.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    /// A token holding `secret` (as read from the Secret).
    pub fn new(secret: impl Into<String>) -> Self {
        Token(secret.into())
    }

    /// A fresh random token: 32 bytes from the OS, hex.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes)?;
        Ok(Token(crate::store::hex(&bytes)))
    }

    /// The secret, for the `Authorization` header and the Secret only.
    pub fn expose_secret(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this token. Both sides are hashed first so the constant-time
    /// compare runs on equal lengths and the time taken says nothing about the token's length.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let ours = Sha256::digest(self.0.as_bytes());
        let theirs = Sha256::digest(presented);
        !self.0.is_empty() && bool::from(ours.as_slice().ct_eq(theirs.as_slice()))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What a request's token authorizes: the agent whose certificate has SHA-256
/// `client_cert_sha256` may read the image at `location`, made for request
/// `namespace`/`request` with UID `request_uid`, until `expires_at`.
#[derive(Clone, Debug)]
pub struct Grant {
    /// The token.
    pub token: Token,
    /// When it stops working.
    pub expires_at: Timestamp,
    /// The store location of the image it authorizes.
    pub location: String,
    /// The hostPath of the store holding it (`None`: the agent's main store).
    pub store: Option<String>,
    /// Namespace of the request it was minted for.
    pub namespace: String,
    /// Name of the request it was minted for.
    pub request: String,
    /// `metadata.uid` of that request: the image's manifest must record the same.
    pub request_uid: String,
    /// SHA-256 (hex) of the only client certificate it is served to (the target agent's).
    /// `None` only for the benchmark's plain-TCP baseline, which has no certificates; over
    /// TLS a grant without it serves no one.
    pub client_cert_sha256: Option<String>,
}

impl Grant {
    /// A grant of `token` until `expires_at` for request `namespace`/`request` (UID
    /// `request_uid`) and its image at `<namespace>/<request>` in the main store, served to
    /// the agent whose certificate has SHA-256 `client_cert_sha256`.
    pub fn new(
        token: Token,
        expires_at: Timestamp,
        namespace: &str,
        request: &str,
        request_uid: &str,
        client_cert_sha256: Option<&str>,
    ) -> Self {
        Grant {
            token,
            expires_at,
            location: format!("{namespace}/{request}"),
            store: None,
            namespace: namespace.to_string(),
            request: request.to_string(),
            request_uid: request_uid.to_string(),
            client_cert_sha256: client_cert_sha256.map(str::to_string),
        }
    }

    /// Whether it was minted for the image of `namespace`/`request` (its binding and its
    /// location both say so).
    pub fn binds(&self, namespace: &str, request: &str) -> bool {
        self.namespace == namespace
            && self.request == request
            && self.location == format!("{namespace}/{request}")
    }

    /// Whether a client presenting the certificate with SHA-256 `peer` (hex; `None`: plain
    /// TCP, no certificate) may use it: only the pinned one, and no certificate only where
    /// neither side has one.
    pub fn serves_peer(&self, peer: Option<&str>) -> bool {
        match (self.client_cert_sha256.as_deref(), peer) {
            (Some(pin), Some(peer)) => {
                let (pin, peer) = (pin.trim().to_ascii_lowercase(), peer.to_ascii_lowercase());
                bool::from(pin.as_bytes().ct_eq(peer.as_bytes()))
            }
            (None, None) => true,
            _ => false,
        }
    }
}

/// A grant lookup that failed (the API server is unreachable, the Secret is malformed, too
/// many lookups at once, a miss seen a moment ago, …); the source answers 503 so the target
/// retries later.
#[derive(Debug, thiserror::Error)]
#[error("transfer grant lookup failed: {0}")]
pub struct GrantLookupError(pub String);

/// Where the source finds a request's grant. The agent's implementation reads the Secret
/// `ferry-transfer-<namespace>.<request>` in the agents' own namespace (never the request's:
/// tenants write there); tests use [`StaticGrants`].
///
/// A boxed future keeps the trait usable as `Arc<dyn GrantSource>`.
pub trait GrantSource: Send + Sync + 'static {
    /// The grant for `namespace`/`request`, `None` if there is none.
    fn grant<'a>(
        &'a self,
        namespace: &'a str,
        request: &'a str,
    ) -> BoxFuture<'a, Result<Option<Grant>, GrantLookupError>>;
}

/// Grants held in memory (tests, the benchmark).
#[derive(Clone, Debug, Default)]
pub struct StaticGrants {
    grants: Arc<RwLock<HashMap<(String, String), Grant>>>,
}

impl StaticGrants {
    /// No grants.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the grant of `namespace`/`request`.
    pub fn insert(&self, namespace: &str, request: &str, grant: Grant) {
        if let Ok(mut grants) = self.grants.write() {
            grants.insert((namespace.to_string(), request.to_string()), grant);
        }
    }

    /// Removes the grant of `namespace`/`request`.
    pub fn remove(&self, namespace: &str, request: &str) {
        if let Ok(mut grants) = self.grants.write() {
            grants.remove(&(namespace.to_string(), request.to_string()));
        }
    }
}

impl GrantSource for StaticGrants {
    fn grant<'a>(
        &'a self,
        namespace: &'a str,
        request: &'a str,
    ) -> BoxFuture<'a, Result<Option<Grant>, GrantLookupError>> {
        let found = self
            .grants
            .read()
            .map_err(|_| GrantLookupError("grant table poisoned".into()))
            .map(|g| {
                g.get(&(namespace.to_string(), request.to_string()))
                    .cloned()
            });
        Box::pin(async move { found })
    }
}

/// Why the source refuses a request's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Denial {
    /// 401: no token, no grant, or the wrong token.
    Unauthorized(&'static str),
    /// 403: the right token, but expired.
    Expired(Timestamp),
}

/// The bearer token of an `Authorization` header value: checked before any grant lookup, so
/// a request without one costs the source no API read.
pub(crate) fn bearer(authorization: Option<&[u8]>) -> Result<&[u8], Denial> {
    let Some(header) = authorization else {
        return Err(Denial::Unauthorized("missing bearer token"));
    };
    let Some(presented) = header.strip_prefix(b"Bearer ") else {
        return Err(Denial::Unauthorized("authorization is not a bearer token"));
    };
    if presented.is_empty() {
        return Err(Denial::Unauthorized("invalid bearer token"));
    }
    Ok(presented)
}

/// Checks a presented `Authorization` header value against `grant` at `now`.
pub(crate) fn check(
    authorization: Option<&[u8]>,
    grant: Option<&Grant>,
    now: Timestamp,
) -> Result<(), Denial> {
    let presented = bearer(authorization)?;
    let Some(grant) = grant else {
        // Same answer as a wrong token: an unauthenticated caller learns nothing about
        // which requests exist.
        return Err(Denial::Unauthorized("invalid bearer token"));
    };
    if !grant.token.matches(presented) {
        return Err(Denial::Unauthorized("invalid bearer token"));
    }
    // Expiry is checked after the token so only the token's holder learns it expired.
    if now >= grant.expires_at {
        return Err(Denial::Expired(grant.expires_at));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::SignedDuration;

    fn grant(secret: &str, expires_in: i64) -> Grant {
        Grant::new(
            Token::new(secret),
            Timestamp::now() + SignedDuration::from_secs(expires_in),
            "ns",
            "req",
            "uid",
            Some(&"ab".repeat(32)),
        )
    }

    #[test]
    fn a_grant_binds_one_image_and_one_client_certificate() {
        let g = grant("s", 60);
        assert!(g.binds("ns", "req"));
        assert!(!g.binds("ns2", "req") && !g.binds("ns", "req2"));
        let mut moved = g.clone();
        moved.location = "other/req".into();
        assert!(!moved.binds("ns", "req"), "a location elsewhere is refused");
        assert!(g.serves_peer(Some(&"ab".repeat(32))));
        assert!(g.serves_peer(Some(&"AB".repeat(32))));
        assert!(!g.serves_peer(Some(&"cd".repeat(32))));
        assert!(!g.serves_peer(None));
        let unpinned = Grant {
            client_cert_sha256: None,
            ..g
        };
        assert!(!unpinned.serves_peer(Some(&"ab".repeat(32))), "fail closed");
        assert!(unpinned.serves_peer(None), "plain TCP (benchmark) only");
    }

    #[test]
    fn tokens_never_print() {
        let token = Token::generate().unwrap();
        assert_eq!(token.expose_secret().len(), 64);
        assert_eq!(format!("{token}"), "<redacted>");
        assert!(!format!("{token:?}").contains(token.expose_secret()));
        let g = grant(token.expose_secret(), 60);
        assert!(!format!("{g:?}").contains(token.expose_secret()));
        assert_ne!(
            Token::generate().unwrap().expose_secret(),
            token.expose_secret()
        );
    }

    #[test]
    fn check_refuses_wrong_missing_and_expired_tokens() {
        let now = Timestamp::now();
        let ok = grant("s3cret", 60);
        assert_eq!(check(Some(b"Bearer s3cret"), Some(&ok), now), Ok(()));
        for bad in [
            Some(&b"Bearer s3cre"[..]),
            Some(b"Bearer s3cret2"),
            Some(b"Bearer "),
            Some(b"Basic s3cret"),
            Some(b"s3cret"),
            None,
        ] {
            assert!(
                matches!(check(bad, Some(&ok), now), Err(Denial::Unauthorized(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            check(Some(b"Bearer s3cret"), None, now),
            Err(Denial::Unauthorized(_))
        ));
        let expired = grant("s3cret", -1);
        assert!(matches!(
            check(Some(b"Bearer s3cret"), Some(&expired), now),
            Err(Denial::Expired(_))
        ));
        // A wrong token on an expired grant is a 401, not a hint that the grant exists.
        assert!(matches!(
            check(Some(b"Bearer nope"), Some(&expired), now),
            Err(Denial::Unauthorized(_))
        ));
        // An empty secret never matches, not even an empty presented token.
        let empty = grant("", 60);
        assert!(check(Some(b"Bearer "), Some(&empty), now).is_err());
    }
}
