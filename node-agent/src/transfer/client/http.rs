//! What the source's HTTP answers mean: a refusal's status, `X-Ferry-Error` code and reason
//! become a [`TransferError`]; a file response must cover the range asked for.

use bytes::Bytes;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header;
use hyper::{Response, StatusCode};

use crate::store::FileEntry;
use crate::transfer::error::{Result, TransferError};
use crate::transfer::http_paths::{ERROR_HEADER, codes};

/// Largest error body read.
const MAX_ERROR_BODY: usize = 4096;

/// The error a non-success `response` to `GET path` stands for, and whether its body was
/// read to the end (if not, the connection cannot be reused).
pub(super) async fn status_error(
    path: &str,
    response: Response<Incoming>,
) -> (TransferError, bool) {
    let status = response.status();
    let code = response
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let (body, complete) = match Limited::new(response.into_body(), MAX_ERROR_BODY)
        .collect()
        .await
    {
        Ok(body) => (body.to_bytes(), true),
        Err(_) => (Bytes::new(), false),
    };
    let reason = String::from_utf8_lossy(&body)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let reason = if reason.is_empty() {
        format!("GET {path}: {status}")
    } else {
        reason
    };
    let error = match (status, code.as_str()) {
        (StatusCode::UNAUTHORIZED, _) => TransferError::Unauthorized(reason),
        (StatusCode::FORBIDDEN, codes::EXPIRED) => TransferError::Expired(reason),
        (StatusCode::FORBIDDEN, _) => TransferError::Forbidden(reason),
        (StatusCode::NOT_FOUND, _) => TransferError::NotFound(reason),
        _ => TransferError::Http {
            status: status.as_u16(),
            reason,
        },
    };
    (error, complete)
}

/// A 206 must start where asked; a 200 is only acceptable when no range was asked.
pub(super) fn check_range(
    response: &Response<Incoming>,
    range: Option<u64>,
    entry: &FileEntry,
) -> Result<()> {
    match (range, response.status()) {
        (None, StatusCode::OK) => Ok(()),
        (Some(start), StatusCode::PARTIAL_CONTENT) => {
            let content_range = response
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if content_range.starts_with(&format!("bytes {start}-")) {
                Ok(())
            } else {
                Err(TransferError::Protocol(format!(
                    "{}: asked for bytes {start}-, got Content-Range {content_range:?}",
                    entry.path
                )))
            }
        }
        (_, status) => Err(TransferError::Protocol(format!(
            "{}: unexpected status {status} for range {range:?}",
            entry.path
        ))),
    }
}
