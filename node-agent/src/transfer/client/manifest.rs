//! Fetching the source's manifest: the bytes as stored, checked against the digest the source
//! announces and the one the operator expects, then parsed (which validates every path)
//! before anything is written.

use http_body_util::{BodyExt, Limited};

use super::connection::{Connection, IDLE_TIMEOUT};
use super::retry::backoff;
use super::spec::PullSpec;
use crate::store::{Manifest, sha256_hex};
use crate::transfer::error::{Result, TransferError};
use crate::transfer::http_paths::{self, DIGEST_HEADER};

/// Largest manifest accepted (a manifest lists files, it is small).
const MAX_MANIFEST: usize = 64 << 20;

/// The source's manifest for `spec`: parsed, its bytes as stored, and its digest.
pub(super) async fn fetch(
    conn: &mut Connection,
    spec: &PullSpec,
) -> Result<(Manifest, Vec<u8>, String)> {
    let path = http_paths::manifest_path(&spec.namespace, &spec.request);
    let mut failures = 0;
    let (announced, bytes) = loop {
        let attempt = async {
            let response = conn.get(&path, None).await?;
            let announced = response
                .headers()
                .get(DIGEST_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
                .ok_or_else(|| {
                    TransferError::Protocol(format!("the manifest came without {DIGEST_HEADER}"))
                })?;
            let body = tokio::time::timeout(
                IDLE_TIMEOUT,
                Limited::new(response.into_body(), MAX_MANIFEST).collect(),
            )
            .await
            .map_err(|_| conn.conn_err("manifest: timed out"))?
            .map_err(|e| conn.conn_err(format!("manifest: {e}")))?;
            Ok::<_, TransferError>((announced, body.to_bytes().to_vec()))
        };
        match attempt.await {
            Ok(ok) => break ok,
            Err(e) => {
                failures += 1;
                backoff(conn, failures, e).await?;
            }
        }
    };
    let digest = sha256_hex(&bytes);
    if announced != digest {
        return Err(TransferError::ImageDigestMismatch {
            context: "manifest received",
            expected: announced,
            actual: digest,
        });
    }
    if !spec.expected_digest.eq_ignore_ascii_case(&digest) {
        return Err(TransferError::ImageDigestMismatch {
            context: "the source's image is not the one expected",
            expected: spec.expected_digest.clone(),
            actual: digest,
        });
    }
    // Every path in a remote manifest is validated before anything is written.
    let manifest = Manifest::from_bytes(&spec.location, &bytes)?;
    Ok((manifest, bytes, digest))
}
