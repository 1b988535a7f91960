//! The agent's `--runtime`: where a pod's processes are, and which runtime mechanism
//! checkpoints and restores them.
//!
//! * `runc` (production): each container's runtime id from the pod's `containerStatuses`
//!   (`containerd://<id>`), checkpointed under containerd's runc root with CRIU and ferry's
//!   plugin.
//! * `containerd` (kubelet checkpoint API, containerd ≥ 2.1 checkpoint-image restore): a
//!   Checkpoint asks the node's kubelet (`POST /checkpoint/...`) for each container's
//!   checkpoint archive; a Restore turns each archive into a containerd checkpoint image and
//!   imports it into the node's containerd under the name the operator gave the restored pod's
//!   container (`ferry_api::names::checkpoint_image::reference`); the kubelet then creates the
//!   container from it, which is containerd's restore.
//! * `process` (demo and tests, where pods are simulated): the pod's annotation
//!   `ferry.dev/pid` names the root of a host process tree (the init of its own pid
//!   namespace, so that a restored copy can run beside the original). Only an agent started
//!   with `--runtime process` reads that annotation: it lets whoever can annotate pods choose
//!   a host process to dump.
//!
//! Checkpoint and restore pick their mechanism here the same way: one `match` on the mode
//! gives a `Box<dyn Checkpointer>` or a `Box<dyn Restorer>` and its targets.

use std::path::PathBuf;

use ferry_api::NodeTask;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use crate::executor::error::TaskError;
use crate::runtime::checkpoint::{Checkpointer, ContainerTarget};
use crate::runtime::containerd::{CheckpointImageImport, Ctr};
use crate::runtime::control::ToolControl;
use crate::runtime::criu::Criu;
use crate::runtime::kubelet::KubeletApi;
use crate::runtime::process_tree::ProcessTree;
use crate::runtime::restore::{RestoreTarget, Restorer};
use crate::runtime::runc::Runc;
use crate::store::{Image, ImageKind};

/// Annotation on a pod, read only by an agent in `process` mode: the root pid of the process
/// tree that stands for the pod.
pub const PROCESS_PID_ANNOTATION: &str = "ferry.dev/pid";

/// How the agent finds and restores a pod's processes.
#[derive(Clone, Debug)]
pub enum RuntimeMode {
    /// Containers of containerd's runc (`--runc-root`).
    Runc {
        /// The runc binary.
        binary: PathBuf,
        /// containerd's runc state dir.
        root: PathBuf,
    },
    /// The kubelet checkpoints, containerd restores from imported checkpoint images.
    Containerd {
        /// This node's kubelet checkpoint API.
        kubelet: KubeletApi,
        /// `ctr` on the node's containerd.
        ctr: Ctr,
    },
    /// A host process tree named by the pod's `ferry.dev/pid` annotation (demo, tests).
    Process,
}

/// How a Restore task restores: the mechanism, what it restores, and what the task says
/// while it runs.
pub struct RestorePlan {
    /// The mechanism.
    pub restorer: Box<dyn Restorer>,
    /// The containers, in order.
    pub targets: Vec<RestoreTarget>,
    /// The progress message while it runs.
    pub says: String,
    /// `true`: the restore imports checkpoint images and the kubelet restores the containers
    /// later; `false`: the processes run when the restore returns.
    pub imports_checkpoint_images: bool,
}

impl RuntimeMode {
    /// This mode with its tools bound to one task's `control` (the kubelet client; CRIU, runc
    /// and `ctr` get theirs through [`Criu::with_control`] and the restore job).
    pub fn with_control(&self, control: &ToolControl) -> RuntimeMode {
        match self {
            RuntimeMode::Containerd { kubelet, ctr } => {
                let mut kubelet = kubelet.clone();
                kubelet.control = control.clone();
                RuntimeMode::Containerd {
                    kubelet,
                    ctr: ctr.clone(),
                }
            }
            other => other.clone(),
        }
    }

    /// The checkpoint mechanism of this mode.
    pub fn checkpointer(&self, criu: &Criu) -> Box<dyn Checkpointer> {
        match self {
            RuntimeMode::Process => Box::new(ProcessTree::new(criu.clone())),
            RuntimeMode::Runc { binary, root } => Box::new(Runc::new(binary, root, criu.clone())),
            RuntimeMode::Containerd { kubelet, .. } => Box::new(kubelet.clone()),
        }
    }

