//! What a Node object says about its state: Ready, cordoned, and whether a toleration
//! lets a pod past one of its taints.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

/// Whether the node's Ready condition is True.
pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// Whether the node is cordoned.
pub fn is_cordoned(node: &Node) -> bool {
    node.spec
        .as_ref()
        .and_then(|s| s.unschedulable)
        .unwrap_or(false)
}

/// Kubernetes' toleration matching (`v1.Toleration.ToleratesTaint`).
pub fn tolerates(t: &Toleration, taint: &Taint) -> bool {
    if let Some(effect) = t.effect.as_deref()
        && !effect.is_empty()
        && effect != taint.effect
    {
        return false;
    }
    let key = t.key.as_deref().unwrap_or("");
    let exists = t.operator.as_deref() == Some("Exists");
    if key.is_empty() {
        return exists;
    }
    if key != taint.key {
        return false;
    }
    exists || t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
}

/// The first `NoSchedule`/`NoExecute` taint of `node` that none of `tolerations` lets a pod
/// past, written `key=value:effect`. The restored pod gets `nodeName` directly, which skips
/// the scheduler's taint check, so the operator makes it (`PreferNoSchedule` only steers the
/// scheduler and is ignored).
pub fn untolerated_taint(tolerations: &[Toleration], node: &Node) -> Option<String> {
    node.spec
        .as_ref()
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|taint| matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute"))
        .find(|taint| !tolerations.iter().any(|t| tolerates(t, taint)))
        .map(|taint| {
            format!(
                "{}={}:{}",
                taint.key,
                taint.value.as_deref().unwrap_or(""),
                taint.effect
            )
        })
}

/// The node's migration pool ([`ferry_api::names::label::MIGRATION_POOL`]), if it is in one.
pub fn migration_pool(node: &Node) -> Option<&str> {
    node.metadata
        .labels
        .as_ref()?
        .get(ferry_api::names::label::MIGRATION_POOL)
        .map(String::as_str)
}
