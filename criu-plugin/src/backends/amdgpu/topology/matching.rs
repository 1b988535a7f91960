//! Matching the checkpointed topology onto the local one: the user gpu_id → actual gpu_id map
//! of a restore, with upstream's rules (see the module docs of `topology`), naming the
//! property or link layout that ruled each candidate out.

use std::fmt;

use ferry_api::plugin_env::{
    KFD_CACHES_COUNT_CHECK, KFD_CAPABILITY_CHECK, KFD_FW_VER_CHECK, KFD_NUM_GWS_CHECK,
    KFD_SDMA_FW_VER_CHECK, KFD_VRAM_SIZE_CHECK,
};

use super::checks::Checks;
use super::model::{IOLINK_TYPE_PCIE, IOLINK_TYPE_XGMI, Links, Node, Topology};
use crate::error::{PluginError, Result};

/// Why one local GPU cannot stand in for one checkpointed GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    pub property: &'static str,
    pub checkpointed: u64,
    pub local: u64,
    /// `"=="` or `"<="`: what the rule requires of checkpointed vs local.
    pub rule: &'static str,
    /// The `KFD_*_CHECK` variable that turns this rule off, if any.
    pub switch: Option<&'static str>,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = matches!(self.property, "device_id" | "vendor_id" | "capability");
        let (a, b) = if hex {
            (
                format!("0x{:x}", self.checkpointed),
                format!("0x{:x}", self.local),
            )
        } else {
            (self.checkpointed.to_string(), self.local.to_string())
        };
        write!(
            f,
            "{} checkpointed {a} local {b} (needs checkpointed {} local)",
            self.property, self.rule
        )?;
        if let Some(s) = self.switch {
            write!(f, "; {s}=0 skips this check")?;
        }
        Ok(())
    }
}

/// Every property rule `dest` breaks as a replacement for `src` (`device_properties_match`).
pub fn device_mismatches(src: &Node, dest: &Node, checks: &Checks) -> Vec<Mismatch> {
    let mut out = Vec::new();
    let mut eq = |p: &'static str, a: u64, b: u64| {
        if a != b {
            out.push(Mismatch {
                property: p,
                checkpointed: a,
                local: b,
                rule: "==",
                switch: None,
            });
        }
    };
    eq("simd_count", src.simd_count.into(), dest.simd_count.into());
    eq(
        "mem_banks_count",
        src.mem_banks_count.into(),
        dest.mem_banks_count.into(),
    );
    eq(
        "io_links_count",
        src.io_links_count.into(),
        dest.io_links_count.into(),
    );
    eq(
        "max_waves_per_simd",
        src.max_waves_per_simd.into(),
        dest.max_waves_per_simd.into(),
    );
    eq(
        "lds_size_in_kb",
        src.lds_size_in_kb.into(),
        dest.lds_size_in_kb.into(),
    );
    eq(
        "wave_front_size",
        src.wave_front_size.into(),
        dest.wave_front_size.into(),
    );
    eq(
        "array_count",
        src.array_count.into(),
        dest.array_count.into(),
    );
    eq(
        "simd_arrays_per_engine",
        src.simd_arrays_per_engine.into(),
        dest.simd_arrays_per_engine.into(),
    );
    eq(
        "cu_per_simd_array",
        src.cu_per_simd_array.into(),
        dest.cu_per_simd_array.into(),
    );
    eq(
        "simd_per_cu",
        src.simd_per_cu.into(),
        dest.simd_per_cu.into(),
    );
    eq(
        "max_slots_scratch_cu",
        src.max_slots_scratch_cu.into(),
        dest.max_slots_scratch_cu.into(),
    );
    eq("vendor_id", src.vendor_id.into(), dest.vendor_id.into());
    eq("device_id", src.device_id.into(), dest.device_id.into());
    eq(
        "num_sdma_engines",
        src.num_sdma_engines.into(),
        dest.num_sdma_engines.into(),
    );
    eq(
        "num_sdma_xgmi_engines",
        src.num_sdma_xgmi_engines.into(),
        dest.num_sdma_xgmi_engines.into(),
    );
    eq(
        "num_sdma_queues_per_engine",
        src.num_sdma_queues_per_engine.into(),
        dest.num_sdma_queues_per_engine.into(),
    );
    eq(
        "num_cp_queues",
        src.num_cp_queues.into(),
        dest.num_cp_queues.into(),
    );
    eq(
        "vram_public",
        src.vram_public.into(),
        dest.vram_public.into(),
    );
    let mut rule = |on: bool, p: &'static str, sw: &'static str, le: bool, a: u64, b: u64| {
        let ok = if le { a <= b } else { a == b };
        if on && !ok {
            out.push(Mismatch {
                property: p,
                checkpointed: a,
                local: b,
                rule: if le { "<=" } else { "==" },
                switch: Some(sw),
            });
        }
    };
    rule(
        checks.capability,
        "capability",
        KFD_CAPABILITY_CHECK,
        false,
        src.capability.into(),
        dest.capability.into(),
    );
    rule(
        checks.vram_size,
        "vram_size",
        KFD_VRAM_SIZE_CHECK,
        true,
        src.vram_size,
        dest.vram_size,
    );
    rule(
        checks.num_gws,
        "num_gws",
        KFD_NUM_GWS_CHECK,
        true,
        src.num_gws.into(),
        dest.num_gws.into(),
    );
    rule(
        checks.caches_count,
        "caches_count",
        KFD_CACHES_COUNT_CHECK,
        true,
        src.caches_count.into(),
        dest.caches_count.into(),
    );
    rule(
        checks.fw_version,
        "fw_version",
        KFD_FW_VER_CHECK,
        true,
        src.fw_version.into(),
        dest.fw_version.into(),
    );
    rule(
        checks.sdma_fw_version,
        "sdma_fw_version",
        KFD_SDMA_FW_VER_CHECK,
        true,
        src.sdma_fw_version.into(),
        dest.sdma_fw_version.into(),
    );
    out
}

