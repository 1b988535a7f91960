//! Image compatibility with CRIU's amdgpu plugin: the prost types decode bytes encoded
//! here by hand from upstream's field numbers (CRIU 4.2.1 images, without criu-dev's fields,
//! and criu-dev images with them), encode to the same bytes protobuf-c produces for
//! all-required messages (fields in number order, every required field present), and image
//! files carry upstream's 8-byte size header.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferry_criu_plugin::backends::amdgpu::images;
use ferry_criu_plugin::backends::amdgpu::proto::{
    CriuKfd, CriuRenderNode, DevIolink, KfdBoEntry, KfdDeviceEntry,
};
use ferry_criu_plugin::host::Host;
use prost::Message;

// Hand encoding, straight from the protobuf wire format (not from prost).
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}
fn field_varint(field: u32, v: u64, out: &mut Vec<u8>) {
    varint(u64::from(field << 3), out); // wire type 0
    varint(v, out);
}
fn field_bytes(field: u32, bytes: &[u8], out: &mut Vec<u8>) {
    varint(u64::from(field << 3 | 2), out); // wire type 2
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

#[test]
fn a_criu_4_2_1_render_node_image_decodes_with_criu_dev_fields_zero() {
    // criu_render_node { gpu_id = 0x1234 }: tag 0x08, varint 0x1234 = B4 24.
    let bytes = [0x08, 0xB4, 0x24];
    let rd = CriuRenderNode::decode(&bytes[..]).unwrap();
    assert_eq!(rd.gpu_id, 0x1234);
    assert_eq!((rd.id, rd.drm_render_minor, rd.num_of_bos), (0, 0, 0));
    assert!(rd.bo_entries.is_empty());
}

#[test]
fn a_render_node_encodes_every_required_field_in_number_order() {
    let rd = CriuRenderNode {
        gpu_id: 0x1234,
        id: 5,
        drm_render_minor: 128,
        num_of_bos: 0,
        bo_entries: vec![],
    };
    // 08 B4 24 | 10 05 | 18 80 01 | 20 00
    assert_eq!(
        rd.encode_to_vec(),
        vec![0x08, 0xB4, 0x24, 0x10, 0x05, 0x18, 0x80, 0x01, 0x20, 0x00]
    );
}

#[test]
fn bo_entries_from_4_2_1_and_from_criu_dev_both_decode() {
    // kfd_bo_entry { addr=0x7f0000001000 size=4096 offset=0x200000 alloc_flags=0x80000001
    // gpu_id=0xa1b2 } as CRIU 4.2.1 writes it (no field 6).
    let mut old = Vec::new();
    field_varint(1, 0x7f00_0000_1000, &mut old);
    field_varint(2, 4096, &mut old);
    field_varint(3, 0x20_0000, &mut old);
    field_varint(4, 0x8000_0001, &mut old);
    field_varint(5, 0xa1b2, &mut old);
    // spot-check the hand encoding itself: size 4096 = tag 0x10, varint 80 20
    assert_eq!(&old[8..11], &[0x10, 0x80, 0x20]);
    let e = KfdBoEntry::decode(&old[..]).unwrap();
    assert_eq!(
        e,
        KfdBoEntry {
            addr: 0x7f00_0000_1000,
            size: 4096,
            offset: 0x20_0000,
            alloc_flags: 0x8000_0001,
            gpu_id: 0xa1b2,
            handle: 0,
        }
    );
    let mut new = old.clone();
    field_varint(6, 7, &mut new);
    assert_eq!(KfdBoEntry::decode(&new[..]).unwrap().handle, 7);
    // ferry writes criu-dev's required `handle` too, so protobuf-c of criu-dev accepts it
    // and 4.2.1 skips it as an unknown field.
    assert_eq!(e.encode_to_vec(), {
        let mut v = old.clone();
        field_varint(6, 0, &mut v);
        v
    });
}

fn device_entry_values() -> Vec<u64> {
    // fields 1..=31 of kfd_device_entry, distinct values; 22 and 31 are u64
    let mut v: Vec<u64> = (1..=31).map(|f| 1000 + f).collect();
    v[21] = 0xdead_beef_0000_0001; // hive_id
    v[29] = 1; // vram_public
    v[30] = 192 << 30; // vram_size (192 GiB)
    v
}

fn hand_kfd() -> Vec<u8> {
    let mut link = Vec::new();
    field_varint(1, 11, &mut link); // XGMI
    field_varint(2, 3, &mut link);
    let mut dev = Vec::new();
    for (i, v) in device_entry_values().iter().enumerate() {
        field_varint(i as u32 + 1, *v, &mut dev);
    }
    field_bytes(32, &link, &mut dev);
    let mut bo = Vec::new();
    field_varint(1, 0x7f00_0000_0000, &mut bo);
    field_varint(2, 2 << 20, &mut bo);
    field_varint(3, 0x1000, &mut bo);
    field_varint(4, 1, &mut bo);
    field_varint(5, 1002, &mut bo);
    field_varint(6, 0, &mut bo);
    let mut kfd = Vec::new();
    field_varint(1, 4242, &mut kfd); // pid
    field_varint(2, 1, &mut kfd); // num_of_gpus
    field_varint(3, 0, &mut kfd); // num_of_cpus
    field_bytes(4, &dev, &mut kfd);
    field_varint(5, 1, &mut kfd); // num_of_bos
    field_bytes(6, &bo, &mut kfd);
    field_varint(7, 3, &mut kfd); // num_of_objects
    field_varint(8, 4096, &mut kfd); // shared_mem_size
    field_varint(9, 0xCAFE, &mut kfd); // shared_mem_magic
    field_bytes(10, b"\x01\x02\x03priv", &mut kfd);
    kfd
}

fn typed_kfd() -> CriuKfd {
    let v = device_entry_values();
    let u = |i: usize| v[i - 1] as u32;
    CriuKfd {
        pid: 4242,
        num_of_gpus: 1,
        num_of_cpus: 0,
        device_entries: vec![KfdDeviceEntry {
            node_id: u(1),
            gpu_id: u(2),
            cpu_cores_count: u(3),
            simd_count: u(4),
            mem_banks_count: u(5),
            caches_count: u(6),
            io_links_count: u(7),
            max_waves_per_simd: u(8),
            lds_size_in_kb: u(9),
            gds_size_in_kb: u(10),
            num_gws: u(11),
            wave_front_size: u(12),
            array_count: u(13),
            simd_arrays_per_engine: u(14),
            cu_per_simd_array: u(15),
            simd_per_cu: u(16),
            max_slots_scratch_cu: u(17),
            vendor_id: u(18),
            device_id: u(19),
            domain: u(20),
            drm_render_minor: u(21),
            hive_id: v[21],
            num_sdma_engines: u(23),
            num_sdma_xgmi_engines: u(24),
            num_sdma_queues_per_engine: u(25),
            num_cp_queues: u(26),
            fw_version: u(27),
            capability: u(28),
            sdma_fw_version: u(29),
            vram_public: u(30),
            vram_size: v[30],
            iolinks: vec![DevIolink {
                r#type: 11,
                node_to_id: 3,
            }],
        }],
        num_of_bos: 1,
        bo_entries: vec![KfdBoEntry {
            addr: 0x7f00_0000_0000,
            size: 2 << 20,
            offset: 0x1000,
            alloc_flags: 1,
            gpu_id: 1002,
            handle: 0,
        }],
        num_of_objects: 3,
        shared_mem_size: 4096,
        shared_mem_magic: 0xCAFE,
        priv_data: b"\x01\x02\x03priv".to_vec(),
    }
}

#[test]
fn a_hand_encoded_criu_kfd_decodes_field_by_field() {
    let decoded = CriuKfd::decode(&hand_kfd()[..]).unwrap();
    assert_eq!(decoded, typed_kfd());
}

#[test]
fn criu_kfd_encodes_to_the_same_bytes_as_the_hand_encoding() {
    assert_eq!(typed_kfd().encode_to_vec(), hand_kfd());
}

#[test]
fn image_files_carry_the_8_byte_size_header_and_round_trip_through_the_image_dir() {
    let dir = tempfile::tempdir().unwrap();
    let host = Host::new(Some(dir.path().to_path_buf()));
    let name = images::kfd_image(9);
    images::write_message(&host, &name, &typed_kfd()).unwrap();
    let raw = std::fs::read(dir.path().join("amdgpu-kfd-9.img")).unwrap();
    let payload = hand_kfd();
    assert_eq!(&raw[..8], &(payload.len() as u64).to_ne_bytes());
    assert_eq!(&raw[8..], &payload[..]);
    let back: CriuKfd = images::read_message(&host, &name).unwrap();
    assert_eq!(back, typed_kfd());
    // images are never overwritten
    assert!(images::write_message(&host, &name, &typed_kfd()).is_err());
}

#[test]
fn a_truncated_image_is_rejected_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let mut raw = (100u64).to_ne_bytes().to_vec();
    raw.extend_from_slice(&hand_kfd()[..10]);
    std::fs::write(dir.path().join("amdgpu-kfd-3.img"), raw).unwrap();
    let host = Host::new(Some(dir.path().to_path_buf()));
    let e = images::read_message::<CriuKfd>(&host, "amdgpu-kfd-3.img")
        .unwrap_err()
        .to_string();
    assert!(e.contains("amdgpu-kfd-3.img"), "{e}");
}
