//! What the generated schemas accept and reject: the name patterns run through Rust's regex
//! (same RE2 syntax as the API server's Go regexp), the CEL rules through kube's client-side
//! CEL evaluator, and the schema defaults through its defaulting, on whole objects.
#![cfg(feature = "crd")]
// Helpers outside #[test] functions panic to fail their caller, as the tests themselves do.
#![allow(clippy::expect_used)]

mod common;

use common::{at, request_schema, task_schema};
use ferry_api::{CheckpointRequest, NodeTask};
use kube::core::cel::{ErrorKind, ValidationErrors, Validator, apply_defaults};
use regex::Regex;
use serde_json::{Value, json};

fn pattern_at(schema: &Value, path: &str) -> Regex {
    let pattern = at(schema, path)["pattern"]
        .as_str()
        .unwrap_or_else(|| panic!("{path} has no pattern"));
    Regex::new(pattern).unwrap_or_else(|e| panic!("{path}: pattern {pattern:?} is not RE2: {e}"))
}

#[test]
fn pod_and_node_names_accept_dns1123_subdomains_only() {
    let req = request_schema();
    let task = task_schema();
    for re in [
        pattern_at(&req, "spec.podName"),
        pattern_at(&req, "spec.migrate.targetNode"),
        pattern_at(&task, "spec.nodeName"),
        pattern_at(&task, "spec.pod.name"),
    ] {
        for good in [
            "trainer-0",
            "a",
            "0",
            "web.default.svc",
            "gpu-node-7",
            "ip-10-0-0-1.ec2.internal",
        ] {
            assert!(re.is_match(good), "{good:?} should match {re}");
        }
        for bad in [
            "Trainer_0",
            "trainer_0",
            "-a",
            "a-",
            "a..b",
            ".a",
            "a.",
            "",
            "a b",
            "Node1",
            "a/b",
        ] {
            assert!(!re.is_match(bad), "{bad:?} should not match {re}");
        }
    }
}

#[test]
fn container_and_namespace_names_accept_dns1123_labels_only() {
    let req = request_schema();
    let task = task_schema();
    for re in [
        pattern_at(&req, "spec.containers.[]"),
        pattern_at(&task, "spec.containers.[]"),
        pattern_at(&task, "spec.pod.namespace"),
    ] {
        for good in ["trainer", "trainer-0", "a1", "0"] {
            assert!(re.is_match(good), "{good:?} should match {re}");
        }
        // Dots are fine in a subdomain but not in a container name.
        for bad in ["trainer.main", "Trainer", "trainer_0", "-x", "x-", ""] {
            assert!(!re.is_match(bad), "{bad:?} should not match {re}");
        }
    }
}

#[test]
fn secret_keys_accept_config_map_key_characters() {
    let re = pattern_at(&task_schema(), "spec.source.tokenSecretRef.key");
    for good in ["token", "ca.crt", "TOKEN_1", "tls-key"] {
        assert!(re.is_match(good), "{good:?}");
    }
    for bad in ["a/b", "", "a b", "a:b"] {
        assert!(!re.is_match(bad), "{bad:?}");
    }
}

fn request(spec: Value) -> Value {
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "CheckpointRequest",
        "metadata": {"name": "move-trainer", "namespace": "ml"},
        "spec": spec,
    })
}

fn validate_request(obj: &Value, old: Option<&Value>) -> Result<(), ValidationErrors> {
    Validator::new().validate(&request_schema(), obj, old)
}

/// The object is rejected by exactly one rule, whose message is `message`.
fn assert_rejected(result: Result<(), ValidationErrors>, message: &str) {
    let errors = match result {
        Ok(()) => panic!("accepted; expected rejection with {message:?}"),
        Err(errors) => errors.into_vec(),
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].kind, ErrorKind::ValidationFailure, "{errors:?}");
    assert_eq!(errors[0].message, message, "{errors:?}");
}

fn assert_accepted(result: Result<(), ValidationErrors>) {
    if let Err(errors) = result {
        panic!("rejected: {errors:?}");
    }
}

#[test]
fn a_minimal_request_passes_every_cel_rule() {
    assert_accepted(validate_request(
        &request(json!({"podName": "trainer-0"})),
        None,
    ));
}