/// The restore's device map: checkpointed (user) gpu_id → local (actual) gpu_id, and the
/// CPU node map the NUMA check built.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GpuMap {
    pub gpus: Vec<(u32, u32)>,
    pub cpus: Vec<(u32, u32)>,
}

impl GpuMap {
    /// The local gpu_id for a checkpointed one.
    pub fn dest(&self, src_gpu_id: u32) -> Option<u32> {
        self.gpus
            .iter()
            .find(|(s, _)| *s == src_gpu_id)
            .map(|(_, d)| *d)
    }

    /// The checkpointed gpu_id for a local one (dump: actual → user).
    pub fn src(&self, dest_gpu_id: u32) -> Option<u32> {
        self.gpus
            .iter()
            .find(|(_, d)| *d == dest_gpu_id)
            .map(|(s, _)| *s)
    }

    fn dest_gpu_mapped(&self, d: u32) -> bool {
        self.gpus.iter().any(|(_, x)| *x == d)
    }

    fn cpu_dest(&self, s: u32) -> Option<u32> {
        self.cpus.iter().find(|(a, _)| *a == s).map(|(_, b)| *b)
    }

    fn cpu_dest_mapped(&self, d: u32) -> bool {
        self.cpus.iter().any(|(_, x)| *x == d)
    }
}

struct Side<'a> {
    topo: &'a Topology,
    links: Links,
}

struct Matcher<'a> {
    src: Side<'a>,
    dest: Side<'a>,
    checks: Checks,
}

