//! `NodeTask`: one step on one node (`ARCHITECTURE.md` §3, "API"). Internal: the operator creates
//! it (owned by its CheckpointRequest) and writes its spec; the agent of `spec.nodeName` writes its
//! status.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checkpoint_request::{default_timeout_seconds, default_true};
use crate::outcome::{ImageSummary, StepTimings, describe};
use crate::storage::StorageSpec;
use crate::validation::{
    DNS1123_LABEL_MAX_LENGTH, DNS1123_LABEL_PATTERN, DNS1123_SUBDOMAIN_MAX_LENGTH,
    DNS1123_SUBDOMAIN_PATTERN, ENDPOINT_HTTPS, LOCATION_RELATIVE, MAX_CONTAINERS, PATH_MAX_LENGTH,
    SECRET_KEY_PATTERN, SHA256_HEX_PATTERN, TIMEOUT_SECONDS_MAX, TIMEOUT_SECONDS_MIN,
};

/// One checkpoint, restore or image deletion on one node, run by that node's agent.
// Every printer column repeats `type_ = "string"`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "NodeTask",
    namespaced,
    category = "ferry",
    status = "NodeTaskStatus",
    derive = "PartialEq",
    doc = "Internal: one step of a CheckpointRequest on one node, run by that node's ferry agent.",
    printcolumn(name = "NODE", type_ = "string", json_path = ".spec.nodeName"),
    printcolumn(name = "OPERATION", type_ = "string", json_path = ".spec.operation"),
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "AGE",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct NodeTaskSpec {
    /// The node whose agent runs the task (also the `ferry.dev/node` label).
    // Node names are DNS-1123 subdomains.
    #[schemars(
        regex(pattern = DNS1123_SUBDOMAIN_PATTERN),
        length(min = 1, max = DNS1123_SUBDOMAIN_MAX_LENGTH)
    )]
    pub node_name: String,

    /// Checkpoint, Restore or Delete (the image).
    pub operation: TaskOperation,

    /// Name of the owning CheckpointRequest, in the same namespace.
    // Request names are subdomains limited to 63 characters (the CheckpointRequest CRD's rule).
    #[schemars(
        regex(pattern = DNS1123_SUBDOMAIN_PATTERN),
        length(min = 1, max = DNS1123_LABEL_MAX_LENGTH)
    )]
    pub checkpoint_request: String,

    /// The pod to checkpoint (Checkpoint), to restore (Restore), or whose image to delete.
    pub pod: PodReference,

    /// Containers of the pod. Empty: every container.
    // Container names are DNS-1123 labels.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Set)]
    #[schemars(
        length(max = MAX_CONTAINERS),
        inner(
            regex(pattern = DNS1123_LABEL_PATTERN),
            length(min = 1, max = DNS1123_LABEL_MAX_LENGTH)
        )
    )]
    pub containers: Vec<String>,

    /// Restore only: the agent to pull the image from. Absent: the image is already local
    /// (same node, or a PVC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<TransferSource>,

    /// Where the image is (Restore, Delete) or goes (Checkpoint).
    pub image: ImageRef,

    /// Options copied from the request.
    #[serde(default)]
    pub options: TaskOptions,
}

/// What a NodeTask does.
#[derive(JsonSchema, Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskOperation {
    /// Checkpoint the pod's containers into the image directory.
    Checkpoint,
    /// Restore the image into a new pod on this node.
    Restore,
    /// Delete the image from this node.
    Delete,
}

impl TaskOperation {
    /// The operation as written in the API (and the `operation` label of `ferry_tasks_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskOperation::Checkpoint => "Checkpoint",
            TaskOperation::Restore => "Restore",
            TaskOperation::Delete => "Delete",
        }
    }
}

/// A pod, by namespace and name (and uid, to tell a re-created pod of the same name apart).
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct PodReference {
    /// Namespace of the pod.
    // Namespace names are DNS-1123 labels.
    #[schemars(
        regex(pattern = DNS1123_LABEL_PATTERN),
        length(min = 1, max = DNS1123_LABEL_MAX_LENGTH)
    )]
    pub namespace: String,
    /// Name of the pod.
    // Pod names are DNS-1123 subdomains.
    #[schemars(
        regex(pattern = DNS1123_SUBDOMAIN_PATTERN),
        length(min = 1, max = DNS1123_SUBDOMAIN_MAX_LENGTH)
    )]
    pub name: String,
    /// The pod's `metadata.uid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Where a Restore pulls the image from.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct TransferSource {
    /// Base URL of the source node's agent transfer server (https).
    #[x_kube(validation = ENDPOINT_HTTPS)]
    #[schemars(length(min = 1, max = 2048))]
    pub endpoint: String,
    /// The Secret key holding the per-transfer bearer token, in the task's namespace.
    pub token_secret_ref: SecretKeyRef,
    /// SHA-256 (hex) of the source agent's TLS certificate: the only certificate the pulling
    /// agent accepts (agents pin each other's self-signed certificates; no shared CA key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SHA256_HEX_PATTERN))]
    pub cert_sha256: Option<String>,
    /// SHA-256 (hex) of the image manifest the checkpoint produced: the pulled image must be
    /// that one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = SHA256_HEX_PATTERN))]
    pub image_sha256: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct SecretKeyRef {
    /// Name of the Secret.
    // Secret names are DNS-1123 subdomains.
    #[schemars(
        regex(pattern = DNS1123_SUBDOMAIN_PATTERN),
        length(min = 1, max = DNS1123_SUBDOMAIN_MAX_LENGTH)
    )]
    pub name: String,
    /// Key in the Secret's data.
    #[schemars(regex(pattern = SECRET_KEY_PATTERN), length(min = 1, max = DNS1123_SUBDOMAIN_MAX_LENGTH))]
    pub key: String,
}

