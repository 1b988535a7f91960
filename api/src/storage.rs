//! Where checkpoint images live: a host directory on each node, or a PVC. Shared by
//! `CheckpointRequest.spec.storage` and `NodeTask.spec.image.storage`.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::validation::{
    DNS1123_SUBDOMAIN_MAX_LENGTH, DNS1123_SUBDOMAIN_PATTERN, HOST_PATH_ABSOLUTE,
    HOST_PATH_NO_DOTDOT, PATH_MAX_LENGTH, STORAGE_EXACTLY_ONE, SUB_PATH_NO_DOTDOT,
    SUB_PATH_RELATIVE,
};

/// The image store directory on each node when a request names no storage.
pub const DEFAULT_HOST_PATH: &str = "/var/lib/ferry/checkpoints";

/// The image store: exactly one of `hostPath` or `pvc`. Defaults to the host directory
/// [`DEFAULT_HOST_PATH`].
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[x_kube(validation = STORAGE_EXACTLY_ONE)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct StorageSpec {
    /// A directory on the node (the agent DaemonSet mounts it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<HostPathStorage>,
    /// A PersistentVolumeClaim in the request's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcStorage>,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec::host_path(DEFAULT_HOST_PATH)
    }
}

impl StorageSpec {
    /// Images in a directory on the node.
    pub fn host_path(path: impl Into<String>) -> Self {
        StorageSpec {
            host_path: Some(HostPathStorage { path: path.into() }),
            pvc: None,
        }
    }

    /// Images on a PVC, optionally below `sub_path`.
    pub fn pvc(claim_name: impl Into<String>, sub_path: Option<String>) -> Self {
        StorageSpec {
            host_path: None,
            pvc: Some(PvcStorage {
                claim_name: claim_name.into(),
                sub_path,
            }),
        }
    }
}

/// A directory on the node.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct HostPathStorage {
    /// Absolute path of the image store directory, without `..` segments.
    #[x_kube(validation = HOST_PATH_ABSOLUTE, validation = HOST_PATH_NO_DOTDOT)]
    #[schemars(length(min = 1, max = PATH_MAX_LENGTH))]
    pub path: String,
}

/// A PersistentVolumeClaim.
#[derive(KubeSchema, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[schemars(transform = crate::schema::absent_not_null)]
pub struct PvcStorage {
    /// Name of the claim, in the same namespace.
    #[schemars(
        regex(pattern = DNS1123_SUBDOMAIN_PATTERN),
        length(min = 1, max = DNS1123_SUBDOMAIN_MAX_LENGTH)
    )]
    pub claim_name: String,
    /// Directory inside the volume: relative, without `..` segments. Default: the volume root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = SUB_PATH_RELATIVE, validation = SUB_PATH_NO_DOTDOT)]
    #[schemars(length(min = 1, max = PATH_MAX_LENGTH))]
    pub sub_path: Option<String>,
}
