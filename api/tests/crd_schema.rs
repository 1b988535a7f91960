//! Every validation rule that ARCHITECTURE.md §3 and the issues ask for is in the generated CRDs,
//! and the schemas keep to the structural-schema rules the API server enforces.
#![cfg(feature = "crd")]

mod common;

use common::{at, cel_rules, crd_json, request_schema, required, task_schema, walk};
use ferry_api::validation::{DNS1123_LABEL_PATTERN, DNS1123_SUBDOMAIN_PATTERN, SECRET_KEY_PATTERN};
use ferry_api::{CheckpointRequest, GROUP, NodeTask, VERSION};
use serde_json::{Value, json};

fn assert_rule(node: &Value, rule: &str, message: &str) {
    let rules = cel_rules(node);
    assert!(
        rules.iter().any(|(r, m)| r == rule && m == message),
        "expected CEL rule {rule:?} with message {message:?}, found {rules:?}"
    );
}

#[test]
fn checkpoint_request_crd_has_the_group_version_scope_and_short_names() {
    let crd = crd_json::<CheckpointRequest>();
    assert_eq!(crd["metadata"]["name"], "checkpointrequests.ferry.dev");
    assert_eq!(crd["spec"]["group"], GROUP);
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["kind"], "CheckpointRequest");
    assert_eq!(
        crd["spec"]["names"]["shortNames"],
        json!(["ckpt", "ckptreq"])
    );
    assert_eq!(crd["spec"]["versions"][0]["name"], VERSION);
    assert_eq!(crd["spec"]["versions"][0]["served"], true);
    assert_eq!(crd["spec"]["versions"][0]["storage"], true);
}

#[test]
fn node_task_crd_is_namespaced_in_the_same_group() {
    let crd = crd_json::<NodeTask>();
    assert_eq!(crd["metadata"]["name"], "nodetasks.ferry.dev");
    assert_eq!(crd["spec"]["group"], GROUP);
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["versions"][0]["name"], VERSION);
}

#[test]
fn both_crds_have_the_status_subresource() {
    for crd in [crd_json::<CheckpointRequest>(), crd_json::<NodeTask>()] {
        assert_eq!(
            crd["spec"]["versions"][0]["subresources"]["status"],
            json!({}),
            "{}",
            crd["metadata"]["name"]
        );
    }
}

