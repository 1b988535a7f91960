//! Resuming a file: what an earlier attempt left of it on disk, hashed, so the pull continues
//! from there with a `Range` request (or skips the file when it is complete and matches).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};
use tracing::warn;

use crate::store::{FileEntry, hex};
use crate::transfer::error::{Result, io_err};

/// Read size when hashing a partial file's prefix.
const HASH_BUFFER: usize = 1 << 20;

/// What is on disk of a file.
pub(super) enum Prefix {
    /// The whole file is there and matches.
    Complete,
    /// `len` bytes are there (possibly 0), hashed into `hasher`.
    Partial { len: u64, hasher: Sha256 },
}

/// Hashes what an earlier attempt left of a file. A prefix longer than the file, or a
/// complete file that does not match, is thrown away and fetched again.
pub(super) fn existing_prefix(path: &Path, entry: &FileEntry) -> Result<Prefix> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(Prefix::Partial {
                len: 0,
                hasher: Sha256::new(),
            });
        }
        Err(e) => return Err(io_err(format!("open {}", path.display()))(e)),
    };
    let len = file
        .metadata()
        .map_err(io_err(format!("stat {}", path.display())))?
        .len();
    let restart = || -> Result<Prefix> {
        fs::remove_file(path).map_err(io_err(format!("remove {}", path.display())))?;
        Ok(Prefix::Partial {
            len: 0,
            hasher: Sha256::new(),
        })
    };
    if len > entry.size {
        warn!(file = %entry.path, len, size = entry.size, "partial file is longer than the manifest says; fetching it again");
        return restart();
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut hashed = 0u64;
    while hashed < len {
        let n = file
            .read(&mut buf)
            .map_err(io_err(format!("read {}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        hashed += n as u64;
    }
    if hashed != len {
        return restart();
    }
    if len == entry.size {
        if hex(&hasher.finalize()) == entry.sha256 {
            return Ok(Prefix::Complete);
        }
        warn!(file = %entry.path, "complete partial file does not match the manifest; fetching it again");
        return restart();
    }
    Ok(Prefix::Partial { len, hasher })
}
