//! A file's response body, read from disk by a bounded pool: an async task per response reads
//! one [`CHUNK`] at a time on a blocking thread (at most `ServerLimits::disk_readers` reads
//! at once, server-wide) and hands it over through a channel of [`CHUNKS_IN_FLIGHT`] slots.
//! A slow reader holds a few MiB and an async task, never a thread: the thread is back in the
//! pool as soon as its chunk is read, and a chunk the client does not take within the idle
//! timeout ends the response.

use std::fs::File;
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame};
use tokio::sync::{Semaphore, mpsc};

use super::limits::{CHUNK, CHUNKS_IN_FLIGHT, TransferStats};

/// A response body fed by the reading task through a bounded channel.
pub(super) struct FileBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    remaining: u64,
    stats: Arc<TransferStats>,
}

/// Reads up to `want` bytes of `file`; none is an error (the file shrank while served).
fn read_chunk(file: &mut File, want: usize) -> io::Result<Vec<u8>> {
    // read_to_end into spare capacity: no zero-fill of each new buffer.
    let mut buf = Vec::with_capacity(want);
    let n = (&mut *file).take(want as u64).read_to_end(&mut buf)?;
    if n == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shrank while being served",
        ));
    }
    Ok(buf)
}

impl FileBody {
    /// Streams `len` bytes of `file` (already at its offset), reading through `pool`.
    pub(super) fn spawn(
        file: File,
        len: u64,
        pool: Arc<Semaphore>,
        idle: Duration,
        stats: Arc<TransferStats>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
        tokio::spawn(async move {
            let mut file = Some(file);
            let mut left = len;
            while left > 0 {
                let Ok(permit) = pool.clone().acquire_owned().await else {
                    return;
                };
                let Some(mut f) = file.take() else { return };
                let want = usize::try_from(left.min(CHUNK as u64)).unwrap_or(CHUNK);
                let read = tokio::task::spawn_blocking(move || {
                    let result = read_chunk(&mut f, want);
                    drop(permit);
                    (f, result)
                })
                .await;
                let chunk = match read {
                    Ok((f, Ok(buf))) => {
                        file = Some(f);
                        left = left.saturating_sub(buf.len() as u64);
                        Ok(Bytes::from(buf))
                    }
                    Ok((_, Err(e))) => Err(e),
                    Err(e) => Err(io::Error::other(format!("file reader failed: {e}"))),
                };
                let failed = chunk.is_err();
                // The client went away or stopped reading: end the response.
                match tokio::time::timeout(idle, tx.send(chunk)).await {
                    Ok(Ok(())) if !failed => {}
                    _ => return,
                }
            }
        });
        FileBody {
            rx,
            remaining: len,
            stats,
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                self.remaining = self.remaining.saturating_sub(n);
                self.stats.bytes_served.fetch_add(n, Ordering::Relaxed);
                Poll::Ready(Some(Ok(Frame::data(chunk))))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(Some(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file reader stopped early",
            )))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        hyper::body::SizeHint::with_exact(self.remaining)
    }
}
