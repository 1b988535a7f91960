//! The agents' identity in the harness, as in production: the ServiceAccount
//! `ferry-system/ferry-agent`, authenticated by a token bound to a pod on the agent's node, so
//! that the API server knows which node each request comes from (the token's `kubernetes.io`
//! claims, and the `authentication.kubernetes.io/node-name` extra of the user). The policy in
//! `manifests/policy/` scopes each agent's writes to its node by that extra (docs/security.md).
//!
//! In a cluster the DaemonSet's pods get such tokens from their kubelet (projected
//! ServiceAccount token). Here each agent runs as a host process, so the harness makes the same
//! thing by hand: a Pod bound to the node (`spec.nodeName`; kwok "runs" it on a kwok node, the
//! kubelet runs the pause image on a real node), a token bound to that Pod from the TokenRequest
//! API (`kubectl create token --bound-object-kind Pod`), and a kubeconfig with that token.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::binaries::{PAUSE_IMAGE, kubectl};
use crate::error::{Error, IoContext, Result};
use crate::{Cluster, workspace_root};

/// The agents' and the operator's namespace in the harness (the manifests' `ferry-system`).
pub const SYSTEM_NAMESPACE: &str = "ferry-system";
/// The agents' ServiceAccount (the DaemonSet's in the chart).
pub const AGENT_SERVICE_ACCOUNT: &str = "ferry-agent";
/// The operator's ServiceAccount (the Deployment's in the chart).
pub const OPERATOR_SERVICE_ACCOUNT: &str = "ferry-operator";
/// The ValidatingAdmissionPolicy (and its binding) of `manifests/policy/`.
pub const NODE_SCOPE_POLICY: &str = "ferry-agent-node-scope";
/// The user extra the API server sets from a node-bound ServiceAccount token.
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// How long an agent's token is valid: longer than any test or demo runs.
const TOKEN_DURATION: &str = "12h";

/// The user name of a ServiceAccount in [`SYSTEM_NAMESPACE`]
/// (`system:serviceaccount:ferry-system:<name>`).
pub fn service_account_user(name: &str) -> String {
    format!("system:serviceaccount:{SYSTEM_NAMESPACE}:{name}")
}

/// One agent's credentials: a token for [`AGENT_SERVICE_ACCOUNT`] bound to a Pod on `node`.
#[derive(Clone, Debug)]
pub struct AgentIdentity {
    /// The node the token is bound to.
    pub node: String,
    /// The Pod in [`SYSTEM_NAMESPACE`] the token is bound to (`ferry-agent-<node>`): deleting
    /// it revokes the token.
    pub pod: String,
    /// The token (a JWT), also in `token_file`.
    pub token: String,
    /// The token alone (`--kubelet-token-file`: the kubelet authenticates the agent by it).
    pub token_file: PathBuf,
    /// A kubeconfig that authenticates with the token (the agent's `KUBECONFIG`).
    pub kubeconfig: PathBuf,
}

/// Applies `manifests/policy/` (the agents' node scope) and waits until the API server
/// enforces it: an agent write without a node-bound token is refused by name. Policies take
/// effect a moment after they are created; before that, RBAC alone would let every write of
/// the agents' RBAC through.
pub fn apply_node_scope_policy(cluster: &Cluster) -> Result<()> {
    let policy = workspace_root().join("manifests/policy");
    cluster.kubectl(&["apply", "-f", &policy.display().to_string()])?;
    // A dry run runs admission but stores nothing. Impersonating the agents' ServiceAccount
    // gives a user without the node extra, which the policy must refuse once it is active.
    let probe = serde_json::json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "ferry-agent-policy-probe", "namespace": SYSTEM_NAMESPACE},
    })
    .to_string();
    let agent = service_account_user(AGENT_SERVICE_ACCOUNT);
    let args = ["create", "--dry-run=server", "--as", &agent, "-f", "-"];
    cluster.poll(
        "the agents' node-scope policy to be enforced",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let out = cluster
                .kubectl_output(&args, Some(&probe))
                .map_err(|e| e.to_string())?;
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() && err.contains(NODE_SCOPE_POLICY) {
                Ok(Some(()))
            } else if out.status.success() {
                Err("an agent write without a node-bound token was allowed".to_string())
            } else {
                Err(err.trim().to_string())
            }
        },
    )
}

