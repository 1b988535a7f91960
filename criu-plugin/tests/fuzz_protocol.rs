//! Property-based fuzz tests of the restore socket's wire protocol (`engine::protocol`): the
//! bytes a restored task sends the main CRIU process. Properties: decoding never panics,
//! garbage and corrupted commands are errors, valid commands round-trip, and a header that
//! claims more than the bounds is refused before anything is allocated (a 2^32-element
//! allocation would abort the test process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::OwnedFd;

use ferry_criu_plugin::contract::{BackendId, CopyPlan, PlanBuffer, PlanDevice};
use ferry_criu_plugin::engine::protocol::{
    self, HEADER_LEN, Header, Kind, MAX_PAYLOAD, decode_plan, decode_report, encode_plan,
    encode_report,
};
use proptest::prelude::*;

/// Cases per property (CI cost: the whole file runs in about a second).
const CASES: u32 = 256;

fn fds(n: usize) -> Vec<OwnedFd> {
    let null = std::fs::File::open("/dev/null").unwrap();
    (0..n)
        .map(|_| OwnedFd::from(null.try_clone().unwrap()))
        .collect()
}

/// Decodes a whole command (header, payload, `min(n_buffers, 64)` fds) the way the worker
/// does; the result only matters as Ok/Err.
fn decode_bytes(bytes: &[u8]) -> Result<(), String> {
    let Some((h, payload)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err("short".into());
    };
    let h = Header::decode(h).map_err(|e| e.to_string())?;
    assert!(h.payload_len <= MAX_PAYLOAD, "decode let {h:?} through");
    match h.kind {
        Kind::Report => decode_report(&h, payload).map(|_| ()),
        Kind::Plan => decode_plan(&h, payload, fds((h.n_buffers as usize).min(64))).map(|_| ()),
    }
    .map_err(|e| e.to_string())
}

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9.-]{0,24}"
}

/// A valid plan: 1..4 devices, up to 12 buffers tiling each device's payload.
fn valid_plan() -> impl Strategy<Value = CopyPlan> {
    let devices = prop::collection::vec((any::<u64>(), name(), name()), 1..4);
    let sizes = prop::collection::vec((0u32..4, 0u64..1 << 40, any::<u32>()), 0..12);
    (devices, sizes, any::<u32>(), any::<u32>()).prop_map(|(devs, sizes, ext_id, pid)| {
        let n = devs.len() as u32;
        let mut next = vec![0u64; n as usize];
        let buffers = sizes
            .into_iter()
            .map(|(d, size, w)| {
                let device = d % n;
                let read_offset = next[device as usize];
                next[device as usize] += size;
                PlanBuffer {
                    device,
                    read_offset,
                    write_offset: u64::from(w),
                    size,
                    fd: fds(1).pop().unwrap(),
                }
            })
            .collect();
        CopyPlan {
            backend: BackendId::Amdgpu,
            ext_id,
            pid,
            devices: devs
                .into_iter()
                .map(|(key, label, pages_image)| PlanDevice {
                    key,
                    label,
                    pages_image,
                })
                .collect(),
            buffers,
        }
    })
}

