//! An image's manifest (`manifest.json`): what the image holds, where it came from, and every
//! file with its size and SHA-256. Parsing checks the version and every listed path, because
//! manifests also arrive from other nodes.

use std::collections::HashSet;

use ferry_api::GpuVendor;
use ferry_api::stats::PluginStats;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use super::error::{Result, StoreError};
use super::paths::{MANIFEST_FILE, validate_relative};

/// The manifest format's version; a reader refuses others.
pub const MANIFEST_VERSION: u32 = 1;

/// What kind of checkpoint an image holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// CRIU image files (one subdirectory per container, or the process tree's images).
    Criu,
    /// A container checkpoint archive (the kubelet's / CRI's `checkpoint-*.tar`).
    CheckpointArchive,
}

/// Where an image came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageSource {
    /// Node the checkpoint ran on.
    pub node: String,
    /// Namespace of the pod.
    pub namespace: String,
    /// The pod.
    pub pod: String,
    /// Containers in the image.
    #[serde(default)]
    pub containers: Vec<String>,
}

/// One file of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the image directory, `/`-separated.
    pub path: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lower-case hex.
    pub sha256: String,
}

impl FileEntry {
    /// Fails with a `size` [`StoreError::Mismatch`] unless the file on disk has `actual` bytes
    /// as listed (publishing and verifying both check it).
    pub(super) fn check_size(&self, actual: u64) -> Result<()> {
        if actual == self.size {
            return Ok(());
        }
        Err(StoreError::Mismatch {
            path: self.path.clone(),
            what: "size",
            expected: self.size.to_string(),
            actual: actual.to_string(),
        })
    }
}

/// Everything about an image but its files; the checkpointer fills it in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageMeta {
    /// What the image holds.
    pub kind: ImageKind,
    /// Where it came from.
    pub source: ImageSource,
    /// `criu --version` of the dumping CRIU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criu_version: Option<String>,
    /// The GPU vendor of the checkpointed processes, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_vendor: Option<GpuVendor>,
    /// The source node's GPU topology (devices, UUIDs), as the plugin recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_topology: Option<serde_json::Value>,
    /// The plugin's stats of the dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_stats: Option<PluginStats>,
}

impl ImageMeta {
    /// Metadata of an image of `kind` from `source`, nothing else known yet.
    pub fn new(kind: ImageKind, source: ImageSource) -> Self {
        ImageMeta {
            kind,
            source,
            criu_version: None,
            gpu_vendor: None,
            gpu_topology: None,
            plugin_stats: None,
        }
    }
}

/// An image's manifest: its metadata and every file with size and digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// When the image was published (GC by TTL counts from here).
    pub created_at: Timestamp,
    /// Metadata.
    #[serde(flatten)]
    pub meta: ImageMeta,
    /// Every file of the image but the manifest, sorted by path.
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// Bytes of all files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// The manifest as the JSON the store writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A derive(Serialize) struct of strings, numbers and JSON values always serializes.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses and checks a manifest: version, and every file path safe.
    pub fn from_bytes(location: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| StoreError::BadManifest {
            location: location.to_string(),
            reason,
        };
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
        if manifest.version != MANIFEST_VERSION {
            return Err(bad(format!(
                "version {} (this agent reads {MANIFEST_VERSION})",
                manifest.version
            )));
        }
        let mut seen = HashSet::new();
        for file in &manifest.files {
            validate_relative(&file.path)?;
            if file.path == MANIFEST_FILE {
                return Err(bad("lists the manifest itself".into()));
            }
            if !seen.insert(file.path.as_str()) {
                return Err(bad(format!("lists {} twice", file.path)));
            }
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("{}: sha256 is not 64 hex digits", file.path)));
            }
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_size_check_names_the_file_and_both_sizes() {
        let entry = FileEntry {
            path: "c/pages-1.img".into(),
            size: 5,
            sha256: "0".repeat(64),
        };
        entry.check_size(5).unwrap();
        let err = entry.check_size(4).unwrap_err();
        assert!(
            matches!(&err, StoreError::Mismatch { path, what: "size", expected, actual }
                if path == "c/pages-1.img" && expected == "5" && actual == "4"),
            "{err}"
        );
    }
}
