//! KFD topology from sysfs trees written under a temp dir (the layout of
//! `/sys/class/kfd/kfd/topology/nodes/N/{gpu_id,properties,mem_banks/*,io_links/*}`), for an
//! 8-GPU MI300X node (one XGMI hive, two NUMA nodes), an MI250 (two GCDs in a hive) and a
//! Radeon RX 7900 XTX; then the restore map between nodes with different gpu_ids, rejected
//! mismatches with the property named, and `KFD_*_CHECK=N` overrides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Write as _;
use std::path::Path;

use ferry_api::plugin_env::KFD_FW_VER_CHECK;
use ferry_criu_plugin::backends::amdgpu::topology::{
    Checks, IOLINK_TYPE_PCIE, IOLINK_TYPE_XGMI, Topology, restore_gpu_map,
};

#[derive(Clone)]
struct Gpu {
    node: u32,
    gpu_id: u32,
    device_id: u32,
    simd_count: u32,
    wave_front_size: u32,
    vram: u64,
    fw_version: u32,
    minor: u32,
    hive_id: u64,
    xgmi_engines: u32,
    /// (link type, node_to)
    links: Vec<(u32, u32)>,
}

struct Cpu {
    node: u32,
    cores: u32,
    links: Vec<(u32, u32)>,
}

fn write_links(dir: &Path, links: &[(u32, u32)], from: u32) {
    std::fs::create_dir_all(dir.join("io_links")).unwrap();
    for (i, (t, to)) in links.iter().enumerate() {
        let d = dir.join("io_links").join(i.to_string());
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("properties"),
            format!(
                "type {t}\nversion_major 0\nversion_minor 0\nnode_from {from}\nnode_to {to}\n\
                 weight 20\nmin_latency 0\nmax_latency 0\nmin_bandwidth 312\nmax_bandwidth 64000\n\
                 recommended_transfer_size 0\nflags 1\n"
            ),
        )
        .unwrap();
    }
}

