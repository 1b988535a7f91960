//! The KFD topology as a pure model: nodes (CPUs and GPUs) with their properties and links,
//! lookups, and the link analysis (valid and bidirectional links, XGMI hives) that matching
//! and the image's device entries build on.

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

impl Topology {
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

    pub(super) fn index_of_node(&self, node_id: u32) -> Option<usize> {
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
    pub(super) fn valid_count(&self, node: usize) -> usize {
        self.valid[node].iter().filter(|v| **v).count()
    }
}
