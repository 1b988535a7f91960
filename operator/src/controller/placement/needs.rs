//! What the restored pod needs from its node: the pod's node selector and required affinity
//! (pins to the source node dropped, [`super::affinity`]), its tolerations, the GPUs
//! (vendor resource, count, product) it uses on the source node, and the source node's
//! migration pool.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, NodeSelector, Pod, Toleration};

use super::affinity;
use super::node_state::migration_pool;

/// The extended resources of the GPU vendors ferry supports.
pub const GPU_RESOURCES: [&str; 2] = ["amd.com/gpu", "nvidia.com/gpu"];

/// Node labels naming the GPU product, by vendor resource (AMD's node labeller, NVIDIA's GPU
/// feature discovery).
pub fn product_label(resource: &str) -> Option<&'static str> {
    match resource {
        "amd.com/gpu" => Some("amd.com/gpu.product-name"),
        "nvidia.com/gpu" => Some("nvidia.com/gpu.product"),
        _ => None,
    }
}

/// What the restored pod needs from its node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Needs {
    /// The node the pod runs on now (never a target).
    pub source_node: String,
    /// Labels the node must carry: the request's `nodeSelector` and the pod's own.
    pub node_selector: BTreeMap<String, String>,
    /// The pod's required node affinity, without pins to the source node.
    pub node_affinity: Option<NodeSelector>,
    /// The pod's tolerations.
    pub tolerations: Vec<Toleration>,
    /// The GPU resource and count the pod requests, if any.
    pub gpu: Option<(String, i64)>,
    /// The GPU product label (key, value) of the source node, if it carries one.
    pub product: Option<(String, String)>,
    /// The source node's migration pool (`None`: in no pool); a target must be in the same
    /// one, or in none when this is `None`.
    pub pool: Option<String>,
}

impl Needs {
    /// The needs of `pod`, running on `source` (if that node is known), narrowed by the
    /// request's `selector`.
    pub fn of_pod(pod: &Pod, source: Option<&Node>, selector: &BTreeMap<String, String>) -> Self {
        let spec = pod.spec.as_ref();
        let mut node_selector = spec
            .and_then(|s| s.node_selector.clone())
            .unwrap_or_default();
        affinity::strip_selector_pins(&mut node_selector);
        node_selector.extend(selector.iter().map(|(k, v)| (k.clone(), v.clone())));
        let mut affinity = spec.and_then(|s| s.affinity.clone());
        affinity::strip_affinity_pins(&mut affinity);
        let node_affinity = affinity
            .and_then(|a| a.node_affinity)
            .and_then(|a| a.required_during_scheduling_ignored_during_execution);
        let gpu = gpu_request(pod);
        let product = gpu.as_ref().and_then(|(resource, _)| {
            let key = product_label(resource)?;
            let value = source?.metadata.labels.as_ref()?.get(key)?;
            Some((key.to_string(), value.clone()))
        });
        Needs {
            source_node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            node_selector,
            node_affinity,
            tolerations: spec.and_then(|s| s.tolerations.clone()).unwrap_or_default(),
            gpu,
            product,
            pool: source.and_then(migration_pool).map(String::from),
        }
    }
}

/// The GPU vendor resource and count a pod requests: the sum over its containers (limits
/// where requests are absent, as the API server defaults extended resources), or the largest
/// init container's if that is more.
pub fn gpu_request(pod: &Pod) -> Option<(String, i64)> {
    let spec = pod.spec.as_ref()?;
    for resource in GPU_RESOURCES {
        let of = |c: &k8s_openapi::api::core::v1::Container| -> i64 {
            let r = c.resources.as_ref();
            r.and_then(|r| r.requests.as_ref()?.get(resource))
                .or_else(|| r.and_then(|r| r.limits.as_ref()?.get(resource)))
                .map(|q| parse_count(&q.0))
                .unwrap_or(0)
        };
        let sum: i64 = spec.containers.iter().map(of).sum();
        let init = spec
            .init_containers
            .iter()
            .flatten()
            .map(of)
            .max()
            .unwrap_or(0);
        let count = sum.max(init);
        if count > 0 {
            return Some((resource.to_string(), count));
        }
    }
    None
}

/// A device count from a resource quantity ("8"; anything else counts as 0: device plugins
/// only advertise whole devices).
pub fn parse_count(quantity: &str) -> i64 {
    quantity.trim().parse().unwrap_or(0)
}
