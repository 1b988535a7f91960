//! Fetching one file of the manifest into the staging directory: resume from what is on
//! disk, stream with `Range` requests across broken connections, then check the size and
//! SHA-256 (a mismatching file is deleted, never resumed from).

use std::fs::{self, OpenOptions};

use http_body_util::BodyExt;
use sha2::Digest as _;
use tracing::{debug, info, warn};

use super::connection::{Connection, IDLE_TIMEOUT};
use super::http::check_range;
use super::progress::Tally;
use super::resume::{Prefix, existing_prefix};
use super::retry::backoff;
use super::space::{is_no_space, mount_point};
use super::spec::PullSpec;
use super::writer::{Sink, WriterGone, spawn_writer};
use crate::store::{FileEntry, Staging, hex};
use crate::transfer::error::{Result, TransferError, io_err};
use crate::transfer::http_paths;

/// How one streamed response ended, when it did not end well.
enum Stream {
    /// The writer thread stopped (a write failed); its error says why.
    WriterGone,
    Failed(TransferError),
}

/// Fetches `entry` of `spec`'s image into `staging`, counting into `tally`.
pub(super) async fn fetch(
    conn: &mut Connection,
    tally: &mut Tally<impl FnMut(u64, u64) + Send>,
    spec: &PullSpec,
    staging: &Staging,
    entry: &FileEntry,
) -> Result<()> {
    let path = staging.file_path(&entry.path)?;
    let prefix = {
        let path = path.clone();
        let entry = entry.clone();
        tokio::task::spawn_blocking(move || existing_prefix(&path, &entry))
            .await
            .map_err(|e| TransferError::Protocol(format!("prefix hasher panicked: {e}")))??
    };
    let (mut offset, hasher) = match prefix {
        Prefix::Complete => {
            debug!(file = %entry.path, "already received");
            tally.already_complete(entry.size);
            return Ok(());
        }
        Prefix::Partial { len, hasher } => (len, hasher),
    };
    if offset > 0 {
        debug!(file = %entry.path, offset, "resuming a partial file");
        tally.report.bytes_resumed += offset;
    }
    tally.done += offset;
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(format!("open {}", path.display())))?;
    let (mut sink, writer) = spawn_writer(file, hasher);
    let url = http_paths::file_path(&spec.namespace, &spec.request, &entry.path);
    let mut failures = 0u32;
    let mut first = true;
    let stream_result: Result<()> = loop {
        if offset == entry.size {
            break Ok(()); // complete (an empty file needs no request at all)
        }
        let range = (offset > 0).then_some(offset);
        if !first && offset > 0 {
            tally.report.resumes += 1;
            tally.report.bytes_resumed += offset;
            info!(file = %entry.path, offset, "resuming after a broken connection");
        }
        first = false;
        let before = offset;
        let streamed = stream_into(conn, tally, &url, range, entry, &mut sink, &mut offset).await;
        // What was received counts in `offset`, so it must reach the file before a resume.
        let streamed = match sink.flush().await {
            Ok(()) => streamed,
            Err(WriterGone) => Err(Stream::WriterGone),
        };
        match streamed {
            Ok(()) if offset == entry.size => break Ok(()),
            Ok(()) => {
                failures = if offset > before { 1 } else { failures + 1 };
                let err = conn.conn_err(format!(
                    "{}: the response ended at byte {offset} of {}",
                    entry.path, entry.size
                ));
                if let Err(e) = backoff(conn, failures, err).await {
                    break Err(e);
                }
            }
            Err(Stream::WriterGone) => break Ok(()), // its error comes from the join below
            Err(Stream::Failed(e)) => {
                failures = if offset > before { 1 } else { failures + 1 };
                if let Err(e) = backoff(conn, failures, e).await {
                    break Err(e);
                }
            }
        }
    };
    drop(sink);
    let written = writer
        .await
        .map_err(|e| TransferError::Protocol(format!("file writer panicked: {e}")))?;
    let hasher = match written {
        Ok(hasher) => hasher,
        Err(e) if is_no_space(&e) => {
            return Err(TransferError::NoSpace {
                fs: mount_point(staging.dir()).display().to_string(),
                detail: format!(
                    "writing {} (the partial file is kept; a later pull resumes it)",
                    entry.path
                ),
            });
        }
        Err(e) => return Err(io_err(format!("write {}", path.display()))(e)),
    };
    stream_result?;
    let size = fs::metadata(&path)
        .map_err(io_err(format!("stat {}", path.display())))?
        .len();
    let sha256 = hex(&hasher.finalize());
    let mismatch = if size != entry.size {
        Some(("size", entry.size.to_string(), size.to_string()))
    } else if sha256 != entry.sha256 {
        Some(("sha256", entry.sha256.clone(), sha256))
    } else {
        None
    };
    if let Some((what, expected, actual)) = mismatch {
        // A corrupt file must not be resumed from either: delete it.
        let _ = fs::remove_file(&path);
        warn!(file = %entry.path, what, "received file does not match the manifest; deleted");
        return Err(TransferError::DigestMismatch {
            file: entry.path.clone(),
            what,
            expected,
            actual,
        });
    }
    Ok(())
}

/// One GET of `url` from `range`, its body pushed into `sink` while `offset` and `tally`
/// follow; ends with the body, or with what broke it.
async fn stream_into(
    conn: &mut Connection,
    tally: &mut Tally<impl FnMut(u64, u64) + Send>,
    url: &str,
    range: Option<u64>,
    entry: &FileEntry,
    sink: &mut Sink,
    offset: &mut u64,
) -> std::result::Result<(), Stream> {
    let response = conn.get(url, range).await.map_err(Stream::Failed)?;
    check_range(&response, range, entry).map_err(Stream::Failed)?;
    let mut body = response.into_body();
    loop {
        let frame = match tokio::time::timeout(IDLE_TIMEOUT, body.frame()).await {
            Err(_) => {
                return Err(Stream::Failed(
                    conn.conn_err(format!("{}: no data for {IDLE_TIMEOUT:?}", entry.path)),
                ));
            }
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => {
                return Err(Stream::Failed(
                    conn.conn_err(format!("{} at byte {offset}: {e}", entry.path)),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers: none are sent
        };
        let len = data.len() as u64;
        if *offset + len > entry.size {
            return Err(Stream::Failed(TransferError::Protocol(format!(
                "{}: the source sent more than the manifest's {} bytes",
                entry.path, entry.size
            ))));
        }
        if sink.push(data).await.is_err() {
            return Err(Stream::WriterGone);
        }
        *offset += len;
        tally.received(len);
    }
}
