//! The Rust side of the API: what a minimal object deserializes to, round trips of full
//! objects, and the helpers the operator and agent use.
#![cfg(feature = "crd")]
// Helpers outside #[test] functions panic to fail their caller, as the tests themselves do.
#![allow(clippy::expect_used)]

use std::collections::BTreeMap;

use ferry_api::checkpoint_request::{DEFAULT_TIMEOUT_SECONDS, DEFAULT_TTL_SECONDS_AFTER_FINISHED};
use ferry_api::names::condition;
use ferry_api::storage::DEFAULT_HOST_PATH;
use ferry_api::{
    CheckpointInfo, CheckpointRequest, CheckpointRequestSpec, CheckpointRequestStatus, GpuInfo,
    GpuOptions, GpuVendor, ImageRef, ImageSummary, MigrateSpec, NodeTask, NodeTaskSpec,
    NodeTaskStatus, PodReference, RequestPhase, RequestTimings, SecretKeyRef, StepTimings,
    StorageSpec, TaskOperation, TaskOptions, TaskPhase, TaskResult, TaskTimings, TransferSource,
    TransferStats,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use serde_json::json;

const MINIMAL_REQUEST: &str = "\
apiVersion: ferry.dev/v1alpha1
kind: CheckpointRequest
metadata:
  name: ckpt-trainer
  namespace: ml
spec:
  podName: trainer-0
";

fn time(rfc3339: &str) -> Time {
    Time(rfc3339.parse::<Timestamp>().expect("valid timestamp"))
}

#[test]
fn a_minimal_yaml_request_gets_the_documented_defaults() {
    let req: CheckpointRequest = serde_saphyr::from_str(MINIMAL_REQUEST).expect("parses");
    let spec = &req.spec;
    assert_eq!(spec.pod_name, "trainer-0");
    assert!(spec.containers.is_empty(), "default: all containers");
    assert_eq!(spec.migrate, None, "default: checkpoint only");
    assert!(spec.leave_running);
    assert_eq!(
        spec.storage.host_path.as_ref().map(|h| h.path.as_str()),
        Some(DEFAULT_HOST_PATH)
    );
    assert_eq!(DEFAULT_HOST_PATH, "/var/lib/ferry/checkpoints");
    assert_eq!(spec.storage.pvc, None);
    assert!(spec.gpu.parallel_restore);
    assert_eq!(spec.timeout_seconds, 900);
    assert_eq!(spec.ttl_seconds_after_finished, 86_400);
    assert_eq!(req.status, None);
    assert_eq!(req.phase(), RequestPhase::Pending);
    assert_eq!(*spec, CheckpointRequestSpec::for_pod("trainer-0"));
}

#[test]
fn an_empty_migrate_block_means_migrate_and_delete_the_source() {
    let spec: CheckpointRequestSpec =
        serde_json::from_value(json!({"podName": "trainer-0", "migrate": {}})).expect("parses");
    assert!(spec.is_migration());
    assert_eq!(spec.migrate, Some(MigrateSpec::default()));
    assert!(spec.migrate.as_ref().is_some_and(|m| m.delete_source));
    assert!(!spec.keeps_source_running());
}

#[test]
fn a_request_without_migrate_is_checkpoint_only_and_keeps_the_pod_by_default() {
    let spec = CheckpointRequestSpec::for_pod("trainer-0");
    assert!(!spec.is_migration());
    assert!(spec.keeps_source_running());
    let stop = CheckpointRequestSpec {
        leave_running: false,
        ..CheckpointRequestSpec::for_pod("trainer-0")
    };
    assert!(!stop.keeps_source_running());
}

#[test]
fn leave_running_is_ignored_for_migrations() {
    let spec = CheckpointRequestSpec {
        leave_running: true,
        migrate: Some(MigrateSpec {
            delete_source: true,
            ..MigrateSpec::default()
        }),
        ..CheckpointRequestSpec::for_pod("trainer-0")
    };
    assert!(!spec.keeps_source_running());
}

#[test]
fn an_empty_container_list_selects_every_container() {
    let all = CheckpointRequestSpec::for_pod("trainer-0");
    assert!(all.selects_container("trainer"));
    let one = CheckpointRequestSpec {
        containers: vec!["trainer".into()],
        ..CheckpointRequestSpec::for_pod("trainer-0")
    };
    assert!(one.selects_container("trainer"));
    assert!(!one.selects_container("sidecar"));
}

#[test]
fn a_minimal_request_serializes_without_empty_optional_fields() {
    let spec =
        serde_json::to_value(CheckpointRequestSpec::for_pod("trainer-0")).expect("serializes");
    assert_eq!(
        spec,
        json!({
            "podName": "trainer-0",
            "leaveRunning": true,
            "storage": {"hostPath": {"path": "/var/lib/ferry/checkpoints"}},
            "gpu": {"parallelRestore": true},
            "timeoutSeconds": DEFAULT_TIMEOUT_SECONDS,
            "ttlSecondsAfterFinished": DEFAULT_TTL_SECONDS_AFTER_FINISHED,
        })
    );
}

fn full_request() -> CheckpointRequest {
    let mut req = CheckpointRequest::new(
        "move-trainer",
        CheckpointRequestSpec {
            pod_name: "trainer-0".into(),
            containers: vec!["trainer".into(), "sidecar".into()],
            migrate: Some(MigrateSpec {
                target_node: Some("gpu-node-7".into()),
                node_selector: BTreeMap::from([("gpu".to_owned(), "mi300x".to_owned())]),
                delete_source: false,
            }),
            leave_running: false,
            storage: StorageSpec::pvc("ckpts", Some("team-a".into())),
            gpu: GpuOptions {
                parallel_restore: false,
            },
            timeout_seconds: 600,
            ttl_seconds_after_finished: 0,
        },
    );
    req.meta_mut().namespace = Some("ml".into());
    req.status = Some(CheckpointRequestStatus {
        phase: Some(RequestPhase::Succeeded),
        conditions: vec![Condition {
            type_: condition::READY.into(),
            status: "True".into(),
            reason: "Restored".into(),
            message: "restored on gpu-node-7".into(),
            last_transition_time: time("2026-01-02T03:04:05Z"),
            observed_generation: Some(1),
        }],
        source_node: Some("gpu-node-1".into()),
        target_node: Some("gpu-node-7".into()),
        restored_pod_name: Some("trainer-0".into()),
        source_pod_uid: Some("5d0c6b1e-0000-4000-8000-000000000001".into()),
        restored_pod_uid: Some("5d0c6b1e-0000-4000-8000-000000000002".into()),
        checkpoint: Some(CheckpointInfo {
            node: "gpu-node-1".into(),
            location: "/var/lib/ferry/checkpoints/ml/move-trainer".into(),
            image: ImageSummary {
                size_bytes: Some(10 << 30),
                host_memory_bytes: Some(2 << 30),
                gpu_memory_bytes: Some(8 << 30),
                gpu_vendor: Some(GpuVendor::Amd),
                gpus: vec![GpuInfo {
                    id: "0x1a2b".into(),
                    model: Some("MI300X".into()),
                    memory_bytes: Some(8 << 30),
                }],
                sha256: Some("ab".repeat(32)),
                archive_containers: vec!["trainer".into()],
            },
        }),
        timings: Some(RequestTimings {
            steps: StepTimings {
                checkpoint_ms: Some(4_000),
                transfer_ms: Some(9_000),
                restore_ms: Some(6_000),
                host_restore_ms: Some(5_000),
                gpu_restore_ms: Some(5_500),
            },
            downtime_ms: Some(19_500),
        }),
        start_time: Some(time("2026-01-02T03:00:00Z")),
        completion_time: Some(time("2026-01-02T03:04:05Z")),
        observed_generation: Some(1),
    });
    req
}

#[test]
fn a_full_request_round_trips_through_json_and_yaml() {
    let req = full_request();
    let json = serde_json::to_string(&req).expect("serializes");
    let back: CheckpointRequest = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, req);
    let yaml = serde_saphyr::to_string(&req).expect("serializes");
    let back: CheckpointRequest = serde_saphyr::from_str(&yaml).expect("deserializes");
    assert_eq!(back, req);
}

