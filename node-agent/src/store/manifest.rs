//! An image's manifest (`manifest.json`): what the image holds, where it came from, and every
//! file with its size and SHA-256. Parsing checks the version and every listed path, because
//! manifests also arrive from other nodes.

use std::collections::HashSet;

use ferry_api::GpuVendor;
use ferry_api::stats::PluginStats;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::{Result, StoreError};
use super::paths::{MANIFEST_FILE, validate_relative};

/// The manifest format's version; a reader refuses others.
pub const MANIFEST_VERSION: u32 = 1;

/// Largest manifest the store parses. Manifests also arrive from other nodes; parsing takes at
/// most ~8 times its input (a list of empty strings), so this bounds what one costs to about
/// 128 MiB. A real manifest has ~150 bytes per file: 16 MiB is over 100 000 files.
pub const MAX_MANIFEST_BYTES: usize = 16 << 20;

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

/// Free-form JSON in a manifest, kept as its text. Manifests arrive from other nodes, and a
/// parsed `serde_json::Value` costs up to ~100 times the bytes of hostile input (a map per
/// `{"a":0}`); text costs its own bytes. Equal when the texts are.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl PartialEq for RawJson {
    fn eq(&self, other: &Self) -> bool {
        self.0.get() == other.0.get()
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
    pub gpu_topology: Option<RawJson>,
    /// The plugin's stats of the dump.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_stats: Option<PluginStats>,
    /// `metadata.uid` of the CheckpointRequest the image was made for. A request name can be
    /// re-used after its request is gone; the UID tells the old image apart from the new
    /// request's. Absent in images of older agents (which then match no request).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_uid: Option<String>,
    /// `metadata.uid` of the checkpointed pod (a re-created pod of the same name differs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
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
            request_uid: None,
            pod_uid: None,
        }
    }

    /// Whether the image was made for the request with `request_uid`. An unknown UID on either
    /// side matches nothing: an image of unknown origin is never taken for this request's.
    pub fn made_for_request(&self, request_uid: Option<&str>) -> bool {
        matches!((self.request_uid.as_deref(), request_uid), (Some(a), Some(b)) if a == b)
    }
}

/// An image's manifest: its metadata and every file with size and digest.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", from = "WireManifest")]
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

/// A manifest as read: [`Manifest`]'s JSON with the metadata's fields at the top level, not
/// `#[serde(flatten)]`ed, because flatten buffers every field it does not know (any JSON a
/// peer sends) into an in-memory tree before it looks at it; here unknown fields are skipped
/// without being built.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireManifest {
    version: u32,
    created_at: Timestamp,
    kind: ImageKind,
    source: ImageSource,
    #[serde(default)]
    criu_version: Option<String>,
    #[serde(default)]
    gpu_vendor: Option<GpuVendor>,
    #[serde(default)]
    gpu_topology: Option<RawJson>,
    #[serde(default)]
    plugin_stats: Option<PluginStats>,
    #[serde(default)]
    request_uid: Option<String>,
    #[serde(default)]
    pod_uid: Option<String>,
    files: Vec<FileEntry>,
}

impl From<WireManifest> for Manifest {
    fn from(w: WireManifest) -> Self {
        Manifest {
            version: w.version,
            created_at: w.created_at,
            meta: ImageMeta {
                kind: w.kind,
                source: w.source,
                criu_version: w.criu_version,
                gpu_vendor: w.gpu_vendor,
                gpu_topology: w.gpu_topology,
                plugin_stats: w.plugin_stats,
                request_uid: w.request_uid,
                pod_uid: w.pod_uid,
            },
            files: w.files,
        }
    }
}

impl Manifest {
    /// Bytes of all files. [`Manifest::from_bytes`] refuses manifests whose sizes add up past
    /// `i64::MAX`, so for a parsed manifest this neither saturates nor overflows an `i64`.
    pub fn total_bytes(&self) -> u64 {
        self.files
            .iter()
            .fold(0u64, |sum, f| sum.saturating_add(f.size))
    }

    /// The manifest as the JSON the store writes.
    pub fn to_bytes(&self) -> Vec<u8> {
        // A derive(Serialize) struct of strings, numbers and JSON values always serializes.
        let mut bytes = serde_json::to_vec_pretty(self).unwrap_or_default();
        bytes.push(b'\n');
        bytes
    }

    /// Parses and checks a manifest: size, version, every file path safe, sizes that add up.
    pub fn from_bytes(location: &str, bytes: &[u8]) -> Result<Self> {
        let bad = |reason: String| StoreError::BadManifest {
            location: location.to_string(),
            reason,
        };
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may have",
                bytes.len()
            )));
        }
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
        if manifest.version != MANIFEST_VERSION {
            return Err(bad(format!(
                "version {} (this agent reads {MANIFEST_VERSION})",
                manifest.version
            )));
        }
        let mut seen = HashSet::new();
        let mut total = 0i64;
        for file in &manifest.files {
            // Sizes are reported as i64 (the API's integers) and summed for quotas: a sum past
            // i64::MAX is no real image.
            total = i64::try_from(file.size)
                .ok()
                .and_then(|size| total.checked_add(size))
                .ok_or_else(|| bad("file sizes add up to more than 2^63 bytes".into()))?;
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
