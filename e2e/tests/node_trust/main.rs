#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Node trust through the API server (issue #14, finding 2; docs/security.md): a compromised
//! node's agent credentials try to act for another node, against a real API server with the
//! RBAC of `manifests/rbac/` and the node-scope policy of `manifests/policy/`.
//!
//! Each agent authenticates as the ServiceAccount `ferry-system/ferry-agent` with a token bound
//! to a Pod on its kwok node, as the DaemonSet's pods do ([`ferry_e2e::identity`]). Every
//! refusal below is paired with the same write by the identity that may make it, so that a
//! policy or RBAC that refuses everything fails the test too.
//!
//! One `#[test]` starts the cluster and runs the scenarios in order (a failing scenario does
//! not stop the others); the chart/manifest agreement needs no cluster.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::process::Command;

use ferry_e2e::identity::{
    AGENT_SERVICE_ACCOUNT, AgentIdentity, NODE_NAME_EXTRA, OPERATOR_SERVICE_ACCOUNT,
    SYSTEM_NAMESPACE, agent_identity, service_account_user, whoami,
};
use ferry_e2e::migration::bind_ferry_rbac;

mod support;
use ferry_e2e::{Cluster, Options, User, workspace_root};
use support::*;

/// Where the NodeTasks of this test live (a tenant's namespace).
pub(crate) const TENANT: &str = "tenant-a";
/// The operator's leader Lease (`ferry-operator --lease-name` default).
const LEADER_LEASE: &str = "ferry-operator";

/// What the scenarios share: the cluster and both nodes' agent identities.
pub(crate) struct World {
    cluster: Cluster,
    a: AgentIdentity,
    b: AgentIdentity,
}

type Scenario = (&'static str, fn(&World));

const SCENARIOS: &[Scenario] = &[
    (
        "an agent's token carries its node, in the JWT and for the API server",
        an_agents_token_carries_its_node,
    ),
    (
        "an agent may apply its own Lease",
        an_agent_may_apply_its_own_lease,
    ),
    (
        "an agent may neither create nor patch another agent's Lease",
        an_agent_may_neither_create_nor_patch_another_agents_lease,
    ),
    (
        "an agent may not patch the operator's leader Lease, although RBAC alone would allow it",
        an_agent_may_not_patch_the_leader_lease,
    ),
    (
        "an agent may write the status of its node's NodeTasks only",
        an_agent_may_write_the_status_of_its_nodes_node_tasks_only,
    ),
    (
        "a token without a node binding may not write",
        a_token_without_a_node_binding_may_not_write,
    ),
    (
        "an agent may not mint a token for another node",
        an_agent_may_not_mint_a_token_for_another_node,
    ),
    (
        "kubectl auth can-i --list for both service accounts is what docs/security.md says",
        can_i_list_is_what_the_security_doc_says,
    ),
];

#[test]
fn one_node_cannot_act_for_another_through_the_api_server() {
    let cluster = Cluster::start(Options::control_plane().with_kwok_nodes(2))
        .unwrap_or_else(|e| panic!("{e}"));
    let nodes = cluster.node_names().unwrap_or_else(|e| panic!("{e}"));
    let [a, b] = nodes.as_slice() else {
        panic!("expected 2 kwok nodes, got {nodes:?}");
    };
    for ns in [SYSTEM_NAMESPACE, TENANT] {
        cluster.kubectl(&["create", "namespace", ns]).unwrap();
    }
    bind_ferry_rbac(&cluster).unwrap_or_else(|e| panic!("{e}"));
    let a = agent_identity(&cluster, a).unwrap_or_else(|e| panic!("{e}"));
    let b = agent_identity(&cluster, b).unwrap_or_else(|e| panic!("{e}"));
    let world = World { cluster, a, b };

    let mut failed = Vec::new();
    for (name, scenario) in SCENARIOS {
        eprintln!("scenario: {name}");
        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| scenario(&world))) {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            eprintln!("FAILED: {name}: {message}");
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "failed scenarios: {failed:#?}");
}

