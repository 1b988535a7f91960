//! The KFD topology as a pure model: parsed from `/sys/class/kfd/kfd/topology/nodes/*`
//! (under a configurable root, so tests use a temp dir), converted to and from the image's
//! `kfd_device_entry` list, and matched between the checkpointed and the local system to
//! build the user gpu_id → actual gpu_id map of a restore.
//!
//! The matching rules are upstream's (`amdgpu_plugin_topology.c`, CRIU 4.2.1):
//! device geometry must be equal; VRAM size, firmware versions, GWS and cache counts may
//! grow (`≤`), capability must be equal, each under its `KFD_*_CHECK` switch; XGMI hives
//! are matched first (a checkpointed hive onto a local hive at least as large), then the
//! remaining GPUs; links to CPUs must be the same or better, and with `KFD_NUMA_CHECK` the
//! CPU (NUMA) nodes must map consistently. Unlike upstream, a failed match names the
//! property (or the link layout) that ruled each candidate out.

use std::fmt;
use std::path::Path;

use crate::error::{PluginError, Result};

use super::proto::{DevIolink, KfdDeviceEntry};

/// `HSA_HEAPTYPE_FRAME_BUFFER_PUBLIC`.
pub const HEAP_TYPE_PUBLIC: u32 = 1;
/// `HSA_HEAPTYPE_FRAME_BUFFER_PRIVATE`.
pub const HEAP_TYPE_PRIVATE: u32 = 2;
/// `HSA_IOLINKTYPE_PCIEXPRESS`.
pub const IOLINK_TYPE_PCIE: u32 = 2;
/// `HSA_IOLINK_TYPE_XGMI`.
pub const IOLINK_TYPE_XGMI: u32 = 11;

/// Where the kernel publishes the topology.
pub const DEFAULT_TOPOLOGY_ROOT: &str = "/sys/class/kfd/kfd/topology";

/// A link from one node to another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoLink {
    pub link_type: u32,
    /// The node id (not gpu_id) at the other end.
    pub node_to: u32,
}

/// One KFD node: a CPU (gpu_id 0) or a GPU.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    pub id: u32,
    pub gpu_id: u32,
    pub cpu_cores_count: u32,
    pub simd_count: u32,
    pub mem_banks_count: u32,
    pub caches_count: u32,
    pub io_links_count: u32,
    pub max_waves_per_simd: u32,
    pub lds_size_in_kb: u32,
    pub gds_size_in_kb: u32,
    pub num_gws: u32,
    pub wave_front_size: u32,
    pub array_count: u32,
    pub simd_arrays_per_engine: u32,
    pub cu_per_simd_array: u32,
    pub simd_per_cu: u32,
    pub max_slots_scratch_cu: u32,
    pub vendor_id: u32,
    pub device_id: u32,
    pub domain: u32,
    pub drm_render_minor: u32,
    pub hive_id: u64,
    pub num_sdma_engines: u32,
    pub num_sdma_xgmi_engines: u32,
    pub num_sdma_queues_per_engine: u32,
    pub num_cp_queues: u32,
    pub fw_version: u32,
    pub capability: u32,
    pub sdma_fw_version: u32,
    pub vram_public: bool,
    pub vram_size: u64,
    pub iolinks: Vec<IoLink>,
}

impl Node {
    pub fn is_gpu(&self) -> bool {
        self.gpu_id != 0
    }
}

/// All nodes of one system, ordered by node id.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Topology {
    pub nodes: Vec<Node>,
}

/// The `KFD_*_CHECK` switches (all on by default), read like upstream's `getenv_bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    pub fw_version: bool,
    pub sdma_fw_version: bool,
    pub caches_count: bool,
    pub num_gws: bool,
    pub vram_size: bool,
    pub numa: bool,
    pub capability: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            fw_version: true,
            sdma_fw_version: true,
            caches_count: true,
            num_gws: true,
            vram_size: true,
            numa: true,
            capability: true,
        }
    }
}

