//! What a checkpoint and a restore measure, defined once: the image's summary
//! ([`ImageSummary`], with its [`GpuInfo`]s) and the step durations ([`StepTimings`]). A NodeTask's result
//! (`TaskResult`, `TaskTimings`) reports them from the agent, and a CheckpointRequest's status
//! (`CheckpointInfo`, `RequestTimings`) carries them on; both embed these with
//! `#[serde(flatten)]`, so the JSON and the CRD schemas keep the flat field lists they had.
//!
//! The doc comments here are the request's descriptions; the task's CRD keeps its own wording
//! through [`describe`] (a schema transform), so the generated CRDs did not change either.

use schemars::{JsonSchema, Schema};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::stats::GpuVendor;

/// A checkpoint image: its size, what memory it holds, its digest.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct ImageSummary {
    /// Bytes of the whole image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    /// Bytes of host memory pages in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_memory_bytes: Option<i64>,
    /// Bytes of device memory in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_memory_bytes: Option<i64>,
    /// amd, nvidia, sim or none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vendor: Option<GpuVendor>,
    /// The GPUs whose state the image holds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<GpuInfo>,
    /// SHA-256 (hex) of the image manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// The containers whose kubelet checkpoint archive the image holds (the Checkpoint task's
    /// `archiveContainers`): the restored pod runs them from containerd checkpoint images.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archive_containers: Vec<String>,
}

/// One GPU in a checkpoint.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct GpuInfo {
    /// Backend-specific id: AMD gpu_id in hex, NVIDIA UUID, sim device index.
    pub id: String,
    /// Product name (e.g. "MI300X", "H100"), used to find a compatible target node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Bytes of this GPU's memory in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<i64>,
}

/// Step durations, in milliseconds.
#[derive(JsonSchema, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct StepTimings {
    /// Checkpoint on the source node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_ms: Option<i64>,
    /// Image transfer to the target node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer_ms: Option<i64>,
    /// Restore on the target node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_ms: Option<i64>,
    /// Host memory part of the restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_restore_ms: Option<i64>,
    /// Device memory part of the restore (overlaps the host part in parallel mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_restore_ms: Option<i64>,
}

/// Sets the `description` of the schema's `properties` named in `docs`: an embedding struct
/// describes the embedded fields in its own words.
pub(crate) fn describe(schema: &mut Schema, docs: &[(&str, &str)]) {
    let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) else {
        return;
    };
    for (name, text) in docs {
        if let Some(Value::Object(property)) = properties.get_mut(*name) {
            property.insert("description".into(), Value::String((*text).to_string()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CheckpointInfo, RequestTimings, TaskResult, TaskTimings};
    use serde_json::json;

    fn image() -> ImageSummary {
        ImageSummary {
            size_bytes: Some(4096),
            host_memory_bytes: Some(1024),
            sha256: Some("ab".repeat(32)),
            archive_containers: vec!["main".into()],
            ..Default::default()
        }
    }

    #[test]
    fn embedded_fields_stay_flat_on_the_wire() {
        // (value, its JSON)
        let table = [
            (
                serde_json::to_value(CheckpointInfo {
                    node: "a".into(),
                    location: "ns/r".into(),
                    image: image(),
                })
                .unwrap(),
                json!({"node": "a", "location": "ns/r", "sizeBytes": 4096, "hostMemoryBytes": 1024,
                       "sha256": "ab".repeat(32), "archiveContainers": ["main"]}),
            ),
            (
                serde_json::to_value(TaskResult {
                    image: image(),
                    files: Some(3),
                    ..Default::default()
                })
                .unwrap(),
                json!({"sizeBytes": 4096, "hostMemoryBytes": 1024, "sha256": "ab".repeat(32),
                       "archiveContainers": ["main"], "files": 3}),
            ),
            (
                serde_json::to_value(RequestTimings {
                    steps: StepTimings {
                        checkpoint_ms: Some(1),
                        ..Default::default()
                    },
                    downtime_ms: Some(2),
                })
                .unwrap(),
                json!({"checkpointMs": 1, "downtimeMs": 2}),
            ),
            (
                serde_json::to_value(TaskTimings {
                    steps: StepTimings {
                        transfer_ms: Some(5),
                        ..Default::default()
                    },
                    frozen_at: None,
                })
                .unwrap(),
                json!({"transferMs": 5}),
            ),
            (
                serde_json::to_value(TaskResult::default()).unwrap(),
                json!({}),
            ),
        ];
        for (got, expected) in table {
            assert_eq!(got, expected);
        }
    }

    #[test]
    fn flat_json_reads_back_into_the_embedded_fields() {
        let result: TaskResult = serde_json::from_value(json!({
            "sizeBytes": 4096, "hostMemoryBytes": 1024, "sha256": "ab".repeat(32),
            "archiveContainers": ["main"], "files": 3, "timings": {"restoreMs": 7},
        }))
        .unwrap();
        assert_eq!(result.image, image());
        assert_eq!(result.files, Some(3));
        assert_eq!(result.timings.and_then(|t| t.steps.restore_ms), Some(7));
        let info: CheckpointInfo =
            serde_json::from_value(json!({"node": "a", "location": "l"})).unwrap();
        assert_eq!(info.image, ImageSummary::default());
    }
}
