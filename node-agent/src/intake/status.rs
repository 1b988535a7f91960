//! Writing a NodeTask's status, as this node's agent.

use ferry_api::NodeTask;
use ferry_api::NodeTaskStatus;
use ferry_api::names::field_manager;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

/// Writes a task's status by server-side apply, as this node's agent.
#[derive(Clone)]
pub struct StatusWriter {
    api: Api<NodeTask>,
    params: PatchParams,
}

impl StatusWriter {
    /// A writer for tasks in `namespace`, as the agent of `node`.
    pub fn new(client: &Client, namespace: &str, node: &str) -> Self {
        StatusWriter {
            api: Api::namespaced(client.clone(), namespace),
            params: PatchParams::apply(&field_manager::agent(node)).force(),
        }
    }

    /// Applies the whole status (fields this agent stops setting are removed).
    pub async fn apply(&self, name: &str, status: &NodeTaskStatus) -> kube::Result<()> {
        let body = json!({
            "apiVersion": format!("{}/{}", ferry_api::GROUP, ferry_api::VERSION),
            "kind": "NodeTask",
            "status": status,
        });
        self.api
            .patch_status(name, &self.params, &Patch::Apply(&body))
            .await
            .map(|_| ())
    }
}
