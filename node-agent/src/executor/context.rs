//! What every operation of the executor shares: its settings, the API client, the metrics,
//! and the steps several operations take (the task's store, its pod, its work directory).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::{NodeTask, StorageSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt};

use crate::executor::error::TaskError;
use crate::executor::mode::RuntimeMode;
use crate::runtime::control::ToolControl;
use crate::runtime::criu::Criu;
use crate::store::in_use::Hold;
use crate::store::{Store, StoreError, Stores};
use crate::telemetry::metrics::Metrics;

/// Executor settings.
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// This node.
    pub node: String,
    /// The main store (the default `hostPath`) and the other host paths a request may name.
    pub stores: Stores,
    /// Private directory for restores (outside every store).
    pub work_dir: PathBuf,
    /// CRIU with ferry's plugin dir.
    pub criu: Criu,
    /// How pods map to processes.
    pub runtime: RuntimeMode,
    /// Extra environment for CRIU and the plugin (e.g. `FERRY_SIM_*` on a sim-GPU node).
    pub plugin_env: Vec<(String, String)>,
    /// Where pulls read their grants and the certificate they present to sources; `None`
    /// (tests that never pull): a Restore with a source fails with a clear reason.
    pub pull_identity: Option<PullIdentity>,
}

/// What a pull needs from the agent's start-up: where grants live and who this node is.
#[derive(Clone, Debug)]
pub struct PullIdentity {
    /// The agents' namespace, where the operator writes grant Secrets.
    pub namespace: String,
    /// This node's certificate and key (the one its Lease publishes), presented to sources.
    pub identity: Arc<crate::transfer::NodeIdentity>,
}

/// The executor's shared state.
pub struct Context {
    /// Pods and Secrets.
    pub client: Client,
    /// Settings.
    pub config: WorkerConfig,
    /// Where operations report durations and sizes.
    pub metrics: Arc<Metrics>,
}

impl Context {
    /// This context for one task: CRIU, runc, `ctr` and the kubelet client bound to the
    /// task's `control`, so that cancelling the task kills whatever tool it runs.
    pub fn for_task(&self, control: &ToolControl) -> Context {
        let mut config = self.config.clone();
        config.criu = config.criu.with_control(control.clone());
        config.runtime = config.runtime.with_control(control);
        Context {
            client: self.client.clone(),
            config,
            metrics: self.metrics.clone(),
        }
    }

    /// The store a task's `image.storage` names, if this agent serves it.
    pub fn store(&self, storage: &StorageSpec) -> Result<Store, TaskError> {
        let Some(host) = storage.host_path.as_ref() else {
            return Err(TaskError::PvcStorage);
        };
        self.config
            .stores
            .for_host_path(Some(&host.path))
            .map_err(|e| match e {
                e @ StoreError::NotAStore { .. } => TaskError::NotAStore(e),
                e => TaskError::Store(e),
            })
    }

    /// The task's store with its image held in use (GC spares it) until the [`Hold`] drops.
    pub fn held_store(&self, task: &NodeTask) -> Result<(Store, Hold), TaskError> {
        let store = self.store(&task.spec.image.storage)?;
        let location = &task.spec.image.location;
        let hold = store.hold(location).map_err(|source| TaskError::Image {
            location: location.clone(),
            source,
        })?;
        Ok((store, hold))
    }

    /// The task's pod, checked to be the one the task was written for.
    pub async fn pod(&self, task: &NodeTask) -> Result<Pod, TaskError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &task.spec.pod.namespace);
        let pod = api
            .get_opt(&task.spec.pod.name)
            .await
            .map_err(TaskError::ReadPod)?
            .ok_or_else(|| TaskError::PodNotFound {
                namespace: task.spec.pod.namespace.clone(),
                name: task.spec.pod.name.clone(),
            })?;
        if let (Some(want), Some(have)) = (task.spec.pod.uid.as_deref(), pod.uid())
            && want != have
        {
            return Err(TaskError::PodRecreated {
                namespace: task.spec.pod.namespace.clone(),
                name: task.spec.pod.name.clone(),
                have,
                want: want.to_string(),
            });
        }
        Ok(pod)
    }

    /// The task's private directory under the work dir (restore directories, import logs).
    pub fn work_dir(&self, task: &NodeTask) -> PathBuf {
        self.config
            .work_dir
            .join(task.uid().unwrap_or_else(|| task.name_any()))
    }

    /// The marker a non-repeatable restore leaves while it runs: found after an agent
    /// restart, it says the restore may have half happened.
    pub fn restore_marker(&self, task: &NodeTask) -> PathBuf {
        self.config
            .work_dir
            .join(format!("{}.restoring", task.uid().unwrap_or_default()))
    }
}

/// The limit for each tool run of `task`. The task's [`ToolControl`] cuts it to what is left
/// of the task's own deadline, so a tool never outlives its task.
pub fn tool_timeout(task: &NodeTask) -> Duration {
    Duration::from_secs(task.spec.options.timeout_seconds.max(1) as u64)
}
