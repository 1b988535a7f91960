//! The image store: one directory per image under a root (`/var/lib/ferry/checkpoints` or a
//! PVC mount), each with a `manifest.json` that lists every file with its size and SHA-256.
//!
//! Images are written into `<location>.partial`, fsynced and renamed into place with
//! `RENAME_NOREPLACE`, so a reader never sees half an image and a published image is never
//! overwritten. Every path that comes from outside (a CR's `image.location`, a file name in a
//! manifest received from another node) goes through [`validate_relative`] and a symlink check,
//! so nothing resolves outside the store's root.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Component, Path, PathBuf};

use ferry_api::GpuVendor;
use ferry_api::stats::PluginStats;
use jiff::{SignedDuration, Timestamp};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::in_use;

/// The manifest's file name inside an image directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Suffix of an image directory that is still being written (or received).
pub const PARTIAL_SUFFIX: &str = ".partial";
/// The manifest format's version; a reader refuses others.
pub const MANIFEST_VERSION: u32 = 1;
/// Longest relative path the store accepts (PATH_MAX).
const MAX_PATH_LEN: usize = 4096;
/// Read size when hashing files.
const HASH_BUFFER: usize = 1 << 20;

/// What went wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A path that could leave the store (absolute, `..`, a symlink, …).
    #[error("refusing path {path:?}: {reason}")]
    InvalidPath {
        /// The path as given.
        path: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// Images are never overwritten.
    #[error("image {0:?} already exists in the store; images are never overwritten")]
    AlreadyExists(String),
    /// A hostPath that is not one of the agent's stores.
    #[error("hostPath {path} is not an image store of this agent (allowed: {allowed})")]
    NotAStore {
        /// The path as given.
        path: String,
        /// The agent's stores.
        allowed: String,
    },
    /// No published image at that location.
    #[error("no image {0:?} in the store")]
    NotFound(String),
    /// A file does not match its manifest entry.
    #[error("{path}: {what} mismatch (manifest says {expected}, file has {actual})")]
    Mismatch {
        /// File, relative to the image.
        path: String,
        /// `size` or `sha256`.
        what: &'static str,
        /// From the manifest.
        expected: String,
        /// From the file.
        actual: String,
    },
    /// A manifest that does not parse or has the wrong version.
    #[error("manifest of {location:?}: {reason}")]
    BadManifest {
        /// The image.
        location: String,
        /// Why.
        reason: String,
    },
    /// An I/O error, with what the store was doing.
    #[error("{context}: {source}")]
    Io {
        /// What the store was doing, with the path.
        context: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Result of store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> StoreError {
    let context = context.into();
    move |source| StoreError::Io { context, source }
}

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

/// SHA-256 (hex) of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Size and SHA-256 (hex) of a file's contents.
pub fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; HASH_BUFFER];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex(&hasher.finalize())))
}

/// Checks that `path` is a plain relative path: not empty, not absolute, no `.`/`..`/empty
/// segments, no NUL, no `.partial` segment (the store's own staging names).
pub fn validate_relative(path: &str) -> Result<()> {
    let refuse = |reason| {
        Err(StoreError::InvalidPath {
            path: path.to_string(),
            reason,
        })
    };
    if path.is_empty() {
        return refuse("empty");
    }
    if path.len() > MAX_PATH_LEN {
        return refuse("longer than PATH_MAX");
    }
    if path.contains('\0') {
        return refuse("contains NUL");
    }
    if path.starts_with('/') {
        return refuse("absolute");
    }
    for segment in path.split('/') {
        match segment {
            "" => return refuse("empty segment"),
            "." | ".." => return refuse("'.' or '..' segment"),
            s if s.ends_with(PARTIAL_SUFFIX) => return refuse("a '.partial' segment"),
            _ => {}
        }
    }
    // Belt and braces: the segment checks above imply only Normal components.
    if !Path::new(path)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return refuse("not a plain relative path");
    }
    Ok(())
}

/// Joins `rel` (validated) onto `base`, refusing a symlink at any existing component below
/// `base`, so a planted link cannot redirect a write or a read outside the store.
fn safe_join(base: &Path, rel: &str) -> Result<PathBuf> {
    validate_relative(rel)?;
    let mut path = base.to_path_buf();
    for segment in rel.split('/') {
        path.push(segment);
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(StoreError::InvalidPath {
                    path: rel.to_string(),
                    reason: "goes through a symlink",
                });
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(io_err(format!("stat {}", path.display()))(e)),
        }
    }
    Ok(base.join(rel))
}

