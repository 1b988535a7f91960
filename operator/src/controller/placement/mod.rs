//! Where a migration's pod may go, as pure functions of the pod and the nodes (table-tested
//! without a cluster):
//!
//! * [`affinity`]: the pod's node selector and required affinity, pins to the source dropped.
//! * [`needs`]: what the restored pod needs from its node.
//! * [`node_state`]: Ready, cordoned, taints tolerated.
//! * [`select`]: the check of one node and the pick among all.

pub mod affinity;
pub mod needs;
pub mod node_state;
pub mod select;
