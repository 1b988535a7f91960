//! Target node selection for migrations without `migrate.targetNode`: a pure function of the
//! source pod, the nodes and what the operator knows about them, so that it is table-tested
//! without a cluster.
//!
//! A node is a candidate when it is Ready, schedulable (not cordoned), not the source node,
//! matches the request's `nodeSelector` and the pod's own `spec.nodeSelector` and required node
//! affinity (pins to the source node dropped, [`super::affinity`]), carries no
//! `NoSchedule`/`NoExecute` taint the pod does not tolerate, is in the source node's migration
//! pool (or in none, like the source; docs/security.md), runs a ready ferry agent, and, for
//! a pod that requests GPUs, has at least as many free GPUs of the same vendor resource
//! (`amd.com/gpu`, `nvidia.com/gpu`) and, where both nodes carry a GPU product label, the same
//! product. Among candidates the one with the most free GPUs wins, then the smallest name.

use std::fmt;

use k8s_openapi::api::core::v1::Node;

use super::affinity;
use super::needs::{Needs, parse_count};
use super::node_state::{is_cordoned, is_ready, migration_pool, untolerated_taint};

/// A node and what the operator knows about it beyond the Node object.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    /// The node.
    pub node: &'a Node,
    /// Whether a ferry agent is ready on it.
    pub agent_ready: bool,
    /// GPUs of the pod's vendor resource that running pods on the node request.
    pub gpus_in_use: i64,
}

/// Why a node was not picked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The Ready condition is not True.
    NotReady,
    /// `spec.unschedulable`.
    Cordoned,
    /// The pod already runs there.
    IsSource,
    /// No ready ferry agent.
    AgentNotReady,
    /// A selector label is missing or different.
    Selector { key: String, want: String },
    /// The pod's required node affinity does not hold (what failed).
    Affinity(String),
    /// A taint the pod does not tolerate.
    Taint(String),
    /// Another migration pool than the source node's (`None`: in no pool).
    Pool {
        have: Option<String>,
        want: Option<String>,
    },
    /// Not enough free GPUs of the vendor resource.
    Gpus {
        resource: String,
        free: i64,
        allocatable: i64,
        want: i64,
    },
    /// A different GPU product.
    Product {
        label: String,
        have: String,
        want: String,
    },
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::NotReady => f.write_str("NotReady"),
            Rejection::Cordoned => f.write_str("cordoned"),
            Rejection::IsSource => f.write_str("the pod's own node"),
            Rejection::AgentNotReady => f.write_str("no ready ferry agent"),
            Rejection::Selector { key, want } => write!(f, "label {key}={want} missing"),
            Rejection::Affinity(why) => f.write_str(why),
            Rejection::Taint(t) => write!(f, "taint {t} not tolerated"),
            Rejection::Pool { have, want } => {
                let pool = |p: &Option<String>| match p {
                    Some(p) => format!("migration pool {p}"),
                    None => "no migration pool".to_string(),
                };
                write!(f, "{}, the pod's node is in {}", pool(have), pool(want))
            }
            Rejection::Gpus {
                resource,
                free,
                allocatable,
                want,
            } => write!(f, "{free}/{allocatable} free {resource}, needs {want}"),
            Rejection::Product { label, have, want } => {
                write!(f, "{label}={have}, the pod's node has {want}")
            }
        }
    }
}

/// The picked node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pick {
    /// Its name.
    pub node: String,
    /// Its free GPUs of the pod's vendor resource (0 for a pod without GPUs).
    pub free_gpus: i64,
}

/// Every node and why it was rejected, for the `NoCompatibleNode` message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rejections(pub Vec<(String, Rejection)>);

/// Longest message written into a condition (the API server allows 32768 characters).
const MESSAGE_LIMIT: usize = 8000;

impl fmt::Display for Rejections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("the cluster has no other node");
        }
        let mut written = 0;
        for (i, (node, why)) in self.0.iter().enumerate() {
            let part = format!("{}{node}: {why}", if i == 0 { "" } else { "; " });
            if written + part.len() > MESSAGE_LIMIT {
                return write!(f, "; … and {} more nodes", self.0.len() - i);
            }
            written += part.len();
            f.write_str(&part)?;
        }
        Ok(())
    }
}

