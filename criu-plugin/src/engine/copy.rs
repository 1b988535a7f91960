//! The pipelined copy of one device: a reader thread fills one buffer from the pages image
//! while the copy engine drains the other (double buffering), so image reads and device
//! writes overlap. Reads use `read_exact_at`, so a short read is retried or reported, never
//! silently copied as garbage (upstream's `recv`/`fread` framing bug).

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use crate::contract::images::{self, HEADER_LEN};
use crate::contract::{CopyEngine, PlanBuffer};
use crate::error::{PluginError, Result};

/// What one device copy did.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CopyOutcome {
    pub bytes: u64,
    pub buffers: u32,
    pub started: Option<Instant>,
    pub elapsed: Duration,
}

struct Chunk {
    buffer: usize,
    image_offset: u64,
    write_offset: u64,
    len: usize,
}

/// Copies `buffers` (all of one device) from `pages` through `engine`.
///
/// The pages image must hold exactly the bytes the buffers need (header check), and each
/// buffer's `read_offset` is relative to this device's payload.
pub fn copy_device(
    pages: &File,
    image: &str,
    buffers: &[&PlanBuffer],
    engine: &mut dyn CopyEngine,
    chunk: usize,
) -> Result<CopyOutcome> {
    let started = Instant::now();
    let payload = images::payload_len(pages, image)?;
    let need = buffers
        .iter()
        .try_fold(0u64, |acc, b| acc.checked_add(b.size))
        .ok_or_else(|| {
            PluginError::invalid(format!(
                "the {} buffers of {image} add up to more than 2^64 bytes",
                buffers.len()
            ))
        })?;
    if payload != need {
        return Err(PluginError::invalid(format!(
            "pages image {image} holds {payload} bytes but its {} buffers need {need}",
            buffers.len()
        )));
    }
    let mut chunks = Vec::new();
    for (i, b) in buffers.iter().enumerate() {
        let end = b.read_offset.checked_add(b.size);
        if end.is_none_or(|end| end > payload) || b.write_offset.checked_add(b.size).is_none() {
            return Err(PluginError::invalid(format!(
                "buffer {i} of {image} reads {} bytes at {} (writing at {}), past the payload's {payload} bytes",
                b.size, b.read_offset, b.write_offset
            )));
        }
        // In bounds from here: read_offset + size <= payload <= file size - HEADER_LEN, and
        // write_offset + size does not overflow.
        let mut pos = 0u64;
        while pos < b.size {
            let len = (b.size - pos).min(chunk.max(1) as u64) as usize;
            chunks.push(Chunk {
                buffer: i,
                image_offset: HEADER_LEN + b.read_offset + pos,
                write_offset: b.write_offset + pos,
                len,
            });
            pos += len as u64;
        }
    }

    if engine.direct() {
        // No bounce buffer: the engine pulls each chunk from the image itself.
        let mut bytes = 0u64;
        for c in &chunks {
            engine.copy_from_file(
                pages,
                c.image_offset,
                buffers[c.buffer].fd.as_fd(),
                c.write_offset,
                c.len,
            )?;
            bytes += c.len as u64;
        }
        engine.finish()?;
        return Ok(CopyOutcome {
            bytes,
            buffers: buffers.len() as u32,
            started: Some(started),
            elapsed: started.elapsed(),
        });
    }

    let (full_tx, full_rx) = sync_channel::<Result<(usize, Vec<u8>)>>(1);
    let (free_tx, free_rx) = sync_channel::<Vec<u8>>(2);
    for _ in 0..2 {
        // Cannot fail: the channel has room for both buffers and the receiver is alive.
        let _ = free_tx.send(Vec::with_capacity(chunk));
    }
    std::thread::scope(|s| -> Result<CopyOutcome> {
        let chunks = &chunks;
        std::thread::Builder::new()
            .name("ferry-read".into())
            .spawn_scoped(s, move || {
                read_chunks(pages, image, chunks, free_rx, full_tx)
            })
            .map_err(|e| PluginError::io("spawn the image reader thread", e))?;
        // Owns the channel ends, so on any error they drop before the scope joins the
        // reader, which then sees a closed channel and stops instead of blocking forever.
        let bytes = drain_chunks(image, buffers, chunks, engine, full_rx, free_tx)?;
        engine.finish()?;
        Ok(CopyOutcome {
            bytes,
            buffers: buffers.len() as u32,
            started: Some(started),
            elapsed: started.elapsed(),
        })
    })
}

