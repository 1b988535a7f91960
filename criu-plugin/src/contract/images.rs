//! Image file framing shared by every backend: like upstream's amdgpu plugin, each image
//! starts with an 8-byte little-endian payload length (`size_t` on x86-64), then the payload.

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

/// Reads a whole small image (metadata), checking the header against the file's length.
pub fn read_sized(mut file: File, name: &str, max: u64) -> Result<Vec<u8>> {
    let len = payload_len(&file, name)?;
    if len > max {
        return Err(PluginError::invalid(format!(
            "image {name} says its payload is {len} bytes, more than the {max} allowed"
        )));
    }
    let mut buf = vec![0u8; len as usize];
    file.read_exact(&mut [0u8; HEADER_LEN as usize])
        .and_then(|()| file.read_exact(&mut buf))
        .ctx(|| format!("read image {name}"))?;
    Ok(buf)
}

/// The payload length from the header, checked against the file's real size so a truncated
/// image fails here with both numbers instead of as a short read in the middle of a copy.
pub fn payload_len(file: &File, name: &str) -> Result<u64> {
    let mut hdr = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut hdr, 0)
        .ctx(|| format!("read the size header of image {name}"))?;
    let len = u64::from_le_bytes(hdr);
    let actual = file.metadata().ctx(|| format!("stat image {name}"))?.len();
    if actual < HEADER_LEN + len {
        return Err(PluginError::invalid(format!(
            "image {name} is truncated: its header says {len} payload bytes but the file holds {}",
            actual.saturating_sub(HEADER_LEN)
        )));
    }
    Ok(len)
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
}
