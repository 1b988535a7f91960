//! Deterministic names of a request's children, and where its image lives in a store.

use ferry_api::CheckpointRequest;
use kube::ResourceExt;

/// Name of the request's Checkpoint task.
pub fn checkpoint_task_name(request: &str) -> String {
    format!("{request}-checkpoint")
}

/// Name of the request's Restore task.
pub fn restore_task_name(request: &str) -> String {
    format!("{request}-restore")
}

/// Name of the request's Delete task on its source (`target == false`) or target node.
pub fn delete_task_name(request: &str, target: bool) -> String {
    format!(
        "{request}-delete-{}",
        if target { "target" } else { "source" }
    )
}

/// Name of the pod a migration restores: `<pod>-restored-<first 5 characters of the
/// request's uid>`, so two migrations of one pod never collide, cut to the 253 characters of
/// a pod name.
pub fn restored_pod_name(pod: &str, request_uid: &str) -> String {
    let suffix: String = request_uid.chars().filter(|c| *c != '-').take(5).collect();
    let tail = format!("-restored-{suffix}");
    let keep = 253usize.saturating_sub(tail.len());
    let head: String = pod.chars().take(keep).collect();
    format!("{}{tail}", head.trim_end_matches(['-', '.']))
}

/// Image directory of a request, relative to the store root.
pub fn image_location(request: &CheckpointRequest) -> String {
    format!(
        "{}/{}",
        request.namespace().unwrap_or_default(),
        request.name_any()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restored_pod_name_is_unique_per_request_and_fits_a_pod_name() {
        assert_eq!(
            restored_pod_name("trainer-0", "1a2b-3c4d-5e"),
            "trainer-0-restored-1a2b3"
        );
        let long = "a".repeat(253);
        assert!(restored_pod_name(&long, "abcdef").len() <= 253);
    }

    #[test]
    fn task_names_are_the_request_and_the_step() {
        // (name, expected)
        let table = [
            (checkpoint_task_name("r"), "r-checkpoint"),
            (restore_task_name("r"), "r-restore"),
            (delete_task_name("r", false), "r-delete-source"),
            (delete_task_name("r", true), "r-delete-target"),
        ];
        for (got, expected) in table {
            assert_eq!(got, expected);
        }
    }
}