fn write_tree(root: &Path, cpus: &[Cpu], gpus: &[Gpu]) {
    for c in cpus {
        let d = root.join("nodes").join(c.node.to_string());
        std::fs::create_dir_all(d.join("mem_banks/0")).unwrap();
        std::fs::write(d.join("gpu_id"), "0\n").unwrap();
        std::fs::write(
            d.join("properties"),
            format!(
                "cpu_cores_count {}\nsimd_count 0\nmem_banks_count 1\ncaches_count 0\n\
                 io_links_count {}\ncpu_core_id_base 0\nsimd_id_base 0\nmax_waves_per_simd 0\n\
                 lds_size_in_kb 0\ngds_size_in_kb 0\nnum_gws 0\nwave_front_size 0\narray_count 0\n\
                 vendor_id 0\ndevice_id 0\nlocation_id 0\ndomain 0\ndrm_render_minor 0\nhive_id 0\n",
                c.cores,
                c.links.len()
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("mem_banks/0/properties"),
            "heap_type 0\nsize_in_bytes 1081000000000\nflags 0\nwidth 72\nmem_clk_max 4800\n",
        )
        .unwrap();
        write_links(&d, &c.links, c.node);
    }
    for g in gpus {
        let d = root.join("nodes").join(g.node.to_string());
        std::fs::create_dir_all(d.join("mem_banks/0")).unwrap();
        std::fs::write(d.join("gpu_id"), format!("{}\n", g.gpu_id)).unwrap();
        let mut p = String::new();
        for (k, v) in [
            ("cpu_cores_count", 0u64),
            ("simd_count", g.simd_count.into()),
            ("mem_banks_count", 1),
            ("caches_count", 512),
            ("io_links_count", g.links.len() as u64),
            ("p2p_links_count", 0),
            ("cpu_core_id_base", 0),
            ("simd_id_base", 2_147_487_744),
            ("max_waves_per_simd", 8),
            ("lds_size_in_kb", 64),
            ("gds_size_in_kb", 0),
            ("num_gws", 64),
            ("wave_front_size", g.wave_front_size.into()),
            ("array_count", 32),
            ("simd_arrays_per_engine", 1),
            ("cu_per_simd_array", 10),
            ("simd_per_cu", 4),
            ("max_slots_scratch_cu", 32),
            ("gfx_target_version", 90402),
            ("vendor_id", 0x1002),
            ("device_id", g.device_id.into()),
            ("location_id", 0x1100 + u64::from(g.node)),
            ("domain", 0),
            ("drm_render_minor", g.minor.into()),
            ("hive_id", g.hive_id),
            ("num_sdma_engines", 2),
            ("num_sdma_xgmi_engines", g.xgmi_engines.into()),
            ("num_sdma_queues_per_engine", 8),
            ("num_cp_queues", 24),
            ("max_engine_clk_fcompute", 2100),
            ("local_mem_size", 0),
            ("fw_version", g.fw_version.into()),
            ("capability", 0x2bb2_8680),
            ("debug_prop", 0x5a7),
            ("sdma_fw_version", 19),
            ("unique_id", 0x1234_5678 + u64::from(g.node)),
            ("num_xcc", 8),
            ("max_engine_clk_ccompute", 3700),
        ] {
            writeln!(p, "{k} {v}").unwrap();
        }
        std::fs::write(d.join("properties"), p).unwrap();
        std::fs::write(
            d.join("mem_banks/0/properties"),
            format!(
                "heap_type 1\nsize_in_bytes {}\nflags 0\nwidth 8192\nmem_clk_max 1300\n",
                g.vram
            ),
        )
        .unwrap();
        write_links(&d, &g.links, g.node);
    }
}

/// MI300X: CPU nodes 0 and 1, GPUs at nodes 2..=9, GPUs 0-3 on CPU 0 and 4-7 on CPU 1, all
/// eight in one XGMI hive. `gpu_base` makes gpu_ids differ between "machines".
fn mi300x(gpu_base: u32, first_minor: u32) -> (Vec<Cpu>, Vec<Gpu>) {
    let cpus = (0..2)
        .map(|c| Cpu {
            node: c,
            cores: 96,
            links: (0..4).map(|i| (IOLINK_TYPE_PCIE, 2 + c * 4 + i)).collect(),
        })
        .collect();
    let gpus = (0..8u32)
        .map(|i| {
            let node = 2 + i;
            let mut links = vec![(IOLINK_TYPE_PCIE, i / 4)];
            links.extend(
                (0..8u32)
                    .filter(|j| *j != i)
                    .map(|j| (IOLINK_TYPE_XGMI, 2 + j)),
            );
            // a link type KFD exposes that the plugin ignores (type 1: HyperTransport)
            links.push((1, i / 4));
            Gpu {
                node,
                gpu_id: gpu_base + i * 0x111,
                device_id: 0x74a1,
                simd_count: 1216,
                wave_front_size: 64,
                vram: 192 << 30,
                fw_version: 160,
                minor: first_minor + i,
                hive_id: 0x6a2f_0c1e_d3b4_5e01,
                xgmi_engines: 14,
                links,
            }
        })
        .collect();
    (cpus, gpus)
}

/// MI250: one CPU, the card's two GCDs in one hive.
fn mi250(gpu_base: u32) -> (Vec<Cpu>, Vec<Gpu>) {
    let cpus = vec![Cpu {
        node: 0,
        cores: 64,
        links: vec![(IOLINK_TYPE_PCIE, 1), (IOLINK_TYPE_PCIE, 2)],
    }];
    let gpus = (0..2u32)
        .map(|i| Gpu {
            node: 1 + i,
            gpu_id: gpu_base + i,
            device_id: 0x740c,
            simd_count: 416,
            wave_front_size: 64,
            vram: 64 << 30,
            fw_version: 78,
            minor: 128 + i,
            hive_id: 0x1111_2222,
            xgmi_engines: 6,
            links: vec![(IOLINK_TYPE_PCIE, 0), (IOLINK_TYPE_XGMI, 2 - i)],
        })
        .collect();
    (cpus, gpus)
}

/// Radeon RX 7900 XTX: one CPU, one GPU, no XGMI.
fn radeon(gpu_id: u32, fw_version: u32, device_id: u32) -> (Vec<Cpu>, Vec<Gpu>) {
    (
        vec![Cpu {
            node: 0,
            cores: 16,
            links: vec![(IOLINK_TYPE_PCIE, 1)],
        }],
        vec![Gpu {
            node: 1,
            gpu_id,
            device_id,
            simd_count: 192,
            wave_front_size: 32,
            vram: 24 << 30,
            fw_version,
            minor: 128,
            hive_id: 0,
            xgmi_engines: 0,
            links: vec![(IOLINK_TYPE_PCIE, 0)],
        }],
    )
}

fn parse(spec: (Vec<Cpu>, Vec<Gpu>)) -> (tempfile::TempDir, Topology) {
    let dir = tempfile::tempdir().unwrap();
    write_tree(dir.path(), &spec.0, &spec.1);
    let t = Topology::parse(dir.path()).unwrap();
    (dir, t)
}

#[test]
fn an_mi300x_tree_parses_into_two_cpus_eight_gpus_and_one_xgmi_hive() {
    let (_d, t) = parse(mi300x(0x1000, 128));
    assert_eq!(t.nodes.len(), 10);
    assert_eq!(t.gpu_count(), 8);
    let g = t.by_gpu_id(0x1000 + 3 * 0x111).unwrap();
    assert_eq!(g.id, 5);
    assert_eq!(g.simd_count, 1216);
    assert_eq!(g.vram_size, 192 << 30);
    assert!(g.vram_public);
    assert_eq!(g.drm_render_minor, 131);
    assert_eq!(g.hive_id, 0x6a2f_0c1e_d3b4_5e01);
    // 1 PCIe + 7 XGMI; the HyperTransport-type link is dropped
    assert_eq!(g.iolinks.len(), 8);
    assert_eq!(t.nodes[0].cpu_cores_count, 96);
    let links = t.analyse();
    assert_eq!(links.hives.len(), 1);
    assert_eq!(links.hives[0].len(), 8);
    assert_eq!(t.by_render_minor(135).unwrap().gpu_id, 0x1000 + 7 * 0x111);
}

#[test]
fn an_mi300x_checkpoint_maps_onto_another_mi300x_node_with_different_gpu_ids() {
    let (_a, src) = parse(mi300x(0x1000, 128));
    let (_b, dest) = parse(mi300x(0x9000, 136));
    let m = restore_gpu_map(&src, &dest, &Checks::default()).unwrap();
    assert_eq!(m.gpus.len(), 8);
    let mut dests: Vec<u32> = m.gpus.iter().map(|(_, d)| *d).collect();
    dests.sort_unstable();
    dests.dedup();
    assert_eq!(dests.len(), 8, "the map is a bijection: {m:?}");
    for (s, d) in &m.gpus {
        assert!(src.by_gpu_id(*s).is_some() && dest.by_gpu_id(*d).is_some());
    }
    // NUMA check: GPUs that shared a CPU still share one after the move
    let cpu_of = |t: &Topology, gpu: u32| t.by_gpu_id(gpu).unwrap().iolinks[0].node_to;
    for (s1, d1) in &m.gpus {
        for (s2, d2) in &m.gpus {
            assert_eq!(
                cpu_of(&src, *s1) == cpu_of(&src, *s2),
                cpu_of(&dest, *d1) == cpu_of(&dest, *d2)
            );
        }
    }
}

#[test]
fn the_image_device_list_round_trips_and_maps_back_onto_the_same_node() {
    let (_a, local) = parse(mi300x(0x1000, 128));
    // first checkpoint on this node: user gpu_id == actual gpu_id
    let entries = local.to_device_entries(Some).unwrap();
    assert_eq!(entries.len(), 10);
    assert_eq!(entries.iter().filter(|e| e.gpu_id != 0).count(), 8);
    let from_image = Topology::from_device_entries(&entries);
    let m = restore_gpu_map(&from_image, &local, &Checks::default()).unwrap();
    assert_eq!(m.gpus.len(), 8);
    // after a migration the image keeps the user ids: actual 0x9xxx → user 0x1xxx
    let (_b, moved) = parse(mi300x(0x9000, 128));
    let entries = moved
        .to_device_entries(|actual| Some(actual - 0x8000))
        .unwrap();
    assert!(entries.iter().any(|e| e.gpu_id == 0x1000));
}

#[test]
fn an_mi250_hive_of_two_gcds_maps_onto_another_mi250() {
    let (_a, src) = parse(mi250(0x2001));
    let (_b, dest) = parse(mi250(0x7001));
    assert_eq!(src.analyse().hives.len(), 1);
    let m = restore_gpu_map(&src, &dest, &Checks::default()).unwrap();
    let mut got = m.gpus.clone();
    got.sort_unstable();
    assert_eq!(got.len(), 2);
    assert!(got.iter().all(|(s, d)| d - s == 0x5000), "{got:?}");
}

#[test]
fn a_radeon_maps_onto_a_radeon_with_another_gpu_id_and_newer_firmware() {
    let (_a, src) = parse(radeon(0x33aa, 100, 0x744c));
    let (_b, dest) = parse(radeon(0x77bb, 120, 0x744c));
    let m = restore_gpu_map(&src, &dest, &Checks::default()).unwrap();
    assert_eq!(m.dest(0x33aa), Some(0x77bb));
}

#[test]
fn older_local_firmware_is_rejected_naming_fw_version_unless_kfd_fw_ver_check_is_n() {
    let (_a, src) = parse(radeon(0x33aa, 120, 0x744c));
    let (_b, dest) = parse(radeon(0x77bb, 100, 0x744c));
    let e = restore_gpu_map(&src, &dest, &Checks::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("fw_version checkpointed 120 local 100"), "{e}");
    assert!(e.contains(&format!("{KFD_FW_VER_CHECK}=0")), "{e}");
    let relaxed = Checks::from_lookup(|k| (k == KFD_FW_VER_CHECK).then(|| "N".to_string()));
    let m = restore_gpu_map(&src, &dest, &relaxed).unwrap();
    assert_eq!(m.dest(0x33aa), Some(0x77bb));
}

#[test]
fn another_gpu_model_is_rejected_naming_device_id() {
    let (_a, src) = parse(radeon(0x33aa, 100, 0x744c));
    let (_b, dest) = parse(radeon(0x77bb, 100, 0x747e));
    let e = restore_gpu_map(&src, &dest, &Checks::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("device_id checkpointed 0x744c local 0x747e"),
        "{e}"
    );
    assert!(e.contains("0x33aa"), "{e}");
}

#[test]
fn a_different_gpu_count_is_rejected_with_both_counts() {
    let (_a, src) = parse(mi250(0x2001));
    let (_b, dest) = parse(radeon(0x77bb, 100, 0x744c));
    let e = restore_gpu_map(&src, &dest, &Checks::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("checkpointed 2, local 1"), "{e}");
}

#[test]
fn an_xgmi_hive_cannot_be_restored_onto_gpus_without_xgmi() {
    let (_a, src) = parse(mi250(0x2001));
    let (cpus, mut gpus) = mi250(0x7001);
    for g in &mut gpus {
        g.links.retain(|(t, _)| *t != IOLINK_TYPE_XGMI);
    }
    let (_b, dest) = parse((cpus, gpus));
    let e = restore_gpu_map(&src, &dest, &Checks::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("XGMI hive count differs"), "{e}");
}

#[test]
fn a_gpu_masked_by_a_cgroup_is_skipped_and_links_to_it_are_not_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (cpus, gpus) = mi250(0x2001);
    write_tree(dir.path(), &cpus, &gpus);
    std::fs::remove_file(dir.path().join("nodes/2/gpu_id")).unwrap();
    let t = Topology::parse(dir.path()).unwrap();
    assert_eq!(t.gpu_count(), 1);
    let entries = t.to_device_entries(Some).unwrap();
    let gpu = entries.iter().find(|e| e.gpu_id == 0x2001).unwrap();
    // the XGMI link to the masked GCD is invalid and left out; PCIe to the CPU stays
    assert_eq!(gpu.iolinks.len(), 1);
    assert_eq!(gpu.iolinks[0].r#type, IOLINK_TYPE_PCIE);
}

#[test]
fn a_gpu_without_a_frame_buffer_bank_is_a_parse_error_naming_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let (cpus, gpus) = radeon(0x33aa, 100, 0x744c);
    write_tree(dir.path(), &cpus, &gpus);
    std::fs::write(
        dir.path().join("nodes/1/mem_banks/0/properties"),
        "heap_type 0\nsize_in_bytes 100\n",
    )
    .unwrap();
    let e = Topology::parse(dir.path()).unwrap_err().to_string();
    assert!(e.contains("nodes/1") && e.contains("0x33aa"), "{e}");
}
