//! Names the real nodes and the harness's host resources share: node names, labels, the
//! harness cgroup, the lock file, bridge names.

/// The label every real node carries (`ferry.dev/e2e-node: real`).
pub const REAL_NODE_LABEL: &str = "ferry.dev/e2e-node";

/// The top-level cgroup (in every hierarchy) under which each node's kubelet gets its
/// `cgroupRoot`, so the two kubelets do not take each other's pod cgroups for orphans.
pub const CGROUP_PARENT: &str = "ferry-e2e";

/// The host-wide lock real-node clusters take turns on.
pub const LOCK_FILE: &str = "/run/lock/ferry-e2e-real-nodes.lock";

/// The prefix of the nodes' CNI bridges (`ferry-a0`, `ferry-b0`, ...).
pub(super) const BRIDGE_PREFIX: &str = "ferry-";

/// The name of the `index`th real node: `ferry-node-a`, `ferry-node-b`, ...
pub fn node_name(index: usize) -> String {
    format!("ferry-node-{}", node_letter(index))
}

pub(super) fn node_letter(index: usize) -> char {
    // 26 nodes is far more than a 2-core machine runs; past that the letters wrap and the
    // start fails on a duplicate name, which says what happened.
    let offset = u8::try_from(index % 26).unwrap_or(0);
    char::from(b'a' + offset)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_by_letter() {
        assert_eq!(node_name(0), "ferry-node-a");
        assert_eq!(node_name(1), "ferry-node-b");
        assert_eq!(node_name(25), "ferry-node-z");
    }
}