/// The chart renders the same policy as `manifests/policy/` (its `policy/` is a byte copy, like
/// `rbac/`), for the agents' ServiceAccount of the release's namespace, which is the name the
/// chart's DaemonSet runs as.
#[test]
fn the_charts_node_scope_policy_is_the_manifests_policy() {
    let root = workspace_root();
    let file = "agent-node-scope.yaml";
    let manifest = std::fs::read(root.join("manifests/policy").join(file)).unwrap();
    let chart = std::fs::read(root.join("charts/ferry/policy").join(file)).unwrap();
    assert!(
        manifest == chart,
        "charts/ferry/policy/{file} differs from manifests/policy/{file}; copy it over"
    );
    let helm = ["/opt/ferry/tools/bin/helm", "helm"]
        .into_iter()
        .find(|h| !h.starts_with('/') || Path::new(h).is_file())
        .unwrap();
    let rendered = |template: &str| {
        let out = Command::new(helm)
            .args([
                "template",
                "ferry",
                "-n",
                "gpu-ops",
                "--show-only",
                template,
            ])
            .arg(root.join("charts/ferry"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let policy = rendered("templates/policy.yaml");
    assert!(
        policy.contains("request.userInfo.username == 'system:serviceaccount:gpu-ops:ferry-agent'"),
        "{policy}"
    );
    assert!(!policy.contains("ferry-system"), "{policy}");
    assert!(
        policy.contains("kind: ValidatingAdmissionPolicyBinding\n"),
        "{policy}"
    );
    let agent = rendered("templates/agent.yaml");
    assert!(
        agent.contains(&format!("serviceAccountName: {AGENT_SERVICE_ACCOUNT}\n")),
        "{agent}"
    );
}

fn an_agents_token_carries_its_node(w: &World) {
    for identity in [&w.a, &w.b] {
        let claims = jwt_claims(&identity.token);
        let k8s = &claims["kubernetes.io"];
        assert_eq!(k8s["node"]["name"], identity.node.as_str(), "{claims}");
        assert_eq!(k8s["pod"]["name"], identity.pod.as_str(), "{claims}");
        assert_eq!(
            k8s["serviceaccount"]["name"], AGENT_SERVICE_ACCOUNT,
            "{claims}"
        );
        let (user, nodes) = whoami(&identity.kubeconfig).unwrap();
        assert_eq!(user, service_account_user(AGENT_SERVICE_ACCOUNT));
        assert_eq!(nodes, [identity.node.as_str()], "{NODE_NAME_EXTRA}");
    }
    assert_ne!(w.a.node, w.b.node);
}

fn an_agent_may_apply_its_own_lease(w: &World) {
    let name = lease_of(&w.a);
    let out = apply_lease(&w.a, &name, &w.a.node);
    assert_ok(&out);
    assert_eq!(holder(&w.cluster, &name), w.a.node);
}

fn an_agent_may_neither_create_nor_patch_another_agents_lease(w: &World) {
    let theirs = lease_of(&w.b);
    // Create: B has not written its Lease yet.
    let out = apply_lease(&w.a, &theirs, &w.a.node);
    assert_refused_by_policy(
        &out,
        &format!("may write only the Lease {}", lease_of(&w.a)),
    );
    let exists = w
        .cluster
        .kubectl_output(&["get", "lease", &theirs, "-n", SYSTEM_NAMESPACE], None)
        .unwrap();
    assert!(!exists.status.success(), "A created B's Lease");
    // The same write by B's agent works.
    assert_ok(&apply_lease(&w.b, &theirs, &w.b.node));
    assert_eq!(holder(&w.cluster, &theirs), w.b.node);
    // Patch: now that it exists, A may not take it over (its endpoint and pinned certificate
    // are what other agents trust when they pull from B).
    let out = apply_lease(&w.a, &theirs, &w.a.node);
    assert_refused_by_policy(&out, &format!("not {theirs}"));
    let out = run_as(
        &w.a.kubeconfig,
        &[
            "patch",
            "lease",
            &theirs,
            "-n",
            SYSTEM_NAMESPACE,
            "--type=merge",
            "-p",
            r#"{"metadata":{"annotations":{"ferry.dev/transfer-endpoint":"https://evil:9443"}}}"#,
        ],
        None,
    );
    assert_refused_by_policy(&out, &format!("not {theirs}"));
    assert_eq!(holder(&w.cluster, &theirs), w.b.node);
}

fn an_agent_may_not_patch_the_leader_lease(w: &World) {
    let leader = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEADER_LEASE, "namespace": SYSTEM_NAMESPACE},
        "spec": {"holderIdentity": "operator-0", "leaseDurationSeconds": 15},
    });
    let out = run_as(
        &w.cluster.kubeconfig(User::Operator),
        &["create", "-f", "-"],
        Some(&leader.to_string()),
    );
    assert_ok(&out);
    // RBAC cannot tell the leader Lease from an agent's (no name prefixes in RBAC), so it
    // allows the patch; the policy is what refuses it.
    let agent = service_account_user(AGENT_SERVICE_ACCOUNT);
    let can = w
        .cluster
        .kubectl_output(
            &[
                "auth",
                "can-i",
                "patch",
                &format!("leases/{LEADER_LEASE}"),
                "-n",
                SYSTEM_NAMESPACE,
                "--as",
                &agent,
            ],
            None,
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&can.stdout).trim(), "yes");
    let out = apply_lease(&w.a, LEADER_LEASE, &w.a.node);
    assert_refused_by_policy(&out, &format!("not {LEADER_LEASE}"));
    // Nor may it update it (RBAC: agents have no `update` on Leases).
    let mut taken = leader.clone();
    taken["spec"]["holderIdentity"] = w.a.node.clone().into();
    let out = run_as(
        &w.a.kubeconfig,
        &["replace", "-f", "-"],
        Some(&taken.to_string()),
    );
    assert_refused(&out, "cannot update resource \"leases\"");
    assert_eq!(holder(&w.cluster, LEADER_LEASE), "operator-0");
    // The operator may: it renews its Lease with update.
    let mut current = w
        .cluster
        .kubectl_json(&[
            "get",
            "lease",
            LEADER_LEASE,
            "-n",
            SYSTEM_NAMESPACE,
            "-o",
            "json",
        ])
        .unwrap();
    current["spec"]["holderIdentity"] = "operator-1".into();
    let out = run_as(
        &w.cluster.kubeconfig(User::Operator),
        &["replace", "-f", "-"],
        Some(&current.to_string()),
    );
    assert_ok(&out);
    assert_eq!(holder(&w.cluster, LEADER_LEASE), "operator-1");
}