fn printer_columns(crd: &Value) -> Vec<(String, String, String)> {
    crd["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .map(|cols| {
            cols.iter()
                .map(|c| {
                    let s = |k: &str| c[k].as_str().unwrap_or("").to_owned();
                    (s("name"), s("type"), s("jsonPath"))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn checkpoint_request_prints_phase_pod_nodes_downtime_and_age() {
    let cols = printer_columns(&crd_json::<CheckpointRequest>());
    let expected = [
        ("PHASE", "string", ".status.phase"),
        ("POD", "string", ".spec.podName"),
        ("SOURCE", "string", ".status.sourceNode"),
        ("TARGET", "string", ".status.targetNode"),
        ("DOWNTIME-MS", "integer", ".status.timings.downtimeMs"),
        ("AGE", "date", ".metadata.creationTimestamp"),
    ];
    let expected: Vec<(String, String, String)> = expected
        .iter()
        .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
        .collect();
    assert_eq!(cols, expected);
}

#[test]
fn node_task_prints_node_operation_phase_and_age() {
    let cols = printer_columns(&crd_json::<NodeTask>());
    let names: Vec<&str> = cols.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["NODE", "OPERATION", "PHASE", "AGE"]);
    assert_eq!(cols[0].2, ".spec.nodeName");
    assert_eq!(cols[1].2, ".spec.operation");
    assert_eq!(cols[2].2, ".status.phase");
    assert_eq!(cols[3].1, "date");
}

#[test]
fn printer_columns_point_at_fields_that_exist_in_the_schema() {
    for (crd, schema) in [
        (crd_json::<CheckpointRequest>(), request_schema()),
        (crd_json::<NodeTask>(), task_schema()),
    ] {
        for (name, _, path) in printer_columns(&crd) {
            if path.starts_with(".metadata.") {
                continue;
            }
            let dotted = path.trim_start_matches('.');
            let _ = at(&schema, dotted);
            assert!(!name.is_empty());
        }
    }
}

#[test]
fn checkpoint_request_spec_requires_only_the_pod_name() {
    let schema = request_schema();
    assert_eq!(required(&schema), ["spec"]);
    assert_eq!(required(at(&schema, "spec")), ["podName"]);
    assert_eq!(required(at(&schema, "spec.storage.hostPath")), ["path"]);
    assert_eq!(required(at(&schema, "spec.storage.pvc")), ["claimName"]);
    assert!(required(at(&schema, "spec.migrate")).is_empty());
    assert!(required(at(&schema, "spec.storage")).is_empty());
}

#[test]
fn node_task_spec_requires_node_operation_request_pod_and_image() {
    let schema = task_schema();
    let mut spec_required = required(at(&schema, "spec"));
    spec_required.sort();
    assert_eq!(
        spec_required,
        ["checkpointRequest", "image", "nodeName", "operation", "pod"]
    );
    let mut pod = required(at(&schema, "spec.pod"));
    pod.sort();
    assert_eq!(pod, ["name", "namespace"]);
    let mut source = required(at(&schema, "spec.source"));
    source.sort();
    assert_eq!(source, ["endpoint", "tokenSecretRef"]);
    let mut secret = required(at(&schema, "spec.source.tokenSecretRef"));
    secret.sort();
    assert_eq!(secret, ["key", "name"]);
    let mut image = required(at(&schema, "spec.image"));
    image.sort();
    assert_eq!(image, ["location", "storage"]);
}

#[test]
fn checkpoint_request_spec_is_immutable_with_a_message_that_says_what_to_do() {
    let schema = request_schema();
    assert_rule(
        at(&schema, "spec"),
        "self == oldSelf",
        "spec is immutable: create a new CheckpointRequest",
    );
}

#[test]
fn checkpoint_request_names_are_limited_to_label_value_length() {
    assert_rule(
        &request_schema(),
        "self.metadata.name.size() <= 63",
        "metadata.name must be at most 63 characters: it is used as a label value",
    );
}

#[test]
fn timeout_seconds_is_bounded_to_ten_seconds_through_one_day() {
    for (schema, path) in [
        (request_schema(), "spec.timeoutSeconds"),
        (task_schema(), "spec.options.timeoutSeconds"),
    ] {
        let node = at(&schema, path);
        assert_eq!(node["type"], "integer", "{path}");
        assert_eq!(node["minimum"].as_f64(), Some(10.0), "{path}");
        assert_eq!(node["maximum"].as_f64(), Some(86400.0), "{path}");
    }
}

#[test]
fn ttl_seconds_after_finished_cannot_be_negative() {
    let schema = request_schema();
    let node = at(&schema, "spec.ttlSecondsAfterFinished");
    assert_eq!(node["type"], "integer");
    assert_eq!(node["minimum"].as_f64(), Some(0.0));
    assert!(node.get("maximum").is_none());
}

/// (schema, path, pattern, maxLength) of every name field. Pods, nodes, PVCs, Secrets and
/// requests are DNS-1123 subdomains; containers and namespaces are DNS-1123 labels.
fn name_fields() -> Vec<(Value, &'static str, &'static str, u64)> {
    let req = request_schema();
    let task = task_schema();
    vec![
        (req.clone(), "spec.podName", DNS1123_SUBDOMAIN_PATTERN, 253),
        (req.clone(), "spec.containers.[]", DNS1123_LABEL_PATTERN, 63),
        (
            req.clone(),
            "spec.migrate.targetNode",
            DNS1123_SUBDOMAIN_PATTERN,
            253,
        ),
        (
            req.clone(),
            "spec.storage.pvc.claimName",
            DNS1123_SUBDOMAIN_PATTERN,
            253,
        ),
        (
            task.clone(),
            "spec.nodeName",
            DNS1123_SUBDOMAIN_PATTERN,
            253,
        ),
        (
            task.clone(),
            "spec.checkpointRequest",
            DNS1123_SUBDOMAIN_PATTERN,
            63,
        ),
        (
            task.clone(),
            "spec.pod.name",
            DNS1123_SUBDOMAIN_PATTERN,
            253,
        ),
        (
            task.clone(),
            "spec.pod.namespace",
            DNS1123_LABEL_PATTERN,
            63,
        ),
        (
            task.clone(),
            "spec.containers.[]",
            DNS1123_LABEL_PATTERN,
            63,
        ),
        (
            task.clone(),
            "spec.image.storage.pvc.claimName",
            DNS1123_SUBDOMAIN_PATTERN,
            253,
        ),
        (
            task.clone(),
            "spec.source.tokenSecretRef.name",
            DNS1123_SUBDOMAIN_PATTERN,
            253,
        ),
        (
            task,
            "spec.source.tokenSecretRef.key",
            SECRET_KEY_PATTERN,
            253,
        ),
    ]
}

#[test]
fn every_name_field_has_its_dns1123_pattern_and_length_limit() {
    for (schema, path, pattern, max) in name_fields() {
        let node = at(&schema, path);
        assert_eq!(node["type"], "string", "{path}");
        assert_eq!(node["pattern"], pattern, "{path}");
        assert_eq!(node["maxLength"].as_u64(), Some(max), "{path}");
        assert_eq!(node["minLength"].as_u64(), Some(1), "{path}");
    }
}

#[test]
fn the_subdomain_and_label_patterns_are_the_kubernetes_ones() {
    // Copied from k8s.io/apimachinery/pkg/util/validation (dns1123LabelFmt and
    // dns1123SubdomainFmt), anchored.
    let label = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
    assert_eq!(DNS1123_LABEL_PATTERN, format!("^{label}$"));
    assert_eq!(DNS1123_SUBDOMAIN_PATTERN, format!("^{label}(\\.{label})*$"));
}

#[test]
fn container_lists_are_sets_so_duplicates_are_rejected() {
    for (schema, path) in [
        (request_schema(), "spec.containers"),
        (task_schema(), "spec.containers"),
    ] {
        let node = at(&schema, path);
        assert_eq!(node["type"], "array", "{path}");
        assert_eq!(node["x-kubernetes-list-type"], "set", "{path}");
        assert!(node["maxItems"].as_u64().is_some(), "{path}");
    }
}

#[test]
fn storage_needs_exactly_one_of_host_path_and_pvc() {
    for (schema, path) in [
        (request_schema(), "spec.storage"),
        (task_schema(), "spec.image.storage"),
    ] {
        assert_rule(
            at(&schema, path),
            "has(self.hostPath) != has(self.pvc)",
            "exactly one of storage.hostPath and storage.pvc must be set",
        );
    }
}

#[test]
fn host_path_must_be_absolute_and_free_of_dotdot_segments() {
    let schema = request_schema();
    let node = at(&schema, "spec.storage.hostPath.path");
    assert_rule(
        node,
        "self.startsWith('/')",
        "hostPath.path must be an absolute path (start with '/')",
    );
    assert_rule(
        node,
        "!self.split('/').exists(s, s == '..')",
        "hostPath.path must not contain a '..' segment",
    );
}

#[test]
fn pvc_sub_path_must_be_relative_and_free_of_dotdot_segments() {
    let schema = request_schema();
    let node = at(&schema, "spec.storage.pvc.subPath");
    assert_rule(
        node,
        "!self.startsWith('/')",
        "pvc.subPath must be a relative path (not start with '/')",
    );
    assert_rule(
        node,
        "!self.split('/').exists(s, s == '..')",
        "pvc.subPath must not contain a '..' segment",
    );
}

#[test]
fn node_task_image_location_is_relative_and_its_source_is_https() {
    let schema = task_schema();
    assert_rule(
        at(&schema, "spec.image.location"),
        "!self.startsWith('/') && !self.split('/').exists(s, s == '..')",
        "image.location must be a relative path without a '..' segment",
    );
    assert_rule(
        at(&schema, "spec.source.endpoint"),
        "self.startsWith('https://')",
        "source.endpoint must be an https:// URL",
    );
}

fn enum_values(node: &Value) -> Vec<&str> {
    node["enum"]
        .as_array()
        .map(|v| v.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

#[test]
fn phases_operations_and_vendors_are_enums_with_the_documented_values() {
    let req = request_schema();
    let task = task_schema();
    assert_eq!(
        enum_values(at(&req, "status.phase")),
        [
            "Pending",
            "Checkpointing",
            "Transferring",
            "Restoring",
            "Succeeded",
            "Failed"
        ]
    );
    assert_eq!(
        enum_values(at(&req, "status.checkpoint.gpuVendor")),
        ["amd", "nvidia", "sim", "none"]
    );
    assert_eq!(
        enum_values(at(&task, "spec.operation")),
        ["Checkpoint", "Restore", "Delete"]
    );
    assert_eq!(
        enum_values(at(&task, "status.phase")),
        ["Pending", "Running", "Succeeded", "Failed"]
    );
    assert_eq!(
        enum_values(at(&task, "status.result.gpuVendor")),
        ["amd", "nvidia", "sim", "none"]
    );
}

#[test]
fn optional_spec_fields_carry_their_defaults_in_the_schema() {
    let req = request_schema();
    let expected = [
        ("spec.leaveRunning", json!(true)),
        (
            "spec.storage",
            json!({"hostPath": {"path": "/var/lib/ferry/checkpoints"}}),
        ),
        ("spec.gpu", json!({"parallelRestore": true})),
        ("spec.gpu.parallelRestore", json!(true)),
        ("spec.timeoutSeconds", json!(900)),
        ("spec.ttlSecondsAfterFinished", json!(86400)),
        ("spec.migrate.deleteSource", json!(true)),
    ];
    for (path, default) in expected {
        assert_eq!(at(&req, path).get("default"), Some(&default), "{path}");
    }
    // Absent means "all containers" and "checkpoint only": no default to fill in.
    assert!(at(&req, "spec.containers").get("default").is_none());
    assert!(at(&req, "spec.migrate").get("default").is_none());

    let task = task_schema();
    assert_eq!(
        at(&task, "spec.options").get("default"),
        Some(&json!({"leaveRunning": true, "parallelRestore": true, "timeoutSeconds": 900}))
    );
}

#[test]
fn status_conditions_are_a_list_map_keyed_by_type() {
    let req = request_schema();
    let node = at(&req, "status.conditions");
    assert_eq!(node["x-kubernetes-list-type"], "map");
    assert_eq!(node["x-kubernetes-list-map-keys"], json!(["type"]));
    // A list-map key must be required in the items.
    assert!(required(at(&req, "status.conditions.[]")).contains(&"type".to_owned()));
}

#[test]
fn every_schema_node_has_a_type_and_no_spec_field_is_nullable() {
    for (kind, schema) in [
        ("CheckpointRequest", request_schema()),
        ("NodeTask", task_schema()),
    ] {
        walk(&schema, kind, &mut |path, node| {
            assert!(
                node.get("type").and_then(Value::as_str).is_some(),
                "{path} has no single type: {node}"
            );
            for forbidden in ["anyOf", "oneOf", "allOf", "$ref", "not"] {
                assert!(node.get(forbidden).is_none(), "{path} has {forbidden}");
            }
            let is_status_root = path.ends_with(".status") && path.matches('.').count() == 1;
            if !is_status_root {
                assert!(
                    node.get("nullable").is_none(),
                    "{path} is nullable: an explicit null would reach the CEL rules"
                );
            }
        });
    }
}

#[test]
fn every_cel_rule_has_a_message_and_string_rules_have_a_max_length() {
    for (kind, schema) in [
        ("CheckpointRequest", request_schema()),
        ("NodeTask", task_schema()),
    ] {
        let mut seen = 0;
        walk(&schema, kind, &mut |path, node| {
            for (rule, message) in cel_rules(node) {
                seen += 1;
                assert!(!message.is_empty(), "{path}: rule {rule:?} has no message");
                assert!(!message.contains('\n'), "{path}: message has a line break");
                // The API server estimates each rule's cost from the bounds of what it reads
                // and refuses rules on unbounded strings.
                if node["type"] == "string" {
                    assert!(
                        node["maxLength"].as_u64().is_some(),
                        "{path}: CEL rule {rule:?} on a string without maxLength"
                    );
                }
            }
        });
        assert!(seen > 0, "{kind} has no CEL rules");
    }
}

#[test]
fn node_selector_is_a_bounded_string_map() {
    let req = request_schema();
    let node = at(&req, "spec.migrate.nodeSelector");
    assert_eq!(node["type"], "object");
    assert_eq!(node["additionalProperties"]["type"], "string");
    assert_eq!(node["additionalProperties"]["maxLength"].as_u64(), Some(63));
    assert!(node["maxProperties"].as_u64().is_some());
}
