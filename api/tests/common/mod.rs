//! Helpers shared by the integration tests: the generated schemas as JSON, and walking them.
// Each test binary uses a subset of the helpers. They panic (expect) to fail the calling
// test, which clippy's allow-expect-in-tests only sees inside #[test] functions.
#![allow(dead_code, clippy::expect_used)]

use ferry_api::{CheckpointRequest, NodeTask};
use kube::CustomResourceExt;
use serde_json::Value;

/// The whole CRD as JSON, as the API server receives it.
pub fn crd_json<K: CustomResourceExt>() -> Value {
    serde_json::to_value(K::crd()).expect("CRD serializes")
}

/// The CRD's `openAPIV3Schema` (its only version).
pub fn root_schema<K: CustomResourceExt>() -> Value {
    let crd = crd_json::<K>();
    crd.pointer("/spec/versions/0/schema/openAPIV3Schema")
        .cloned()
        .expect("CRD has an openAPIV3Schema")
}

pub fn request_schema() -> Value {
    root_schema::<CheckpointRequest>()
}

pub fn task_schema() -> Value {
    root_schema::<NodeTask>()
}

/// The schema node at a dotted path of property names; `[]` steps into array items,
/// `{}` into map values. Panics with the path when it is missing.
pub fn at<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut node = schema;
    for step in path.split('.') {
        node = match step {
            "[]" => node.get("items"),
            "{}" => node.get("additionalProperties"),
            name => node.get("properties").and_then(|p| p.get(name)),
        }
        .unwrap_or_else(|| panic!("schema has no {path} (stopped at {step:?})"));
    }
    node
}

/// The `(rule, message)` pairs of a schema node's `x-kubernetes-validations`.
pub fn cel_rules(node: &Value) -> Vec<(String, String)> {
    node.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rules| {
            rules
                .iter()
                .map(|r| {
                    let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                    (text("rule"), text("message"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `required` list of an object node.
pub fn required(node: &Value) -> Vec<String> {
    node.get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Calls `f(path, node)` on every schema node below `node`.
pub fn walk(node: &Value, path: &str, f: &mut dyn FnMut(&str, &Value)) {
    f(path, node);
    if let Some(props) = node.get("properties").and_then(Value::as_object) {
        for (name, child) in props {
            walk(child, &format!("{path}.{name}"), f);
        }
    }
    if let Some(items) = node.get("items") {
        walk(items, &format!("{path}.[]"), f);
    }
    if let Some(values) = node.get("additionalProperties").filter(|v| v.is_object()) {
        walk(values, &format!("{path}.{{}}"), f);
    }
}