impl Matcher<'_> {
    /// `iolink_match`: can link `dk` of dest node `dn` replace link `sk` of src node `sn`?
    fn iolink_match(&self, sn: usize, sk: usize, dn: usize, dk: usize) -> bool {
        if !self.src.links.valid[sn][sk] {
            return true;
        }
        if !self.dest.links.valid[dn][dk] {
            return false;
        }
        let (Some(st), Some(dt)) = (
            self.src.links.target[sn][sk],
            self.dest.links.target[dn][dk],
        ) else {
            return false;
        };
        if self.src.topo.nodes[st].is_gpu() != self.dest.topo.nodes[dt].is_gpu() {
            return false;
        }
        let s = &self.src.topo.nodes[sn].iolinks[sk];
        let d = &self.dest.topo.nodes[dn].iolinks[dk];
        if s.link_type == IOLINK_TYPE_XGMI && d.link_type == IOLINK_TYPE_PCIE {
            return false;
        }
        if self.src.links.bidir[sn][sk] && !self.dest.links.bidir[dn][dk] {
            return false;
        }
        true
    }

    /// `map_device`: on success returns the new CPU and GPU entries for `maps`.
    fn map_device(&self, sn: usize, dn: usize, maps: &GpuMap) -> Option<GpuMap> {
        let s = &self.src.topo.nodes[sn];
        let d = &self.dest.topo.nodes[dn];
        if !device_mismatches(s, d, &self.checks).is_empty() {
            return None;
        }
        if self.src.links.valid_count(sn) > self.dest.links.valid_count(dn) {
            return None;
        }
        let mut new = GpuMap::default();
        for sk in 0..s.iolinks.len() {
            let Some(st) = self.src.links.target[sn][sk] else {
                continue; // invalid links never constrain (iolink_match returns true)
            };
            let cpu = &self.src.topo.nodes[st];
            if cpu.is_gpu() {
                // GPU→GPU PCIe links imply CPU links that are checked; XGMI is the hive's job.
                continue;
            }
            let matched = if !self.checks.numa {
                (0..d.iolinks.len()).any(|dk| self.iolink_match(sn, sk, dn, dk))
            } else if let Some(dcpu) = maps.cpu_dest(cpu.id).or_else(|| new.cpu_dest(cpu.id)) {
                let ty = s.iolinks[sk].link_type;
                (0..d.iolinks.len()).any(|dk| {
                    let l = &d.iolinks[dk];
                    l.node_to == dcpu && l.link_type == ty && self.iolink_match(sn, sk, dn, dk)
                })
            } else {
                let pick = (0..d.iolinks.len()).find(|&dk| {
                    let to = d.iolinks[dk].node_to;
                    self.iolink_match(sn, sk, dn, dk)
                        && !maps.cpu_dest_mapped(to)
                        && !new.cpu_dest_mapped(to)
                });
                match pick {
                    Some(dk) => {
                        new.cpus.push((cpu.id, d.iolinks[dk].node_to));
                        true
                    }
                    None => false,
                }
            };
            if !matched {
                return None;
            }
        }
        new.gpus.push((s.gpu_id, d.gpu_id));
        Some(new)
    }

    /// `map_devices`: backtracking over the remaining src and dest GPUs.
    fn map_devices(&self, src: &[usize], dest: &[usize], maps: &mut GpuMap) -> bool {
        let Some((&first, rest)) = src.split_first() else {
            return true;
        };
        for (i, &dn) in dest.iter().enumerate() {
            let Some(new) = self.map_device(first, dn, maps) else {
                continue;
            };
            let (gl, cl) = (maps.gpus.len(), maps.cpus.len());
            maps.gpus.extend(new.gpus);
            maps.cpus.extend(new.cpus);
            let mut left: Vec<usize> = dest.to_vec();
            left.remove(i);
            if self.map_devices(rest, &left, maps) {
                return true;
            }
            maps.gpus.truncate(gl);
            maps.cpus.truncate(cl);
        }
        false
    }

    /// `match_xgmi_groups`: each checkpointed hive onto a distinct local hive.
    fn match_hives(&self, src: &[Vec<usize>], dest: &[Vec<usize>], maps: &mut GpuMap) -> bool {
        let Some((first, rest)) = src.split_first() else {
            return true;
        };
        for (i, dh) in dest.iter().enumerate() {
            if first.len() > dh.len() {
                continue;
            }
            let (gl, cl) = (maps.gpus.len(), maps.cpus.len());
            if self.map_devices(first, dh, maps) {
                let mut left = dest.to_vec();
                left.remove(i);
                if self.match_hives(rest, &left, maps) {
                    return true;
                }
            }
            maps.gpus.truncate(gl);
            maps.cpus.truncate(cl);
        }
        false
    }

    fn explain(&self) -> String {
        let mut lines = Vec::new();
        for s in self.src.topo.gpus() {
            let cands: Vec<String> = self
                .dest
                .topo
                .gpus()
                .filter_map(|d| {
                    device_mismatches(s, d, &self.checks)
                        .first()
                        .map(|m| format!("0x{:04x}: {m}", d.gpu_id))
                })
                .collect();
            if cands.len() == self.dest.topo.gpu_count() {
                lines.push(format!(
                    "checkpointed GPU 0x{:04x} matches no local GPU [{}]",
                    s.gpu_id,
                    cands.join("; ")
                ));
            }
        }
        if lines.is_empty() {
            let hives = |side: &Side<'_>| {
                side.links
                    .hives
                    .iter()
                    .map(|h| {
                        h.iter()
                            .map(|&i| format!("0x{:04x}", side.topo.nodes[i].gpu_id))
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .collect::<Vec<_>>()
                    .join(" | ")
            };
            lines.push(format!(
                "every GPU has a compatible local GPU, but the XGMI hives or the GPU-CPU links \
                 (NUMA) do not line up (checkpointed hives [{}], local hives [{}]); \
                 KFD_NUMA_CHECK=0 relaxes the CPU-link rule",
                hives(&self.src),
                hives(&self.dest)
            ));
        }
        lines.join("; ")
    }
}

