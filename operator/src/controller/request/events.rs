//! The Events the operator publishes on a request: one per phase transition (what it says is
//! a pure function of the status, [`transition`]), and the warnings of deletion.

use ferry_api::names::condition;
use ferry_api::{CheckpointRequest, CheckpointRequestStatus, RequestPhase};
use kube::Resource;
use kube::runtime::events::{Event, EventType};
use tracing::warn;

use crate::controller::context::Context;

/// One Event: type, reason and note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Normal or Warning.
    pub type_: EventType,
    /// The Event's reason.
    pub reason: String,
    /// The Event's note.
    pub note: String,
}

/// The Event for the phase the status now has (none for Pending).
pub fn transition(req: &CheckpointRequest, st: &CheckpointRequestStatus) -> Option<Notice> {
    let phase = st.phase.unwrap_or_default();
    let ready = st.condition(condition::READY);
    let message = ready.map(|c| c.message.clone()).unwrap_or_default();
    let (type_, reason, note) = match phase {
        RequestPhase::Failed => (
            EventType::Warning,
            ready
                .map(|c| c.reason.clone())
                .unwrap_or_else(|| "Failed".into()),
            message,
        ),
        RequestPhase::Checkpointing => (
            EventType::Normal,
            "Checkpointing".into(),
            format!(
                "checkpointing pod {} on node {}{}",
                req.spec.pod_name,
                st.source_node.as_deref().unwrap_or_default(),
                st.target_node
                    .as_deref()
                    .map(|t| format!(", target node {t}"))
                    .unwrap_or_default()
            ),
        ),
        RequestPhase::Transferring => (
            EventType::Normal,
            "Transferring".into(),
            "checkpointed; transferring the image".into(),
        ),
        RequestPhase::Restoring => (
            EventType::Normal,
            "Restoring".into(),
            "image transferred; restoring".into(),
        ),
        RequestPhase::Succeeded => (EventType::Normal, "Succeeded".into(), message),
        RequestPhase::Pending => return None,
    };
    Some(Notice {
        type_,
        reason,
        note,
    })
}

/// Publishes the Event for the phase the status now has.
pub async fn publish_transition(
    req: &CheckpointRequest,
    ctx: &Context,
    st: &CheckpointRequestStatus,
) {
    if let Some(n) = transition(req, st) {
        event(ctx, req, n.type_, &n.reason, n.note).await;
    }
}

/// Publishes one Event on `req`; a failure to publish is logged, never fatal.
pub async fn event(
    ctx: &Context,
    req: &CheckpointRequest,
    type_: EventType,
    why: &str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: why.to_string(),
        note: Some(note),
        action: "Reconcile".to_string(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&ev, &req.object_ref(&())).await {
        warn!(error = %e, reason = why, "publishing an Event failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::CheckpointRequestSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    /// Phase, target node, Ready reason, and the Event expected: type, reason, note.
    type Case = (
        RequestPhase,
        Option<&'static str>,
        Option<&'static str>,
        Option<(EventType, &'static str, &'static str)>,
    );

    #[test]
    fn each_phase_has_its_event() {
        let req = CheckpointRequest::new("r", CheckpointRequestSpec::for_pod("p"));
        let ready = |reason: &str| Condition {
            type_: condition::READY.into(),
            status: "False".into(),
            reason: reason.into(),
            message: format!("{reason} message"),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::UNIX_EPOCH,
            ),
            observed_generation: None,
        };
        // (phase, target node, Ready reason, expected Event: type, reason, note)
        let table: [Case; 8] = [
            (RequestPhase::Pending, None, None, None),
            (
                RequestPhase::Checkpointing,
                None,
                None,
                Some((
                    EventType::Normal,
                    "Checkpointing",
                    "checkpointing pod p on node a",
                )),
            ),
            (
                RequestPhase::Checkpointing,
                Some("b"),
                None,
                Some((
                    EventType::Normal,
                    "Checkpointing",
                    "checkpointing pod p on node a, target node b",
                )),
            ),
            (
                RequestPhase::Transferring,
                Some("b"),
                None,
                Some((
                    EventType::Normal,
                    "Transferring",
                    "checkpointed; transferring the image",
                )),
            ),
            (
                RequestPhase::Restoring,
                Some("b"),
                None,
                Some((
                    EventType::Normal,
                    "Restoring",
                    "image transferred; restoring",
                )),
            ),
            (
                RequestPhase::Succeeded,
                None,
                Some("Succeeded"),
                Some((EventType::Normal, "Succeeded", "Succeeded message")),
            ),
            (
                RequestPhase::Failed,
                None,
                Some("PodNotFound"),
                Some((EventType::Warning, "PodNotFound", "PodNotFound message")),
            ),
            (
                RequestPhase::Failed,
                None,
                None,
                Some((EventType::Warning, "Failed", "")),
            ),
        ];
        for (phase, target, reason, expected) in table {
            let st = CheckpointRequestStatus {
                phase: Some(phase),
                source_node: Some("a".into()),
                target_node: target.map(String::from),
                conditions: reason.map(ready).into_iter().collect(),
                ..Default::default()
            };
            let got = transition(&req, &st);
            let expected = expected.map(|(type_, reason, note)| Notice {
                type_,
                reason: reason.into(),
                note: note.into(),
            });
            assert_eq!(got, expected, "{phase:?} {target:?} {reason:?}");
        }
    }
}
