//! The URL layout and header grammar both ends of a transfer share, kept in one place so the
//! server's parser and the client's builder cannot drift apart.

use crate::store::validate_relative;

/// Prefix of every transfer URL.
pub const PREFIX: &str = "/v1/images/";
/// Response header: SHA-256 (hex) of the manifest bytes, the image's identity.
pub const DIGEST_HEADER: &str = "x-ferry-image-digest";
/// Response header on errors: a machine-readable code next to the plain-text reason.
pub const ERROR_HEADER: &str = "x-ferry-error";

/// Error codes in [`ERROR_HEADER`].
pub mod codes {
    /// Missing, unknown or wrong token (401).
    pub const UNAUTHORIZED: &str = "unauthorized";
    /// Expired token (403).
    pub const EXPIRED: &str = "token-expired";
    /// Token not for this image (403).
    pub const FORBIDDEN: &str = "forbidden";
    /// No such image or file (404).
    pub const NOT_FOUND: &str = "not-found";
    /// Malformed request (400).
    pub const BAD_REQUEST: &str = "bad-request";
    /// Range outside the file (416).
    pub const BAD_RANGE: &str = "bad-range";
    /// The source failed (500/503).
    pub const SOURCE_ERROR: &str = "source-error";
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// The manifest of `namespace`/`request`'s image.
    Manifest {
        /// Namespace of the request.
        namespace: String,
        /// The CheckpointRequest's name.
        request: String,
    },
    /// One file of that image.
    File {
        /// Namespace of the request.
        namespace: String,
        /// The CheckpointRequest's name.
        request: String,
        /// File path relative to the image, decoded and validated.
        path: String,
    },
}

/// Why a URL is refused (a 400 or 404 with this text).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not a transfer URL at all (404).
    NoRoute,
    /// A transfer URL with a malformed part (400).
    Bad(String),
}

/// Parses a request path (no query). Every part is checked before anything touches the store.
pub fn parse(path: &str) -> Result<Route, RouteError> {
    let rest = path.strip_prefix(PREFIX).ok_or(RouteError::NoRoute)?;
    let mut parts = rest.splitn(3, '/');
    let (Some(namespace), Some(request), Some(what)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(RouteError::NoRoute);
    };
    if !is_dns1123_label(namespace) {
        return Err(RouteError::Bad(format!(
            "namespace {namespace:?} is not a DNS-1123 label"
        )));
    }
    if !is_dns1123_subdomain(request) {
        return Err(RouteError::Bad(format!(
            "request {request:?} is not a DNS-1123 subdomain"
        )));
    }
    let (namespace, request) = (namespace.to_string(), request.to_string());
    if what == "manifest" {
        return Ok(Route::Manifest { namespace, request });
    }
    let Some(encoded) = what.strip_prefix("files/") else {
        return Err(RouteError::NoRoute);
    };
    let path = percent_decode(encoded).ok_or_else(|| {
        RouteError::Bad("file path has a malformed percent-encoding or is not UTF-8".into())
    })?;
    validate_relative(&path).map_err(|e| RouteError::Bad(e.to_string()))?;
    Ok(Route::File {
        namespace,
        request,
        path,
    })
}

/// The path of the manifest URL.
pub fn manifest_path(namespace: &str, request: &str) -> String {
    format!("{PREFIX}{namespace}/{request}/manifest")
}

/// The path of a file's URL; `file` is percent-encoded (its `/` kept).
pub fn file_path(namespace: &str, request: &str, file: &str) -> String {
    format!(
        "{PREFIX}{namespace}/{request}/files/{}",
        percent_encode(file)
    )
}

/// Namespace names: a DNS-1123 label (Kubernetes' `IsDNS1123Label`).
pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Object names: a DNS-1123 subdomain (`IsDNS1123Subdomain`): dot-separated labels.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Strict decoding: every `%` must be followed by two hex digits, and the result UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = char::from(*bytes.get(i + 1)?).to_digit(16)?;
            let lo = char::from(*bytes.get(i + 2)?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Parses a `Range` header: only `bytes=<start>-` (what the client sends to resume).
pub fn parse_range(value: &[u8]) -> Option<u64> {
    let rest = value.strip_prefix(b"bytes=")?;
    let start = rest.strip_suffix(b"-")?;
    if start.is_empty() || !start.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(start).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse_and_refuse_traversal() {
        assert_eq!(
            parse("/v1/images/ns/req.a/manifest"),
            Ok(Route::Manifest {
                namespace: "ns".into(),
                request: "req.a".into()
            })
        );
        assert_eq!(
            parse("/v1/images/ns/req/files/c/pages-1.img"),
            Ok(Route::File {
                namespace: "ns".into(),
                request: "req".into(),
                path: "c/pages-1.img".into()
            })
        );
        assert_eq!(
            parse(&file_path("ns", "req", "a b/%x")),
            Ok(Route::File {
                namespace: "ns".into(),
                request: "req".into(),
                path: "a b/%x".into()
            })
        );
        for bad in [
            "/v1/images/ns/req/files/../../etc/passwd",
            "/v1/images/ns/req/files/%2e%2e/%2e%2e/etc/passwd",
            "/v1/images/ns/req/files/%2E%2E%2Fx",
            "/v1/images/ns/req/files//etc/passwd",
            "/v1/images/ns/req/files/%2fetc/passwd",
            "/v1/images/ns/req/files/a%00b",
            "/v1/images/ns/req/files/a%zz",
            "/v1/images/ns/req/files/a%2",
            "/v1/images/ns/req/files/x.partial/y",
            "/v1/images/ns/req/files/",
            "/v1/images/NS/req/manifest",
            "/v1/images/../req/manifest",
            "/v1/images/ns/..%2f/manifest",
            "/v1/images/ns/-req/manifest",
        ] {
            assert!(
                matches!(parse(bad), Err(RouteError::Bad(_))),
                "{bad} -> {:?}",
                parse(bad)
            );
        }
        for none in [
            "/",
            "/v1/images/",
            "/v1/images/ns/req",
            "/v1/images/ns/req/other",
            "/v2/images/ns/req/manifest",
        ] {
            assert_eq!(parse(none), Err(RouteError::NoRoute), "{none}");
        }
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range(b"bytes=0-"), Some(0));
        assert_eq!(parse_range(b"bytes=1048576-"), Some(1 << 20));
        for bad in [
            &b"bytes=-5"[..],
            b"bytes=1-2",
            b"bytes=a-",
            b"bytes=1",
            b"items=1-",
            b"bytes=99999999999999999999999-",
        ] {
            assert_eq!(parse_range(bad), None, "{bad:?}");
        }
    }
}
