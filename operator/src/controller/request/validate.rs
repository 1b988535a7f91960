//! The checks of a Pending request that need no node choice, as pure functions of what the
//! start phase read: another request for the pod, the pod, the agent on its node, the PVC.
//! Each failure is the request's reason and message.

use std::sync::Arc;

use ferry_api::agent_lease;
use ferry_api::names::reason;
use ferry_api::{CheckpointRequest, CheckpointRequestSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::{Resource, ResourceExt};

use super::step::Failure;

/// Another unfinished request for the same pod that came first (older, or as old with a
/// smaller name), if any, among `requests`.
pub fn earlier_active_request(
    req: &CheckpointRequest,
    requests: &[Arc<CheckpointRequest>],
) -> Option<String> {
    let ns = req.namespace();
    let mine = (req.creation_timestamp().map(|t| t.0), req.name_any());
    requests
        .iter()
        .filter(|o| {
            o.namespace() == ns && o.spec.pod_name == req.spec.pod_name && o.uid() != req.uid()
        })
        .filter(|o| !o.phase().is_terminal() && o.meta().deletion_timestamp.is_none())
        .filter(|o| (o.creation_timestamp().map(|t| t.0), o.name_any()) < mine)
        .map(|o| o.name_any())
        .min()
}

/// One request at a time per pod: fails when `other` is active for it.
pub fn no_other_request(
    spec: &CheckpointRequestSpec,
    other: Option<String>,
) -> Result<(), Failure> {
    match other {
        None => Ok(()),
        Some(other) => Err(Failure::new(
            reason::REQUEST_ALREADY_ACTIVE,
            format!(
                "request {other} is already active for pod {}; one request at a time per pod",
                spec.pod_name
            ),
        )),
    }
}

/// The pod to checkpoint does not exist.
pub fn pod_missing(spec: &CheckpointRequestSpec, ns: &str) -> Failure {
    Failure::new(
        reason::POD_NOT_FOUND,
        format!("pod {ns}/{} does not exist", spec.pod_name),
    )
}

/// The node of the pod to checkpoint: the pod must run there and have the containers the
/// spec names.
pub fn source_node(spec: &CheckpointRequestSpec, ns: &str, pod: &Pod) -> Result<String, Failure> {
    let pod_phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let source = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .unwrap_or_default();
    if pod_phase != "Running" || source.is_empty() {
        return Err(Failure::new(
            reason::POD_NOT_RUNNING,
            format!(
                "pod {ns}/{} is {} (node {}); only a Running pod can be checkpointed",
                spec.pod_name,
                if pod_phase.is_empty() {
                    "without a phase"
                } else {
                    &pod_phase
                },
                if source.is_empty() { "none" } else { &source }
            ),
        ));
    }
    let names: Vec<String> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter().map(|c| c.name.clone()))
        .collect();
    let missing: Vec<&String> = spec
        .containers
        .iter()
        .filter(|c| !names.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(Failure::new(
            reason::CONTAINER_NOT_FOUND,
            format!(
                "pod {ns}/{} has no container {}; its containers are {}",
                spec.pod_name,
                join(&missing),
                join(&names)
            ),
        ));
    }
    Ok(source)
}

/// The agent on the pod's node must be ready (its Lease in `agent_namespace` live).
pub fn source_agent(ready: bool, source: &str, agent_namespace: &str) -> Result<(), Failure> {
    if ready {
        return Ok(());
    }
    Err(Failure::new(
        reason::AGENT_NOT_READY,
        format!(
            "no ready ferry agent on the pod's node {source} (Lease {agent_namespace}/{} missing or expired); is the ferry-agent DaemonSet running there?",
            agent_lease::lease_name(source)
        ),
    ))
}

/// The PVC the image goes to must exist.
pub fn pvc(exists: bool, ns: &str, claim: &str) -> Result<(), Failure> {
    if exists {
        return Ok(());
    }
    Err(Failure::new(
        reason::PVC_NOT_FOUND,
        format!("PersistentVolumeClaim {ns}/{claim} for the image does not exist"),
    ))
}

