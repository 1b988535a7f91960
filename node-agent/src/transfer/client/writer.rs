//! The file writer: received data is gathered into [`WRITE_CHUNK`]-sized buffers (TLS hands
//! it over a record, ~16 KiB, at a time; one write and one thread wake-up per MiB instead)
//! that go through a channel of [`CHUNKS_IN_FLIGHT`] slots to a blocking thread, which
//! appends and hashes, so decryption and hashing+writing run on two cores with bounded memory.

use std::fs::File;
use std::io::{self, Write};

use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

/// Buffers queued for the writer.
pub const CHUNKS_IN_FLIGHT: usize = 8;
/// Bytes gathered before a buffer goes to the writer.
pub const WRITE_CHUNK: usize = 1 << 20;

/// The writer thread stopped (a write failed); its join result says why.
pub(super) struct WriterGone;

/// Gathers received data into [`WRITE_CHUNK`]-sized buffers for the writer thread.
pub(super) struct Sink {
    tx: mpsc::Sender<Bytes>,
    pending: BytesMut,
}

impl Sink {
    /// Buffers data and sends it to the writer behind `tx`.
    fn new(tx: mpsc::Sender<Bytes>) -> Self {
        Sink {
            tx,
            pending: BytesMut::new(),
        }
    }

    /// Adds `data`, sending full buffers on.
    pub(super) async fn push(&mut self, data: Bytes) -> Result<(), WriterGone> {
        if self.pending.is_empty() && data.len() >= WRITE_CHUNK {
            return self.tx.send(data).await.map_err(|_| WriterGone);
        }
        // Flush first rather than grow: growing would copy the whole buffer again.
        if !self.pending.is_empty() && self.pending.len() + data.len() > self.pending.capacity() {
            self.flush().await?;
        }
        if self.pending.capacity() == 0 {
            self.pending.reserve(WRITE_CHUNK.max(data.len()));
        }
        self.pending.extend_from_slice(&data);
        if self.pending.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends what is gathered so far.
    pub(super) async fn flush(&mut self) -> Result<(), WriterGone> {
        if self.pending.is_empty() {
            return Ok(());
        }
        // split() hands the filled buffer over; the next push allocates a fresh one.
        let full = self.pending.split().freeze();
        self.tx.send(full).await.map_err(|_| WriterGone)
    }
}

/// The writer thread: appends and hashes every chunk; its result is the hasher, or the first
/// write error (what was written before it stays, for a later resume). It ends when the
/// [`Sink`] is dropped.
pub(super) fn spawn_writer(
    mut file: File,
    mut hasher: Sha256,
) -> (Sink, tokio::task::JoinHandle<io::Result<Sha256>>) {
    let (tx, mut rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let handle = tokio::task::spawn_blocking(move || {
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
            hasher.update(&chunk);
        }
        Ok(hasher)
    });
    (Sink::new(tx), handle)
}
