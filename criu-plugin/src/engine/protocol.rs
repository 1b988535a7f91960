//! The wire format between a restored task and the main CRIU process.
//!
//! Every command travels on its own private `SOCK_STREAM` channel (see the engine's `restore` module):
//!
//! ```text
//! header  32 B  magic "FRYC" | version u16 | kind u8 | backend u8 | ext_id u32 | pid u32
//!               | n_devices u32 | n_buffers u32 | payload_len u32 | fnv1a32(payload) u32
//! payload       devices: key u64, label (u16 len + bytes), pages image (u16 len + bytes)
//!               buffers: device u32, 0 u32, read_offset u64, write_offset u64, size u64
//! fd batches    "FRYF" | count u32, with `count` (<= 252) buffer fds attached (SCM_RIGHTS)
//! ack     1 B   from the main process once it holds the whole command
//! ```
//! All integers little-endian. Every length is checked against a bound before allocation
//! ([`MAX_PAYLOAD`], and the counts against [`MAX_DEVICES`]/[`MAX_BUFFERS`] and the bytes
//! they need), every count against what arrived, offsets with checked arithmetic and no
//! slice index that can panic, so a corrupt or short command is an error, never a wrong copy
//! or a crash of CRIU.

use std::os::fd::OwnedFd;

use crate::contract::plan::{MAX_BUFFERS, MAX_DEVICES};
use crate::contract::{BackendId, CopyPlan, PlanBuffer, PlanDevice};
use crate::error::{PluginError, Result};

/// What a restored task sends on the rendezvous socket, with its channel's fd attached.
pub const RENDEZVOUS_TAG: &[u8; 4] = b"FRYR";
pub const MAGIC: [u8; 4] = *b"FRYC";
pub const FD_BATCH_MAGIC: [u8; 4] = *b"FRYF";
pub const VERSION: u16 = 1;
pub const HEADER_LEN: usize = 32;
pub const FD_BATCH_LEN: usize = 8;
/// Largest payload accepted (about 500k buffers).
pub const MAX_PAYLOAD: u32 = 16 << 20;
/// Ack byte.
pub const ACK: u8 = b'K';
const BUFFER_LEN: usize = 32;
/// The fewest payload bytes one device takes (key + two empty names).
const MIN_DEVICE_LEN: usize = 12;

/// What a command carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A copy plan; buffer fds follow.
    Plan = 1,
    /// Sequential mode: the stats of copies the task did itself (JSON payload).
    Report = 2,
}

/// A decoded header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub backend: BackendId,
    pub ext_id: u32,
    pub pid: u32,
    pub n_devices: u32,
    pub n_buffers: u32,
    pub payload_len: u32,
    pub checksum: u32,
}

