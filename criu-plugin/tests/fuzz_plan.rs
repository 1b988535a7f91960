//! Property-based fuzz tests of copy plans: `CopyPlan::validate` (which every plan from the
//! restore socket or an image passes), the pipelined `copy_device` that executes one, and the
//! AMDGPU backend's `copy_plan_for` that builds one from an image's BO list. Properties:
//! never panics (offsets and sizes are arbitrary `u64`s), `validate` agrees with a simple
//! reference, a plan that reads outside its pages image is an error, a valid one copies
//! exactly its bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use ferry_criu_plugin::backends::amdgpu::ioctl::alloc_flags;
use ferry_criu_plugin::backends::amdgpu::kfd::{GpuTarget, copy_plan_for};
use ferry_criu_plugin::backends::amdgpu::proto::KfdBoEntry;
use ferry_criu_plugin::contract::{BackendId, CopyEngine, CopyPlan, PlanBuffer, PlanDevice};
use ferry_criu_plugin::engine::copy::copy_device;
use proptest::prelude::*;

/// Cases per property (`copy_device` spawns a reader thread per case: 128 there).
const CASES: u32 = 256;
const COPY_CASES: u32 = 128;

fn fd() -> OwnedFd {
    OwnedFd::from(std::fs::File::open("/dev/null").unwrap())
}

/// Offsets and sizes that hit the edges: small, near 2^63 and near 2^64.
fn edgy() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..64,
        (0u64..64).prop_map(|x| u64::MAX - x),
        (0u64..64).prop_map(|x| (1u64 << 63) - 32 + x),
        any::<u64>(),
    ]
}

fn plan(n_devices: usize, bufs: &[(u32, u64, u64, u64)]) -> CopyPlan {
    CopyPlan {
        backend: BackendId::Sim,
        ext_id: 1,
        pid: 1,
        devices: (0..n_devices)
            .map(|i| PlanDevice {
                key: i as u64,
                label: format!("d{i}"),
                pages_image: format!("p{i}.img"),
            })
            .collect(),
        buffers: bufs
            .iter()
            .map(|&(device, read_offset, write_offset, size)| PlanBuffer {
                device,
                read_offset,
                write_offset,
                size,
                fd: fd(),
            })
            .collect(),
    }
}

/// The O(n²) reference for `validate`.
fn reference_valid(n_devices: usize, bufs: &[(u32, u64, u64, u64)]) -> bool {
    let spans: Option<Vec<(u32, u128, u128)>> = bufs
        .iter()
        .map(|&(d, r, w, s)| {
            let ok = (d as usize) < n_devices
                && r.checked_add(s).is_some()
                && w.checked_add(s).is_some();
            ok.then_some((d, u128::from(r), u128::from(r) + u128::from(s)))
        })
        .collect();
    let Some(spans) = spans else { return false };
    for (i, a) in spans.iter().enumerate() {
        for b in &spans[i + 1..] {
            // Overlap of [start, end) spans of one device; empty spans overlap nothing, but
            // an empty span strictly inside another counts, as in `validate`'s sorted sweep.
            if a.0 == b.0 && a.1.max(b.1) < a.2.min(b.2) {
                return false;
            }
            if a.0 == b.0 && (a.1 == a.2 || b.1 == b.2) {
                let (e, o) = if a.1 == a.2 { (a, b) } else { (b, a) };
                if o.1 < e.1 && e.1 < o.2 {
                    return false;
                }
            }
        }
    }
    true
}

/// Records what it was asked to write.
struct Recorder {
    writes: Vec<(i32, u64, Vec<u8>)>,
}

impl CopyEngine for Recorder {
    fn write(
        &mut self,
        dst: BorrowedFd<'_>,
        offset: u64,
        bytes: &[u8],
    ) -> ferry_criu_plugin::Result<()> {
        self.writes.push((dst.as_raw_fd(), offset, bytes.to_vec()));
        Ok(())
    }
}

