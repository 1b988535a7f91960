//! Image file names and framing, as upstream's amdgpu plugin writes them: every file starts
//! with an 8-byte native-endian `size_t` payload length (`open_img_file`), then the payload
//! (a packed protobuf message, or raw BO bytes for the pages files).

use std::io::{Read, Write};

use prost::Message;

use crate::error::{PluginError, Result};
use crate::host::Host;

/// Length of the size header.
pub const HEADER_LEN: u64 = 8;

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

/// Reads and decodes a message image.
pub fn read_message<M: Message + Default>(host: &Host, name: &str) -> Result<M> {
    let mut f = host.open_image(name)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .map_err(|e| PluginError::io(format!("read image {name}"), e))?;
    decode_message(name, &bytes)
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
