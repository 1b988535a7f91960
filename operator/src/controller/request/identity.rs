//! Which pods are the request's (docs/security.md, "Finding 6"), as pure functions of a pod
//! and the UIDs the status recorded. A name is not an identity: a StatefulSet re-creates its
//! pod under the same name, and anyone who may create pods in the namespace can create one
//! under the restored pod's (predictable) name before the operator does.
//!
//! * The source is the pod that was checkpointed: `status.sourcePodUid`. Its spec is copied
//!   only from that pod and it is deleted only with that UID as a precondition.
//! * The restored pod is the one the operator created: `status.restoredPodUid`, recorded from
//!   the create's answer. A pod found under the name without that UID is never adopted, and
//!   never deleted by the operator.

use ferry_api::CheckpointRequest;
use ferry_api::names::{annotation, reason};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::step::Failure;

/// `pod`, found under the restored pod's name, is the pod this request created (whose UID
/// the status recorded, `recorded`), or the failure that says why it is not adopted.
pub fn check_restored(
    pod: &Pod,
    req: &CheckpointRequest,
    recorded: Option<&str>,
) -> Result<(), Failure> {
    let uid = pod.uid();
    let marked = pod
        .annotations()
        .get(annotation::CHECKPOINT_REQUEST)
        .map(String::as_str);
    if recorded.is_some() && uid.as_deref() == recorded && marked == Some(&req.name_any()) {
        return Ok(());
    }
    let why = match recorded {
        None => "it existed before this request created its restored pod".to_string(),
        Some(r) => format!(
            "its UID {} is not {r}, the pod this request created",
            uid.as_deref().unwrap_or("(none)")
        ),
    };
    Err(Failure::new(
        reason::RESTORE_FAILED,
        format!(
            "pod {}/{} is not this request's restored pod ({why}; annotation {} is {}); it is not adopted and is left alone",
            pod.namespace().unwrap_or_default(),
            pod.name_any(),
            annotation::CHECKPOINT_REQUEST,
            marked.map_or_else(|| "absent".to_string(), |m| format!("{m:?}"))
        ),
    ))
}

/// `pod`, found under the source's name, is the pod that was checkpointed (`recorded`; a
/// status from before UIDs were recorded has none and trusts the name), or the failure: the
/// pod was replaced, and a restore would run a copy of the new pod's spec with the old one's
/// memory.
pub fn check_source(pod: &Pod, recorded: Option<&str>) -> Result<(), Failure> {
    let uid = pod.uid();
    match recorded {
        Some(r) if uid.as_deref() != Some(r) => Err(Failure::new(
            reason::POD_NOT_FOUND,
            format!(
                "pod {}/{} was replaced before its restore (UID {r} checkpointed, {} now); the new pod is left alone",
                pod.namespace().unwrap_or_default(),
                pod.name_any(),
                uid.as_deref().unwrap_or("(none)")
            ),
        )),
        _ => Ok(()),
    }
}

/// What a finished migration did to its source pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SourceFate {
    /// `deleteSource: false`.
    KeptRunning,
    /// Deleted (or already gone).
    Deleted,
    /// A pod of the same name with another UID stood there (a StatefulSet re-created it):
    /// not the checkpointed pod, so not deleted.
    Replaced,
    /// The status recorded no source UID (a request started by an older operator): nothing
    /// is deleted without one.
    UidUnknown,
}

impl SourceFate {
    /// The end of the Succeeded message.
    pub fn note(self) -> &'static str {
        match self {
            SourceFate::KeptRunning => "; the source pod keeps running",
            SourceFate::Deleted => "; the source pod is deleted",
            SourceFate::Replaced => {
                "; the source pod was already replaced by a new pod of its name (another UID), which is left alone"
            }
            SourceFate::UidUnknown => {
                "; the source pod is not deleted: the status recorded no UID to delete it by"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(uid: &str, marked: Option<&str>) -> Pod {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p-restored-x", "namespace": "ns", "uid": uid},
        }))
        .unwrap();
        if let Some(m) = marked {
            p.annotations_mut()
                .insert(annotation::CHECKPOINT_REQUEST.into(), m.into());
        }
        p
    }

    #[test]
    fn only_the_pod_this_request_created_is_its_restored_pod() {
        let req = CheckpointRequest::new("m", ferry_api::CheckpointRequestSpec::for_pod("p"));
        // (pod, UID recorded, failure words or None)
        let table = [
            (pod("u1", Some("m")), Some("u1"), None),
            // A squatter, even one that copies the annotation, before the operator created
            // one: not adopted.
            (
                pod("u9", Some("m")),
                None,
                Some("it existed before this request created"),
            ),
            (
                pod("u9", None),
                None,
                Some("annotation ferry.dev/checkpoint-request is absent"),
            ),
            // The recorded pod was replaced under its name.
            (
                pod("u9", Some("m")),
                Some("u1"),
                Some("its UID u9 is not u1"),
            ),
            // The right UID with another request's mark (cannot happen unless edited): no.
            (pod("u1", Some("other")), Some("u1"), Some("\"other\"")),
        ];
        for (i, (p, recorded, words)) in table.into_iter().enumerate() {
            match (check_restored(&p, &req, recorded), words) {
                (Ok(()), None) => {}
                (Err(f), Some(w)) => {
                    assert_eq!(f.reason, reason::RESTORE_FAILED);
                    assert!(f.message.contains(w), "case {i}: {}", f.message);
                    assert!(f.message.contains("left alone"), "case {i}: {}", f.message);
                }
                (got, want) => panic!("case {i}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn a_source_replaced_under_its_name_is_not_the_checkpointed_pod() {
        assert!(check_source(&pod("u1", None), Some("u1")).is_ok());
        assert!(check_source(&pod("u1", None), None).is_ok());
        let f = check_source(&pod("u2", None), Some("u1")).unwrap_err();
        assert_eq!(f.reason, reason::POD_NOT_FOUND);
        assert!(
            f.message.contains("UID u1 checkpointed, u2 now"),
            "{}",
            f.message
        );
    }
}
