//! The topology to and from the image's `kfd_device_entry` list (`topology_to_devinfo`,
//! `devinfo_to_topology`).

use super::model::{IoLink, Node, Topology};
use crate::backends::amdgpu::proto::{DevIolink, KfdDeviceEntry};
use crate::error::{PluginError, Result};

impl Topology {
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