#[test]
fn request_json_uses_camel_case_field_names() {
    let value = serde_json::to_value(full_request()).expect("serializes");
    assert_eq!(value["apiVersion"], "ferry.dev/v1alpha1");
    assert_eq!(value["kind"], "CheckpointRequest");
    assert_eq!(value["spec"]["migrate"]["targetNode"], "gpu-node-7");
    assert_eq!(value["spec"]["storage"]["pvc"]["claimName"], "ckpts");
    assert_eq!(value["spec"]["storage"]["pvc"]["subPath"], "team-a");
    assert_eq!(value["status"]["timings"]["downtimeMs"], 19_500);
    assert_eq!(value["status"]["checkpoint"]["gpuVendor"], "amd");
    assert_eq!(value["status"]["restoredPodName"], "trainer-0");
    assert_eq!(
        value["status"]["conditions"][0]["lastTransitionTime"],
        "2026-01-02T03:04:05Z"
    );
}

#[test]
fn only_succeeded_and_failed_are_terminal_phases() {
    use RequestPhase::*;
    for phase in [Pending, Checkpointing, Transferring, Restoring] {
        assert!(!phase.is_terminal(), "{phase:?}");
    }
    assert!(Succeeded.is_terminal());
    assert!(Failed.is_terminal());
    assert!(!TaskPhase::Pending.is_terminal());
    assert!(!TaskPhase::Running.is_terminal());
    assert!(TaskPhase::Succeeded.is_terminal());
    assert!(TaskPhase::Failed.is_terminal());
}