/// The environment variable of each switch.
pub const CHECK_VARS: [&str; 7] = [
    "KFD_FW_VER_CHECK",
    "KFD_SDMA_FW_VER_CHECK",
    "KFD_CACHES_COUNT_CHECK",
    "KFD_NUM_GWS_CHECK",
    "KFD_VRAM_SIZE_CHECK",
    "KFD_NUMA_CHECK",
    "KFD_CAPABILITY_CHECK",
];

impl Checks {
    /// Reads the switches through `get`. Accepted: `0`/`1`, `no`/`yes`, `n`/`y`,
    /// `false`/`true`, `off`/`on` (any case; upstream takes `0/1/NO/YES`); anything else is
    /// logged and ignored, as upstream does.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Checks {
        let mut c = Checks::default();
        for var in CHECK_VARS {
            let Some(v) = get(var) else { continue };
            let on = match crate::config::parse_bool(var, &v) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("ignoring {e}");
                    continue;
                }
            };
            match var {
                "KFD_FW_VER_CHECK" => c.fw_version = on,
                "KFD_SDMA_FW_VER_CHECK" => c.sdma_fw_version = on,
                "KFD_CACHES_COUNT_CHECK" => c.caches_count = on,
                "KFD_NUM_GWS_CHECK" => c.num_gws = on,
                "KFD_VRAM_SIZE_CHECK" => c.vram_size = on,
                "KFD_NUMA_CHECK" => c.numa = on,
                _ => c.capability = on,
            }
        }
        c
    }
}

