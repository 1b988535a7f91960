//! The counter workload of the real-node tests: a static binary (image [`COUNTER_IMAGE`],
//! imported into every real node) that prints `ferry-counter <n>` every interval. A restored
//! copy goes on from the checkpoint's count, which a fresh start cannot reach in time.

use std::time::Duration;

use crate::{COUNTER_IMAGE, Cluster, Result};

/// A counter pod `namespace`/`name` pinned to `node` by its hostname label (through the
/// scheduler, not `spec.nodeName`: the scheduler must see the node fit), counting every
/// `interval_ms`.
pub fn pod(name: &str, namespace: &str, node: &str, interval_ms: u32) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "namespace": namespace, "labels": { "app": "ferry-counter" } },
        "spec": {
            "nodeSelector": { "kubernetes.io/hostname": node },
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 2,
            "containers": [{
                "name": "counter",
                "image": COUNTER_IMAGE,
                "imagePullPolicy": "Never",
                "args": [interval_ms.to_string()],
            }],
        },
    })
    .to_string()
}

/// Creates `manifest`, retrying while admission rejects it: pods are refused until the
/// service-account controller has made the namespace's default ServiceAccount, a moment after
/// the controllers start.
pub fn create(cluster: &Cluster, manifest: &str) -> Result<()> {
    cluster.poll(
        "creating a pod",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || match cluster.kubectl_stdin(&["create", "-f", "-"], Some(manifest)) {
            Ok(_) => Ok(Some(())),
            Err(e) => Err(e.to_string()),
        },
    )
}

/// The count in a line `ferry-counter <n>` (kubectl's log) or `<time> stdout F ferry-counter
/// <n>` (a CRI log file).
pub fn count_of(line: &str) -> Option<u64> {
    let (_, n) = line.split_once("ferry-counter ")?;
    n.trim().parse().ok()
}

/// Every count in `log`, in order.
pub fn counts(log: &str) -> Vec<u64> {
    log.lines().filter_map(count_of).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_kubectl_and_cri_logs() {
        let log = "ferry-counter 1\n2026-11-26T07:00:00Z stdout F ferry-counter 2\nnoise\n";
        assert_eq!(counts(log), [1, 2]);
        assert_eq!(count_of("ferry-counter x"), None);
    }
}
