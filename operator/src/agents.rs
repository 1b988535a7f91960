//! Whether a ferry node agent is ready on a node, and where its transfer server listens.
//!
//! **Agent readiness**: the agent on node `N` holds a `coordination.k8s.io/v1` Lease named
//! `ferry-agent-<N>` in the agents' namespace (`--agent-namespace`, default `ferry-system`)
//! and renews it while it serves. The agent is ready while `spec.renewTime +
//! spec.leaseDurationSeconds` is in the future. The Lease's annotation
//! `ferry.dev/transfer-endpoint` (e.g. `https://10.0.0.7:9443`) is where other agents pull
//! its images; without it the operator uses `https://<node InternalIP>:9443`.

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

pub use ferry_api::names::agent::{DEFAULT_TRANSFER_PORT, LEASE_PREFIX, lease_name};
use ferry_api::names::annotation::TRANSFER_CERT_SHA256;
/// Annotation on the agent's Lease: its transfer server's base URL.
pub use ferry_api::names::annotation::TRANSFER_ENDPOINT as TRANSFER_ENDPOINT_ANNOTATION;

/// The SHA-256 of the agent's transfer certificate, from its Lease: Restore tasks pin it.
pub fn transfer_cert_sha256(lease: Option<&Lease>) -> Option<String> {
    lease
        .and_then(|l| l.metadata.annotations.as_ref())
        .and_then(|a| a.get(TRANSFER_CERT_SHA256))
        .filter(|v| is_sha256_hex(v))
        .cloned()
}

/// Whether `value` is a SHA-256 digest in lower-case hex (what the NodeTask schema takes).
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Whether `lease` was renewed within its duration, as of `now`.
pub fn lease_is_live(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    let (Some(renewed), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return false;
    };
    renewed.0 + SignedDuration::from_secs(i64::from(seconds)) > now
}

/// The agent's transfer endpoint: the Lease's annotation, else the node's InternalIP.
pub fn transfer_endpoint(lease: Option<&Lease>, node: Option<&Node>, name: &str) -> String {
    if let Some(url) = lease
        .and_then(|l| l.metadata.annotations.as_ref())
        .and_then(|a| a.get(TRANSFER_ENDPOINT_ANNOTATION))
    {
        return url.clone();
    }
    let address = node
        .and_then(|n| n.status.as_ref()?.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.clone())
        .unwrap_or_else(|| name.to_string());
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address
    };
    format!("https://{host}:{DEFAULT_TRANSFER_PORT}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    fn lease(renewed: Timestamp, seconds: i32) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: Some(MicroTime(renewed)),
                lease_duration_seconds: Some(seconds),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_live_until_its_duration_after_the_last_renewal() {
        let now = Timestamp::now();
        assert!(lease_is_live(
            &lease(now - SignedDuration::from_secs(5), 10),
            now
        ));
        assert!(!lease_is_live(
            &lease(now - SignedDuration::from_secs(11), 10),
            now
        ));
        assert!(!lease_is_live(&Lease::default(), now));
    }

    #[test]
    fn the_transfer_endpoint_falls_back_to_the_node_address() {
        let node: Node = serde_json::from_value(serde_json::json!({
            "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.7"}]}
        }))
        .unwrap();
        assert_eq!(
            transfer_endpoint(None, Some(&node), "n"),
            "https://10.0.0.7:9443"
        );
        assert_eq!(transfer_endpoint(None, None, "n"), "https://n:9443");
    }
}