/// A checkpoint image: the store and the image's directory in it.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct ImageRef {
    /// The image store (the request's `spec.storage`).
    pub storage: StorageSpec,
    /// Directory of the image relative to the store's root, e.g. `<namespace>/<request>`.
    #[x_kube(validation = LOCATION_RELATIVE)]
    #[schemars(length(min = 1, max = PATH_MAX_LENGTH))]
    pub location: String,
}

/// Options copied from the CheckpointRequest.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct TaskOptions {
    /// Checkpoint: keep the containers running afterwards.
    #[serde(default = "default_true")]
    pub leave_running: bool,
    /// Restore: refill device memory in parallel with host memory.
    #[serde(default = "default_true")]
    pub parallel_restore: bool,
    /// Fail the task after this many seconds.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = TIMEOUT_SECONDS_MIN, max = TIMEOUT_SECONDS_MAX))]
    pub timeout_seconds: i32,
}

impl Default for TaskOptions {
    fn default() -> Self {
        TaskOptions {
            leave_running: true,
            parallel_restore: true,
            timeout_seconds: default_timeout_seconds(),
        }
    }
}

/// Where a task is.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskPhase {
    /// Created; the agent has not picked it up.
    #[default]
    Pending,
    /// The agent works on it (and renews `heartbeatTime`).
    Running,
    /// Done. Terminal.
    Succeeded,
    /// Failed; `message` says why. Terminal.
    Failed,
}

impl TaskPhase {
    /// Whether the task is finished and no longer changes.
    pub fn is_terminal(self) -> bool {
        matches!(self, TaskPhase::Succeeded | TaskPhase::Failed)
    }

    /// The phase as written in the API (and the `result` label of `ferry_tasks_total`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskPhase::Pending => "Pending",
            TaskPhase::Running => "Running",
            TaskPhase::Succeeded => "Succeeded",
            TaskPhase::Failed => "Failed",
        }
    }
}

/// Written by the node agent only.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct NodeTaskStatus {
    /// Pending, Running, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<TaskPhase>,
    /// What the agent is doing, or why the task failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Renewed by the agent while Running; a stale heartbeat means the agent is gone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_time: Option<Time>,
    /// When the agent started the task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the task reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// What the task produced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<TaskResult>,
}

impl NodeTask {
    /// The task's phase; `Pending` before the agent wrote a status.
    pub fn phase(&self) -> TaskPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }
}

/// The outcome of a task: sizes, timings and transfer numbers.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null, transform = describe_task_result)]
pub struct TaskResult {
    /// The image's size, memory, GPUs and digest (flattened: the fields sit beside `files`);
    /// [`TASK_RESULT_DOCS`] describes them as a task sees them.
    #[serde(flatten)]
    pub image: ImageSummary,
    /// Files in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<i64>,
    /// Step durations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<TaskTimings>,
    /// Restore with a `source`: the image pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<TransferStats>,
}

/// The NodeTask CRD's descriptions of [`ImageSummary`]'s fields: what a checkpoint (or a
/// restore) reports, where the request's status describes the published image.
const TASK_RESULT_DOCS: &[(&str, &str)] = &[
    ("sizeBytes", "Bytes of the image."),
    ("sha256", "SHA-256 (hex) of the image manifest."),
    ("gpuVendor", "amd, nvidia, sim or none."),
    (
        "gpuMemoryBytes",
        "Bytes of device memory checkpointed or restored.",
    ),
    (
        "hostMemoryBytes",
        "Bytes of host memory pages checkpointed or restored.",
    ),
    (
        "archiveContainers",
        "Checkpoint through the kubelet: the containers whose checkpoint archive the image holds.\n\
         A restore of such an image goes through containerd (a checkpoint image per container,\n\
         named by `names::checkpoint_image::reference`), not through CRIU run by the agent.",
    ),
    (
        "gpus",
        "The GPUs whose memory the image holds (checkpoint) or the restore refilled (restore),\n\
         from the plugin's stats. The NVIDIA backend reports none: the driver does not say which\n\
         GPUs a process uses (the node's GPU UUIDs are in the image's `ferry-nvidia.json`).",
    ),
];

fn describe_task_result(schema: &mut schemars::Schema) {
    describe(schema, TASK_RESULT_DOCS);
}

/// Step durations of a task, in milliseconds.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null, transform = describe_task_timings)]
pub struct TaskTimings {
    /// Checkpoint, image pull and restore (flattened); [`TASK_TIMINGS_DOCS`] describes them
    /// as a task sees them.
    #[serde(flatten)]
    pub steps: StepTimings,
    /// Checkpoint: when the containers were frozen (microsecond precision).
    // The operator computes the migration's downtime from it, so it is a MicroTime: `Time`
    // keeps whole seconds only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_at: Option<MicroTime>,
}

/// The NodeTask CRD's descriptions of [`StepTimings`]' fields.
const TASK_TIMINGS_DOCS: &[(&str, &str)] = &[
    ("checkpointMs", "Checkpoint."),
    ("transferMs", "Image pull."),
    ("restoreMs", "Restore."),
    ("hostRestoreMs", "Host memory part of the restore."),
    ("gpuRestoreMs", "Device memory part of the restore."),
];

fn describe_task_timings(schema: &mut schemars::Schema) {
    describe(schema, TASK_TIMINGS_DOCS);
}

/// An image pull.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct TransferStats {
    /// Bytes received.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// Mean throughput.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<i64>,
}
