//! Image file framing shared by every backend: like upstream's amdgpu plugin, each image
//! starts with an 8-byte little-endian payload length (`size_t` on x86-64), then the payload.
//!
//! Every reader here is bounded: a header is checked against the file's real size (with
//! checked arithmetic) and against a caller's stated maximum before anything is allocated,
//! so a corrupt or hostile image is an error, never a huge allocation or a panic in CRIU.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;

use crate::error::{IoContext, PluginError, Result};

/// Bytes of the size header.
pub const HEADER_LEN: u64 = 8;

/// Writes header + payload.
pub fn write_sized(file: &mut File, name: &str, payload: &[u8]) -> Result<()> {
    file.write_all(&(payload.len() as u64).to_le_bytes())
        .and_then(|()| file.write_all(payload))
        .ctx(|| format!("write image {name}"))
}

/// Reads a whole small image (metadata), checking the header against the file's length and
/// `max` before allocating.
pub fn read_sized(file: File, name: &str, max: u64) -> Result<Vec<u8>> {
    let len = payload_len(&file, name)?;
    if len > max {
        return Err(PluginError::invalid(format!(
            "image {name} says its payload is {len} bytes, more than the {max} allowed"
        )));
    }
    let n = usize::try_from(len).map_err(|_| {
        PluginError::invalid(format!(
            "image {name}: {len} payload bytes do not fit in memory"
        ))
    })?;
    let mut buf = vec![0u8; n];
    file.read_exact_at(&mut buf, HEADER_LEN)
        .ctx(|| format!("read image {name}"))?;
    Ok(buf)
}

/// The payload length from the header, checked against the file's real size so a truncated
/// image fails here with both numbers instead of as a short read in the middle of a copy.
pub fn payload_len(file: &File, name: &str) -> Result<u64> {
    let actual = file.metadata().ctx(|| format!("stat image {name}"))?.len();
    if actual < HEADER_LEN {
        return Err(PluginError::invalid(format!(
            "image {name} is truncated: {actual} bytes is shorter than the {HEADER_LEN}-byte size header"
        )));
    }
    let mut hdr = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut hdr, 0)
        .ctx(|| format!("read the size header of image {name}"))?;
    check_header(name, hdr, actual)
}

/// Checks a size header against the length of the file it heads (the pure part of
/// [`payload_len`]): the payload must fit in the file, with the sum checked for overflow.
pub fn check_header(name: &str, hdr: [u8; HEADER_LEN as usize], file_len: u64) -> Result<u64> {
    let len = u64::from_le_bytes(hdr);
    let fits = HEADER_LEN
        .checked_add(len)
        .is_some_and(|end| end <= file_len);
    if !fits {
        return Err(PluginError::invalid(format!(
            "image {name} is truncated: its header says {len} payload bytes but the file holds {}",
            file_len.saturating_sub(HEADER_LEN)
        )));
    }
    Ok(len)
}

/// Reads a whole unframed image (JSON metadata) of at most `max` bytes: the file's size is
/// checked before anything is allocated, and a file that grows while it is read is cut at
/// `max + 1` bytes and refused.
pub fn read_capped(file: File, name: &str, max: u64) -> Result<Vec<u8>> {
    let actual = file.metadata().ctx(|| format!("stat image {name}"))?.len();
    let too_big = |n: u64| {
        PluginError::invalid(format!(
            "image {name} is {n} bytes, more than the {max} allowed"
        ))
    };
    if actual > max {
        return Err(too_big(actual));
    }
    let mut buf = Vec::with_capacity(usize::try_from(actual).unwrap_or(0));
    file.take(max.saturating_add(1))
        .read_to_end(&mut buf)
        .ctx(|| format!("read image {name}"))?;
    if buf.len() as u64 > max {
        return Err(too_big(buf.len() as u64));
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sized_image_round_trips_and_truncation_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        let mut f = File::create(&p).unwrap();
        write_sized(&mut f, "x.img", b"hello").unwrap();
        drop(f);
        assert_eq!(
            read_sized(File::open(&p).unwrap(), "x.img", 100).unwrap(),
            b"hello"
        );
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(10).unwrap();
        let e = read_sized(File::open(&p).unwrap(), "x.img", 100).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert!(read_sized(File::open(&p).unwrap(), "x.img", 2).is_err());
    }

    /// Regression: a header near `u64::MAX` overflowed
    /// `HEADER_LEN + len`, a panic in debug builds, instead of reading as truncated.
    #[test]
    fn a_header_near_u64_max_is_truncation_not_overflow() {
        let e = check_header("x.img", u64::MAX.to_le_bytes(), 100).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        let e = check_header("x.img", (u64::MAX - 7).to_le_bytes(), u64::MAX).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
        assert_eq!(check_header("x.img", 5u64.to_le_bytes(), 13).unwrap(), 5);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, u64::MAX.to_le_bytes()).unwrap();
        assert!(read_sized(File::open(&p).unwrap(), "x.img", u64::MAX).is_err());
        std::fs::write(&p, [1, 2, 3]).unwrap();
        let e = payload_len(&File::open(&p).unwrap(), "x.img").unwrap_err();
        assert!(e.to_string().contains("shorter than"), "{e}");
    }

    #[test]
    fn capped_reads_refuse_files_over_the_cap_before_reading() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, b"0123456789").unwrap();
        assert_eq!(
            read_capped(File::open(&p).unwrap(), "x.json", 10).unwrap(),
            b"0123456789"
        );
        let e = read_capped(File::open(&p).unwrap(), "x.json", 9).unwrap_err();
        assert!(e.to_string().contains("more than the 9 allowed"), "{e}");
    }
}