/// Picks the target node for `needs` among `candidates` (see the module docs).
pub fn select_target(needs: &Needs, candidates: &[Candidate<'_>]) -> Result<Pick, Rejections> {
    let mut best: Option<Pick> = None;
    let mut rejected = Vec::new();
    for c in candidates {
        let name = c.node.metadata.name.clone().unwrap_or_default();
        match check(needs, c, &name) {
            Ok(free_gpus) => {
                let better = match &best {
                    None => true,
                    Some(b) => {
                        free_gpus > b.free_gpus || (free_gpus == b.free_gpus && name < b.node)
                    }
                };
                if better {
                    best = Some(Pick {
                        node: name,
                        free_gpus,
                    });
                }
            }
            Err(why) => rejected.push((name, why)),
        }
    }
    best.ok_or_else(|| {
        rejected.sort_by(|a, b| a.0.cmp(&b.0));
        Rejections(rejected)
    })
}

/// The node's free GPUs when it fits, else the first reason it does not.
fn check(needs: &Needs, c: &Candidate<'_>, name: &str) -> Result<i64, Rejection> {
    let node = c.node;
    if name == needs.source_node {
        return Err(Rejection::IsSource);
    }
    if !is_ready(node) {
        return Err(Rejection::NotReady);
    }
    if is_cordoned(node) {
        return Err(Rejection::Cordoned);
    }
    fits_pool(needs, node)?;
    fits_constraints(needs, node)?;
    let labels = node.metadata.labels.clone().unwrap_or_default();
    if let Some(taint) = untolerated_taint(&needs.tolerations, node) {
        return Err(Rejection::Taint(taint));
    }
    if !c.agent_ready {
        return Err(Rejection::AgentNotReady);
    }
    let Some((resource, want)) = &needs.gpu else {
        return Ok(0);
    };
    let allocatable = node
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref()?.get(resource))
        .map(|q| parse_count(&q.0))
        .unwrap_or(0);
    let free = (allocatable - c.gpus_in_use).max(0);
    if free < *want {
        return Err(Rejection::Gpus {
            resource: resource.clone(),
            free,
            allocatable,
            want: *want,
        });
    }
    if let Some((label, want)) = &needs.product
        && let Some(have) = labels.get(label)
        && have != want
    {
        return Err(Rejection::Product {
            label: label.clone(),
            have: have.clone(),
            want: want.clone(),
        });
    }
    Ok(free)
}

/// Whether `node` is in the source node's migration pool, or in none like the source: an image
/// is root on the node that restores it, so it never crosses from one pool to another.
pub fn fits_pool(needs: &Needs, node: &Node) -> Result<(), Rejection> {
    let have = migration_pool(node);
    if have == needs.pool.as_deref() {
        return Ok(());
    }
    Err(Rejection::Pool {
        have: have.map(String::from),
        want: needs.pool.clone(),
    })
}

