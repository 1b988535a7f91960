//! Agent readiness: the agent holds the Lease `ferry-agent-<node>` in the agents' namespace
//! and renews it; its annotations tell the operator where the transfer server listens and
//! which certificate it serves, which the operator copies into Restore tasks so the pulling
//! agent pins it. The protocol (names, body, ready rule, endpoint format) is
//! [`ferry_api::agent_lease`]; this module applies it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use ferry_api::agent_lease;
use ferry_api::names::field_manager;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

/// The Lease this agent renews.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The agents' namespace.
    pub namespace: String,
    /// This node.
    pub node: String,
    /// Base URL of this agent's transfer server.
    pub transfer_endpoint: String,
    /// SHA-256 (hex) of the transfer server's certificate.
    pub cert_sha256: String,
    /// Validity after each renewal.
    pub duration: Duration,
    /// Renewal period.
    pub renew_every: Duration,
}

/// The Lease as this agent applies it.
pub fn lease_body(config: &LeaseConfig, now: Timestamp) -> serde_json::Value {
    agent_lease::apply_body(
        &config.namespace,
        &config.node,
        &config.transfer_endpoint,
        &config.cert_sha256,
        config.duration.as_secs(),
        now,
    )
}

/// The URL other agents pull from, published on the Lease: `advertise` if given, else the
/// node's IP (`NODE_IP`) with the transfer server's port, else the address it listens on.
pub fn advertise_url(
    advertise: Option<&str>,
    node_ip: Option<&str>,
    listening: SocketAddr,
) -> String {
    match (advertise, node_ip) {
        (Some(url), _) => url.to_string(),
        (None, Some(ip)) => agent_lease::endpoint_url(ip, listening.port()),
        (None, None) => format!("https://{listening}"),
    }
}

/// Renews the Lease until `shutdown` turns true. `ready` follows whether the Lease is valid:
/// set after each renewal, cleared when a whole lease duration passed without one.
pub async fn run(
    client: Client,
    config: LeaseConfig,
    ready: Arc<AtomicBool>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let name = agent_lease::lease_name(&config.node);
    let params = PatchParams::apply(&field_manager::agent(&config.node)).force();
    let mut last_renewal: Option<Instant> = None;
    loop {
        match api
            .patch(
                &name,
                &params,
                &Patch::Apply(lease_body(&config, Timestamp::now())),
            )
            .await
        {
            Ok(_) => {
                if last_renewal.is_none() {
                    info!(lease = %name, namespace = %config.namespace, endpoint = %config.transfer_endpoint, "agent lease acquired");
                }
                last_renewal = Some(Instant::now());
                ready.store(true, Ordering::Relaxed);
            }
            Err(e) => {
                warn!(lease = %name, error = %e, "could not renew the agent lease");
                if last_renewal.is_none_or(|t| t.elapsed() >= config.duration) {
                    ready.store(false, Ordering::Relaxed);
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(config.renew_every) => {}
            _ = shutdown.wait_for(|stop| *stop) => break,
        }
    }
    // The Lease is left to expire: a restarting agent (DaemonSet update) picks up where this
    // one stopped, and the operator only needs it to be live when it creates a task.
    ready.store(false, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_carries_the_endpoint_and_the_certificate() {
        let config = LeaseConfig {
            namespace: "ferry-system".into(),
            node: "node-a".into(),
            transfer_endpoint: "https://10.0.0.7:9443".into(),
            cert_sha256: "ab".repeat(32),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        };
        let body = lease_body(&config, Timestamp::UNIX_EPOCH);
        assert_eq!(body["metadata"]["name"], "ferry-agent-node-a");
        assert_eq!(
            body["metadata"]["annotations"][agent_lease::TRANSFER_ENDPOINT],
            "https://10.0.0.7:9443"
        );
        assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(body["spec"]["renewTime"], "1970-01-01T00:00:00.000000Z");
        let lease: Lease = serde_json::from_value(body).unwrap();
        assert!(lease.spec.unwrap().renew_time.is_some());
    }

    #[test]
    fn the_advertised_url_brackets_an_ipv6_node_ip() {
        let listening: SocketAddr = "0.0.0.0:9443".parse().unwrap();
        assert_eq!(
            advertise_url(Some("https://x:1"), Some("10.0.0.7"), listening),
            "https://x:1"
        );
        assert_eq!(
            advertise_url(None, Some("10.0.0.7"), listening),
            "https://10.0.0.7:9443"
        );
        assert_eq!(
            advertise_url(None, Some("fd00::7"), listening),
            "https://[fd00::7]:9443"
        );
        let v6: SocketAddr = "[::1]:9443".parse().unwrap();
        assert_eq!(advertise_url(None, None, v6), "https://[::1]:9443");
    }
}