fn an_agent_may_write_the_status_of_its_nodes_node_tasks_only(w: &World) {
    let (task_a, task_b) = ("move-x-on-a", "move-x-on-b");
    for (task, node) in [(task_a, &w.a.node), (task_b, &w.b.node)] {
        w.cluster
            .kubectl_stdin(&["create", "-f", "-"], Some(&node_task(task, node)))
            .unwrap();
    }
    // B's task, as A: refused; as B: written.
    let out = apply_status(&w.a, task_b, "Failed");
    assert_refused_by_policy(
        &out,
        &format!(
            "may write only the status of NodeTasks whose spec.nodeName is {}",
            w.a.node
        ),
    );
    assert_eq!(phase(&w.cluster, task_b), "");
    assert_ok(&apply_status(&w.b, task_b, "Running"));
    assert_eq!(phase(&w.cluster, task_b), "Running");
    // A's own task, as A: written.
    assert_ok(&apply_status(&w.a, task_a, "Running"));
    assert_eq!(phase(&w.cluster, task_a), "Running");
    // Nor may A move its task to another node, or B's to its own: the spec is the operator's
    // (RBAC: agents write only nodetasks/status).
    for task in [task_a, task_b] {
        let out = run_as(
            &w.a.kubeconfig,
            &[
                "patch",
                "nodetask",
                task,
                "-n",
                TENANT,
                "--type=merge",
                "-p",
                &format!(r#"{{"spec":{{"nodeName":"{}"}}}}"#, w.b.node),
            ],
            None,
        );
        assert_refused(&out, "cannot patch resource \"nodetasks\"");
    }
    let node_of = |task: &str| field(&w.cluster, "nodetask", task, TENANT, ".spec.nodeName");
    assert_eq!(node_of(task_a), w.a.node);
    assert_eq!(node_of(task_b), w.b.node);
}

fn a_token_without_a_node_binding_may_not_write(w: &World) {
    let token = w
        .cluster
        .kubectl(&[
            "create",
            "token",
            AGENT_SERVICE_ACCOUNT,
            "-n",
            SYSTEM_NAMESPACE,
            "--duration",
            "1h",
        ])
        .unwrap();
    let token = token.trim();
    assert!(jwt_claims(token)["kubernetes.io"]["node"].is_null());
    let kubeconfig = w.cluster.dir().join("unbound-agent.kubeconfig");
    w.cluster
        .pki()
        .write_token_kubeconfig("unbound", w.cluster.server(), token, &kubeconfig)
        .unwrap();
    // Same ServiceAccount, so the same RBAC; only the node binding is missing.
    let (user, nodes) = whoami(&kubeconfig).unwrap();
    assert_eq!(user, service_account_user(AGENT_SERVICE_ACCOUNT));
    assert!(nodes.is_empty(), "{nodes:?}");
    let unbound = AgentIdentity {
        kubeconfig,
        ..w.a.clone()
    };
    let own = lease_of(&w.a);
    let out = apply_lease(&unbound, &own, &w.a.node);
    assert_refused_by_policy(&out, "need a node-bound ServiceAccount token");
    let out = apply_status(&unbound, "move-x-on-a", "Failed");
    assert_refused_by_policy(&out, "need a node-bound ServiceAccount token");
    // The same writes with A's node-bound token work.
    assert_ok(&apply_lease(&w.a, &own, &w.a.node));
    assert_ok(&apply_status(&w.a, "move-x-on-a", "Succeeded"));
    assert_eq!(phase(&w.cluster, "move-x-on-a"), "Succeeded");
}

fn an_agent_may_not_mint_a_token_for_another_node(w: &World) {
    let args = [
        "create",
        "token",
        AGENT_SERVICE_ACCOUNT,
        "-n",
        SYSTEM_NAMESPACE,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        &w.b.pod,
    ];
    let out = run_as(&w.a.kubeconfig, &args, None);
    assert_refused(&out, "cannot create resource \"serviceaccounts/token\"");
    // The admin can (that is how the harness made B's token).
    let out = w.cluster.kubectl_output(&args, None).unwrap();
    assert_ok(&out);
}

fn can_i_list_is_what_the_security_doc_says(w: &World) {
    let doc_path = workspace_root().join("docs/security.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap();
    for account in [AGENT_SERVICE_ACCOUNT, OPERATOR_SERVICE_ACCOUNT] {
        let user = service_account_user(account);
        let marker = format!("<!-- can-i: {user} -n {SYSTEM_NAMESPACE} -->");
        let expected = fenced_block_after(&doc, &marker)
            .unwrap_or_else(|| panic!("docs/security.md has no block after {marker}"));
        let actual = w
            .cluster
            .kubectl(&[
                "auth",
                "can-i",
                "--list",
                "-n",
                SYSTEM_NAMESPACE,
                "--as",
                &user,
            ])
            .unwrap();
        assert_eq!(
            table_rows(&actual),
            table_rows(&expected),
            "`kubectl auth can-i --list -n {SYSTEM_NAMESPACE} --as {user}` is not what \
             docs/security.md says; the real output:\n{actual}"
        );
    }
}