fn drain_chunks(
    image: &str,
    buffers: &[&PlanBuffer],
    chunks: &[Chunk],
    engine: &mut dyn CopyEngine,
    full_rx: Receiver<Result<(usize, Vec<u8>)>>,
    free_tx: SyncSender<Vec<u8>>,
) -> Result<u64> {
    let mut bytes = 0u64;
    for _ in 0..chunks.len() {
        let (i, data) = full_rx
            .recv()
            .map_err(|_| PluginError::Copy(format!("image reader for {image} stopped")))??;
        let c = &chunks[i];
        engine.write(buffers[c.buffer].fd.as_fd(), c.write_offset, &data)?;
        bytes += data.len() as u64;
        // The reader may already have stopped after its last chunk.
        let _ = free_tx.send(data);
    }
    Ok(bytes)
}

fn read_chunks(
    pages: &File,
    image: &str,
    chunks: &[Chunk],
    free: Receiver<Vec<u8>>,
    full: SyncSender<Result<(usize, Vec<u8>)>>,
) {
    for (i, c) in chunks.iter().enumerate() {
        let Ok(mut buf) = free.recv() else { return };
        buf.resize(c.len, 0);
        let r = pages.read_exact_at(&mut buf, c.image_offset).map_err(|e| {
            PluginError::io(
                format!(
                    "read {} bytes of {image} at offset {}",
                    c.len, c.image_offset
                ),
                e,
            )
        });
        let failed = r.is_err();
        if full.send(r.map(|()| (i, buf))).is_err() || failed {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::BorrowedFd;

    struct Recorder {
        fail_after: Option<usize>,
        writes: usize,
    }

    impl CopyEngine for Recorder {
        fn write(&mut self, dst: BorrowedFd<'_>, offset: u64, bytes: &[u8]) -> Result<()> {
            if self.fail_after == Some(self.writes) {
                return Err(PluginError::Copy("injected".into()));
            }
            self.writes += 1;
            rustix::io::pwrite(dst, bytes, offset)?;
            Ok(())
        }
    }

    fn image(payload: &[u8]) -> File {
        let mut f = tempfile::tempfile().unwrap();
        images::write_sized(&mut f, "t", payload).unwrap();
        f.flush().unwrap();
        f
    }

    fn buffer(read_offset: u64, size: u64) -> PlanBuffer {
        PlanBuffer {
            device: 0,
            read_offset,
            write_offset: 0,
            size,
            fd: tempfile::tempfile().unwrap().into(),
        }
    }

    #[test]
    fn pipelined_copy_fills_each_buffer_from_its_own_offset() {
        let payload: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let pages = image(&payload);
        let a = buffer(0, 60_000);
        let b = buffer(60_000, 40_000);
        let mut eng = Recorder {
            fail_after: None,
            writes: 0,
        };
        let out = copy_device(&pages, "t", &[&a, &b], &mut eng, 4096).unwrap();
        assert_eq!(out.bytes, 100_000);
        assert!(eng.writes >= 25, "chunked: {}", eng.writes);
        let mut got = vec![0u8; 40_000];
        File::from(b.fd.try_clone().unwrap())
            .read_exact_at(&mut got, 0)
            .unwrap();
        assert_eq!(got, payload[60_000..]);
    }

    #[test]
    fn a_truncated_pages_image_fails_before_copying() {
        let pages = image(&[7u8; 8192]);
        pages.set_len(HEADER_LEN + 100).unwrap();
        let a = buffer(0, 8192);
        let mut eng = Recorder {
            fail_after: None,
            writes: 0,
        };
        let e = copy_device(&pages, "t", &[&a], &mut eng, 4096).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert_eq!(eng.writes, 0);
    }

    #[test]
    fn a_copy_engine_error_stops_the_copy_and_is_returned() {
        let pages = image(&[1u8; 65536]);
        let a = buffer(0, 65536);
        let mut eng = Recorder {
            fail_after: Some(2),
            writes: 0,
        };
        let e = copy_device(&pages, "t", &[&a], &mut eng, 4096).unwrap_err();
        assert!(e.to_string().contains("injected"));
    }

    #[test]
    fn buffers_that_do_not_match_the_image_size_are_rejected() {
        let pages = image(&[1u8; 1000]);
        let a = buffer(0, 999);
        let mut eng = Recorder {
            fail_after: None,
            writes: 0,
        };
        let e = copy_device(&pages, "t", &[&a], &mut eng, 4096).unwrap_err();
        assert!(e.to_string().contains("need 999"), "{e}");
    }
}