// ---------------------------------------------------------------------------------------
// sysfs parsing
// ---------------------------------------------------------------------------------------

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

    pub fn gpus(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.is_gpu())
    }

    pub fn gpu_count(&self) -> usize {
        self.gpus().count()
    }

    pub fn by_gpu_id(&self, gpu_id: u32) -> Option<&Node> {
        self.nodes.iter().find(|n| n.is_gpu() && n.gpu_id == gpu_id)
    }

    pub fn by_render_minor(&self, minor: u32) -> Option<&Node> {
        self.gpus().find(|n| n.drm_render_minor == minor)
    }

    fn index_of_node(&self, node_id: u32) -> Option<usize> {
        self.nodes.iter().position(|n| n.id == node_id)
    }

    /// Validates links and finds XGMI hives (`topology_determine_iolinks`).
    pub fn analyse(&self) -> Links {
        let n = self.nodes.len();
        let mut valid = vec![Vec::new(); n];
        let mut bidir = vec![Vec::new(); n];
        let mut target = vec![Vec::new(); n];
        for (i, node) in self.nodes.iter().enumerate() {
            for l in &node.iolinks {
                let to = self.index_of_node(l.node_to);
                valid[i].push(to.is_some());
                target[i].push(to);
                let back = to.is_some_and(|j| {
                    self.nodes[j]
                        .iolinks
                        .iter()
                        .any(|b| b.node_to == node.id && b.link_type == l.link_type)
                });
                bidir[i].push(back);
            }
        }
        // Hives: connected components over bidirectional XGMI links between GPUs.
        let mut hive_of: Vec<Option<usize>> = vec![None; n];
        let mut hives: Vec<Vec<usize>> = Vec::new();
        for i in 0..n {
            if !self.nodes[i].is_gpu() || hive_of[i].is_some() {
                continue;
            }
            let has_xgmi = self.nodes[i]
                .iolinks
                .iter()
                .enumerate()
                .any(|(k, l)| l.link_type == IOLINK_TYPE_XGMI && bidir[i][k]);
            if !has_xgmi {
                continue;
            }
            let h = hives.len();
            let mut members = vec![i];
            hive_of[i] = Some(h);
            let mut stack = vec![i];
            while let Some(a) = stack.pop() {
                for (k, l) in self.nodes[a].iolinks.iter().enumerate() {
                    if l.link_type != IOLINK_TYPE_XGMI || !bidir[a][k] {
                        continue;
                    }
                    if let Some(b) =
                        target[a][k].filter(|&b| self.nodes[b].is_gpu() && hive_of[b].is_none())
                    {
                        hive_of[b] = Some(h);
                        members.push(b);
                        stack.push(b);
                    }
                }
            }
            members.sort_unstable();
            hives.push(members);
        }
        Links {
            valid,
            bidir,
            target,
            hives,
        }
    }

    /// The image's device entries (`topology_to_devinfo`): every node, GPUs with their
    /// user gpu_id from `user_gpu_id(actual)`, links only where valid.
    pub fn to_device_entries(
        &self,
        user_gpu_id: impl Fn(u32) -> Option<u32>,
    ) -> Result<Vec<KfdDeviceEntry>> {
        let links = self.analyse();
        let mut out = Vec::with_capacity(self.nodes.len());
        for (i, n) in self.nodes.iter().enumerate() {
            let mut e = KfdDeviceEntry {
                node_id: n.id,
                ..Default::default()
            };
            if n.is_gpu() {
                e.gpu_id = user_gpu_id(n.gpu_id).ok_or_else(|| {
                    PluginError::Device(format!(
                        "GPU 0x{:04x} (node {}) is in the topology but KFD returned no device bucket for it",
                        n.gpu_id, n.id
                    ))
                })?;
                e.simd_count = n.simd_count;
                e.mem_banks_count = n.mem_banks_count;
                e.caches_count = n.caches_count;
                e.io_links_count = n.io_links_count;
                e.max_waves_per_simd = n.max_waves_per_simd;
                e.lds_size_in_kb = n.lds_size_in_kb;
                e.num_gws = n.num_gws;
                e.wave_front_size = n.wave_front_size;
                e.array_count = n.array_count;
                e.simd_arrays_per_engine = n.simd_arrays_per_engine;
                e.cu_per_simd_array = n.cu_per_simd_array;
                e.simd_per_cu = n.simd_per_cu;
                e.max_slots_scratch_cu = n.max_slots_scratch_cu;
                e.vendor_id = n.vendor_id;
                e.device_id = n.device_id;
                e.domain = n.domain;
                e.drm_render_minor = n.drm_render_minor;
                e.hive_id = n.hive_id;
                e.num_sdma_engines = n.num_sdma_engines;
                e.num_sdma_xgmi_engines = n.num_sdma_xgmi_engines;
                e.num_sdma_queues_per_engine = n.num_sdma_queues_per_engine;
                e.num_cp_queues = n.num_cp_queues;
                e.fw_version = n.fw_version;
                e.capability = n.capability;
                e.sdma_fw_version = n.sdma_fw_version;
                e.vram_public = u32::from(n.vram_public);
                e.vram_size = n.vram_size;
            } else {
                e.cpu_cores_count = n.cpu_cores_count;
            }
            for (k, l) in n.iolinks.iter().enumerate() {
                if links.valid[i][k] {
                    e.iolinks.push(DevIolink {
                        r#type: l.link_type,
                        node_to_id: l.node_to,
                    });
                }
            }
            out.push(e);
        }
        Ok(out)
    }

    /// The checkpointed topology from the image (`devinfo_to_topology`).
    pub fn from_device_entries(entries: &[KfdDeviceEntry]) -> Topology {
        let mut nodes: Vec<Node> = entries
            .iter()
            .map(|e| {
                let mut n = Node {
                    id: e.node_id,
                    gpu_id: e.gpu_id,
                    ..Default::default()
                };
                if e.cpu_cores_count != 0 && e.gpu_id == 0 {
                    n.cpu_cores_count = e.cpu_cores_count;
                } else {
                    n.simd_count = e.simd_count;
                    n.mem_banks_count = e.mem_banks_count;
                    n.caches_count = e.caches_count;
                    n.io_links_count = e.io_links_count;
                    n.max_waves_per_simd = e.max_waves_per_simd;
                    n.lds_size_in_kb = e.lds_size_in_kb;
                    n.gds_size_in_kb = e.gds_size_in_kb;
                    n.num_gws = e.num_gws;
                    n.wave_front_size = e.wave_front_size;
                    n.array_count = e.array_count;
                    n.simd_arrays_per_engine = e.simd_arrays_per_engine;
                    n.cu_per_simd_array = e.cu_per_simd_array;
                    n.simd_per_cu = e.simd_per_cu;
                    n.max_slots_scratch_cu = e.max_slots_scratch_cu;
                    n.vendor_id = e.vendor_id;
                    n.device_id = e.device_id;
                    n.domain = e.domain;
                    n.drm_render_minor = e.drm_render_minor;
                    n.hive_id = e.hive_id;
                    n.num_sdma_engines = e.num_sdma_engines;
                    n.num_sdma_xgmi_engines = e.num_sdma_xgmi_engines;
                    n.num_sdma_queues_per_engine = e.num_sdma_queues_per_engine;
                    n.num_cp_queues = e.num_cp_queues;
                    n.fw_version = e.fw_version;
                    n.capability = e.capability;
                    n.sdma_fw_version = e.sdma_fw_version;
                    n.vram_public = e.vram_public != 0;
                    n.vram_size = e.vram_size;
                }
                n.iolinks = e
                    .iolinks
                    .iter()
                    .map(|l| IoLink {
                        link_type: l.r#type,
                        node_to: l.node_to_id,
                    })
                    .collect();
                n
            })
            .collect();
        nodes.sort_by_key(|n| n.id);
        Topology { nodes }
    }
}

