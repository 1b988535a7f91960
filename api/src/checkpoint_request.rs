//! `CheckpointRequest`: the one object users write (`ARCHITECTURE.md` §3, "API").

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use crate::outcome::GpuInfo;
use crate::outcome::{ImageSummary, StepTimings};
use crate::storage::StorageSpec;
use crate::validation::{
    DNS1123_LABEL_MAX_LENGTH, DNS1123_LABEL_PATTERN, DNS1123_SUBDOMAIN_MAX_LENGTH,
    DNS1123_SUBDOMAIN_PATTERN, MAX_CONTAINERS, MAX_NODE_SELECTOR_ENTRIES, REQUEST_NAME_LENGTH,
    SPEC_IMMUTABLE, TIMEOUT_SECONDS_MAX, TIMEOUT_SECONDS_MIN,
};

/// Default of `spec.timeoutSeconds`: 15 minutes covers a checkpoint, transfer and restore of
/// tens of GiB of device memory.
pub const DEFAULT_TIMEOUT_SECONDS: i32 = 900;
/// Default of `spec.ttlSecondsAfterFinished`: one day.
pub const DEFAULT_TTL_SECONDS_AFTER_FINISHED: i32 = 86_400;

pub(crate) fn default_true() -> bool {
    true
}

pub(crate) fn default_timeout_seconds() -> i32 {
    DEFAULT_TIMEOUT_SECONDS
}

fn default_ttl_seconds_after_finished() -> i32 {
    DEFAULT_TTL_SECONDS_AFTER_FINISHED
}

/// Checkpoint a pod's containers, and optionally migrate the pod to another node.
// Every printer column repeats `type_ = "string"`, which clippy takes for a duplicated attribute.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "ferry.dev",
    version = "v1alpha1",
    kind = "CheckpointRequest",
    namespaced,
    shortname = "ckpt",
    shortname = "ckptreq",
    category = "ferry",
    status = "CheckpointRequestStatus",
    derive = "PartialEq",
    doc = "Checkpoints a pod's containers (GPU state included), and optionally restores them on another node.",
    validation = REQUEST_NAME_LENGTH,
    printcolumn(name = "PHASE", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "POD", type_ = "string", json_path = ".spec.podName"),
    printcolumn(name = "SOURCE", type_ = "string", json_path = ".status.sourceNode"),
    printcolumn(name = "TARGET", type_ = "string", json_path = ".status.targetNode"),
    printcolumn(
        name = "DOWNTIME-MS",
        type_ = "integer",
        json_path = ".status.timings.downtimeMs",
        description = "Milliseconds the workload was frozen"
    ),
    printcolumn(name = "AGE", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(validation = SPEC_IMMUTABLE)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct CheckpointRequestSpec {
    /// The pod to checkpoint, in the request's namespace.
    // Pod names are DNS-1123 subdomains (dots allowed, up to 253 characters).
    #[schemars(
        regex(pattern = DNS1123_SUBDOMAIN_PATTERN),
        length(min = 1, max = DNS1123_SUBDOMAIN_MAX_LENGTH)
    )]
    pub pod_name: String,

    /// Containers to checkpoint. Empty or absent: every container of the pod.
    // Container names are DNS-1123 labels (no dots, up to 63 characters). A set, so the API
    // server rejects duplicates.
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

    /// Restore the checkpoint on another node. Absent: checkpoint only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migrate: Option<MigrateSpec>,

    /// Keep the pod running after a checkpoint-only request. Ignored for migrations, where
    /// `migrate.deleteSource` decides.
    #[serde(default = "default_true")]
    pub leave_running: bool,

    /// Where the image is stored. Default: hostPath /var/lib/ferry/checkpoints.
    #[serde(default)]
    pub storage: StorageSpec,

    /// GPU options.
    #[serde(default)]
    pub gpu: GpuOptions,

    /// Fail the request when it has not finished after this many seconds.
    #[serde(default = "default_timeout_seconds")]
    #[schemars(range(min = TIMEOUT_SECONDS_MIN, max = TIMEOUT_SECONDS_MAX))]
    pub timeout_seconds: i32,

    /// Delete the finished request and its image after this many seconds.
    #[serde(default = "default_ttl_seconds_after_finished")]
    #[schemars(range(min = 0))]
    pub ttl_seconds_after_finished: i32,
}

impl CheckpointRequestSpec {
    /// A checkpoint-only request for `pod_name` with every other field at its default.
    pub fn for_pod(pod_name: impl Into<String>) -> Self {
        CheckpointRequestSpec {
            pod_name: pod_name.into(),
            containers: Vec::new(),
            migrate: None,
            leave_running: true,
            storage: StorageSpec::default(),
            gpu: GpuOptions::default(),
            timeout_seconds: DEFAULT_TIMEOUT_SECONDS,
            ttl_seconds_after_finished: DEFAULT_TTL_SECONDS_AFTER_FINISHED,
        }
    }

    /// Whether the request restores the pod on another node (else it only checkpoints).
    pub fn is_migration(&self) -> bool {
        self.migrate.is_some()
    }

    /// Whether the source pod keeps running after its checkpoint: for a migration, unless
    /// `deleteSource`; for a checkpoint only, `leaveRunning`.
    pub fn keeps_source_running(&self) -> bool {
        match &self.migrate {
            Some(m) => !m.delete_source,
            None => self.leave_running,
        }
    }