fn partial_name(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(PARTIAL_SUFFIX);
    PathBuf::from(name)
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("fsync {}", dir.display())))
}

/// Every regular file under `dir`, as sorted `/`-separated relative paths (the manifest
/// excluded). Symlinks and special files are refused: an image is plain files only.
fn list_files(dir: &Path) -> Result<Vec<String>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
        let entries = fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
        for entry in entries {
            let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
            let path = entry.path();
            let kind = entry
                .file_type()
                .map_err(io_err(format!("stat {}", path.display())))?;
            let rel = path
                .strip_prefix(root)
                .ok()
                .and_then(|p| p.to_str())
                .ok_or_else(|| StoreError::InvalidPath {
                    path: path.display().to_string(),
                    reason: "not UTF-8",
                })?
                .to_string();
            if kind.is_dir() {
                walk(root, &path, out)?;
            } else if kind.is_file() {
                if rel != MANIFEST_FILE {
                    out.push(rel);
                }
            } else {
                return Err(StoreError::InvalidPath {
                    path: rel,
                    reason: "not a regular file or directory",
                });
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

/// The stores an agent uses: its main store (`--store`, which requests reach as the default
/// hostPath) and the other host paths it may use (`--allow-host-path`). The worker writes into
/// them and the transfer server reads from them through the same [`Stores::for_host_path`],
/// so an image is served from wherever it was written, and from nowhere else.
#[derive(Clone, Debug)]
pub struct Stores {
    main: Store,
    /// Each allowed host path as given, opened once.
    allowed: Vec<(PathBuf, Store)>,
}

impl From<Store> for Stores {
    fn from(main: Store) -> Self {
        Stores {
            main,
            allowed: Vec::new(),
        }
    }
}

impl Stores {
    /// `main` and the host paths in `allowed`, each opened (created if needed) here, so that
    /// serving and GC do not open them again.
    pub fn new(main: Store, allowed: Vec<PathBuf>) -> Result<Self> {
        let allowed = allowed
            .into_iter()
            .map(|p| Store::open(&p).map(|s| (p, s)))
            .collect::<Result<_>>()?;
        Ok(Stores { main, allowed })
    }

    /// The main store.
    pub fn main(&self) -> &Store {
        &self.main
    }

    /// The store a request's `hostPath` names (`None`: the main store). The default hostPath
    /// and the main store's own root are the main store; another path must be allowed.
    pub fn for_host_path(&self, host_path: Option<&str>) -> Result<Store> {
        let Some(path) = host_path else {
            return Ok(self.main.clone());
        };
        let wanted = Path::new(path);
        if wanted == Path::new(ferry_api::storage::DEFAULT_HOST_PATH) || wanted == self.main.root {
            return Ok(self.main.clone());
        }
        if let Some((_, store)) = self.allowed.iter().find(|(p, _)| p == wanted) {
            return Ok(store.clone());
        }
        Err(StoreError::NotAStore {
            path: path.to_string(),
            allowed: self.list(),
        })
    }

    /// Every store: the main one first.
    pub fn all(&self) -> impl Iterator<Item = &Store> {
        std::iter::once(&self.main).chain(self.allowed.iter().map(|(_, s)| s))
    }

    /// The stores' roots, for messages.
    pub fn list(&self) -> String {
        std::iter::once(&self.main.root)
            .chain(self.allowed.iter().map(|(p, _)| p))
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The store: a root directory holding images by relative location.
#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating it if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root).map_err(io_err(format!("create {}", root.display())))?;
        let root = root
            .canonicalize()
            .map_err(io_err(format!("resolve {}", root.display())))?;
        Ok(Store { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of the image at `location` (published or not).
    pub fn image_dir(&self, location: &str) -> Result<PathBuf> {
        safe_join(&self.root, location)
    }

    /// Whether a published image exists at `location`.
    pub fn exists(&self, location: &str) -> Result<bool> {
        Ok(self.image_dir(location)?.join(MANIFEST_FILE).is_file())
    }

    /// Starts a new image at `location`: an empty `<location>.partial` directory (a stale one
    /// from a crashed attempt is removed). Fails if the image is already published.
    pub fn stage(&self, location: &str) -> Result<Staging> {
        let staging = self.staging(location)?;
        if staging.partial.exists() {
            fs::remove_dir_all(&staging.partial).map_err(io_err(format!(
                "remove stale {}",
                staging.partial.display()
            )))?;
        }
        fs::create_dir_all(&staging.partial)
            .map_err(io_err(format!("create {}", staging.partial.display())))?;
        Ok(staging)
    }

    /// Like [`Store::stage`], but keeps what an earlier attempt left in `<location>.partial`
    /// (a transfer resumes from it).
    pub fn resume(&self, location: &str) -> Result<Staging> {
        let staging = self.staging(location)?;
        fs::create_dir_all(&staging.partial)
            .map_err(io_err(format!("create {}", staging.partial.display())))?;
        Ok(staging)
    }

    fn staging(&self, location: &str) -> Result<Staging> {
        let dir = self.image_dir(location)?;
        if dir.exists() {
            return Err(StoreError::AlreadyExists(location.to_string()));
        }
        let partial = partial_name(&dir);
        if fs::symlink_metadata(&partial).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(StoreError::InvalidPath {
                path: location.to_string(),
                reason: "its .partial directory is a symlink",
            });
        }
        Ok(Staging {
            location: location.to_string(),
            target: dir,
            partial,
        })
    }

    /// Opens the published image at `location` and parses its manifest.
    pub fn open_image(&self, location: &str) -> Result<Image> {
        let dir = self.image_dir(location)?;
        let manifest_path = dir.join(MANIFEST_FILE);
        let bytes = match fs::read(&manifest_path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::NotFound(location.to_string()));
            }
            Err(e) => return Err(io_err(format!("read {}", manifest_path.display()))(e)),
        };
        let manifest = Manifest::from_bytes(location, &bytes)?;
        Ok(Image {
            location: location.to_string(),
            digest: sha256_hex(&bytes),
            dir,
            manifest,
            manifest_bytes: bytes,
        })
    }

    /// Marks the image at `location` in use (GC spares it) until the [`in_use::Hold`] drops.
    pub fn hold(&self, location: &str) -> Result<in_use::Hold> {
        Ok(in_use::hold(self.image_dir(location)?))
    }

    /// Records that the image at `location` was just used (served): GC spares it for
    /// [`in_use::RECENT`].
    pub fn touch(&self, location: &str) -> Result<()> {
        in_use::touch(&self.image_dir(location)?);
        Ok(())
    }

    /// Deletes the image at `location` and any partial of it. Returns whether there was one.
    pub fn delete(&self, location: &str) -> Result<bool> {
        let dir = self.image_dir(location)?;
        let mut found = false;
        for path in [partial_name(&dir), dir] {
            match fs::remove_dir_all(&path) {
                Ok(()) => found = true,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(format!("remove {}", path.display()))(e)),
            }
        }
        Ok(found)
    }

    /// Every published image and every partial, for GC and status.
    pub fn list(&self) -> Result<Vec<Entry>> {
        fn walk(store: &Store, dir: &Path, out: &mut Vec<Entry>) -> Result<()> {
            let entries = fs::read_dir(dir).map_err(io_err(format!("read {}", dir.display())))?;
            for entry in entries {
                let entry = entry.map_err(io_err(format!("read {}", dir.display())))?;
                let path = entry.path();
                let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
                if !is_dir {
                    continue;
                }
                let Some(rel) = path
                    .strip_prefix(&store.root)
                    .ok()
                    .and_then(|p| p.to_str())
                    .map(str::to_string)
                else {
                    continue;
                };
                if let Some(location) = rel.strip_suffix(PARTIAL_SUFFIX) {
                    let modified = entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| Timestamp::try_from(t).ok())
                        .unwrap_or(Timestamp::UNIX_EPOCH);
                    out.push(Entry {
                        location: location.to_string(),
                        partial: true,
                        created_at: modified,
                        bytes: dir_bytes(&path),
                    });
                } else if path.join(MANIFEST_FILE).is_file() {
                    match store.open_image(&rel) {
                        Ok(image) => out.push(Entry {
                            location: rel,
                            partial: false,
                            created_at: image.manifest.created_at,
                            bytes: image.manifest.total_bytes(),
                        }),
                        Err(e) => {
                            tracing::warn!(location = %rel, error = %e, "unreadable image manifest; GC treats it as old");
                            out.push(Entry {
                                location: rel,
                                partial: false,
                                created_at: Timestamp::UNIX_EPOCH,
                                bytes: dir_bytes(&path),
                            });
                        }
                    }
                } else {
                    walk(store, &path, out)?;
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(self, &self.root, &mut out)?;
        out.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(out)
    }

    /// Garbage collection: deletes images (and partials) older than the TTL, then the oldest
    /// images until the store fits its quota. Images in `in_use`, held ([`Store::hold`]: being
    /// written or restored) or used within [`in_use::RECENT`] ([`Store::touch`]: served) are
    /// never deleted.
    pub fn gc(
        &self,
        policy: &GcPolicy,
        now: Timestamp,
        in_use: &HashSet<String>,
    ) -> Result<GcReport> {
        let mut entries = self.list()?;
        let mut in_use = in_use.clone();
        for e in &entries {
            if in_use::in_use(&self.image_dir(&e.location)?, in_use::RECENT) {
                in_use.insert(e.location.clone());
            }
        }
        let in_use = &in_use;
        let mut report = GcReport::default();
        entries.sort_by_key(|e| e.created_at);
        let mut kept = Vec::new();
        for entry in entries {
            let expired = policy.ttl.is_some_and(|ttl| entry.created_at + ttl < now);
            if expired && !in_use.contains(&entry.location) {
                self.delete_entry(&entry)?;
                report.deleted.push(entry.location);
                report.freed_bytes += entry.bytes;
            } else {
                kept.push(entry);
            }
        }
        if let Some(quota) = policy.quota_bytes {
            let mut total: u64 = kept.iter().map(|e| e.bytes).sum();
            for entry in &kept {
                if total <= quota {
                    break;
                }
                if in_use.contains(&entry.location) {
                    continue;
                }
                self.delete_entry(entry)?;
                total = total.saturating_sub(entry.bytes);
                report.deleted.push(entry.location.clone());
                report.freed_bytes += entry.bytes;
            }
            report.remaining_bytes = total;
        } else {
            report.remaining_bytes = kept.iter().map(|e| e.bytes).sum();
        }
        Ok(report)
    }

    fn delete_entry(&self, entry: &Entry) -> Result<()> {
        let dir = self.image_dir(&entry.location)?;
        let path = if entry.partial {
            partial_name(&dir)
        } else {
            dir
        };
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove {}", path.display()))(e)),
        }
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    list_files(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|f| fs::metadata(dir.join(f)).ok())
        .map(|m| m.len())
        .sum()
}

/// An image or a partial in the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Location relative to the root.
    pub location: String,
    /// Still being written or received.
    pub partial: bool,
    /// Published (images) or last modified (partials).
    pub created_at: Timestamp,
    /// Bytes of its files.
    pub bytes: u64,
}

/// When GC deletes images.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Delete images older than this.
    pub ttl: Option<SignedDuration>,
    /// Delete the oldest images while the store holds more than this.
    pub quota_bytes: Option<u64>,
}

/// What a GC run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Locations deleted, oldest first.
    pub deleted: Vec<String>,
    /// Bytes freed.
    pub freed_bytes: u64,
    /// Bytes left in the store.
    pub remaining_bytes: u64,
}

