//! Image file names and framing, as upstream's amdgpu plugin writes them: every file starts
//! with an 8-byte native-endian `size_t` payload length (`open_img_file`), then the payload
//! (a packed protobuf message, or raw BO bytes for the pages files).
//!
//! Reading is bounded: [`read_message`] checks the header against the file's size and
//! [`MAX_MESSAGE_IMAGE`] before it allocates, and [`check_kfd`] bounds the counts the
//! topology code walks, so a corrupt or hostile image is an error, never a crash of CRIU.

use std::io::Write;
use std::os::unix::fs::FileExt;

use prost::Message;

use super::proto::CriuKfd;
use crate::error::{PluginError, Result};
use crate::host::Host;

/// Length of the size header.
pub const HEADER_LEN: u64 = 8;
/// Largest message image payload read (a `criu_kfd` is dominated by the kernel's private
/// data: queues' MQDs and control stacks, a few MiB in practice).
pub const MAX_MESSAGE_IMAGE: u64 = 1 << 30;
/// Most KFD topology nodes (CPUs and GPUs or GPU partitions) a `criu_kfd` may list.
pub const MAX_KFD_NODES: usize = 512;
/// Most io links one node of a `criu_kfd` may list.
pub const MAX_KFD_IOLINKS: usize = 512;

/// `amdgpu-kfd-<id>.img`: the packed `criu_kfd` of one /dev/kfd fd.
pub fn kfd_image(id: u32) -> String {
    format!("amdgpu-kfd-{id}.img")
}

/// `amdgpu-renderD-<id>.img`: the packed `criu_render_node` of one render-node fd.
pub fn render_node_image(id: u32) -> String {
    format!("amdgpu-renderD-{id}.img")
}

/// `amdgpu-pages-<id>-<gpu_id %04x>.img`: one GPU's VRAM/GTT BO bytes, in BO order.
pub fn pages_image(id: u32, gpu_id: u32) -> String {
    format!("amdgpu-pages-{id}-{gpu_id:04x}.img")
}

/// The 8-byte header for a payload of `len` bytes.
pub fn header(len: u64) -> [u8; 8] {
    len.to_ne_bytes()
}

/// Header + payload of a message image.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(payload.len() + 8);
    v.extend_from_slice(&header(payload.len() as u64));
    v.extend_from_slice(payload);
    v
}

/// Splits a framed image into its payload, checking the header against the file length.
pub fn unframe<'a>(name: &str, bytes: &'a [u8]) -> Result<&'a [u8]> {
    let Some((h, rest)) = bytes.split_first_chunk::<8>() else {
        return Err(PluginError::invalid(format!(
            "{name}: {} bytes is shorter than the 8-byte size header",
            bytes.len()
        )));
    };
    let len = u64::from_ne_bytes(*h);
    if len != rest.len() as u64 {
        return Err(PluginError::invalid(format!(
            "{name}: header says {len} payload bytes but the file has {}",
            rest.len()
        )));
    }
    Ok(rest)
}

/// Writes a message image (fails if it exists).
pub fn write_message<M: Message>(host: &Host, name: &str, msg: &M) -> Result<()> {
    host.write_image(name, &frame(&msg.encode_to_vec()))
}

/// Reads and decodes a message image of at most [`MAX_MESSAGE_IMAGE`] payload bytes.
pub fn read_message<M: Message + Default>(host: &Host, name: &str) -> Result<M> {
    let f = host.open_image(name)?;
    let payload = read_payload(&f, name, MAX_MESSAGE_IMAGE)?;
    M::decode(&payload[..]).map_err(|e| PluginError::invalid(format!("{name}: bad protobuf: {e}")))
}