/// Creates the ServiceAccount `name` in [`SYSTEM_NAMESPACE`] unless it exists (no
/// controller-manager runs in most test clusters to make ServiceAccounts).
pub fn ensure_service_account(cluster: &Cluster, name: &str) -> Result<()> {
    let account = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": SYSTEM_NAMESPACE},
    });
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&account.to_string()))?;
    Ok(())
}

/// Makes `node`'s agent identity: the Pod `ferry-agent-<node>` bound to `node`, a token bound to
/// it, and a kubeconfig under `<cluster dir>/agents/<node>/`; then checks with the API server
/// (`kubectl auth whoami`) that the token authenticates as the agents' ServiceAccount on `node`.
/// [`AGENT_SERVICE_ACCOUNT`] must exist ([`ensure_service_account`]).
pub fn agent_identity(cluster: &Cluster, node: &str) -> Result<AgentIdentity> {
    let pod = format!("{AGENT_SERVICE_ACCOUNT}-{node}");
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&identity_pod(&pod, node)))?;
    let token = cluster.kubectl(&[
        "create",
        "token",
        AGENT_SERVICE_ACCOUNT,
        "-n",
        SYSTEM_NAMESPACE,
        "--bound-object-kind",
        "Pod",
        "--bound-object-name",
        &pod,
        "--duration",
        TOKEN_DURATION,
    ])?;
    let token = token.trim().to_string();
    let dir = cluster.dir().join("agents").join(node);
    fs::create_dir_all(&dir).io_context("creating an agent's identity directory", &dir)?;
    let token_file = dir.join("token");
    fs::write(&token_file, &token).io_context("writing an agent's token", &token_file)?;
    let kubeconfig = dir.join("kubeconfig");
    cluster.pki().write_token_kubeconfig(
        &service_account_user(AGENT_SERVICE_ACCOUNT),
        cluster.server(),
        &token,
        &kubeconfig,
    )?;
    let identity = AgentIdentity {
        node: node.to_string(),
        pod,
        token,
        token_file,
        kubeconfig,
    };
    let (user, nodes) = whoami(&identity.kubeconfig)?;
    if user != service_account_user(AGENT_SERVICE_ACCOUNT) || nodes != [node] {
        return Err(Error::AgentIdentity {
            node: node.to_string(),
            what: format!("the token authenticates as {user} with {NODE_NAME_EXTRA} {nodes:?}"),
        });
    }
    Ok(identity)
}

/// Who the API server says `kubeconfig`'s credentials are: the user name and its
/// [`NODE_NAME_EXTRA`] values.
pub fn whoami(kubeconfig: &Path) -> Result<(String, Vec<String>)> {
    let args = ["auth", "whoami", "-o", "json"];
    let program = kubectl()?;
    let out = Command::new(&program)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .io_context("running kubectl", &program)?;
    if !out.status.success() {
        return Err(Error::Kubectl {
            args: args.join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    let review: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|source| Error::KubectlOutput {
            args: args.join(" "),
            source,
        })?;
    let info = &review["status"]["userInfo"];
    let user = info["username"].as_str().unwrap_or_default().to_string();
    let nodes = info["extra"][NODE_NAME_EXTRA]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    Ok((user, nodes))
}

/// The Pod an agent's token is bound to: on `node` by `spec.nodeName`, running as the agents'
/// ServiceAccount (the TokenRequest API binds a token only to a pod of the same account),
/// tolerating every taint like the DaemonSet, the pause image (never pulled; kwok nodes do not
/// run it at all), no token mounted (it never talks to the API server itself).
fn identity_pod(name: &str, node: &str) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": SYSTEM_NAMESPACE,
            "labels": {"app.kubernetes.io/name": "ferry", "app.kubernetes.io/component": "agent"},
        },
        "spec": {
            "nodeName": node,
            "serviceAccountName": AGENT_SERVICE_ACCOUNT,
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 0,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "identity",
                "image": PAUSE_IMAGE,
                "imagePullPolicy": "Never",
            }],
        },
    })
    .to_string()
}