#[test]
fn a_full_migration_request_passes_every_cel_rule() {
    let obj = request(json!({
        "podName": "trainer-0",
        "containers": ["trainer", "sidecar"],
        "migrate": {"targetNode": "gpu-node-7", "nodeSelector": {"gpu": "mi300x"}, "deleteSource": false},
        "leaveRunning": false,
        "storage": {"pvc": {"claimName": "ckpts", "subPath": "team-a/runs"}},
        "gpu": {"parallelRestore": false},
        "timeoutSeconds": 600,
        "ttlSecondsAfterFinished": 0,
    }));
    assert_accepted(validate_request(&obj, None));
}

#[test]
fn storage_with_both_host_path_and_pvc_is_rejected() {
    let obj = request(json!({
        "podName": "trainer-0",
        "storage": {"hostPath": {"path": "/data"}, "pvc": {"claimName": "ckpts"}},
    }));
    assert_rejected(
        validate_request(&obj, None),
        "exactly one of storage.hostPath and storage.pvc must be set",
    );
}

#[test]
fn empty_storage_is_rejected_but_absent_storage_gets_the_host_path_default() {
    let empty = request(json!({"podName": "trainer-0", "storage": {}}));
    assert_rejected(
        validate_request(&empty, None),
        "exactly one of storage.hostPath and storage.pvc must be set",
    );
    assert_accepted(validate_request(
        &request(json!({"podName": "trainer-0"})),
        None,
    ));
}

fn with_host_path(path: &str) -> Value {
    request(json!({"podName": "trainer-0", "storage": {"hostPath": {"path": path}}}))
}

#[test]
fn host_path_must_be_absolute() {
    for path in ["var/lib/ferry", "./ckpt", "ckpt"] {
        assert_rejected(
            validate_request(&with_host_path(path), None),
            "hostPath.path must be an absolute path (start with '/')",
        );
    }
}

#[test]
fn host_path_with_a_dotdot_segment_is_rejected() {
    for path in ["/a/../b", "/..", "/a/..", "/../etc"] {
        assert_rejected(
            validate_request(&with_host_path(path), None),
            "hostPath.path must not contain a '..' segment",
        );
    }
}

#[test]
fn host_paths_with_dots_that_are_not_dotdot_segments_are_accepted() {
    for path in [
        "/var/lib/ferry",
        "/data/..hidden",
        "/data/a..b",
        "/data/./x",
        "/",
    ] {
        assert_accepted(validate_request(&with_host_path(path), None));
    }
}

fn with_sub_path(sub_path: &str) -> Value {
    request(json!({
        "podName": "trainer-0",
        "storage": {"pvc": {"claimName": "ckpts", "subPath": sub_path}},
    }))
}

#[test]
fn pvc_sub_path_must_be_relative_without_dotdot() {
    assert_rejected(
        validate_request(&with_sub_path("/abs"), None),
        "pvc.subPath must be a relative path (not start with '/')",
    );
    for sub_path in ["..", "../x", "team-a/../../b", "a/.."] {
        assert_rejected(
            validate_request(&with_sub_path(sub_path), None),
            "pvc.subPath must not contain a '..' segment",
        );
    }
    for sub_path in ["team-a", "team-a/runs", "a..b"] {
        assert_accepted(validate_request(&with_sub_path(sub_path), None));
    }
}

#[test]
fn changing_the_spec_of_a_request_is_rejected_as_immutable() {
    let old = request(json!({"podName": "trainer-0"}));
    let new = request(json!({"podName": "trainer-1"}));
    assert_rejected(
        validate_request(&new, Some(&old)),
        "spec is immutable: create a new CheckpointRequest",
    );
    let new_timeout = request(json!({"podName": "trainer-0", "timeoutSeconds": 60}));
    assert_rejected(
        validate_request(&new_timeout, Some(&old)),
        "spec is immutable: create a new CheckpointRequest",
    );
}

#[test]
fn re_applying_the_same_spec_with_defaults_spelled_out_is_not_a_change() {
    let old = request(json!({"podName": "trainer-0"}));
    let same = request(json!({
        "podName": "trainer-0",
        "leaveRunning": true,
        "timeoutSeconds": 900,
        "storage": {"hostPath": {"path": "/var/lib/ferry/checkpoints"}},
    }));
    assert_accepted(validate_request(&same, Some(&old)));
}

