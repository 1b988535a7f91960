//! Real kubelet + containerd nodes on this machine, several at once: each node has its own
//! containerd (root, state, sockets, runc root, CNI bridge and subnet), its own kubelet (root
//! dir, ports, pod log dir, cgroup root), and certificates from the cluster's PKI. They share
//! the host's network namespace and IP address, told apart by port, which is all the API
//! server needs to reach them (logs, exec, the checkpoint API).
//!
//! Nothing is pulled from a registry: the build script makes the sandbox (pause) and workload
//! images as OCI archives, and each node imports them into its containerd before its kubelet
//! starts; pods use `imagePullPolicy: Never`.
//!
//! Some resources are host-wide whatever the configuration (the kubelet's device-plugin socket
//! under `/var/lib/kubelet`, CNI routes for the pod subnets), so real-node clusters on one
//! machine take turns: [`NodeLock`] is an exclusive lock that a cluster holds while its nodes
//! run. Holding it also means that anything left by an earlier real-node run (processes in
//! the harness's cgroups, shims, mounts, bridges) is stale, and [`sweep_stale`] removes it.

mod cleanup;
mod files;
mod host;
mod image;
mod lock;
mod names;
mod real;

pub use cleanup::{remove_cgroups, sweep_stale};
pub use host::{host_ip, unsupported_reason};
pub use image::{CHECKPOINT_ANNOTATION, checkpoint_image};
pub use lock::{
    HOST_DIRS, KUBELET_SYSCTLS, NodeLock, SAVED_SYSCTLS_FILE, reclaim_stale_cluster_dir,
};
pub use names::{CGROUP_PARENT, LOCK_FILE, REAL_NODE_LABEL, node_name};
pub use real::{NodeContext, RealNode};
