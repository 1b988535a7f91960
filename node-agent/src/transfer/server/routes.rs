//! One request: the URL, the bearer token (before any lookup), the grant (its token, expiry,
//! binding to this image and to the client's certificate), the image (made for the grant's
//! request), then the manifest or a file range.
//!
//! Refusals are counted and logged at most once per `LOG_EVERY` with the count since
//! the last line: a flood of bad requests is not a flood of log lines.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use jiff::Timestamp;
use tracing::{debug, warn};

use super::body::FileBody;
use super::limits::Shared;
use crate::store::{Image, StoreError, validate_relative};
use crate::transfer::http_paths::{self, DIGEST_HEADER, ERROR_HEADER, Route, RouteError, codes};
use crate::transfer::token::{self, Denial, Grant};

pub(super) type ResponseBody = BoxBody<Bytes, io::Error>;
/// A refusal, boxed: it travels in a `Result` next to small success values.
type Refusal = Box<Response<ResponseBody>>;

fn text(
    status: StatusCode,
    code: &'static str,
    reason: impl Into<String>,
) -> Response<ResponseBody> {
    let mut body = reason.into();
    body.push('\n');
    let mut response = Response::new(
        Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    );
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    headers.insert(ERROR_HEADER, HeaderValue::from_static(code));
    response
}

/// Answers `req` from a client that presented the certificate with SHA-256 `peer`.
pub(super) async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    peer: Option<&str>,
) -> Response<ResponseBody> {
    shared.stats.requests.fetch_add(1, Ordering::Relaxed);
    let response = route(&req, shared, peer).await;
    // Log the path only: the Authorization header never reaches a log line.
    debug!(method = %req.method(), path = req.uri().path(), status = response.status().as_u16(), "transfer request");
    response
}

/// A refused credential: counted, logged now and then, answered.
fn refuse(shared: &Shared, ns: &str, request: &str, denial: Denial) -> Response<ResponseBody> {
    shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
    match denial {
        Denial::Unauthorized(why) => {
            if let Some(refused) = shared.auth_log.hit() {
                warn!(
                    namespace = ns,
                    request,
                    reason = why,
                    refused,
                    "transfer refused: bad token"
                );
            }
            text(StatusCode::UNAUTHORIZED, codes::UNAUTHORIZED, why)
        }
        Denial::Expired(at) => {
            if let Some(refused) = shared.auth_log.hit() {
                warn!(namespace = ns, request, expired_at = %at, refused, "transfer refused: token expired");
            }
            text(
                StatusCode::FORBIDDEN,
                codes::EXPIRED,
                format!("transfer token expired at {at}"),
            )
        }
    }
}

/// A valid token used where its grant does not reach: counted, logged now and then.
fn forbid(shared: &Shared, ns: &str, request: &str, why: &'static str) -> Response<ResponseBody> {
    shared.stats.auth_failures.fetch_add(1, Ordering::Relaxed);
    if let Some(refused) = shared.auth_log.hit() {
        warn!(
            namespace = ns,
            request,
            reason = why,
            refused,
            "transfer refused: grant does not cover it"
        );
    }
    text(StatusCode::FORBIDDEN, codes::FORBIDDEN, why)
}

/// The grant of `ns`/`request` if `req` may use it, else the refusal.
async fn authorize(
    req: &Request<Incoming>,
    shared: &Shared,
    peer: Option<&str>,
    (ns, request): (&str, &str),
) -> Result<Grant, Refusal> {
    let authorization = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(HeaderValue::as_bytes);
    // No bearer token: refused before any lookup (no API read for an anonymous request).
    if let Err(denial) = token::bearer(authorization) {
        return Err(Box::new(refuse(shared, ns, request, denial)));
    }
    let grant = match shared.grants.grant(ns, request).await {
        Ok(grant) => grant,
        Err(e) => {
            if let Some(failed) = shared.lookup_log.hit() {
                warn!(namespace = ns, request, error = %e, failed, "transfer grant lookup failed");
            }
            return Err(Box::new(text(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::SOURCE_ERROR,
                "transfer grant lookup failed at the source; retry later",
            )));
        }
    };
    if let Err(denial) = token::check(authorization, grant.as_ref(), Timestamp::now()) {
        return Err(Box::new(refuse(shared, ns, request, denial)));
    }
    let Some(grant) = grant else {
        return Err(Box::new(refuse(
            shared,
            ns,
            request,
            Denial::Unauthorized("invalid bearer token"),
        )));
    };
    if !grant.binds(ns, request) || validate_relative(&grant.location).is_err() {
        return Err(Box::new(forbid(
            shared,
            ns,
            request,
            "the grant is not for this image",
        )));
    }
    if !grant.serves_peer(peer) {
        return Err(Box::new(forbid(
            shared,
            ns,
            request,
            "the grant is for another agent's certificate",
        )));
    }
    Ok(grant)
}

