//! Parsing the KFD topology from sysfs (`<root>/nodes/*`, under a configurable root so tests
//! use a temp dir).

use std::path::Path;

use super::model::{
    HEAP_TYPE_PRIVATE, HEAP_TYPE_PUBLIC, IOLINK_TYPE_PCIE, IOLINK_TYPE_XGMI, IoLink, Node, Topology,
};
use crate::error::{PluginError, Result};

fn numeric_entries(dir: &Path) -> Result<Vec<(u32, std::path::PathBuf)>> {
    let rd = std::fs::read_dir(dir)
        .map_err(|e| PluginError::io(format!("read KFD topology dir {}", dir.display()), e))?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|e| PluginError::io(format!("read {}", dir.display()), e))?;
        let name = ent.file_name();
        let Some(id) = name.to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if ent.path().is_dir() {
            out.push((id, ent.path()));
        }
    }
    out.sort_by_key(|(id, _)| *id);
    Ok(out)
}

/// Parses a `properties` file: lines of `name value` (value a decimal u64).
pub fn parse_properties(text: &str, path: &Path) -> Result<Vec<(String, u64)>> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.split_whitespace();
        let Some(name) = it.next() else { continue };
        let value = it
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .ok_or_else(|| {
                PluginError::invalid(format!(
                    "{}: line {line:?} is not `name value`",
                    path.display()
                ))
            })?;
        out.push((name.to_string(), value));
    }
    Ok(out)
}

fn read_properties(path: &Path) -> Result<Vec<(String, u64)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| PluginError::io(format!("read {}", path.display()), e))?;
    parse_properties(&text, path)
}

fn set_node_property(n: &mut Node, name: &str, v: u64) {
    let v32 = v as u32;
    match name {
        "cpu_cores_count" => n.cpu_cores_count = v32,
        "simd_count" => n.simd_count = v32,
        "mem_banks_count" => n.mem_banks_count = v32,
        "caches_count" => n.caches_count = v32,
        "io_links_count" => n.io_links_count = v32,
        "max_waves_per_simd" => n.max_waves_per_simd = v32,
        "lds_size_in_kb" => n.lds_size_in_kb = v32,
        "gds_size_in_kb" => n.gds_size_in_kb = v32,
        "num_gws" => n.num_gws = v32,
        "wave_front_size" => n.wave_front_size = v32,
        "array_count" => n.array_count = v32,
        "simd_arrays_per_engine" => n.simd_arrays_per_engine = v32,
        "cu_per_simd_array" => n.cu_per_simd_array = v32,
        "simd_per_cu" => n.simd_per_cu = v32,
        "max_slots_scratch_cu" => n.max_slots_scratch_cu = v32,
        "vendor_id" => n.vendor_id = v32,
        "device_id" => n.device_id = v32,
        "domain" => n.domain = v32,
        "drm_render_minor" => n.drm_render_minor = v32,
        "hive_id" => n.hive_id = v,
        "num_sdma_engines" => n.num_sdma_engines = v32,
        "num_sdma_xgmi_engines" => n.num_sdma_xgmi_engines = v32,
        "num_sdma_queues_per_engine" => n.num_sdma_queues_per_engine = v32,
        "num_cp_queues" => n.num_cp_queues = v32,
        "fw_version" => n.fw_version = v32,
        "capability" => n.capability = v32,
        "sdma_fw_version" => n.sdma_fw_version = v32,
        _ => {}
    }
}

fn parse_node(id: u32, gpu_id: u32, dir: &Path) -> Result<Node> {
    let mut n = Node {
        id,
        gpu_id,
        ..Default::default()
    };
    for (name, v) in read_properties(&dir.join("properties"))? {
        set_node_property(&mut n, &name, v);
    }
    if n.is_gpu() {
        // The first bank that is frame-buffer memory gives the VRAM size and visibility.
        let mut found = None;
        for (_, bank) in numeric_entries(&dir.join("mem_banks"))? {
            let mut heap = 0u64;
            let mut size = 0u64;
            for (name, v) in read_properties(&bank.join("properties"))? {
                match name.as_str() {
                    "heap_type" => heap = v,
                    "size_in_bytes" => size = v,
                    _ => {}
                }
            }
            if heap == u64::from(HEAP_TYPE_PUBLIC) || heap == u64::from(HEAP_TYPE_PRIVATE) {
                found = Some((heap, size));
                break;
            }
        }
        match found {
            Some((heap, size)) if size > 0 => {
                n.vram_public = heap == u64::from(HEAP_TYPE_PUBLIC);
                n.vram_size = size;
            }
            _ => {
                return Err(PluginError::invalid(format!(
                    "{}: no frame-buffer memory bank (heap_type 1 or 2 with a size) for GPU 0x{gpu_id:04x}",
                    dir.display()
                )));
            }
        }
    }
    let links = dir.join("io_links");
    if links.is_dir() {
        for (_, link) in numeric_entries(&links)? {
            let mut t = 0u64;
            let mut to = 0u64;
            for (name, v) in read_properties(&link.join("properties"))? {
                match name.as_str() {
                    "type" => t = v,
                    "node_to" => to = v,
                    _ => {}
                }
            }
            let t = t as u32;
            if t == IOLINK_TYPE_PCIE || t == IOLINK_TYPE_XGMI {
                n.iolinks.push(IoLink {
                    link_type: t,
                    node_to: to as u32,
                });
            }
        }
    }
    Ok(n)
}

impl Topology {
    /// Parses `<root>/nodes/*` (root is `/sys/class/kfd/kfd/topology` on a real node).
    /// Nodes whose `gpu_id` cannot be read (masked by a cgroup) are skipped, as upstream does.
    pub fn parse(root: &Path) -> Result<Topology> {
        let mut nodes = Vec::new();
        for (id, dir) in numeric_entries(&root.join("nodes"))? {
            let Ok(text) = std::fs::read_to_string(dir.join("gpu_id")) else {
                tracing::info!(node = id, "KFD node not accessible, skipped");
                continue;
            };
            let Ok(gpu_id) = text.trim().parse::<u32>() else {
                continue;
            };
            nodes.push(parse_node(id, gpu_id, &dir)?);
        }
        Ok(Topology { nodes })
    }
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_lines_that_are_not_name_value_are_rejected() {
        let p = Path::new("x/properties");
        assert_eq!(
            parse_properties("simd_count 4\nhive_id 0\n", p).unwrap(),
            vec![("simd_count".into(), 4), ("hive_id".into(), 0)]
        );
        assert!(parse_properties("simd_count four\n", p).is_err());
    }
}
