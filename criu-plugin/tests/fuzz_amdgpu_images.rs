//! Property-based fuzz tests of the AMDGPU backend's image readers: the framed protobuf
//! images (`read_message`/`read_payload`, `unframe`/`decode_message` for `criu_kfd` and
//! `criu_render_node`), the `criu_kfd` bounds (`check_kfd`), and what the restore then walks
//! (`Topology::from_device_entries`, the link analysis, `restore_gpu_map`). Properties:
//! never panics, garbage is an error, valid images round-trip, and a header claiming 2^60
//! bytes is refused before allocation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Seek, Write};

use ferry_criu_plugin::backends::amdgpu::images::{
    self, MAX_KFD_IOLINKS, MAX_KFD_NODES, MAX_MESSAGE_IMAGE, check_kfd, decode_message, frame,
    read_payload, unframe,
};
use ferry_criu_plugin::backends::amdgpu::proto::{
    CriuKfd, CriuRenderNode, DevIolink, KfdBoEntry, KfdDeviceEntry,
};
use ferry_criu_plugin::backends::amdgpu::topology::{Checks, Topology, restore_gpu_map};
use ferry_criu_plugin::host::Host;
use proptest::prelude::*;
use prost::Message;

/// Cases per property: 256 for the in-memory decoders, 64 for the ones that go through the
/// image dir.
const CASES: u32 = 256;
const FILE_CASES: u32 = 64;

fn entry() -> impl Strategy<Value = KfdDeviceEntry> {
    (
        0u32..6,
        prop_oneof![Just(0u32), 1u32..4],
        any::<u32>(),
        0u32..3,
        prop::collection::vec(
            (prop_oneof![Just(2u32), Just(11u32), any::<u32>()], 0u32..7),
            0..5,
        ),
    )
        .prop_map(
            |(node_id, gpu_id, device_id, cores, links)| KfdDeviceEntry {
                node_id,
                gpu_id,
                cpu_cores_count: cores,
                device_id,
                simd_count: device_id % 3,
                iolinks: links
                    .into_iter()
                    .map(|(r#type, node_to_id)| DevIolink { r#type, node_to_id })
                    .collect(),
                ..Default::default()
            },
        )
}

fn kfd() -> impl Strategy<Value = CriuKfd> {
    (
        any::<u32>(),
        prop::collection::vec(entry(), 0..6),
        prop::collection::vec((any::<u64>(), any::<u64>(), any::<u32>(), 0u32..4), 0..6),
        prop::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(|(pid, device_entries, bos, priv_data)| CriuKfd {
            pid,
            num_of_gpus: device_entries.iter().filter(|e| e.gpu_id != 0).count() as u32,
            num_of_bos: bos.len() as u64,
            device_entries,
            bo_entries: bos
                .into_iter()
                .map(|(addr, size, alloc_flags, gpu_id)| KfdBoEntry {
                    addr,
                    size,
                    offset: 0,
                    alloc_flags,
                    gpu_id,
                    handle: 0,
                })
                .collect(),
            priv_data,
            ..Default::default()
        })
}

/// Walks a decoded `criu_kfd` the way `restore_kfd` does before any ioctl.
fn walk(img: &CriuKfd) {
    if check_kfd("k.img", img).is_err() {
        return;
    }
    let src = Topology::from_device_entries(&img.device_entries);
    let _ = src.analyse();
    let _ = src.to_device_entries(Some);
    let _ = restore_gpu_map(&src, &src, &Checks::default());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_garbage_is_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        let r = unframe("k.img", &bytes);
        let consistent = bytes.len() >= 8
            && u64::from_ne_bytes(bytes[..8].try_into().unwrap()) == bytes.len() as u64 - 8;
        prop_assert_eq!(r.is_ok(), consistent);
        if let Ok(k) = decode_message::<CriuKfd>("k.img", &bytes) {
            walk(&k);
        }
        let _ = decode_message::<CriuRenderNode>("r.img", &bytes);
        // A framed garbage payload reaches the protobuf decoder itself.
        if let Ok(k) = decode_message::<CriuKfd>("k.img", &frame(&bytes)) {
            walk(&k);
        }
        let _ = decode_message::<CriuRenderNode>("r.img", &frame(&bytes));
    }

    #[test]
    fn valid_kfd_images_round_trip_and_mutated_ones_never_panic(
        img in kfd(), at in any::<prop::sample::Index>(), x in 1u8..=255,
    ) {
        let framed = frame(&img.encode_to_vec());
        let back: CriuKfd = decode_message("k.img", &framed).unwrap();
        prop_assert_eq!(&back, &img);
        walk(&back);
        let mut bytes = framed;
        let i = at.index(bytes.len());
        bytes[i] ^= x;
        let r = decode_message::<CriuKfd>("k.img", &bytes);
        if i < 8 {
            prop_assert!(r.is_err(), "a changed size header must be refused");
        }
        if let Ok(k) = r {
            walk(&k);
        }
    }

    #[test]
    fn kfd_bounds_refuse_oversized_topologies(nodes in 0usize..MAX_KFD_NODES + 3, links in 0usize..MAX_KFD_IOLINKS + 3) {
        let mut img = CriuKfd {
            device_entries: vec![KfdDeviceEntry::default(); nodes.min(4)],
            ..Default::default()
        };
        if let Some(e) = img.device_entries.first_mut() {
            e.iolinks = vec![DevIolink::default(); links];
        }
        prop_assert_eq!(check_kfd("k.img", &img).is_ok(), links <= MAX_KFD_IOLINKS || nodes == 0);
        img.device_entries = vec![KfdDeviceEntry::default(); nodes];
        prop_assert_eq!(check_kfd("k.img", &img).is_ok(), nodes <= MAX_KFD_NODES);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: FILE_CASES, ..ProptestConfig::default() })]

    /// Through the image dir, as the restore reads them: arbitrary files never panic and
    /// only consistent ones are read; valid images round-trip.
    #[test]
    fn image_files_are_read_only_when_consistent(
        img in kfd(), len in prop_oneof![0u64..128, any::<u64>()],
        body in prop::collection::vec(any::<u8>(), 0..96),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(Some(dir.path().to_path_buf()));
        images::write_message(&host, "amdgpu-kfd-1.img", &img).unwrap();
        prop_assert_eq!(images::read_kfd(&host, "amdgpu-kfd-1.img").unwrap(), img);
        let mut raw = len.to_ne_bytes().to_vec();
        raw.extend_from_slice(&body);
        std::fs::write(dir.path().join("amdgpu-kfd-2.img"), &raw).unwrap();
        let r = images::read_message::<CriuKfd>(&host, "amdgpu-kfd-2.img");
        if len != body.len() as u64 {
            prop_assert!(r.is_err());
        }
        let _ = images::read_message::<CriuRenderNode>(&host, "amdgpu-kfd-2.img");
    }
}

/// A header claiming 2^60 bytes (or any amount over the cap, even in a sparse file that
/// really is that long) is refused before the payload is allocated.
#[test]
fn huge_claims_are_refused_before_allocation() {
    for claim in [1u64 << 60, u64::MAX, u64::MAX - 7] {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&claim.to_ne_bytes()).unwrap();
        f.write_all(b"tiny").unwrap();
        f.rewind().unwrap();
        let e = read_payload(&f, "k.img", MAX_MESSAGE_IMAGE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("header says"), "{e}");
    }
    let big = MAX_MESSAGE_IMAGE + 1;
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(&big.to_ne_bytes()).unwrap();
    f.set_len(8 + big).unwrap();
    let e = read_payload(&f, "k.img", MAX_MESSAGE_IMAGE)
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than the"), "{e}");
}