/// The grant's image, if it was made for the grant's request.
fn open(shared: &Shared, grant: &Grant, ns: &str, request: &str) -> Result<Image, Refusal> {
    let store = match shared.stores.for_host_path(grant.store.as_deref()) {
        Ok(store) => store,
        Err(e) => {
            warn!(namespace = ns, request, error = %e, "transfer refused: store not served");
            return Err(Box::new(text(
                StatusCode::FORBIDDEN,
                codes::FORBIDDEN,
                e.to_string(),
            )));
        }
    };
    // A pull is many requests; the image must outlive the gaps between them (GC spares it).
    let _ = store.touch(&grant.location);
    let image = match store.open_image(&grant.location) {
        Ok(image) => image,
        Err(StoreError::NotFound(_)) => {
            return Err(Box::new(text(
                StatusCode::NOT_FOUND,
                codes::NOT_FOUND,
                format!("no published image for {ns}/{request}"),
            )));
        }
        Err(e) => {
            warn!(namespace = ns, request, error = %e, "cannot open image");
            return Err(Box::new(text(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::SOURCE_ERROR,
                "cannot open the image at the source",
            )));
        }
    };
    // An image left under a re-used request name is not the new request's.
    if !image
        .manifest
        .meta
        .made_for_request(Some(&grant.request_uid))
    {
        return Err(Box::new(forbid(
            shared,
            ns,
            request,
            "the image was made for another request of this name",
        )));
    }
    Ok(image)
}

async fn route(
    req: &Request<Incoming>,
    shared: &Shared,
    peer: Option<&str>,
) -> Response<ResponseBody> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            codes::BAD_REQUEST,
            "only GET is served",
        );
    }
    let route = match http_paths::parse(req.uri().path()) {
        Ok(route) => route,
        Err(RouteError::NoRoute) => {
            return text(StatusCode::NOT_FOUND, codes::NOT_FOUND, "no such endpoint");
        }
        Err(RouteError::Bad(reason)) => {
            return text(StatusCode::BAD_REQUEST, codes::BAD_REQUEST, reason);
        }
    };
    let (ns, request) = match &route {
        Route::Manifest { namespace, request }
        | Route::File {
            namespace, request, ..
        } => (namespace.as_str(), request.as_str()),
    };
    let grant = match authorize(req, shared, peer, (ns, request)).await {
        Ok(grant) => grant,
        Err(refusal) => return *refusal,
    };
    let image = match open(shared, &grant, ns, request) {
        Ok(image) => image,
        Err(refusal) => return *refusal,
    };
    match route {
        Route::Manifest { .. } => manifest(shared, image),
        Route::File { ref path, .. } => file(req, shared, &image, path, (ns, request)),
    }
}

fn manifest(shared: &Shared, image: Image) -> Response<ResponseBody> {
    let len = image.manifest_bytes.len() as u64;
    shared.stats.bytes_served.fetch_add(len, Ordering::Relaxed);
    let mut response = Response::new(
        Full::new(Bytes::from(image.manifest_bytes))
            .map_err(|never| match never {})
            .boxed(),
    );
    if let Ok(digest) = HeaderValue::from_str(&image.digest) {
        response.headers_mut().insert(DIGEST_HEADER, digest);
    }
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn file(
    req: &Request<Incoming>,
    shared: &Shared,
    image: &Image,
    path: &str,
    (ns, request): (&str, &str),
) -> Response<ResponseBody> {
    let Some(entry) = image.entry(path) else {
        return text(
            StatusCode::NOT_FOUND,
            codes::NOT_FOUND,
            format!("{path} is not a file of the image"),
        );
    };
    let size = entry.size;
    let start = match req.headers().get(header::RANGE) {
        None => None,
        Some(value) => match http_paths::parse_range(value.as_bytes()) {
            Some(start) if start < size || (start == 0 && size == 0) => Some(start),
            _ => {
                let mut response = text(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    codes::BAD_RANGE,
                    format!("range not satisfiable: {path} has {size} bytes"),
                );
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    response.headers_mut().insert(header::CONTENT_RANGE, v);
                }
                return response;
            }
        },
    };
    let offset = start.unwrap_or(0);
    let opened = image
        .open_file(path)
        .map_err(|e| e.to_string())
        .and_then(|f| at_offset(f, size, offset).map_err(|e| e.to_string()));
    let file = match opened {
        Ok(file) => file,
        Err(e) => {
            warn!(namespace = ns, request, file = %path, error = %e, "cannot serve file");
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                codes::SOURCE_ERROR,
                format!("cannot read {path} at the source"),
            );
        }
    };
    let remaining = size - offset;
    let body = if req.method() == Method::HEAD {
        Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed()
    } else {
        FileBody::spawn(
            file,
            remaining,
            shared.disk_pool.clone(),
            shared.limits.idle_timeout,
            shared.stats.clone(),
        )
        .boxed()
    };
    let mut response = Response::new(body);
    if let Some(start) = start {
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
        if let Ok(v) =
            HeaderValue::from_str(&format!("bytes {start}-{}/{size}", size.saturating_sub(1)))
        {
            response.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    } else {
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
    }
    response
        .headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(remaining));
    response
}

/// Seeks a file of the image to `offset`; a file whose size differs from its manifest entry
/// is refused rather than served short (the client would retry forever).
fn at_offset(mut file: File, size: u64, offset: u64) -> io::Result<File> {
    let actual = file.metadata()?.len();
    if actual != size {
        return Err(io::Error::other(format!(
            "has {actual} bytes, its manifest says {size}"
        )));
    }
    file.seek(SeekFrom::Start(offset))?;
    Ok(file)
}