    /// The containers to checkpoint: the task's list, else every container of the pod, found
    /// where this mode finds them.
    pub fn checkpoint_targets(
        &self,
        task: &NodeTask,
        pod: &Pod,
    ) -> Result<Vec<ContainerTarget>, TaskError> {
        let names: Vec<String> = if task.spec.containers.is_empty() {
            pod.spec
                .as_ref()
                .map(|s| s.containers.iter().map(|c| c.name.clone()).collect())
                .unwrap_or_default()
        } else {
            task.spec.containers.clone()
        };
        match self {
            RuntimeMode::Process => {
                let pid = pod
                    .annotations()
                    .get(PROCESS_PID_ANNOTATION)
                    .and_then(|p| p.trim().parse::<i32>().ok())
                    .filter(|p| *p > 1)
                    .ok_or_else(|| TaskError::NoPidAnnotation {
                        pod: pod.name_any(),
                        annotation: PROCESS_PID_ANNOTATION,
                    })?;
                let name = names.into_iter().next().unwrap_or_else(|| "main".into());
                Ok(vec![ContainerTarget::Process { name, pid }])
            }
            RuntimeMode::Containerd { .. } => Ok(names
                .into_iter()
                .map(|name| ContainerTarget::Kubelet { name })
                .collect()),
            RuntimeMode::Runc { .. } => {
                let statuses = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.clone())
                    .unwrap_or_default();
                names
                    .into_iter()
                    .map(|name| {
                        let id = statuses
                            .iter()
                            .find(|s| s.name == name)
                            .and_then(|s| s.container_id.as_deref())
                            .and_then(|id| id.split_once("://").map(|(_, id)| id.to_string()))
                            .ok_or_else(|| TaskError::NoRuntimeId {
                                container: name.clone(),
                                pod: pod.name_any(),
                            })?;
                        Ok(ContainerTarget::Runc { name, id })
                    })
                    .collect()
            }
        }
    }

    /// How `task` restores `image` in this mode.
    pub fn restore_plan(
        &self,
        criu: &Criu,
        task: &NodeTask,
        image: &Image,
    ) -> Result<RestorePlan, TaskError> {
        let containers = &image.manifest.meta.source.containers;
        match self {
            RuntimeMode::Process => Ok(RestorePlan {
                restorer: Box::new(ProcessTree::new(criu.clone())),
                targets: containers
                    .iter()
                    .map(|name| RestoreTarget::Process { name: name.clone() })
                    .collect(),
                says: "restoring".into(),
                imports_checkpoint_images: false,
            }),
            RuntimeMode::Containerd { ctr, .. } => {
                if image.manifest.meta.kind != ImageKind::CheckpointArchive {
                    return Err(TaskError::NotAnArchiveImage {
                        location: image.location.clone(),
                    });
                }
                if containers.is_empty() {
                    return Err(TaskError::NoContainers {
                        location: image.location.clone(),
                    });
                }
                let targets = containers
                    .iter()
                    .map(|name| RestoreTarget::CheckpointImage {
                        name: name.clone(),
                        reference: ferry_api::names::checkpoint_image::reference(
                            &task.spec.pod.namespace,
                            &task.spec.checkpoint_request,
                            name,
                            &image.digest,
                        ),
                    })
                    .collect();
                Ok(RestorePlan {
                    restorer: Box::new(CheckpointImageImport { ctr: ctr.clone() }),
                    targets,
                    says: format!(
                        "importing {} checkpoint image(s) into containerd",
                        containers.len()
                    ),
                    imports_checkpoint_images: true,
                })
            }
            RuntimeMode::Runc { .. } => Err(TaskError::RuncRestoreNotWired),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ferry_api::{ImageRef, NodeTaskSpec, PodReference, StorageSpec, TaskOperation};
    use serde_json::json;

    fn task(containers: &[&str]) -> NodeTask {
        NodeTask::new(
            "t",
            NodeTaskSpec {
                node_name: "n".into(),
                operation: TaskOperation::Checkpoint,
                checkpoint_request: "r".into(),
                pod: PodReference {
                    namespace: "ns".into(),
                    name: "p".into(),
                    uid: None,
                },
                containers: containers.iter().map(|c| c.to_string()).collect(),
                source: None,
                image: ImageRef {
                    storage: StorageSpec::default(),
                    location: "ns/r".into(),
                },
                options: Default::default(),
            },
        )
    }

    fn pod(annotations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": "p", "namespace": "ns", "annotations": annotations },
            "spec": { "containers": [
                { "name": "app", "image": "x" },
                { "name": "sidecar", "image": "y" },
            ]},
            "status": { "containerStatuses": [
                { "name": "app", "containerID": "containerd://abc", "image": "x", "imageID": "",
                  "ready": true, "restartCount": 0 },
                { "name": "sidecar", "image": "y", "imageID": "", "ready": false,
                  "restartCount": 0 },
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn process_mode_takes_the_tree_the_pid_annotation_names() {
        let targets = RuntimeMode::Process
            .checkpoint_targets(&task(&[]), &pod(json!({ PROCESS_PID_ANNOTATION: " 42 " })))
            .unwrap();
        assert_eq!(
            targets,
            [ContainerTarget::Process {
                name: "app".into(),
                pid: 42
            }]
        );
        for bad in [
            json!({}),
            json!({ PROCESS_PID_ANNOTATION: "1" }),
            json!({ PROCESS_PID_ANNOTATION: "x" }),
        ] {
            let e = RuntimeMode::Process
                .checkpoint_targets(&task(&[]), &pod(bad))
                .unwrap_err();
            assert_eq!(
                e.to_string(),
                "process runtime: pod p has no valid ferry.dev/pid annotation"
            );
        }
    }

    #[test]
    fn runc_mode_takes_each_container_s_runtime_id() {
        let mode = RuntimeMode::Runc {
            binary: "/usr/sbin/runc".into(),
            root: "/run/r".into(),
        };
        assert_eq!(
            mode.checkpoint_targets(&task(&["app"]), &pod(json!({})))
                .unwrap(),
            [ContainerTarget::Runc {
                name: "app".into(),
                id: "abc".into()
            }]
        );
        let e = mode
            .checkpoint_targets(&task(&[]), &pod(json!({})))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "container sidecar of pod p has no runtime id yet"
        );
    }
}