fn wire(plan: &CopyPlan) -> Vec<u8> {
    let (h, p) = encode_plan(plan).unwrap();
    let mut v = h.encode().to_vec();
    v.extend_from_slice(&p);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_garbage_is_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..512)
    ) {
        let r = decode_bytes(&bytes);
        // Without the magic, nothing decodes.
        if !bytes.starts_with(b"FRYC") {
            prop_assert!(r.is_err());
        }
    }

    #[test]
    fn arbitrary_headers_with_the_magic_are_checked_against_every_bound(
        kind in 0u8..4, backend in 0u8..5, ext_id in any::<u32>(), pid in any::<u32>(),
        n_devices in any::<u32>(), n_buffers in any::<u32>(), payload_len in any::<u32>(),
        checksum in any::<u32>(), tail in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut b = Vec::with_capacity(HEADER_LEN + tail.len());
        b.extend_from_slice(b"FRYC");
        b.extend_from_slice(&protocol::VERSION.to_le_bytes());
        b.extend_from_slice(&[kind, backend]);
        for v in [ext_id, pid, n_devices, n_buffers, payload_len, checksum] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        let hdr: [u8; HEADER_LEN] = b[..HEADER_LEN].try_into().unwrap();
        if let Ok(h) = Header::decode(&hdr) {
            prop_assert!(h.payload_len <= MAX_PAYLOAD);
            if h.kind == Kind::Plan {
                prop_assert!(u64::from(h.n_buffers) * 32 + u64::from(h.n_devices) * 12
                    <= u64::from(h.payload_len));
            }
            prop_assert_eq!(h.encode(), hdr);
        }
        b.extend_from_slice(&tail);
        let _ = decode_bytes(&b);
    }

    #[test]
    fn valid_plans_round_trip(plan in valid_plan()) {
        let bytes = wire(&plan);
        let (h, payload) = bytes.split_first_chunk::<HEADER_LEN>().unwrap();
        let h = Header::decode(h).unwrap();
        let back = decode_plan(&h, payload, fds(plan.buffers.len())).unwrap();
        prop_assert_eq!(&back.devices, &plan.devices);
        prop_assert_eq!((back.backend, back.ext_id, back.pid), (plan.backend, plan.ext_id, plan.pid));
        let key = |b: &PlanBuffer| (b.device, b.read_offset, b.write_offset, b.size);
        prop_assert_eq!(
            back.buffers.iter().map(key).collect::<Vec<_>>(),
            plan.buffers.iter().map(key).collect::<Vec<_>>()
        );
    }

    /// One changed payload byte always changes FNV-1a (each step is a bijection), so it is
    /// always refused; a changed header byte is refused or decodes to a consistent command.
    #[test]
    fn valid_plans_with_a_mutated_byte_never_panic(
        plan in valid_plan(), at in any::<prop::sample::Index>(), x in 1u8..=255,
    ) {
        let mut bytes = wire(&plan);
        let i = at.index(bytes.len());
        bytes[i] ^= x;
        let r = decode_bytes(&bytes);
        if i >= HEADER_LEN {
            let e = r.unwrap_err();
            prop_assert!(e.contains("checksum"), "{}", e);
        }
    }

    #[test]
    fn valid_plans_with_wrong_lengths_or_counts_are_refused(
        plan in valid_plan(), field in 0usize..3, v in any::<u32>(), cut in any::<prop::sample::Index>(),
    ) {
        let good = wire(&plan);
        // A header field (n_devices, n_buffers, payload_len) set to any other value.
        let mut bytes = good.clone();
        let at = 16 + 4 * field;
        let old = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap());
        bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
        if v != old {
            prop_assert!(decode_bytes(&bytes).is_err());
        }
        // The payload cut short.
        let n = cut.index(good.len() - HEADER_LEN + 1);
        if n < good.len() - HEADER_LEN {
            prop_assert!(decode_bytes(&good[..HEADER_LEN + n]).is_err());
        }
    }

    #[test]
    fn reports_round_trip_and_mutated_reports_never_panic(
        labels in prop::collection::vec(name(), 0..4), bytes in any::<u64>(),
        at in any::<prop::sample::Index>(), x in 1u8..=255,
    ) {
        let stats: Vec<_> = labels.iter().map(|l| ferry_api::stats::DeviceStats {
            device: l.clone(), pid: 7, buffers: 1, bytes, copy_seconds: 0.5,
        }).collect();
        let (h, p) = encode_report(BackendId::Sim, 3, 7, &stats).unwrap();
        let h2 = Header::decode(&h.encode()).unwrap();
        prop_assert_eq!(decode_report(&h2, &p).unwrap(), stats);
        let mut w = h.encode().to_vec();
        w.extend_from_slice(&p);
        let i = at.index(w.len());
        w[i] ^= x;
        let r = decode_bytes(&w);
        if i >= HEADER_LEN {
            prop_assert!(r.is_err());
        }
    }
}

/// Headers that claim more than the bounds are refused by `Header::decode`, before the
/// worker sizes its payload buffer, and by `decode_plan` for a hand-built header, before it
/// sizes its vectors.
#[test]
fn huge_claims_are_refused_before_allocation() {
    let plan = CopyPlan {
        backend: BackendId::Sim,
        ext_id: 1,
        pid: 1,
        devices: vec![],
        buffers: vec![],
    };
    let (h, p) = encode_plan(&plan).unwrap();
    for (n_devices, n_buffers, payload_len) in [
        (u32::MAX, 0, MAX_PAYLOAD),
        (0, u32::MAX, MAX_PAYLOAD),
        (u32::MAX, u32::MAX, u32::MAX),
        (0, 0, MAX_PAYLOAD + 1),
        (1 << 20, 0, MAX_PAYLOAD),
    ] {
        let big = Header {
            n_devices,
            n_buffers,
            payload_len,
            ..h
        };
        assert!(Header::decode(&big.encode()).is_err(), "{big:?}");
        assert!(decode_plan(&big, &p, vec![]).is_err(), "{big:?}");
        let report = Header {
            kind: Kind::Report,
            ..big
        };
        assert!(decode_plan(&report, &p, vec![]).is_err());
    }
    // A report claiming buffers, and a plan header handed to the report decoder.
    let r = Header {
        kind: Kind::Report,
        n_buffers: 5,
        ..h
    };
    assert!(Header::decode(&r.encode()).is_err());
    assert!(decode_report(&h, &p).is_err());
}