/// Link facts of one topology: `valid[node][link]` (the peer node is visible),
/// `bidir[node][link]` (the peer links back with the same type), `target` (peer index) and
/// the XGMI hives (node indices).
#[derive(Clone, Debug, Default)]
pub struct Links {
    pub valid: Vec<Vec<bool>>,
    pub bidir: Vec<Vec<bool>>,
    pub target: Vec<Vec<Option<usize>>>,
    pub hives: Vec<Vec<usize>>,
}

impl Links {
    fn valid_count(&self, node: usize) -> usize {
        self.valid[node].iter().filter(|v| **v).count()
    }
}

// ---------------------------------------------------------------------------------------
// Matching
// ---------------------------------------------------------------------------------------

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
        "KFD_CAPABILITY_CHECK",
        false,
        src.capability.into(),
        dest.capability.into(),
    );
    rule(
        checks.vram_size,
        "vram_size",
        "KFD_VRAM_SIZE_CHECK",
        true,
        src.vram_size,
        dest.vram_size,
    );
    rule(
        checks.num_gws,
        "num_gws",
        "KFD_NUM_GWS_CHECK",
        true,
        src.num_gws.into(),
        dest.num_gws.into(),
    );
    rule(
        checks.caches_count,
        "caches_count",
        "KFD_CACHES_COUNT_CHECK",
        true,
        src.caches_count.into(),
        dest.caches_count.into(),
    );
    rule(
        checks.fw_version,
        "fw_version",
        "KFD_FW_VER_CHECK",
        true,
        src.fw_version.into(),
        dest.fw_version.into(),
    );
    rule(
        checks.sdma_fw_version,
        "sdma_fw_version",
        "KFD_SDMA_FW_VER_CHECK",
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
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
        assert!(e.contains("KFD_VRAM_SIZE_CHECK=0"), "{e}");
        let relaxed = Checks {
            vram_size: false,
            ..Checks::default()
        };
        assert_eq!(
            restore_gpu_map(&src, &dest, &relaxed).unwrap().dest(0xa1),
            Some(0xb1)
        );
    }

    #[test]
    fn check_switches_accept_upstream_spellings_and_ignore_garbage() {
        let c = Checks::from_lookup(|k| match k {
            "KFD_FW_VER_CHECK" => Some("NO".into()),
            "KFD_NUMA_CHECK" => Some("0".into()),
            "KFD_VRAM_SIZE_CHECK" => Some("maybe".into()),
            _ => None,
        });
        assert!(!c.fw_version);
        assert!(!c.numa);
        assert!(c.vram_size);
        assert!(c.capability);
    }

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
