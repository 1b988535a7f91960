//! One member of a kubelet checkpoint archive (an uncompressed tar), read without unpacking
//! the images.

use std::path::Path;

use crate::runtime::error::{Result, RuntimeError, io_err};

/// Largest archive member [`archive_member`] reads.
const MAX_MEMBER: u64 = 1 << 20;
/// Longest GNU long name read (Linux's `PATH_MAX`). The name's size comes from the archive,
/// which the kubelet's CRIU wrote from the container's state: a header claiming gigabytes
/// must not make the agent allocate them (issue #14, finding 10).
pub const MAX_LONG_NAME: u64 = 4096;

/// Reads the member `name` (e.g. `checkpoint/ferry-dump-stats.json`; a leading `./` in the
/// archive is ignored) of the tar `archive`, if present and at most 1 MiB. Plain ustar and
/// GNU long names; enough for the kubelet's checkpoint archives (which are uncompressed tars),
/// without unpacking the images. Whatever the headers say, it allocates at most
/// [`MAX_MEMBER`] for a member and [`MAX_LONG_NAME`] for a long name; a long name over that is
/// an error.
pub fn archive_member(archive: &Path, name: &str) -> Result<Option<Vec<u8>>> {
    use std::io::{Read, Seek, SeekFrom};
    let ctx = || format!("read {}", archive.display());
    let mut f = std::fs::File::open(archive).map_err(io_err(ctx()))?;
    let mut header = [0u8; 512];
    let mut long_name: Option<String> = None;
    loop {
        match f.read_exact(&mut header) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(io_err(ctx())(e)),
        }
        if header.iter().all(|b| *b == 0) {
            return Ok(None);
        }
        let field = |r: std::ops::Range<usize>| {
            let raw = &header[r];
            let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        };
        let size = u64::from_str_radix(field(124..136).trim(), 8).map_err(|e| {
            RuntimeError::Invalid(format!("{}: bad tar header size: {e}", archive.display()))
        })?;
        let padded = size.div_ceil(512) * 512;
        let typeflag = header[156];
        let mut entry = match long_name.take() {
            Some(n) => n,
            None => {
                let prefix = field(345..500);
                let base = field(0..100);
                if header[257..262] == *b"ustar" && !prefix.is_empty() {
                    format!("{prefix}/{base}")
                } else {
                    base
                }
            }
        };
        if typeflag == b'L' {
            // GNU long name: the data is the next entry's name.
            if size > MAX_LONG_NAME {
                return Err(RuntimeError::Invalid(format!(
                    "{}: tar long name of {size} bytes (at most {MAX_LONG_NAME})",
                    archive.display()
                )));
            }
            let mut buf = vec![0u8; usize::try_from(padded).unwrap_or(0)];
            match f.read_exact(&mut buf) {
                Ok(()) => {}
                // A truncated archive holds no further member.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
                Err(e) => return Err(io_err(ctx())(e)),
            }
            buf.truncate(usize::try_from(size).unwrap_or(0));
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            long_name = Some(String::from_utf8_lossy(&buf[..end]).into_owned());
            continue;
        }
        if let Some(stripped) = entry.strip_prefix("./") {
            entry = stripped.to_string();
        }
        if entry == name && (typeflag == b'0' || typeflag == 0) {
            if size > MAX_MEMBER {
                return Ok(None);
            }
            let mut buf = vec![0u8; usize::try_from(size).unwrap_or(0)];
            return match f.read_exact(&mut buf) {
                Ok(()) => Ok(Some(buf)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    Err(RuntimeError::Invalid(format!(
                        "{}: member {name} is cut short",
                        archive.display()
                    )))
                }
                Err(e) => Err(io_err(ctx())(e)),
            };
        }
        let skip = i64::try_from(padded).map_err(|_| {
            RuntimeError::Invalid(format!("{}: tar member too large", archive.display()))
        })?;
        f.seek(SeekFrom::Current(skip)).map_err(io_err(ctx()))?;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn archive_members_are_found_by_name_in_a_real_tar() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("src");
        std::fs::create_dir_all(root.join("checkpoint")).unwrap();
        std::fs::write(root.join("checkpoint/pages-1.img"), vec![7u8; 3000]).unwrap();
        std::fs::write(root.join("checkpoint/ferry-dump-stats.json"), b"{\"x\":1}").unwrap();
        std::fs::write(root.join("config.dump"), b"{}").unwrap();
        let long = "d".repeat(120);
        std::fs::create_dir_all(root.join(&long)).unwrap();
        std::fs::write(root.join(&long).join("f"), b"long").unwrap();
        let tar = tmp.path().join("a.tar");
        let st = std::process::Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&root)
            .args([".", "--format=gnu"])
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            archive_member(&tar, "checkpoint/ferry-dump-stats.json").unwrap(),
            Some(b"{\"x\":1}".to_vec())
        );
        assert_eq!(
            archive_member(&tar, &format!("{long}/f")).unwrap(),
            Some(b"long".to_vec())
        );
        assert_eq!(archive_member(&tar, "checkpoint/nope").unwrap(), None);
        std::fs::write(tmp.path().join("empty.tar"), vec![0u8; 1024]).unwrap();
        assert_eq!(
            archive_member(&tmp.path().join("empty.tar"), "x").unwrap(),
            None
        );
    }
}