/// Builds the restore map (`set_restore_gpu_maps`). The error names what ruled out a match.
pub fn restore_gpu_map(src: &Topology, dest: &Topology, checks: &Checks) -> Result<GpuMap> {
    let m = Matcher {
        src: Side {
            topo: src,
            links: src.analyse(),
        },
        dest: Side {
            topo: dest,
            links: dest.analyse(),
        },
        checks: *checks,
    };
    let (ns, nd) = (src.gpu_count(), dest.gpu_count());
    if ns != nd {
        return Err(PluginError::Device(format!(
            "GPU count differs: checkpointed {ns}, local {nd}; restore on a node with {ns} GPUs \
             of the same model (or expose {ns} GPUs to the container)"
        )));
    }
    if m.src.links.hives.len() > m.dest.links.hives.len() {
        return Err(PluginError::Device(format!(
            "XGMI hive count differs: checkpointed {}, local {}",
            m.src.links.hives.len(),
            m.dest.links.hives.len()
        )));
    }
    let mut maps = GpuMap::default();
    if !m.match_hives(&m.src.links.hives, &m.dest.links.hives, &mut maps) {
        return Err(PluginError::Device(format!(
            "cannot map the checkpointed XGMI hives onto this node: {}",
            m.explain()
        )));
    }
    let rest_src: Vec<usize> = (0..src.nodes.len())
        .filter(|&i| src.nodes[i].is_gpu() && maps.dest(src.nodes[i].gpu_id).is_none())
        .collect();
    let rest_dest: Vec<usize> = (0..dest.nodes.len())
        .filter(|&i| dest.nodes[i].is_gpu() && !maps.dest_gpu_mapped(dest.nodes[i].gpu_id))
        .collect();
    if !m.map_devices(&rest_src, &rest_dest, &mut maps) {
        return Err(PluginError::Device(format!(
            "cannot map the checkpointed GPUs onto this node: {}",
            m.explain()
        )));
    }
    Ok(maps)
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::super::model::IoLink;
    use super::*;

    fn gpu(id: u32, gpu_id: u32, device_id: u32) -> Node {
        Node {
            id,
            gpu_id,
            simd_count: 4,
            device_id,
            vendor_id: 0x1002,
            vram_size: 1 << 30,
            vram_public: true,
            iolinks: vec![IoLink {
                link_type: IOLINK_TYPE_PCIE,
                node_to: 0,
            }],
            ..Default::default()
        }
    }

    fn cpu(id: u32) -> Node {
        Node {
            id,
            cpu_cores_count: 8,
            ..Default::default()
        }
    }

    #[test]
    fn gpus_map_by_device_id_even_when_enumerated_in_another_order() {
        let mut c = cpu(0);
        c.iolinks = vec![
            IoLink {
                link_type: IOLINK_TYPE_PCIE,
                node_to: 1,
            },
            IoLink {
                link_type: IOLINK_TYPE_PCIE,
                node_to: 2,
            },
        ];
        let src = Topology {
            nodes: vec![c.clone(), gpu(1, 0xa1, 0x740f), gpu(2, 0xa2, 0x7408)],
        };
        let dest = Topology {
            nodes: vec![c, gpu(1, 0xb1, 0x7408), gpu(2, 0xb2, 0x740f)],
        };
        let m = restore_gpu_map(&src, &dest, &Checks::default()).unwrap();
        assert_eq!(m.dest(0xa1), Some(0xb2));
        assert_eq!(m.dest(0xa2), Some(0xb1));
    }

    #[test]
    fn a_smaller_local_vram_is_rejected_with_the_property_and_the_switch_named() {
        let src = Topology {
            nodes: vec![cpu(0), gpu(1, 0xa1, 0x740f)],
        };
        let mut g = gpu(1, 0xb1, 0x740f);
        g.vram_size = 1 << 29;
        let dest = Topology {
            nodes: vec![cpu(0), g],
        };
        let e = restore_gpu_map(&src, &dest, &Checks::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("vram_size"), "{e}");
        assert!(e.contains(&format!("{KFD_VRAM_SIZE_CHECK}=0")), "{e}");
        let relaxed = Checks {
            vram_size: false,
            ..Checks::default()
        };
        assert_eq!(
            restore_gpu_map(&src, &dest, &relaxed).unwrap().dest(0xa1),
            Some(0xb1)
        );
    }
}
