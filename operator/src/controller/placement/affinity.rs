//! A pod's node constraints as a migration sees them: pins to the source node are dropped
//! (the migration's target replaces them), and what remains must hold on the target, because
//! the target's kubelet checks `nodeSelector` and required node affinity again when it admits
//! a pod that already names its node (`NodeAffinity` admission), and rejects it otherwise.
//!
//! Matching follows Kubernetes (`k8s.io/component-helpers/scheduling/corev1/nodeaffinity`):
//! required terms are ORed, the requirements of one term ANDed, an empty term matches nothing,
//! and `matchFields` knows only `metadata.name`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, Node, NodeSelector, NodeSelectorRequirement};

/// The label that pins a pod to a node by name.
pub const HOSTNAME_LABEL: &str = "kubernetes.io/hostname";
/// The only field `matchFields` supports.
const NAME_FIELD: &str = "metadata.name";

/// Removes the source-node pins from a nodeSelector: the hostname label.
pub fn strip_selector_pins(selector: &mut BTreeMap<String, String>) {
    selector.remove(HOSTNAME_LABEL);
}

/// Removes the node pins from required node affinity: hostname expressions and
/// `metadata.name` fields. A term left empty was only a pin; since terms are ORed, the target
/// (which replaces the pin) satisfies it, so the whole requirement goes.
pub fn strip_affinity_pins(affinity: &mut Option<Affinity>) {
    let Some(node_affinity) = affinity.as_mut().and_then(|a| a.node_affinity.as_mut()) else {
        return;
    };
    let Some(required) = node_affinity
        .required_during_scheduling_ignored_during_execution
        .as_mut()
    else {
        return;
    };
    let mut emptied = false;
    for term in &mut required.node_selector_terms {
        let was_empty = is_empty(&term.match_expressions) && is_empty(&term.match_fields);
        if let Some(e) = term.match_expressions.as_mut() {
            e.retain(|r| r.key != HOSTNAME_LABEL);
        }
        if let Some(f) = term.match_fields.as_mut() {
            f.retain(|r| r.key != NAME_FIELD);
        }
        let now_empty = is_empty(&term.match_expressions) && is_empty(&term.match_fields);
        emptied |= now_empty && !was_empty;
    }
    if emptied {
        node_affinity.required_during_scheduling_ignored_during_execution = None;
    }
    if node_affinity == &Default::default()
        && let Some(a) = affinity.as_mut()
    {
        a.node_affinity = None;
    }
    if affinity.as_ref() == Some(&Affinity::default()) {
        *affinity = None;
    }
}

fn is_empty(v: &Option<Vec<NodeSelectorRequirement>>) -> bool {
    v.as_ref().is_none_or(Vec::is_empty)
}

/// Whether `node` satisfies the required terms; `Err` names the first requirement of each
/// term that fails (for the rejection message).
pub fn matches(required: &NodeSelector, node: &Node) -> Result<(), String> {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.clone().unwrap_or_default();
    let mut why = Vec::new();
    for term in &required.node_selector_terms {
        let exprs = term.match_expressions.as_deref().unwrap_or_default();
        let fields = term.match_fields.as_deref().unwrap_or_default();
        if exprs.is_empty() && fields.is_empty() {
            why.push("an empty term matches no node".to_string());
            continue;
        }
        let failed = exprs
            .iter()
            .find(|r| !requirement_holds(r, labels.get(&r.key).map(String::as_str)))
            .or_else(|| {
                fields.iter().find(|r| {
                    r.key != NAME_FIELD
                        || !matches!(r.operator.as_str(), "In" | "NotIn")
                        || !requirement_holds(r, Some(&name))
                })
            });
        match failed {
            None => return Ok(()),
            Some(r) => why.push(describe(r)),
        }
    }
    Err(format!(
        "required node affinity not met ({})",
        why.join(" or ")
    ))
}

/// One requirement against a label (or field) value, absent as `None`.
fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let int = |s: &str| s.trim().parse::<i64>().ok();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|w| w == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(have), [want]) = (value.and_then(int), values) else {
                return false;
            };
            let Some(want) = int(want) else { return false };
            if r.operator == "Gt" {
                have > want
            } else {
                have < want
            }
        }
        _ => false,
    }
}

