//! Helpers of the node-trust test: kubectl as an agent, objects to write, what a refusal
//! looks like, token claims, the security doc's tables.

use ferry_e2e::Cluster;
use ferry_e2e::identity::{
    AGENT_SERVICE_ACCOUNT, AgentIdentity, NODE_SCOPE_POLICY, SYSTEM_NAMESPACE,
};
use std::path::Path;
use std::process::{Command, Output};

use crate::TENANT;

/// A NodeTask for `node` in [`TENANT`], as the operator writes one.
pub(crate) fn node_task(name: &str, node: &str) -> String {
    serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "NodeTask",
        "metadata": {"name": name, "namespace": TENANT},
        "spec": {
            "checkpointRequest": "move-x",
            "nodeName": node,
            "operation": "Delete",
            "pod": {"name": "x", "namespace": TENANT},
            "image": {"location": "tenant-a/move-x", "storage": {"hostPath": {"path": "/var/lib/ferry"}}},
        },
    })
    .to_string()
}

pub(crate) fn lease_of(identity: &AgentIdentity) -> String {
    format!("{AGENT_SERVICE_ACCOUNT}-{}", identity.node)
}

/// Applies Lease `name` with `holder` as `identity`'s agent does (server-side apply, forced).
pub(crate) fn apply_lease(identity: &AgentIdentity, name: &str, holder: &str) -> Output {
    let lease = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15},
    });
    let manager = format!("ferry-agent-{}", identity.node);
    run_as(
        &identity.kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            &format!("--field-manager={manager}"),
            "-f",
            "-",
        ],
        Some(&lease.to_string()),
    )
}

/// Applies a NodeTask's status with `phase` as `identity`'s agent does.
pub(crate) fn apply_status(identity: &AgentIdentity, task: &str, phase: &str) -> Output {
    let status = serde_json::json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "NodeTask",
        "metadata": {"name": task, "namespace": TENANT},
        "status": {"phase": phase},
    });
    let manager = format!("ferry-agent-{}", identity.node);
    run_as(
        &identity.kubeconfig,
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--subresource=status",
            &format!("--field-manager={manager}"),
            "-f",
            "-",
        ],
        Some(&status.to_string()),
    )
}

pub(crate) fn holder(cluster: &Cluster, lease: &str) -> String {
    field(
        cluster,
        "lease",
        lease,
        SYSTEM_NAMESPACE,
        ".spec.holderIdentity",
    )
}

pub(crate) fn phase(cluster: &Cluster, task: &str) -> String {
    field(cluster, "nodetask", task, TENANT, ".status.phase")
}

/// One field of an object, as the admin reads it.
pub(crate) fn field(
    cluster: &Cluster,
    kind: &str,
    name: &str,
    namespace: &str,
    path: &str,
) -> String {
    let jsonpath = format!("jsonpath={{{path}}}");
    cluster
        .kubectl(&["get", kind, name, "-n", namespace, "-o", &jsonpath])
        .unwrap()
}

/// kubectl with `kubeconfig`'s credentials.
pub(crate) fn run_as(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new(ferry_e2e::binaries::kubectl().unwrap())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .arg("--request-timeout=60s")
        .args(args)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

pub(crate) fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "refused: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Refused as forbidden, with a message containing `why`.
pub(crate) fn assert_refused(out: &Output, why: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "allowed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        err.to_lowercase().contains("forbidden") && err.contains(why),
        "{err}"
    );
}

/// Refused by the node-scope policy (its name in the message) for `why`.
pub(crate) fn assert_refused_by_policy(out: &Output, why: &str) {
    assert_refused(out, why);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("ValidatingAdmissionPolicy '{NODE_SCOPE_POLICY}'")),
        "{err}"
    );
}

/// The claims of a JWT (its middle part, base64url without padding).
pub(crate) fn jwt_claims(token: &str) -> serde_json::Value {
    let payload = token.split('.').nth(1).expect("a JWT has three parts");
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let (mut bytes, mut acc, mut bits) = (Vec::new(), 0u32, 0u32);
    for c in payload.bytes().filter(|c| *c != b'=') {
        let v = alphabet.iter().position(|a| *a == c).expect("base64url") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            bytes.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    serde_json::from_slice(&bytes).unwrap()
}

/// The first fenced block after the line `marker` in `doc`.
pub(crate) fn fenced_block_after(doc: &str, marker: &str) -> Option<String> {
    let rest = &doc[doc.find(marker)? + marker.len()..];
    let mut lines = rest.lines().skip_while(|l| !l.starts_with("```"));
    lines.next()?;
    let block: Vec<&str> = lines.take_while(|l| !l.starts_with("```")).collect();
    Some(block.join("\n"))
}

/// A `kubectl auth can-i --list` table as rows of single-space-separated cells, sorted: column
/// widths and the order of rules are not part of what it says.
pub(crate) fn table_rows(table: &str) -> Vec<String> {
    let mut rows: Vec<String> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    rows.sort();
    rows
}