/// Whether `node` satisfies the pod's nodeSelector and required node affinity, which the
/// target's kubelet checks again when it admits the restored pod.
pub fn fits_constraints(needs: &Needs, node: &Node) -> Result<(), Rejection> {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    for (key, want) in &needs.node_selector {
        if labels.get(key) != Some(want) {
            return Err(Rejection::Selector {
                key: key.clone(),
                want: want.clone(),
            });
        }
    }
    if let Some(required) = &needs.node_affinity {
        affinity::matches(required, node).map_err(Rejection::Affinity)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::controller::placement::needs::gpu_request;
    use k8s_openapi::api::core::v1::{NodeCondition, NodeSpec, NodeStatus, Pod, Taint, Toleration};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use kube::api::ObjectMeta;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                allocatable: Some(BTreeMap::new()),
                ..Default::default()
            }),
        }
    }

    fn with_gpus(mut n: Node, resource: &str, count: i64) -> Node {
        if let Some(a) = n.status.as_mut().and_then(|s| s.allocatable.as_mut()) {
            a.insert(resource.into(), Quantity(count.to_string()));
        }
        n
    }

    fn with_label(mut n: Node, k: &str, v: &str) -> Node {
        n.metadata
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(k.into(), v.into());
        n
    }

    fn not_ready(mut n: Node) -> Node {
        n.status = Some(NodeStatus::default());
        n
    }

    fn cordoned(mut n: Node) -> Node {
        n.spec = Some(NodeSpec {
            unschedulable: Some(true),
            ..Default::default()
        });
        n
    }

    fn tainted(mut n: Node, key: &str, effect: &str) -> Node {
        n.spec = Some(NodeSpec {
            taints: Some(vec![Taint {
                key: key.into(),
                value: Some("x".into()),
                effect: effect.into(),
                ..Default::default()
            }]),
            ..Default::default()
        });
        n
    }

    fn needs(gpu: Option<(&str, i64)>) -> Needs {
        Needs {
            source_node: "src".into(),
            gpu: gpu.map(|(r, n)| (r.to_string(), n)),
            ..Default::default()
        }
    }

    fn ready(nodes: &[Node]) -> Vec<Candidate<'_>> {
        nodes
            .iter()
            .map(|node| Candidate {
                node,
                agent_ready: true,
                gpus_in_use: 0,
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        needs: Needs,
        nodes: Vec<Node>,
        in_use: Vec<i64>,
        agents: Vec<bool>,
        want: Result<&'static str, &'static str>,
    }

    fn case(name: &'static str, needs: Needs, nodes: Vec<Node>) -> Case {
        let n = nodes.len();
        Case {
            name,
            needs,
            nodes,
            in_use: vec![0; n],
            agents: vec![true; n],
            want: Err(""),
        }
    }

    impl Case {
        fn picks(mut self, node: &'static str) -> Self {
            self.want = Ok(node);
            self
        }
        fn fails(mut self, message: &'static str) -> Self {
            self.want = Err(message);
            self
        }
        fn in_use(mut self, in_use: Vec<i64>) -> Self {
            self.in_use = in_use;
            self
        }
        fn agents(mut self, agents: Vec<bool>) -> Self {
            self.agents = agents;
            self
        }
    }

    #[test]
    fn node_selection_follows_the_table() {
        let amd = Some(("amd.com/gpu", 2));
        let mut selector = needs(None);
        selector.node_selector.insert("pool".into(), "a".into());
        let mut tolerant = needs(None);
        tolerant.tolerations = vec![Toleration {
            key: Some("dedicated".into()),
            operator: Some("Exists".into()),
            ..Default::default()
        }];
        let pool = ferry_api::names::label::MIGRATION_POOL;
        let mut pooled = needs(None);
        pooled.pool = Some("red".into());
        let mut mi300 = needs(amd);
        mi300.product = Some(("amd.com/gpu.product-name".into(), "MI300X".into()));
        let cases = vec![
            case("the source node is never picked", needs(None), vec![node("src"), node("b")]).picks("b"),
            case("ties on free GPUs go to the smallest name", needs(None), vec![node("c"), node("b")]).picks("b"),
            case(
                "a NotReady node, a cordoned node and the source are each rejected with their reason",
                needs(None),
                vec![not_ready(node("a")), cordoned(node("b")), node("src")],
            )
            .fails("a: NotReady; b: cordoned; src: the pod's own node"),
            case("a node without a ready agent is rejected", needs(None), vec![node("a"), node("b")])
                .agents(vec![false, true])
                .picks("b"),
            case("the request's node selector narrows the pick", selector.clone(), vec![node("a"), with_label(node("b"), "pool", "a")])
                .picks("b"),
            case("a selector no node matches names the missing label", selector, vec![node("a")])
                .fails("a: label pool=a missing"),
            case("an untolerated NoSchedule taint rejects a node", needs(None), vec![tainted(node("a"), "dedicated", "NoSchedule"), node("b")])
                .picks("b"),
            case("a PreferNoSchedule taint does not", needs(None), vec![tainted(node("a"), "dedicated", "PreferNoSchedule")])
                .picks("a"),
            case("a tolerated taint does not", tolerant, vec![tainted(node("a"), "dedicated", "NoExecute")]).picks("a"),
            case(
                "a GPU pod goes to the node with the most free GPUs of its vendor",
                needs(amd),
                vec![
                    with_gpus(node("a"), "amd.com/gpu", 8),
                    with_gpus(node("b"), "amd.com/gpu", 8),
                    with_gpus(node("c"), "nvidia.com/gpu", 8),
                ],
            )
            .in_use(vec![4, 1, 0])
            .picks("b"),
            case(
                "nodes without enough free GPUs of the vendor are rejected with counts",
                needs(amd),
                vec![with_gpus(node("a"), "amd.com/gpu", 8), with_gpus(node("c"), "nvidia.com/gpu", 8)],
            )
            .in_use(vec![8, 0])
            .fails("a: 0/8 free amd.com/gpu, needs 2; c: 0/0 free amd.com/gpu, needs 2"),
            case(
                "a different GPU product is rejected where the node carries the label",
                mi300,
                vec![
                    with_label(with_gpus(node("a"), "amd.com/gpu", 8), "amd.com/gpu.product-name", "MI250"),
                    with_gpus(node("b"), "amd.com/gpu", 4),
                    with_label(with_gpus(node("c"), "amd.com/gpu", 2), "amd.com/gpu.product-name", "MI300X"),
                ],
            )
            .picks("b"),
            case("an empty cluster says so", needs(None), vec![]).fails("the cluster has no other node"),
            case(
                "a pod from a pool goes only to a node of the same pool",
                pooled.clone(),
                vec![node("a"), with_label(node("b"), pool, "blue"), with_label(node("c"), pool, "red")],
            )
            .picks("c"),
            case("no node of the pool: each other node is named with its pool", pooled, vec![node("a"), with_label(node("b"), pool, "blue")])
                .fails("a: no migration pool, the pod's node is in migration pool red; b: migration pool blue, the pod's node is in migration pool red"),
            case("a pod from no pool does not go into one", needs(None), vec![with_label(node("a"), pool, "red"), node("b")]).picks("b"),
        ];
        let mut failures = Vec::new();
        for c in cases {
            let candidates: Vec<Candidate<'_>> = ready(&c.nodes)
                .into_iter()
                .zip(c.in_use.iter().zip(&c.agents))
                .map(|(cand, (used, agent))| Candidate {
                    gpus_in_use: *used,
                    agent_ready: *agent,
                    ..cand
                })
                .collect();
            let got = select_target(&c.needs, &candidates);
            let ok = match (&got, c.want) {
                (Ok(p), Ok(n)) => p.node == n,
                (Err(r), Err(m)) => r.to_string() == m,
                _ => false,
            };
            if !ok {
                failures.push(format!(
                    "{}: got {got:?} / {:?}, want {:?}",
                    c.name,
                    got.as_ref().err().map(ToString::to_string),
                    c.want
                ));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn a_pods_gpu_request_sums_containers_and_reads_limits() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "nodeName": "src",
                "containers": [
                    {"name": "a", "resources": {"limits": {"amd.com/gpu": "2"}}},
                    {"name": "b", "resources": {"requests": {"amd.com/gpu": "1"}, "limits": {"amd.com/gpu": "1"}}},
                ],
            }
        }))
        .unwrap();
        assert_eq!(gpu_request(&pod), Some(("amd.com/gpu".into(), 3)));
        let source = with_label(node("src"), "amd.com/gpu.product-name", "MI300X");
        let needs = Needs::of_pod(&pod, Some(&source), &BTreeMap::new());
        assert_eq!(
            needs.product,
            Some(("amd.com/gpu.product-name".into(), "MI300X".into()))
        );
        assert_eq!(needs.source_node, "src");
    }

    #[test]
    fn a_pod_pinned_to_its_node_migrates_where_its_other_constraints_hold() {
        // A pod pinned to "src" by hostname, in nodeSelector and in required affinity, that
        // also needs an H100 node in zone z1 or z2.
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "spec": {
                "nodeName": "src",
                "nodeSelector": {"kubernetes.io/hostname": "src", "pool": "train"},
                "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["src"]},
                        {"key": "gpu", "operator": "In", "values": ["h100"]},
                        {"key": "zone", "operator": "NotIn", "values": ["z3"]},
                    ]}],
                }}},
                "containers": [{"name": "a"}],
            }
        }))
        .unwrap();
        let needs = Needs::of_pod(&pod, None, &BTreeMap::new());
        assert!(!needs.node_selector.contains_key("kubernetes.io/hostname"));
        let labelled = |name: &str, gpu: &str, zone: &str| {
            let n = with_label(node(name), "kubernetes.io/hostname", name);
            let n = with_label(n, "pool", "train");
            with_label(with_label(n, "gpu", gpu), "zone", zone)
        };
        let nodes = vec![
            labelled("a-mi300", "mi300", "z1"),
            labelled("b-z3", "h100", "z3"),
            labelled("c-ok", "h100", "z1"),
        ];
        let pick = select_target(&needs, &ready(&nodes)).unwrap();
        assert_eq!(pick.node, "c-ok");
        let err = select_target(&needs, &ready(&nodes[..2])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "a-mi300: required node affinity not met (gpu In [h100]); \
             b-z3: required node affinity not met (zone NotIn [z3])"
        );
        let unlabelled = node("d");
        assert_eq!(
            fits_constraints(&needs, &unlabelled),
            Err(Rejection::Selector {
                key: "pool".into(),
                want: "train".into()
            })
        );
    }

    #[test]
    fn a_long_rejection_list_is_cut_with_a_count() {
        let r = Rejections(
            (0..1000)
                .map(|i| (format!("kwok-node-{i:04}"), Rejection::NotReady))
                .collect(),
        );
        let text = r.to_string();
        assert!(text.len() < MESSAGE_LIMIT + 100, "{}", text.len());
        assert!(text.ends_with("more nodes"), "{text}");
    }
}