/// Reads a message image's payload: the header must equal the file's size less the header
/// and be at most `max`, both checked before the payload is allocated.
pub fn read_payload(file: &std::fs::File, name: &str, max: u64) -> Result<Vec<u8>> {
    let file_len = file
        .metadata()
        .map_err(|e| PluginError::io(format!("stat image {name}"), e))?
        .len();
    let mut h = [0u8; 8];
    if file_len < HEADER_LEN {
        return Err(PluginError::invalid(format!(
            "{name}: {file_len} bytes is shorter than the 8-byte size header"
        )));
    }
    file.read_exact_at(&mut h, 0)
        .map_err(|e| PluginError::io(format!("read image {name}"), e))?;
    let len = u64::from_ne_bytes(h);
    let rest = file_len - HEADER_LEN;
    if len != rest {
        return Err(PluginError::invalid(format!(
            "{name}: header says {len} payload bytes but the file has {rest}"
        )));
    }
    if len > max {
        return Err(PluginError::invalid(format!(
            "{name}: {len} payload bytes, more than the {max} allowed"
        )));
    }
    let n = usize::try_from(len).map_err(|_| {
        PluginError::invalid(format!("{name}: {len} payload bytes do not fit in memory"))
    })?;
    let mut payload = vec![0u8; n];
    file.read_exact_at(&mut payload, HEADER_LEN)
        .map_err(|e| PluginError::io(format!("read image {name}"), e))?;
    Ok(payload)
}

/// Reads a `criu_kfd` image and checks it with [`check_kfd`].
pub fn read_kfd(host: &Host, name: &str) -> Result<CriuKfd> {
    let img: CriuKfd = read_message(host, name)?;
    check_kfd(name, &img)?;
    Ok(img)
}

/// Bounds what the restore walks of a decoded `criu_kfd`: at most [`MAX_KFD_NODES`] device
/// entries of at most [`MAX_KFD_IOLINKS`] links each (the topology analysis is quadratic in
/// them).
pub fn check_kfd(name: &str, img: &CriuKfd) -> Result<()> {
    if img.device_entries.len() > MAX_KFD_NODES {
        return Err(PluginError::invalid(format!(
            "{name}: {} topology nodes, more than the {MAX_KFD_NODES} allowed",
            img.device_entries.len()
        )));
    }
    if let Some(e) = img
        .device_entries
        .iter()
        .find(|e| e.iolinks.len() > MAX_KFD_IOLINKS)
    {
        return Err(PluginError::invalid(format!(
            "{name}: node {} has {} io links, more than the {MAX_KFD_IOLINKS} allowed",
            e.node_id,
            e.iolinks.len()
        )));
    }
    Ok(())
}

/// Decodes a framed message image.
pub fn decode_message<M: Message + Default>(name: &str, bytes: &[u8]) -> Result<M> {
    let payload = unframe(name, bytes)?;
    M::decode(payload).map_err(|e| PluginError::invalid(format!("{name}: bad protobuf: {e}")))
}

/// Creates a pages image and writes its header; the caller streams `len` payload bytes.
pub fn create_pages(host: &Host, name: &str, len: u64) -> Result<std::fs::File> {
    let mut f = host.create_image(name)?;
    f.write_all(&header(len))
        .map_err(|e| PluginError::io(format!("write image {name}"), e))?;
    Ok(f)
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_names_follow_upstream_templates() {
        assert_eq!(kfd_image(7), "amdgpu-kfd-7.img");
        assert_eq!(render_node_image(12), "amdgpu-renderD-12.img");
        assert_eq!(pages_image(7, 0x1a2), "amdgpu-pages-7-01a2.img");
        assert_eq!(pages_image(7, 0xbeef1), "amdgpu-pages-7-beef1.img");
    }

    #[test]
    fn a_header_that_disagrees_with_the_file_length_is_rejected() {
        let mut f = frame(b"abc");
        assert_eq!(unframe("x", &f).unwrap(), b"abc");
        f.push(0);
        assert!(
            unframe("x", &f)
                .unwrap_err()
                .to_string()
                .contains("header says 3")
        );
        assert!(unframe("x", &[1, 2]).is_err());
    }
}
