//! The agent Lease protocol: how a node agent tells the operator that it is ready and where
//! its transfer server listens. Written by the agent, read by the operator; pure data and
//! functions, the I/O (applying, watching) stays with them.
//!
//! - **Name**: the agent on node `N` holds the `coordination.k8s.io/v1` Lease
//!   [`lease_name`]`(N)` (`ferry-agent-<N>`) in the agents' namespace (default
//!   [`DEFAULT_NAMESPACE`]), applied with server-side apply ([`apply_body`]).
//! - **Ready rule** ([`is_live`]): the agent is ready while `spec.renewTime +
//!   spec.leaseDurationSeconds` is in the future.
//! - **Endpoint** ([`TRANSFER_ENDPOINT`]): the base URL other agents pull its images from,
//!   `https://<host>:<port>` with an IPv6 host in brackets ([`endpoint_url`]); without it the
//!   operator uses `https://<node InternalIP>:`[`DEFAULT_TRANSFER_PORT`].
//! - **Certificate** ([`TRANSFER_CERT_SHA256`]): SHA-256 (lower-case hex) of the transfer
//!   server's certificate, which the operator copies into Restore tasks so that the pulling
//!   agent pins it; a value that is not such a digest is ignored.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

pub use crate::names::agent::{DEFAULT_NAMESPACE, DEFAULT_TRANSFER_PORT, LEASE_PREFIX, lease_name};
pub use crate::names::annotation::{TRANSFER_CERT_SHA256, TRANSFER_ENDPOINT};

/// `host` as a URL's host: an IPv6 address in brackets (`fd00::7` → `[fd00::7]`), anything
/// else as it is.
pub fn bracket_host(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// A URL's host without IPv6 brackets (`[fd00::7]` → `fd00::7`), what a socket connects to.
pub fn unbracket_host(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

/// The transfer endpoint `https://<host>:<port>`, an IPv6 host in brackets.
pub fn endpoint_url(host: &str, port: u16) -> String {
    format!("https://{}:{port}", bracket_host(host))
}

/// Whether `value` is a SHA-256 digest in lower-case hex (what the NodeTask schema takes).
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64
        && value
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// `renewTime` as the agent writes it (a `MicroTime`: microseconds, UTC).
pub fn renew_time(now: Timestamp) -> String {
    now.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// The Lease the agent on `node` applies (server-side apply) at `now`: its name, the
/// endpoint and certificate annotations, the holder and the validity.
pub fn apply_body(
    namespace: &str,
    node: &str,
    transfer_endpoint: &str,
    cert_sha256: &str,
    duration_seconds: u64,
    now: Timestamp,
) -> serde_json::Value {
    let annotations = BTreeMap::from([
        (TRANSFER_ENDPOINT, transfer_endpoint),
        (TRANSFER_CERT_SHA256, cert_sha256),
    ]);
    serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": lease_name(node),
            "namespace": namespace,
            "annotations": annotations,
        },
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": duration_seconds.max(1),
            "renewTime": renew_time(now),
        },
    })
}

fn annotation<'a>(lease: Option<&'a Lease>, key: &str) -> Option<&'a String> {
    lease
        .and_then(|l| l.metadata.annotations.as_ref())
        .and_then(|a| a.get(key))
}

/// The ready rule: whether `lease` was renewed within its duration, as of `now`.
pub fn is_live(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return false;
    };
    let (Some(renewed), Some(seconds)) = (spec.renew_time.as_ref(), spec.lease_duration_seconds)
    else {
        return false;
    };
    renewed.0 + SignedDuration::from_secs(i64::from(seconds)) > now
}

/// The agent's transfer endpoint: the Lease's annotation, else
/// `https://<fallback_host>:`[`DEFAULT_TRANSFER_PORT`] (the operator passes the node's
/// InternalIP).
pub fn transfer_endpoint(lease: Option<&Lease>, fallback_host: &str) -> String {
    match annotation(lease, TRANSFER_ENDPOINT) {
        Some(url) => url.clone(),
        None => endpoint_url(fallback_host, DEFAULT_TRANSFER_PORT),
    }
}

/// The SHA-256 of the agent's transfer certificate, from its Lease: Restore tasks pin it.
pub fn transfer_cert_sha256(lease: Option<&Lease>) -> Option<String> {
    annotation(lease, TRANSFER_CERT_SHA256)
        .filter(|v| is_sha256_hex(v))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_bracket_ipv6_hosts_only() {
        assert_eq!(endpoint_url("10.0.0.7", 9443), "https://10.0.0.7:9443");
        assert_eq!(endpoint_url("fd00::7", 9443), "https://[fd00::7]:9443");
        assert_eq!(endpoint_url("node-a", 443), "https://node-a:443");
        assert_eq!(unbracket_host("[fd00::7]"), "fd00::7");
        assert_eq!(unbracket_host("10.0.0.7"), "10.0.0.7");
        assert_eq!(unbracket_host(&bracket_host("fd00::7")), "fd00::7");
    }

    #[test]
    fn what_the_agent_applies_the_operator_reads() {
        let cert = "ab".repeat(32);
        let renewed = Timestamp::from_second(1_700_000_000).unwrap();
        let body = apply_body(
            "ferry-system",
            "node-a",
            "https://[fd00::7]:9443",
            &cert,
            15,
            renewed,
        );
        assert_eq!(body["metadata"]["name"], "ferry-agent-node-a");
        assert_eq!(body["spec"]["holderIdentity"], "node-a");
        let lease: Lease = serde_json::from_value(body).unwrap();
        assert_eq!(
            transfer_endpoint(Some(&lease), "10.0.0.9"),
            "https://[fd00::7]:9443"
        );
        assert_eq!(transfer_cert_sha256(Some(&lease)), Some(cert));
        assert!(is_live(&lease, renewed + SignedDuration::from_secs(14)));
        assert!(!is_live(&lease, renewed + SignedDuration::from_secs(15)));
    }

    #[test]
    fn a_lease_without_annotations_falls_back_and_a_bad_digest_is_ignored() {
        assert_eq!(transfer_endpoint(None, "fd00::9"), "https://[fd00::9]:9443");
        let lease: Lease = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {TRANSFER_CERT_SHA256: "AB".repeat(32)}}
        }))
        .unwrap();
        assert_eq!(transfer_cert_sha256(Some(&lease)), None);
        assert!(!is_live(&lease, Timestamp::UNIX_EPOCH));
        assert!(is_sha256_hex(&"0f".repeat(32)));
        assert!(!is_sha256_hex("0f"));
    }

    #[test]
    fn the_duration_is_at_least_a_second_and_renew_time_is_a_micro_time() {
        let body = apply_body("ns", "n", "https://a:1", "c", 0, Timestamp::UNIX_EPOCH);
        assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
        assert_eq!(body["spec"]["renewTime"], "1970-01-01T00:00:00.000000Z");
    }
}