/// An image being written: files go into [`Staging::dir`], then [`Staging::publish`].
#[derive(Debug)]
pub struct Staging {
    location: String,
    /// Where the image goes when published.
    target: PathBuf,
    partial: PathBuf,
}

impl Staging {
    /// The directory to write the image's files into (`<location>.partial`).
    pub fn dir(&self) -> &Path {
        &self.partial
    }

    /// The image's location in the store.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// A file's path inside the staging directory; `rel` is validated (it may come from a
    /// remote manifest). Parent directories are created.
    pub fn file_path(&self, rel: &str) -> Result<PathBuf> {
        let path = safe_join(&self.partial, rel)?;
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(format!("create {}", parent.display())))?;
        }
        Ok(path)
    }

    /// Hashes every file written so far into a manifest with `meta`.
    pub fn build_manifest(&self, meta: ImageMeta) -> Result<Manifest> {
        let mut files = Vec::new();
        for rel in list_files(&self.partial)? {
            let path = self.partial.join(&rel);
            let (size, sha256) =
                hash_file(&path).map_err(io_err(format!("hash {}", path.display())))?;
            files.push(FileEntry {
                path: rel,
                size,
                sha256,
            });
        }
        Ok(Manifest {
            version: MANIFEST_VERSION,
            created_at: Timestamp::now(),
            meta,
            files,
        })
    }

    /// Publishes the image with `manifest`: checks that the staged files are exactly the
    /// manifest's (names and sizes; digests are the caller's job, done while writing or by
    /// [`Staging::build_manifest`]), writes the manifest, fsyncs everything and renames the
    /// directory into place. Never replaces an existing image.
    pub fn publish(self, manifest: &Manifest) -> Result<Image> {
        let bytes = manifest.to_bytes();
        self.publish_bytes(manifest, bytes)
    }

    /// Like [`Staging::publish`], but stores `bytes` as the manifest verbatim: `manifest` must
    /// be what they parse to ([`Manifest::from_bytes`]). A transfer publishes the source's
    /// manifest bytes unchanged, so the image keeps its digest (a re-serialization could differ,
    /// e.g. in a float's last digit or in the order of keys of a JSON value).
    pub fn publish_bytes(self, manifest: &Manifest, bytes: Vec<u8>) -> Result<Image> {
        let staged = list_files(&self.partial)?;
        let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        if staged.iter().map(String::as_str).ne(listed.iter().copied()) {
            let missing: Vec<&str> = listed
                .iter()
                .filter(|p| !staged.iter().any(|s| s == *p))
                .copied()
                .collect();
            return Err(StoreError::BadManifest {
                location: self.location.clone(),
                reason: format!(
                    "staged files differ from the manifest (missing: {missing:?}, staged {} files, manifest {})",
                    staged.len(),
                    listed.len()
                ),
            });
        }
        let mut dirs = HashSet::new();
        for entry in &manifest.files {
            let path = self.partial.join(&entry.path);
            let file = File::open(&path).map_err(io_err(format!("open {}", path.display())))?;
            let size = file
                .metadata()
                .map_err(io_err(format!("stat {}", path.display())))?
                .len();
            if size != entry.size {
                return Err(StoreError::Mismatch {
                    path: entry.path.clone(),
                    what: "size",
                    expected: entry.size.to_string(),
                    actual: size.to_string(),
                });
            }
            file.sync_all()
                .map_err(io_err(format!("fsync {}", path.display())))?;
            if let Some(parent) = path.parent() {
                dirs.insert(parent.to_path_buf());
            }
        }
        let manifest_path = self.partial.join(MANIFEST_FILE);
        {
            let mut file = File::create(&manifest_path)
                .map_err(io_err(format!("create {}", manifest_path.display())))?;
            file.write_all(&bytes)
                .and_then(|()| file.sync_all())
                .map_err(io_err(format!("write {}", manifest_path.display())))?;
        }
        dirs.insert(self.partial.clone());
        for dir in &dirs {
            fsync_dir(dir)?;
        }
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            &self.partial,
            rustix::fs::CWD,
            &self.target,
            rustix::fs::RenameFlags::NOREPLACE,
        )
        .map_err(|e| {
            if e == rustix::io::Errno::EXIST {
                StoreError::AlreadyExists(self.location.clone())
            } else {
                io_err(format!(
                    "rename {} to {}",
                    self.partial.display(),
                    self.target.display()
                ))(e.into())
            }
        })?;
        if let Some(parent) = self.target.parent() {
            fsync_dir(parent)?;
        }
        Ok(Image {
            location: self.location,
            dir: self.target,
            digest: sha256_hex(&bytes),
            manifest: manifest.clone(),
            manifest_bytes: bytes,
        })
    }

    /// Removes the staged files.
    pub fn discard(self) -> Result<()> {
        match fs::remove_dir_all(&self.partial) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(format!("remove {}", self.partial.display()))(e)),
        }
    }
}