    /// Whether `container` is one of the containers to checkpoint.
    pub fn selects_container(&self, container: &str) -> bool {
        self.containers.is_empty() || self.containers.iter().any(|c| c == container)
    }
}

/// How to migrate.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct MigrateSpec {
    /// Node to restore on. Absent: the operator picks a compatible node.
    // Node names are DNS-1123 subdomains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = DNS1123_SUBDOMAIN_PATTERN),
        length(min = 1, max = DNS1123_SUBDOMAIN_MAX_LENGTH)
    )]
    pub target_node: Option<String>,

    /// Labels the picked node must have (narrows the operator's pick).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "node_selector_schema")]
    pub node_selector: BTreeMap<String, String>,

    /// Delete the source pod once the restored pod runs.
    #[serde(default = "default_true")]
    pub delete_source: bool,
}

impl Default for MigrateSpec {
    fn default() -> Self {
        MigrateSpec {
            target_node: None,
            node_selector: BTreeMap::new(),
            delete_source: true,
        }
    }
}

/// A label map with bounded size and values (label values are at most 63 characters).
fn node_selector_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "maxProperties": MAX_NODE_SELECTOR_ENTRIES,
        "additionalProperties": {
            "type": "string",
            "maxLength": crate::validation::LABEL_VALUE_MAX_LENGTH,
        },
        "x-kubernetes-map-type": "atomic",
    })
}

/// GPU options.
#[derive(JsonSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct GpuOptions {
    /// Refill device memory in parallel with CRIU's host memory restore. `false`: upstream's
    /// sequential order (device memory first), for comparison.
    #[serde(default = "default_true")]
    pub parallel_restore: bool,
}

impl Default for GpuOptions {
    fn default() -> Self {
        GpuOptions {
            parallel_restore: true,
        }
    }
}

/// Where a request is.
#[derive(JsonSchema, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestPhase {
    /// Accepted, not started (validation, node pick).
    #[default]
    Pending,
    /// The source agent is checkpointing.
    Checkpointing,
    /// The image moves to the target node.
    Transferring,
    /// The target agent is restoring.
    Restoring,
    /// Done. Terminal.
    Succeeded,
    /// Failed; the `Ready` condition says why. Terminal.
    Failed,
}

impl RequestPhase {
    /// Whether the request is finished and no longer changes.
    pub fn is_terminal(self) -> bool {
        matches!(self, RequestPhase::Succeeded | RequestPhase::Failed)
    }

    /// The phase as written in the API (and the `phase` label of `ferry_requests`).
    pub fn as_str(self) -> &'static str {
        match self {
            RequestPhase::Pending => "Pending",
            RequestPhase::Checkpointing => "Checkpointing",
            RequestPhase::Transferring => "Transferring",
            RequestPhase::Restoring => "Restoring",
            RequestPhase::Succeeded => "Succeeded",
            RequestPhase::Failed => "Failed",
        }
    }
}

/// One vendor type for the CRDs and the plugin's stats file (defined beside the stats, which
/// build without the `crd` feature).
pub use crate::stats::GpuVendor;

/// Written by the operator only (whole-status server-side apply).
#[derive(KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct CheckpointRequestStatus {
    /// Pending, Checkpointing, Transferring, Restoring, Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<RequestPhase>,
    /// Checkpointed, Transferred, Restored, Ready (see `ferry_api::names::condition`).
    // A map keyed by type, so server-side apply merges conditions by type.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The node the pod ran on when it was checkpointed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_node: Option<String>,
    /// The node the pod is restored on (migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_node: Option<String>,
    /// Name of the restored pod (migrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_pod_name: Option<String>,
    /// `metadata.uid` of the pod that was checkpointed: a migration deletes the source pod
    /// only with this UID as a precondition, never a pod re-created under the same name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_pod_uid: Option<String>,
    /// `metadata.uid` of the restored pod, as the operator created it: only that pod is ever
    /// taken for the restored pod (another one under its name is not adopted) or deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restored_pod_uid: Option<String>,
    /// The checkpoint image, once published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<CheckpointInfo>,
    /// How long each step took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<RequestTimings>,
    /// When the operator started acting on the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the request reached Succeeded or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl CheckpointRequestStatus {
    /// The condition of type `type_`, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }
}

impl CheckpointRequest {
    /// The request's phase; `Pending` before the operator wrote a status.
    pub fn phase(&self) -> RequestPhase {
        self.status
            .as_ref()
            .and_then(|s| s.phase)
            .unwrap_or_default()
    }
}

/// A published checkpoint image.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct CheckpointInfo {
    /// Node that holds the image.
    pub node: String,
    /// Image directory on that node (or on the PVC).
    pub location: String,
    /// Its size, memory and digest, as the Checkpoint task reported them (flattened: the
    /// fields sit beside `node` and `location`).
    #[serde(flatten)]
    pub image: ImageSummary,
}

/// Step durations of a request, in milliseconds.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct RequestTimings {
    /// Checkpoint, transfer and restore, as the tasks reported them (flattened).
    #[serde(flatten)]
    pub steps: StepTimings,
    /// From the freeze of the source to the restored workload running again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub downtime_ms: Option<i64>,
}
