//! Whether a ferry node agent is ready on a node, and where its transfer server listens: the
//! operator's reading of the agent Lease protocol ([`ferry_api::agent_lease`], which also
//! says what the agent writes).

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;

use ferry_api::agent_lease;

/// The agent's transfer endpoint: the Lease's annotation, else the node's InternalIP (else
/// the node's name).
pub fn transfer_endpoint(lease: Option<&Lease>, node: Option<&Node>, name: &str) -> String {
    let address = node
        .and_then(|n| n.status.as_ref()?.addresses.as_ref())
        .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
        .map(|a| a.address.as_str())
        .unwrap_or(name);
    agent_lease::transfer_endpoint(lease, address)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::agent_lease::is_live as lease_is_live;
    use jiff::{SignedDuration, Timestamp};
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