#[test]
fn phase_and_operation_names_match_their_serialized_form() {
    use RequestPhase::*;
    for phase in [
        Pending,
        Checkpointing,
        Transferring,
        Restoring,
        Succeeded,
        Failed,
    ] {
        assert_eq!(
            serde_json::to_value(phase).expect("serializes"),
            phase.as_str()
        );
    }
    for phase in [
        TaskPhase::Pending,
        TaskPhase::Running,
        TaskPhase::Succeeded,
        TaskPhase::Failed,
    ] {
        assert_eq!(
            serde_json::to_value(phase).expect("serializes"),
            phase.as_str()
        );
    }
    for op in [
        TaskOperation::Checkpoint,
        TaskOperation::Restore,
        TaskOperation::Delete,
    ] {
        assert_eq!(serde_json::to_value(op).expect("serializes"), op.as_str());
    }
}

#[test]
fn an_unknown_phase_is_a_deserialization_error() {
    let status = serde_json::from_value::<CheckpointRequestStatus>(json!({"phase": "Exploded"}));
    assert!(status.is_err());
}

#[test]
fn the_condition_helper_finds_a_condition_by_type() {
    let req = full_request();
    let status = req.status.as_ref().expect("status set");
    assert_eq!(
        status
            .condition(condition::READY)
            .map(|c| c.status.as_str()),
        Some("True")
    );
    assert!(status.condition(condition::TRANSFERRED).is_none());
    assert_eq!(req.phase(), RequestPhase::Succeeded);
}

#[test]
fn plugin_stats_vendors_serialise_as_the_crd_vendor_values_and_metric_labels() {
    // One type serves the CRDs and the plugin's stats file: its JSON spelling is the CRD
    // enum's value and the metric label.
    for (v, s) in [
        (GpuVendor::Amd, "amd"),
        (GpuVendor::Nvidia, "nvidia"),
        (GpuVendor::Sim, "sim"),
        (GpuVendor::None, "none"),
    ] {
        assert_eq!(serde_json::to_value(v).expect("serializes"), s);
        assert_eq!(v.as_str(), s);
    }
}

#[test]
fn a_minimal_node_task_gets_default_options() {
    let task: NodeTask = serde_json::from_value(json!({
        "apiVersion": "ferry.dev/v1alpha1",
        "kind": "NodeTask",
        "metadata": {"name": "t", "namespace": "ml"},
        "spec": {
            "nodeName": "gpu-node-1",
            "operation": "Checkpoint",
            "checkpointRequest": "move-trainer",
            "pod": {"namespace": "ml", "name": "trainer-0"},
            "image": {"storage": {"hostPath": {"path": "/var/lib/ferry/checkpoints"}}, "location": "ml/move-trainer"},
        },
    }))
    .expect("parses");
    assert_eq!(task.spec.options, TaskOptions::default());
    assert!(task.spec.options.leave_running);
    assert!(task.spec.options.parallel_restore);
    assert_eq!(task.spec.options.timeout_seconds, 900);
    assert!(task.spec.containers.is_empty());
    assert_eq!(task.spec.source, None);
    assert_eq!(task.phase(), TaskPhase::Pending);
}