fn describe(r: &NodeSelectorRequirement) -> String {
    let values = r.values.as_deref().unwrap_or_default().join(",");
    if values.is_empty() {
        format!("{} {}", r.key, r.operator)
    } else {
        format!("{} {} [{values}]", r.key, r.operator)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn node(name: &str, labels: serde_json::Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}})).unwrap()
    }

    fn required(terms: serde_json::Value) -> NodeSelector {
        serde_json::from_value(json!({ "nodeSelectorTerms": terms })).unwrap()
    }

    fn affinity(terms: serde_json::Value) -> Option<Affinity> {
        Some(
            serde_json::from_value(json!({"nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": terms},
            }}))
            .unwrap(),
        )
    }

    #[test]
    fn operators_follow_kubernetes() {
        let n = node("b", json!({"gpu": "h100", "mem": "80", "zone": "z1"}));
        let table = [
            (
                json!([{"key": "gpu", "operator": "In", "values": ["h100", "h200"]}]),
                true,
            ),
            (
                json!([{"key": "gpu", "operator": "In", "values": ["mi300"]}]),
                false,
            ),
            (
                json!([{"key": "gpu", "operator": "NotIn", "values": ["mi300"]}]),
                true,
            ),
            (
                json!([{"key": "absent", "operator": "NotIn", "values": ["x"]}]),
                true,
            ),
            (json!([{"key": "gpu", "operator": "Exists"}]), true),
            (json!([{"key": "absent", "operator": "Exists"}]), false),
            (json!([{"key": "absent", "operator": "DoesNotExist"}]), true),
            (
                json!([{"key": "mem", "operator": "Gt", "values": ["40"]}]),
                true,
            ),
            (
                json!([{"key": "mem", "operator": "Lt", "values": ["40"]}]),
                false,
            ),
            (
                json!([{"key": "gpu", "operator": "Gt", "values": ["1"]}]),
                false,
            ),
            (
                json!([{"key": "mem", "operator": "Gt", "values": ["1", "2"]}]),
                false,
            ),
            (
                json!([{"key": "gpu", "operator": "Bogus", "values": ["h100"]}]),
                false,
            ),
        ];
        for (exprs, want) in table {
            let req = required(json!([{ "matchExpressions": exprs.clone() }]));
            assert_eq!(matches(&req, &n).is_ok(), want, "{exprs}");
        }
    }

    #[test]
    fn terms_are_ored_requirements_anded_and_fields_name_the_node() {
        let n = node("b", json!({"gpu": "h100", "zone": "z1"}));
        let req = required(json!([
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]},
                                  {"key": "zone", "operator": "In", "values": ["z2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["b"]}]},
        ]));
        assert!(matches(&req, &n).is_ok());
        let req = required(json!([
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]},
                                  {"key": "zone", "operator": "In", "values": ["z2"]}]},
            {"matchFields": [{"key": "metadata.name", "operator": "NotIn", "values": ["b"]}]},
        ]));
        let e = matches(&req, &n).unwrap_err();
        assert_eq!(
            e,
            "required node affinity not met (zone In [z2] or metadata.name NotIn [b])"
        );
        assert!(matches(&required(json!([{}])), &n).is_err());
        assert!(matches(&required(json!([])), &n).is_err());
    }

    #[test]
    fn pins_to_the_source_are_dropped_and_the_rest_kept() {
        // A term that pinned by hostname and something else keeps the rest.
        let mut a = affinity(json!([
            {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": ["a"]},
                                  {"key": "gpu", "operator": "In", "values": ["h100"]}]},
        ]));
        strip_affinity_pins(&mut a);
        let terms = a
            .unwrap()
            .node_affinity
            .unwrap()
            .required_during_scheduling_ignored_during_execution
            .unwrap()
            .node_selector_terms;
        assert_eq!(terms.len(), 1);
        let e = terms[0].match_expressions.clone().unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].key, "gpu");

        // A term that was only a pin (by label or by field) satisfies any target: the
        // requirement goes, preferences stay.
        for pin in [
            json!({"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": ["a"]}]}),
            json!({"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["a"]}]}),
        ] {
            let mut a: Option<Affinity> = Some(
                serde_json::from_value(json!({"nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                        pin,
                        {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["mi300"]}]},
                    ]},
                    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference":
                        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["z1"]}]}}],
                }}))
                .unwrap(),
            );
            strip_affinity_pins(&mut a);
            let na = a.unwrap().node_affinity.unwrap();
            assert!(
                na.required_during_scheduling_ignored_during_execution
                    .is_none()
            );
            assert_eq!(
                na.preferred_during_scheduling_ignored_during_execution
                    .unwrap()
                    .len(),
                1
            );
        }

        // Nothing but a pin: no affinity at all.
        let mut a = affinity(json!([
            {"matchExpressions": [{"key": HOSTNAME_LABEL, "operator": "In", "values": ["a"]}]},
        ]));
        strip_affinity_pins(&mut a);
        assert!(a.is_none());

        // Without pins nothing changes.
        let before = affinity(json!([
            {"matchExpressions": [{"key": "gpu", "operator": "In", "values": ["h100"]}]},
        ]));
        let mut a = before.clone();
        strip_affinity_pins(&mut a);
        assert_eq!(a, before);
    }
}