#[test]
fn request_names_longer_than_a_label_value_are_rejected() {
    let mut obj = request(json!({"podName": "trainer-0"}));
    obj["metadata"]["name"] = json!("a".repeat(64));
    assert_rejected(
        validate_request(&obj, None),
        "metadata.name must be at most 63 characters: it is used as a label value",
    );
    obj["metadata"]["name"] = json!("a".repeat(63));
    assert_accepted(validate_request(&obj, None));
}

fn task(spec_patch: Value) -> Value {
    let mut spec = json!({
        "nodeName": "gpu-node-7",
        "operation": "Restore",
        "checkpointRequest": "move-trainer",
        "pod": {"namespace": "ml", "name": "trainer-0"},
        "image": {"storage": {"hostPath": {"path": "/var/lib/ferry/checkpoints"}}, "location": "ml/move-trainer"},
        "source": {
            "endpoint": "https://10.0.0.5:8443",
            "tokenSecretRef": {"name": "move-trainer-transfer", "key": "token"},
        },
    });
    if let (Some(spec), Some(patch)) = (spec.as_object_mut(), spec_patch.as_object()) {
        for (k, v) in patch {
            spec.insert(k.clone(), v.clone());
        }
    }
    json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "NodeTask",
        "metadata": {"name": "move-trainer-restore", "namespace": "ml"},
        "spec": spec,
    })
}

fn validate_task(obj: &Value) -> Result<(), ValidationErrors> {
    Validator::new().validate(&task_schema(), obj, None)
}

#[test]
fn a_node_task_from_the_operator_passes_every_cel_rule() {
    assert_accepted(validate_task(&task(json!({}))));
}

#[test]
fn node_task_image_location_must_be_relative_without_dotdot() {
    for location in ["/ml/x", "../x", "ml/../../x"] {
        let obj =
            task(json!({"image": {"storage": {"pvc": {"claimName": "c"}}, "location": location}}));
        assert_rejected(
            validate_task(&obj),
            "image.location must be a relative path without a '..' segment",
        );
    }
}

#[test]
fn node_task_sources_must_be_https() {
    let obj = task(json!({"source": {
        "endpoint": "http://10.0.0.5:8080",
        "tokenSecretRef": {"name": "t", "key": "token"},
    }}));
    assert_rejected(
        validate_task(&obj),
        "source.endpoint must be an https:// URL",
    );
}

/// Schema defaulting (what the API server stores) must give what serde's defaults give
/// (what the operator reads), or the two would disagree on an object nobody spelled out.
fn assert_schema_and_serde_defaults_agree<K>(schema: &Value, minimal: Value)
where
    K: serde::de::DeserializeOwned + serde::Serialize,
{
    let defaulted_by_schema = apply_defaults(schema, &minimal);
    let by_serde: K = serde_json::from_value(minimal).expect("minimal object deserializes");
    let by_serde = serde_json::to_value(&by_serde).expect("serializes");
    assert_eq!(defaulted_by_schema, by_serde);
}

#[test]
fn schema_defaults_and_serde_defaults_agree_for_a_minimal_request() {
    assert_schema_and_serde_defaults_agree::<CheckpointRequest>(
        &request_schema(),
        request(json!({"podName": "trainer-0"})),
    );
}

#[test]
fn schema_defaults_and_serde_defaults_agree_inside_present_objects() {
    // Nested defaults apply once their parent is there: migrate.deleteSource, gpu.parallelRestore.
    assert_schema_and_serde_defaults_agree::<CheckpointRequest>(
        &request_schema(),
        request(json!({"podName": "trainer-0", "migrate": {}, "gpu": {}})),
    );
}

#[test]
fn schema_defaults_and_serde_defaults_agree_for_a_minimal_node_task() {
    let mut obj = task(json!({}));
    if let Some(spec) = obj["spec"].as_object_mut() {
        spec.remove("source");
    }
    assert_schema_and_serde_defaults_agree::<NodeTask>(&task_schema(), obj.clone());
    obj["spec"]["options"] = json!({});
    assert_schema_and_serde_defaults_agree::<NodeTask>(&task_schema(), obj);
}