#[test]
fn a_node_task_missing_its_operation_is_a_deserialization_error() {
    let result = serde_json::from_value::<NodeTaskSpec>(json!({
        "nodeName": "gpu-node-1",
        "checkpointRequest": "move-trainer",
        "pod": {"namespace": "ml", "name": "trainer-0"},
        "image": {"storage": {"hostPath": {"path": "/x"}}, "location": "ml/x"},
    }));
    assert!(result.is_err());
}

fn full_task() -> NodeTask {
    let mut task = NodeTask::new(
        "move-trainer-restore",
        NodeTaskSpec {
            node_name: "gpu-node-7".into(),
            operation: TaskOperation::Restore,
            checkpoint_request: "move-trainer".into(),
            pod: PodReference {
                namespace: "ml".into(),
                name: "trainer-0".into(),
                uid: Some("0b6d3c1e-0000-4000-8000-000000000000".into()),
            },
            containers: vec!["trainer".into()],
            source: Some(TransferSource {
                endpoint: "https://10.0.0.5:8443".into(),
                token_secret_ref: SecretKeyRef {
                    name: "move-trainer-transfer".into(),
                    key: "token".into(),
                },
                cert_sha256: Some("ab".repeat(32)),
                image_sha256: None,
            }),
            image: ImageRef {
                storage: StorageSpec::default(),
                location: "ml/move-trainer".into(),
            },
            options: TaskOptions {
                leave_running: false,
                parallel_restore: false,
                timeout_seconds: 300,
            },
        },
    );
    task.status = Some(NodeTaskStatus {
        phase: Some(TaskPhase::Succeeded),
        message: Some("restored".into()),
        heartbeat_time: Some(time("2026-01-02T03:04:00Z")),
        start_time: Some(time("2026-01-02T03:03:00Z")),
        completion_time: Some(time("2026-01-02T03:04:05Z")),
        result: Some(TaskResult {
            image: ImageSummary {
                size_bytes: Some(10 << 30),
                sha256: Some("cd".repeat(32)),
                gpu_vendor: Some(GpuVendor::Nvidia),
                gpu_memory_bytes: Some(8 << 30),
                host_memory_bytes: Some(2 << 30),
                archive_containers: Vec::new(),
                gpus: vec![ferry_api::GpuInfo {
                    id: "0x1a2b".into(),
                    model: None,
                    memory_bytes: Some(8 << 30),
                }],
            },
            files: Some(42),
            timings: Some(TaskTimings {
                steps: StepTimings {
                    checkpoint_ms: None,
                    transfer_ms: Some(9_000),
                    restore_ms: Some(6_000),
                    host_restore_ms: Some(5_000),
                    gpu_restore_ms: Some(5_500),
                },
                frozen_at: Some(MicroTime(
                    "2026-01-02T03:03:30.123456Z"
                        .parse()
                        .expect("valid timestamp"),
                )),
            }),
            transfer: Some(TransferStats {
                bytes: Some(10 << 30),
                bytes_per_second: Some(1 << 30),
            }),
        }),
    });
    task
}

#[test]
fn a_full_node_task_round_trips_through_json() {
    let task = full_task();
    let json = serde_json::to_string(&task).expect("serializes");
    let back: NodeTask = serde_json::from_str(&json).expect("deserializes");
    assert_eq!(back, task);
}

#[test]
fn frozen_at_keeps_microseconds_for_the_downtime() {
    let value = serde_json::to_value(full_task()).expect("serializes");
    assert_eq!(
        value["status"]["result"]["timings"]["frozenAt"],
        "2026-01-02T03:03:30.123456Z"
    );
    assert_eq!(value["spec"]["source"]["tokenSecretRef"]["key"], "token");
    assert_eq!(
        value["status"]["result"]["transfer"]["bytesPerSecond"],
        1 << 30
    );
}
