//! What every reconcile gets: the settings ([`Config`]) and the shared [`Context`] (client,
//! Event recorder, metrics, and the caches of requests, nodes and agent Leases).
//!
//! A leaf of the controller: the phases read it, and nothing here reaches back into them.

use std::sync::Arc;
use std::time::Duration;

use ferry_api::CheckpointRequest;
use ferry_api::agent_lease;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::Client;
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::metrics::Metrics;

/// The operator's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of the agents' Leases (see [`crate::agents`]).
    pub agent_namespace: String,
    /// How often an active request is looked at without a watch event.
    pub active_requeue: Duration,
    /// How long deletion waits for the agents to delete images before giving up on them.
    pub cleanup_timeout: Duration,
    /// The Event reporter instance (the pod name).
    pub instance: String,
    /// Reconciles at once (0: unbounded). Bounded, a burst of requests queues in the
    /// operator instead of as concurrent calls in the API server, which keeps each
    /// reconcile's round trips short.
    pub concurrency: u16,
    /// How long every container of a restored pod must have run, ready and never restarted,
    /// before a migration deletes its source pod: phase Running alone is one container of
    /// several, or one about to crash.
    pub restore_settle: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            agent_namespace: "ferry-system".to_string(),
            active_requeue: Duration::from_secs(10),
            cleanup_timeout: Duration::from_secs(60),
            instance: "ferry-operator".to_string(),
            concurrency: 16,
            restore_settle: Duration::from_secs(5),
        }
    }
}

/// What every reconcile gets.
#[derive(Clone)]
pub struct Context {
    /// The API client.
    pub client: Client,
    /// Publishes Events on requests.
    pub recorder: Recorder,
    /// The operator's metrics.
    pub metrics: Arc<Metrics>,
    /// Settings.
    pub config: Config,
    /// The controller's cache of requests (for the one-request-per-pod rule).
    pub requests: Store<CheckpointRequest>,
    /// Every node.
    pub nodes: Store<Node>,
    /// The Leases in the agents' namespace.
    pub leases: Store<Lease>,
}

impl Context {
    /// The readiness Lease of the agent on `node`, from the cache.
    pub fn agent_lease(&self, node: &str) -> Option<Arc<Lease>> {
        self.leases.get(
            &ObjectRef::new(&agent_lease::lease_name(node)).within(&self.config.agent_namespace),
        )
    }

    /// Whether a ferry agent is ready on `node` (its Lease is live now).
    pub fn agent_ready(&self, node: &str) -> bool {
        self.agent_lease(node)
            .is_some_and(|l| agent_lease::is_live(&l, Timestamp::now()))
    }

    /// The node `name`, from the cache.
    pub fn node(&self, name: &str) -> Option<Arc<Node>> {
        self.nodes.get(&ObjectRef::new(name))
    }
}