fn join(items: &[impl AsRef<str>]) -> String {
    items
        .iter()
        .map(|s| s.as_ref())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::{CheckpointRequestStatus, RequestPhase};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::api::ObjectMeta;

    fn pod(phase: Option<&str>, node: Option<&str>) -> Pod {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"containers": [{"name": "main"}, {"name": "side"}]},
        }))
        .unwrap();
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = node.map(String::from);
        }
        pod.status = phase.map(|p| k8s_openapi::api::core::v1::PodStatus {
            phase: Some(p.into()),
            ..Default::default()
        });
        pod
    }

    /// The pod, the containers asked for, the node or the reason, words the message has.
    type Case = (
        Option<Pod>,
        &'static [&'static str],
        Result<&'static str, &'static str>,
        &'static [&'static str],
    );

    #[test]
    fn the_source_pod_must_exist_run_on_a_node_and_have_the_containers() {
        // (pod, containers asked for, the node or the reason, words the message has)
        let table: [Case; 7] = [
            (
                None,
                &[],
                Err(reason::POD_NOT_FOUND),
                &["ns/p does not exist"],
            ),
            (
                Some(pod(None, None)),
                &[],
                Err(reason::POD_NOT_RUNNING),
                &["without a phase", "node none"],
            ),
            (
                Some(pod(Some("Pending"), None)),
                &[],
                Err(reason::POD_NOT_RUNNING),
                &["is Pending"],
            ),
            (
                Some(pod(Some("Running"), None)),
                &[],
                Err(reason::POD_NOT_RUNNING),
                &["node none"],
            ),
            (Some(pod(Some("Running"), Some("a"))), &[], Ok("a"), &[]),
            (
                Some(pod(Some("Running"), Some("a"))),
                &["main"],
                Ok("a"),
                &[],
            ),
            (
                Some(pod(Some("Running"), Some("a"))),
                &["main", "gpu"],
                Err(reason::CONTAINER_NOT_FOUND),
                &["no container gpu", "main, side"],
            ),
        ];
        for (i, (pod, containers, expected, words)) in table.into_iter().enumerate() {
            let mut spec = CheckpointRequestSpec::for_pod("p");
            spec.containers = containers.iter().map(|c| c.to_string()).collect();
            let got = match &pod {
                Some(pod) => source_node(&spec, "ns", pod),
                None => Err(pod_missing(&spec, "ns")),
            };
            match (got, expected) {
                (Ok(node), Ok(want)) => assert_eq!(node, want, "case {i}"),
                (Err(f), Err(want)) => {
                    assert_eq!(f.reason, want, "case {i}");
                    for w in words {
                        assert!(f.message.contains(w), "case {i}: {}", f.message);
                    }
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn agents_pvcs_and_other_requests_fail_with_their_reasons() {
        let spec = CheckpointRequestSpec::for_pod("p");
        // (result, expected reason or none, words the message has)
        let table = [
            (source_agent(true, "a", "ferry-system"), None, ""),
            (
                source_agent(false, "a", "ferry-system"),
                Some(reason::AGENT_NOT_READY),
                "ferry-system/ferry-agent-a",
            ),
            (pvc(true, "ns", "c"), None, ""),
            (pvc(false, "ns", "c"), Some(reason::PVC_NOT_FOUND), "ns/c"),
            (no_other_request(&spec, None), None, ""),
            (
                no_other_request(&spec, Some("old".into())),
                Some(reason::REQUEST_ALREADY_ACTIVE),
                "request old",
            ),
        ];
        for (i, (got, expected, words)) in table.into_iter().enumerate() {
            assert_eq!(got.as_ref().err().map(|f| f.reason), expected, "case {i}");
            if let Err(f) = got {
                assert!(f.message.contains(words), "case {i}: {}", f.message);
            }
        }
    }

    fn other(
        name: &str,
        pod: &str,
        created: i64,
        phase: RequestPhase,
        deleting: bool,
    ) -> Arc<CheckpointRequest> {
        let mut r = CheckpointRequest::new(name, CheckpointRequestSpec::for_pod(pod));
        r.metadata = ObjectMeta {
            name: Some(name.into()),
            namespace: Some("ns".into()),
            uid: Some(format!("uid-{name}")),
            creation_timestamp: Some(Time(
                jiff::Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(created),
            )),
            deletion_timestamp: deleting.then_some(Time(jiff::Timestamp::UNIX_EPOCH)),
            ..Default::default()
        };
        r.status = Some(CheckpointRequestStatus {
            phase: Some(phase),
            ..Default::default()
        });
        Arc::new(r)
    }

    #[test]
    fn the_earliest_other_active_request_for_the_pod_wins() {
        use RequestPhase::*;
        let me = other("m", "p", 10, Pending, false);
        // (other requests, the one that blocks `me`)
        let table: [(Vec<Arc<CheckpointRequest>>, Option<&str>); 7] = [
            (vec![], None),
            (vec![me.clone()], None),
            (vec![other("a", "p", 5, Checkpointing, false)], Some("a")),
            (vec![other("a", "q", 5, Checkpointing, false)], None),
            (
                vec![
                    other("a", "p", 5, Succeeded, false),
                    other("b", "p", 5, Failed, false),
                ],
                None,
            ),
            (
                vec![
                    other("a", "p", 5, Pending, true),
                    other("z", "p", 20, Pending, false),
                ],
                None,
            ),
            // As old: the smaller name came first.
            (
                vec![
                    other("l", "p", 10, Pending, false),
                    other("a", "p", 10, Pending, false),
                    other("n", "p", 10, Pending, false),
                ],
                Some("a"),
            ),
        ];
        for (i, (requests, expected)) in table.into_iter().enumerate() {
            assert_eq!(
                earlier_active_request(&me, &requests).as_deref(),
                expected,
                "case {i}"
            );
        }
    }
}