fn pages_file(header: u64, payload: &[u8]) -> std::fs::File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&header.to_le_bytes()).unwrap();
    f.write_all(payload).unwrap();
    f
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn validate_never_panics_and_agrees_with_the_reference(
        n_devices in 0usize..4,
        bufs in prop::collection::vec((0u32..5, edgy(), edgy(), edgy()), 0..10),
    ) {
        let p = plan(n_devices, &bufs);
        let ok = p.validate().is_ok();
        prop_assert_eq!(ok, reference_valid(n_devices, &bufs));
        for d in 0..n_devices {
            let _ = p.device_bytes(d);
        }
    }

    /// Valid plans built by tiling each device's payload are accepted.
    #[test]
    fn tiled_plans_validate(
        n_devices in 1usize..4,
        sizes in prop::collection::vec((0u32..4, 0u64..1 << 50, any::<u64>()), 0..16),
    ) {
        let mut next = vec![0u64; n_devices];
        let bufs: Vec<_> = sizes.iter().map(|&(d, s, w)| {
            let d = d % n_devices as u32;
            let r = next[d as usize];
            next[d as usize] += s;
            (d, r, w.min(u64::MAX - s), s)
        }).collect();
        let p = plan(n_devices, &bufs);
        prop_assert!(p.validate().is_ok());
        for (d, total) in next.iter().enumerate() {
            prop_assert_eq!(p.device_bytes(d), *total);
        }
    }

    #[test]
    fn amdgpu_plans_from_arbitrary_bo_lists_never_panic(
        bos in prop::collection::vec((0u32..4, edgy(), any::<u32>()), 0..12),
    ) {
        let entries: Vec<KfdBoEntry> = bos.iter().map(|&(gpu, size, flags)| KfdBoEntry {
            addr: 0, size, offset: 0,
            alloc_flags: flags & (alloc_flags::VRAM | alloc_flags::GTT | alloc_flags::DOORBELL),
            gpu_id: gpu, handle: 0,
        }).collect();
        let targets: Vec<GpuTarget> = (1..3).map(|g| GpuTarget {
            user_gpu_id: g, actual_gpu_id: 0x100 + g, render_minor: 128 + g,
        }).collect();
        let fds = entries.iter().map(|_| Some(fd())).collect();
        if let Ok(p) = copy_plan_for(5, 9, &entries, &targets, fds) {
            prop_assert!(p.validate().is_ok());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: COPY_CASES, ..ProptestConfig::default() })]

    /// `copy_device` with arbitrary buffers against a small pages image: an error unless the
    /// buffers read exactly the payload, never a panic or a read past the file.
    #[test]
    fn copy_device_refuses_plans_that_do_not_fit_the_image(
        header in prop_oneof![0u64..80, edgy()],
        payload in prop::collection::vec(any::<u8>(), 0..64),
        bufs in prop::collection::vec((edgy(), edgy(), edgy()), 0..4),
        chunk in 1usize..32,
    ) {
        let f = pages_file(header, &payload);
        let p = plan(1, &bufs.iter().map(|&(r, w, s)| (0, r, w, s)).collect::<Vec<_>>());
        let refs: Vec<&PlanBuffer> = p.buffers.iter().collect();
        let mut eng = Recorder { writes: Vec::new() };
        let r = copy_device(&f, "p0.img", &refs, &mut eng, chunk);
        if let Ok(out) = r {
            prop_assert!(header <= payload.len() as u64);
            let total: u64 = bufs.iter().map(|b| b.2).sum();
            prop_assert_eq!(out.bytes, total);
            prop_assert_eq!(total, header);
        }
    }

    /// A valid plan copies each buffer's bytes from its place in the payload.
    #[test]
    fn copy_device_copies_a_valid_plan_exactly(
        sizes in prop::collection::vec(0u64..40, 0..5), chunk in 1usize..16,
        seed in any::<u8>(),
    ) {
        let total: u64 = sizes.iter().sum();
        let payload: Vec<u8> = (0..total).map(|i| (i as u8).wrapping_add(seed)).collect();
        let f = pages_file(total, &payload);
        let mut off = 0;
        let bufs: Vec<_> = sizes.iter().map(|&s| { off += s; (0, off - s, 3, s) }).collect();
        let p = plan(1, &bufs);
        let refs: Vec<&PlanBuffer> = p.buffers.iter().collect();
        let mut eng = Recorder { writes: Vec::new() };
        let out = copy_device(&f, "p0.img", &refs, &mut eng, chunk).unwrap();
        prop_assert_eq!(out.bytes, total);
        let mut got = Vec::new();
        for (b, &(_, r, _, s)) in p.buffers.iter().zip(&bufs) {
            let mine: Vec<u8> = eng.writes.iter()
                .filter(|w| w.0 == b.fd.as_raw_fd())
                .flat_map(|w| w.2.clone()).collect();
            prop_assert_eq!(&mine[..], &payload[r as usize..(r + s) as usize]);
            got.extend(mine);
        }
        prop_assert_eq!(got, payload);
    }
}