/// A published image.
#[derive(Clone, Debug)]
pub struct Image {
    /// Its location in the store.
    pub location: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The manifest's bytes as stored (what a transfer sends).
    pub manifest_bytes: Vec<u8>,
    /// SHA-256 (hex) of [`Image::manifest_bytes`]: the image's identity.
    pub digest: String,
}

impl Image {
    /// The path of one of the image's files (`rel` validated; symlinks refused).
    pub fn file_path(&self, rel: &str) -> Result<PathBuf> {
        safe_join(&self.dir, rel)
    }

    /// The manifest entry for `rel`.
    pub fn entry(&self, rel: &str) -> Option<&FileEntry> {
        self.manifest.files.iter().find(|f| f.path == rel)
    }

    /// Re-hashes every file and compares with the manifest.
    pub fn verify(&self) -> Result<()> {
        for entry in &self.manifest.files {
            let path = self.file_path(&entry.path)?;
            let (size, sha256) =
                hash_file(&path).map_err(io_err(format!("hash {}", path.display())))?;
            if size != entry.size {
                return Err(StoreError::Mismatch {
                    path: entry.path.clone(),
                    what: "size",
                    expected: entry.size.to_string(),
                    actual: size.to_string(),
                });
            }
            if sha256 != entry.sha256 {
                return Err(StoreError::Mismatch {
                    path: entry.path.clone(),
                    what: "sha256",
                    expected: entry.sha256.clone(),
                    actual: sha256,
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> ImageMeta {
        ImageMeta::new(
            ImageKind::Criu,
            ImageSource {
                node: "node-a".into(),
                namespace: "ns".into(),
                pod: "p".into(),
                containers: vec!["c".into()],
            },
        )
    }

    fn publish(store: &Store, location: &str, files: &[(&str, &[u8])]) -> Image {
        let staging = store.stage(location).unwrap();
        for (name, data) in files {
            fs::write(staging.file_path(name).unwrap(), data).unwrap();
        }
        let manifest = staging.build_manifest(meta()).unwrap();
        staging.publish(&manifest).unwrap()
    }

    #[test]
    fn relative_paths_are_validated() {
        for ok in ["a", "ns/req", "ns/req/c/pages-1.img", "a.b/c-d_e"] {
            validate_relative(ok).unwrap();
        }
        for bad in [
            "",
            "/abs",
            "a/../b",
            "..",
            "./a",
            "a//b",
            "a/",
            "a/./b",
            "x.partial",
            "a/b.partial/c",
            "a\0b",
        ] {
            assert!(
                matches!(validate_relative(bad), Err(StoreError::InvalidPath { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn publish_writes_a_manifest_and_never_overwrites() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let image = publish(
            &store,
            "ns/req",
            &[("c/pages-1.img", b"hello"), ("c/inventory.img", b"x")],
        );
        assert_eq!(image.manifest.files.len(), 2);
        assert_eq!(image.manifest.files[0].path, "c/inventory.img");
        assert_eq!(image.manifest.files[1].sha256, sha256_hex(b"hello"));
        assert!(!tmp.path().join("ns/req.partial").exists());
        let reopened = store.open_image("ns/req").unwrap();
        assert_eq!(reopened.digest, image.digest);
        assert_eq!(reopened.manifest, image.manifest);
        reopened.verify().unwrap();

        assert!(matches!(
            store.stage("ns/req"),
            Err(StoreError::AlreadyExists(_))
        ));
        // A second staging of the same location racing past the check still cannot replace it.
        let staging = Staging {
            location: "ns/req".into(),
            target: tmp.path().canonicalize().unwrap().join("ns/req"),
            partial: tmp.path().canonicalize().unwrap().join("ns/req.partial"),
        };
        fs::create_dir_all(staging.dir()).unwrap();
        let empty = staging.build_manifest(meta()).unwrap();
        assert!(matches!(
            staging.publish(&empty),
            Err(StoreError::AlreadyExists(_))
        ));
        assert_eq!(
            fs::read(tmp.path().join("ns/req/c/pages-1.img")).unwrap(),
            b"hello"
        );
    }

    #[test]
    fn verify_catches_a_flipped_byte() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let image = publish(&store, "i", &[("f", b"abcdef")]);
        fs::write(image.dir.join("f"), b"abcdeF").unwrap();
        let err = store.open_image("i").unwrap().verify().unwrap_err();
        assert!(
            matches!(err, StoreError::Mismatch { what: "sha256", .. }),
            "{err}"
        );
    }

    #[test]
    fn publish_refuses_files_the_manifest_does_not_list() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let staging = store.stage("i").unwrap();
        fs::write(staging.file_path("a").unwrap(), b"1").unwrap();
        let manifest = staging.build_manifest(meta()).unwrap();
        fs::write(staging.file_path("b").unwrap(), b"2").unwrap();
        assert!(matches!(
            staging.publish(&manifest),
            Err(StoreError::BadManifest { .. })
        ));
        assert!(!store.exists("i").unwrap());
    }

    #[test]
    fn symlinks_out_of_the_store_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path().join("store")).unwrap();
        std::os::unix::fs::symlink(outside.path(), store.root().join("ns")).unwrap();
        assert!(matches!(
            store.stage("ns/req"),
            Err(StoreError::InvalidPath { .. })
        ));
        assert!(matches!(
            store.open_image("ns/req"),
            Err(StoreError::InvalidPath { .. })
        ));
        assert!(matches!(
            store.delete("ns/req"),
            Err(StoreError::InvalidPath { .. })
        ));
        let staging = store.stage("ok").unwrap();
        std::os::unix::fs::symlink(outside.path(), staging.dir().join("link")).unwrap();
        assert!(matches!(
            staging.file_path("link/x"),
            Err(StoreError::InvalidPath { .. })
        ));
        assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    }

    #[test]
    fn manifests_from_elsewhere_are_checked() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        let mut manifest = publish(&store, "i", &[("f", b"1")]).manifest;
        manifest.files[0].path = "../../etc/passwd".into();
        assert!(matches!(
            Manifest::from_bytes("x", &manifest.to_bytes()),
            Err(StoreError::InvalidPath { .. })
        ));
        manifest.files[0].path = "f".into();
        manifest.version = 2;
        assert!(matches!(
            Manifest::from_bytes("x", &manifest.to_bytes()),
            Err(StoreError::BadManifest { .. })
        ));
    }

    #[test]
    fn gc_by_ttl_and_quota_spares_images_in_use() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for (i, name) in ["a/1", "a/2", "b/3"].iter().enumerate() {
            publish(&store, name, &[("f", &vec![b'x'; 100 * (i + 1)])]);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let _partial = store.resume("c/4").unwrap();
        let entries = store.list().unwrap();
        assert_eq!(entries.len(), 4, "{entries:?}");

        // Quota 450 (600 B stored): the oldest (a/1, 100 B) would go first but is in use, so a/2 goes.
        let in_use = HashSet::from(["a/1".to_string()]);
        let policy = GcPolicy {
            ttl: None,
            quota_bytes: Some(450),
        };
        let report = store.gc(&policy, Timestamp::now(), &in_use).unwrap();
        assert_eq!(report.deleted, vec!["a/2".to_string()]);
        assert_eq!(report.remaining_bytes, 400);
        assert!(store.exists("a/1").unwrap() && store.exists("b/3").unwrap());

        // TTL: everything is older than an hour from an hour and a second from now.
        let later = Timestamp::now() + SignedDuration::from_secs(3601);
        let policy = GcPolicy {
            ttl: Some(SignedDuration::from_hours(1)),
            quota_bytes: None,
        };
        let report = store.gc(&policy, later, &HashSet::new()).unwrap();
        assert_eq!(report.deleted.len(), 3, "{report:?}");
        assert!(store.list().unwrap().is_empty());
    }

    #[test]
    fn gc_spares_images_held_by_a_task_or_served_a_moment_ago() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        for name in ["held/1", "served/2", "idle/3"] {
            publish(&store, name, &[("f", b"0123456789")]);
        }
        // Another Store value on the same root (the worker opens one per task) holds it.
        let hold = Store::open(tmp.path()).unwrap().hold("held/1").unwrap();
        store.touch("served/2").unwrap();
        let policy = GcPolicy {
            ttl: Some(SignedDuration::from_hours(1)),
            quota_bytes: Some(0),
        };
        let later = Timestamp::now() + SignedDuration::from_hours(2);
        let report = store.gc(&policy, later, &HashSet::new()).unwrap();
        assert_eq!(report.deleted, vec!["idle/3".to_string()]);
        drop(hold);
        // Released a moment ago still counts as recently used; the served one too.
        let report = store.gc(&policy, later, &HashSet::new()).unwrap();
        assert!(report.deleted.is_empty(), "{report:?}");
        assert!(store.exists("held/1").unwrap() && store.exists("served/2").unwrap());
    }
}