/// FNV-1a, 32 bit: catches corruption of the payload in transit or in a bad sender.
pub fn fnv1a32(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

impl Header {
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        b[6] = self.kind as u8;
        b[7] = self.backend as u8;
        b[8..12].copy_from_slice(&self.ext_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.pid.to_le_bytes());
        b[16..20].copy_from_slice(&self.n_devices.to_le_bytes());
        b[20..24].copy_from_slice(&self.n_buffers.to_le_bytes());
        b[24..28].copy_from_slice(&self.payload_len.to_le_bytes());
        b[28..32].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header> {
        if b[0..4] != MAGIC {
            return Err(PluginError::invalid(format!(
                "restore command has a bad magic {:02x?} (expected \"FRYC\"): the sender is not this plugin or the stream is corrupt",
                &b[0..4]
            )));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if version != VERSION {
            return Err(PluginError::invalid(format!(
                "restore command version {version}, this plugin speaks {VERSION}: the restored task runs another plugin build"
            )));
        }
        let kind = match b[6] {
            1 => Kind::Plan,
            2 => Kind::Report,
            k => {
                return Err(PluginError::invalid(format!(
                    "unknown restore command kind {k}"
                )));
            }
        };
        let backend = BackendId::from_u8(b[7])
            .ok_or_else(|| PluginError::invalid(format!("unknown backend id {}", b[7])))?;
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header {
            kind,
            backend,
            ext_id: u(8),
            pid: u(12),
            n_devices: u(16),
            n_buffers: u(20),
            payload_len: u(24),
            checksum: u(28),
        };
        h.check_bounds()?;
        Ok(h)
    }

    /// The header's lengths and counts against the bounds: the payload against
    /// [`MAX_PAYLOAD`], the counts against [`MAX_DEVICES`]/[`MAX_BUFFERS`], and for a plan
    /// the bytes its counts need against the payload length (checked arithmetic). A report
    /// carries no buffers.
    pub fn check_bounds(&self) -> Result<()> {
        if self.payload_len > MAX_PAYLOAD {
            return Err(PluginError::invalid(format!(
                "restore command payload of {} bytes exceeds the {MAX_PAYLOAD}-byte bound",
                self.payload_len
            )));
        }
        if self.n_devices as usize > MAX_DEVICES || self.n_buffers as usize > MAX_BUFFERS {
            return Err(PluginError::invalid(format!(
                "restore command claims {} devices and {} buffers, more than the {MAX_DEVICES} and {MAX_BUFFERS} allowed",
                self.n_devices, self.n_buffers
            )));
        }
        match self.kind {
            Kind::Plan => {
                let min = u64::from(self.n_buffers)
                    .checked_mul(BUFFER_LEN as u64)
                    .zip(u64::from(self.n_devices).checked_mul(MIN_DEVICE_LEN as u64))
                    .and_then(|(b, d)| b.checked_add(d));
                if min.is_none_or(|m| m > u64::from(self.payload_len)) {
                    return Err(PluginError::invalid(format!(
                        "restore command claims {} devices and {} buffers but carries only {} payload bytes",
                        self.n_devices, self.n_buffers, self.payload_len
                    )));
                }
            }
            Kind::Report => {
                if self.n_buffers != 0 {
                    return Err(PluginError::invalid(format!(
                        "restore report claims {} buffers; reports carry none",
                        self.n_buffers
                    )));
                }
            }
        }
        Ok(())
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) -> Result<()> {
    let len = u16::try_from(s.len())
        .map_err(|_| PluginError::invalid(format!("name too long for the protocol: {s}")))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Encodes a plan's header and payload (the fds travel separately).
pub fn encode_plan(plan: &CopyPlan) -> Result<(Header, Vec<u8>)> {
    let mut p = Vec::with_capacity(plan.buffers.len() * BUFFER_LEN + 64);
    for d in &plan.devices {
        p.extend_from_slice(&d.key.to_le_bytes());
        put_str(&mut p, &d.label)?;
        put_str(&mut p, &d.pages_image)?;
    }
    for b in &plan.buffers {
        p.extend_from_slice(&b.device.to_le_bytes());
        p.extend_from_slice(&0u32.to_le_bytes());
        p.extend_from_slice(&b.read_offset.to_le_bytes());
        p.extend_from_slice(&b.write_offset.to_le_bytes());
        p.extend_from_slice(&b.size.to_le_bytes());
    }
    let header = Header {
        kind: Kind::Plan,
        backend: plan.backend,
        ext_id: plan.ext_id,
        pid: plan.pid,
        n_devices: count(plan.devices.len())?,
        n_buffers: count(plan.buffers.len())?,
        payload_len: count(p.len())?,
        checksum: fnv1a32(&p),
    };
    Ok((header, p))
}

/// Encodes a report (sequential mode stats) as JSON.
pub fn encode_report(
    backend: BackendId,
    ext_id: u32,
    pid: u32,
    stats: &[ferry_api::stats::DeviceStats],
) -> Result<(Header, Vec<u8>)> {
    let p = serde_json::to_vec(stats)
        .map_err(|e| PluginError::invalid(format!("encode copy report: {e}")))?;
    Ok((
        Header {
            kind: Kind::Report,
            backend,
            ext_id,
            pid,
            n_devices: count(stats.len())?,
            n_buffers: 0,
            payload_len: count(p.len())?,
            checksum: fnv1a32(&p),
        },
        p,
    ))
}

/// Decodes a report's payload.
pub fn decode_report(h: &Header, payload: &[u8]) -> Result<Vec<ferry_api::stats::DeviceStats>> {
    if h.kind != Kind::Report {
        return Err(PluginError::invalid(
            "restore command is a plan, not a report",
        ));
    }
    h.check_bounds()?;
    check_payload(h, payload)?;
    serde_json::from_slice(payload)
        .map_err(|e| PluginError::invalid(format!("copy report is not valid JSON: {e}")))
}

fn count(n: usize) -> Result<u32> {
    u32::try_from(n).map_err(|_| PluginError::invalid(format!("count {n} exceeds 32 bits")))
}

fn check_payload(h: &Header, payload: &[u8]) -> Result<()> {
    if payload.len() != h.payload_len as usize {
        return Err(PluginError::invalid(format!(
            "restore command payload is {} bytes, header says {}",
            payload.len(),
            h.payload_len
        )));
    }
    let sum = fnv1a32(payload);
    if sum != h.checksum {
        return Err(PluginError::invalid(format!(
            "restore command payload checksum {sum:08x} does not match the header's {:08x}",
            h.checksum
        )));
    }
    Ok(())
}

struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.b.get(self.at..end))
            .ok_or_else(|| {
                PluginError::invalid(format!(
                    "restore command payload ends early: need {n} bytes at offset {}, have {}",
                    self.at,
                    self.b.len()
                ))
            })?;
        self.at += n;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        let s = self.take(len)?;
        String::from_utf8(s.to_vec())
            .map_err(|_| PluginError::invalid("restore command holds a non-UTF-8 name"))
    }
}

/// Decodes a plan from its header, payload and the fds that came with it.
pub fn decode_plan(h: &Header, payload: &[u8], fds: Vec<OwnedFd>) -> Result<CopyPlan> {
    if h.kind != Kind::Plan {
        return Err(PluginError::invalid(
            "restore command is a report, not a plan",
        ));
    }
    // Again here: a caller may hand a header it built, and the counts size the vectors below.
    h.check_bounds()?;
    check_payload(h, payload)?;
    if fds.len() != h.n_buffers as usize {
        return Err(PluginError::invalid(format!(
            "restore command announced {} buffer fds but {} arrived",
            h.n_buffers,
            fds.len()
        )));
    }
    let mut c = Cursor { b: payload, at: 0 };
    let mut devices = Vec::with_capacity(h.n_devices as usize);
    for _ in 0..h.n_devices {
        let key = c.u64()?;
        let label = c.string()?;
        let pages_image = c.string()?;
        devices.push(PlanDevice {
            key,
            label,
            pages_image,
        });
    }
    let mut buffers = Vec::with_capacity(h.n_buffers as usize);
    for fd in fds {
        let device = c.u32()?;
        let _reserved = c.u32()?;
        let read_offset = c.u64()?;
        let write_offset = c.u64()?;
        let size = c.u64()?;
        buffers.push(PlanBuffer {
            device,
            read_offset,
            write_offset,
            size,
            fd,
        });
    }
    if c.at != payload.len() {
        return Err(PluginError::invalid(format!(
            "restore command payload has {} unexplained trailing bytes",
            payload.len().saturating_sub(c.at)
        )));
    }
    let plan = CopyPlan {
        backend: h.backend,
        ext_id: h.ext_id,
        pid: h.pid,
        devices,
        buffers,
    };
    plan.validate()?;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(n: usize) -> CopyPlan {
        CopyPlan {
            backend: BackendId::Sim,
            ext_id: 9,
            pid: 1234,
            devices: vec![
                PlanDevice {
                    key: 0,
                    label: "sim0".into(),
                    pages_image: "sim-pages-9-0.img".into(),
                },
                PlanDevice {
                    key: 1,
                    label: "sim1".into(),
                    pages_image: "sim-pages-9-1.img".into(),
                },
            ],
            buffers: (0..n)
                .map(|i| PlanBuffer {
                    device: (i % 2) as u32,
                    read_offset: (i / 2) as u64 * 4096,
                    write_offset: 0,
                    size: 4096,
                    fd: tempfile::tempfile().unwrap().into(),
                })
                .collect(),
        }
    }

    #[test]
    fn plan_round_trips_through_the_wire_format() {
        let p = plan(6);
        let (h, payload) = encode_plan(&p).unwrap();
        let h2 = Header::decode(&h.encode()).unwrap();
        assert_eq!(h, h2);
        let fds: Vec<OwnedFd> = p
            .buffers
            .iter()
            .map(|b| b.fd.try_clone().unwrap())
            .collect();
        let back = decode_plan(&h2, &payload, fds).unwrap();
        assert_eq!(back.devices, p.devices);
        assert_eq!(back.buffers.len(), 6);
        // Per-device offsets: the second device's first buffer starts at 0 in its own image.
        assert_eq!(back.buffers[1].device, 1);
        assert_eq!(back.buffers[1].read_offset, 0);
        assert_eq!(back.buffers[5].read_offset, 8192);
    }

    #[test]
    fn corrupt_headers_and_payloads_are_rejected_with_reasons() {
        let p = plan(2);
        let (h, mut payload) = encode_plan(&p).unwrap();
        let mut raw = h.encode();
        raw[0] = b'X';
        assert!(
            Header::decode(&raw)
                .unwrap_err()
                .to_string()
                .contains("bad magic")
        );
        let mut raw = h.encode();
        raw[4] = 7;
        assert!(
            Header::decode(&raw)
                .unwrap_err()
                .to_string()
                .contains("version 7")
        );
        let mut big = h;
        big.payload_len = MAX_PAYLOAD + 1;
        assert!(
            Header::decode(&big.encode())
                .unwrap_err()
                .to_string()
                .contains("bound")
        );
        let mut lying = h;
        lying.n_buffers = 1000;
        assert!(Header::decode(&lying.encode()).is_err());
        payload[3] ^= 0xff;
        let fds: Vec<OwnedFd> = p
            .buffers
            .iter()
            .map(|b| b.fd.try_clone().unwrap())
            .collect();
        let e = decode_plan(&h, &payload, fds).unwrap_err();
        assert!(e.to_string().contains("checksum"), "{e}");
    }

    #[test]
    fn a_plan_with_missing_fds_is_rejected() {
        let p = plan(4);
        let (h, payload) = encode_plan(&p).unwrap();
        let fds: Vec<OwnedFd> = p.buffers[..3]
            .iter()
            .map(|b| b.fd.try_clone().unwrap())
            .collect();
        let e = decode_plan(&h, &payload, fds).unwrap_err();
        assert!(
            e.to_string()
                .contains("announced 4 buffer fds but 3 arrived"),
            "{e}"
        );
    }
}
