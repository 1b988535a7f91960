//! Nodes of the cluster: kwok nodes made on demand, and waiting for nodes to be Ready.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Cluster, KWOK_NODE_ANNOTATION, KWOK_NODE_LABEL, KWOK_NODE_TAINT};
use crate::error::Result;

impl Cluster {
    /// Creates `count` kwok nodes (named `kwok-node-<n>`, continuing the numbering across
    /// calls) and returns their names. kwok must be running ([`Options::kwok`]) for them to
    /// become Ready; see [`Cluster::wait_nodes_ready`].
    pub fn add_kwok_nodes(&self, count: usize) -> Result<Vec<String>> {
        let first = self.next_node.fetch_add(count, Ordering::SeqCst);
        let names: Vec<String> = (first..first + count)
            .map(|i| format!("kwok-node-{i:04}"))
            .collect();
        let items: Vec<serde_json::Value> = names.iter().map(|n| kwok_node(n)).collect();
        let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": items });
        self.kubectl_stdin(
            &["create", "-f", "-", "-o", "name"],
            Some(&list.to_string()),
        )?;
        Ok(names)
    }

    /// The names of every node of the cluster (kwok and real), as the API server lists them.
    pub fn node_names(&self) -> Result<Vec<String>> {
        Ok(self
            .kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }

    /// Waits until every kwok node in `names` has condition Ready=True; returns how long it took.
    pub fn wait_nodes_ready(&self, names: &[String], timeout: Duration) -> Result<Duration> {
        let selector = format!("{KWOK_NODE_LABEL}=true");
        self.wait_labelled_nodes_ready(names, &selector, timeout)
    }

    /// Waits until every node in `names` (among those matching `selector`) is Ready and carries
    /// no `not-ready`/`unreachable` taint. The API server's TaintNodesByCondition admission
    /// adds `not-ready` to every new node and kube-controller-manager's node lifecycle
    /// controller lifts it once the node is Ready; clusters started without the controllers
    /// would keep it forever, so for a Ready node the harness lifts it the same way.
    /// Schedulers and ferry's target checks honour these taints.
    pub(super) fn wait_labelled_nodes_ready(
        &self,
        names: &[String],
        selector: &str,
        timeout: Duration,
    ) -> Result<Duration> {
        let want: HashSet<&str> = names.iter().map(String::as_str).collect();
        let began = Instant::now();
        let jsonpath = r#"jsonpath={range .items[*]}{.metadata.name}{" "}{.status.conditions[?(@.type=="Ready")].status}{" "}{.spec.taints[*].key}{"\n"}{end}"#;
        self.poll(
            &format!("{} nodes ({selector}) becoming Ready", names.len()),
            timeout,
            Duration::from_millis(500),
            || {
                let out = self
                    .kubectl(&["get", "nodes", "-l", selector, "-o", jsonpath])
                    .map_err(|e| e.to_string())?;
                let mut ready = 0;
                for (name, rest) in out.lines().filter_map(|l| l.split_once(' ')) {
                    let mut fields = rest.split(' ');
                    if fields.next() != Some("True") || !want.contains(name) {
                        continue;
                    }
                    let lifecycle: Vec<&str> = fields
                        .filter(|t| {
                            *t == "node.kubernetes.io/not-ready"
                                || *t == "node.kubernetes.io/unreachable"
                        })
                        .collect();
                    if lifecycle.is_empty() {
                        ready += 1;
                        continue;
                    }
                    for taint in lifecycle {
                        // Already gone (the controller was faster) is fine: next round looks again.
                        let _ = self
                            .kubectl_output(&["taint", "nodes", name, &format!("{taint}-")], None);
                    }
                }
                if ready == want.len() {
                    Ok(Some(()))
                } else {
                    Err(format!("{ready} of {} Ready", want.len()))
                }
            },
        )?;
        Ok(began.elapsed())
    }
}

/// A kwok node: annotated for kwok, labelled for the harness, tainted so that only pods that
/// tolerate it are scheduled there; kwok fills in conditions, addresses and the lease.
fn kwok_node(name: &str) -> serde_json::Value {
    let resources = serde_json::json!({ "cpu": "32", "memory": "256Gi", "pods": "110" });
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {
                KWOK_NODE_ANNOTATION: "fake",
                "node.alpha.kubernetes.io/ttl": "0",
            },
            "labels": {
                KWOK_NODE_LABEL: "true",
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "kubernetes.io/role": "agent",
            },
        },
        "spec": {
            "taints": [{ "key": KWOK_NODE_TAINT, "value": "fake", "effect": "NoSchedule" }],
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
        },
    })
}
