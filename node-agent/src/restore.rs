//! Restoring, one trait with one implementation per runtime mechanism (DESIGN.md §4):
//! - [`crate::runc::Runc`]: `runc restore` of a container's CRIU images into a bundle;
//! - [`crate::process_tree::ProcessTree`]: CRIU on a process tree;
//! - containerd ≥ 2.1's checkpoint-image restore: [`ContainerdCheckpointImage`] builds the OCI
//!   image from a kubelet archive, [`pack_layout`] makes it the tar `ctr` takes and [`Ctr`]
//!   imports it into the node's containerd; creating the container from it (CRIU's restore)
//!   is then the kubelet's and containerd's work, when they start the restored pod.
//!
//! **A restore never modifies the image.** CRIU writes into its image directory on restore
//! (`stats-restore`, and ferry's plugin writes `ferry-restore-stats.json` next to the images),
//! so restores do not run in the published image: [`restore_dir`] builds a *restore
//! directory* under the job's `work_dir` holding a **hard link** to each image file (a copy
//! when the work dir is on another filesystem); CRIU reads the images through the links and
//! everything it writes (log, stats, pidfile) is a new file in the restore directory. The
//! names a restore writes are never linked, CRIU opens images read-only on restore, and the
//! plugin replaces its stats file by rename, so nothing writes through a link into the image.
//! Symlinks do not work: CRIU opens some images from inside the restored task after it
//! switched to the container's mount namespace, where an absolute link target does not
//! resolve (`No pagemap-1.img image`, seen with runc). Hard links also keep a restore's input
//! alive if the image is garbage-collected meanwhile. A failed restore leaves the image as it
//! was, and the restore directory (with the log) for the operator.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::names::annotation::CRIU_CHECKPOINT_CONTAINER_NAME;
use ferry_api::stats::PluginStats;
use serde_json::json;

use crate::criu::{DEFAULT_TIMEOUT, Result, RuntimeError, io_err};
use crate::store::{Image, MANIFEST_FILE, hash_file};

/// One container of an image to restore.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RestoreTarget {
    /// The process tree saved as `name` (`<image>/<name>/`).
    Process {
        /// Name in the image.
        name: String,
    },
    /// The container saved as `name`, restored by runc as container `id` from `bundle`.
    Runc {
        /// Name in the image.
        name: String,
        /// The new container's id (must not exist under the runc root).
        id: String,
        /// The OCI bundle (config.json + rootfs) to restore into. In tests and the demo the
        /// caller builds it; for a pod it is the bundle of a container created (not started)
        /// from the same pod spec, which is what containerd's restore path does itself.
        bundle: PathBuf,
    },
}

impl RestoreTarget {
    /// The container's name in the image.
    pub fn name(&self) -> &str {
        match self {
            RestoreTarget::Process { name } | RestoreTarget::Runc { name, .. } => name,
        }
    }
}

/// A restore request.
#[derive(Clone, Debug)]
pub struct RestoreJob {
    /// A private directory for this restore (e.g. `/var/lib/ferry/work/<task>`), outside the
    /// store: restore directories, CRIU's logs and the plugin's stats go here.
    pub work_dir: PathBuf,
    /// What to restore. Empty: every container in the image, as process trees.
    pub containers: Vec<RestoreTarget>,
    /// ferry's plugin refills device memory in parallel with host memory (the CR's
    /// `gpu.parallelRestore`; `FERRY_PARALLEL_RESTORE`).
    pub parallel_restore: bool,
    /// Extra environment for CRIU and ferry's plugin.
    pub env: Vec<(String, String)>,
    /// Limit for each tool run.
    pub timeout: Duration,
}

impl RestoreJob {
    /// A job restoring every container of the image as process trees, parallel restore on.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        RestoreJob {
            work_dir: work_dir.into(),
            containers: Vec::new(),
            parallel_restore: true,
            env: Vec::new(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// The environment for CRIU: the job's, then the plugin's mode.
    pub(crate) fn criu_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.extend(crate::criu::plugin_env(self.parallel_restore));
        env
    }

    /// The restore directory of container `name`.
    pub fn restore_dir(&self, name: &str) -> PathBuf {
        self.work_dir.join(name)
    }
}

/// One restored container.
#[derive(Clone, Debug)]
pub struct Restored {
    /// Its name in the image.
    pub name: String,
    /// The restored root process (host pid namespace).
    pub pid: Option<i32>,
    /// The runtime's container id, for runtime restores.
    pub container_id: Option<String>,
    /// CRIU's restore log.
    pub log: PathBuf,
    /// The plugin's restore stats, when it restored a device.
    pub plugin_stats: Option<PluginStats>,
    /// Wall time of the tool run itself (CRIU or runc).
    pub tool_wall: Duration,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreOutcome {
    /// Per container, in order.
    pub restored: Vec<Restored>,
    /// Wall time of the whole restore.
    pub duration: Duration,
    /// The plugin's stats merged over containers.
    pub plugin_stats: Option<PluginStats>,
    /// Host-memory restore window as the plugin measured it (POST_FORKING → RESUME_DEVICES_LATE).
    pub host_restore: Option<Duration>,
    /// Device-memory restore phase as the plugin measured it.
    pub gpu_restore: Option<Duration>,
}

impl RestoreOutcome {
    pub(crate) fn new(restored: Vec<Restored>, duration: Duration) -> Self {
        let plugin_stats =
            crate::criu::merge_stats(restored.iter().filter_map(|r| r.plugin_stats.clone()));
        let secs = |s: f64| Duration::try_from_secs_f64(s).ok();
        RestoreOutcome {
            host_restore: plugin_stats
                .as_ref()
                .and_then(|s| secs(s.host_restore_seconds)),
            gpu_restore: plugin_stats
                .as_ref()
                .and_then(|s| secs(s.gpu_phase_seconds)),
            plugin_stats,
            restored,
            duration,
        }
    }
}

/// A way to restore an image.
pub trait Restorer: Send + Sync {
    /// Restores `image` as `job` says. Never modifies or deletes the image; on error the
    /// restore directories (with CRIU's log) stay in `job.work_dir`.
    fn restore(&self, job: &RestoreJob, image: &Image) -> Result<RestoreOutcome>;
}

/// Files a restore writes into CRIU's image dir; never linked into a restore directory, so a
/// write to one can never go through a link into the image.
const RESTORE_OUTPUTS: &[&str] = &[
    MANIFEST_FILE,
    crate::criu::RESTORE_LOG,
    crate::criu::RESTORE_PIDFILE,
    "restore.log",
    "stats-restore",
    ferry_api::stats::RESTORE_STATS_FILE,
    crate::runc::RUNC_RESTORE_STDERR,
    crate::runc::RUNC_PIDFILE,
];

/// Builds the restore directory `dst` for the image directory `src`: a fresh directory tree
/// with one hard link (or, across filesystems, a copy) per file of `src` (see the module docs). A stale `dst` from an earlier
/// attempt is replaced.
pub fn restore_dir(src: &Path, dst: &Path) -> Result<()> {
    if !src.is_dir() {
        return Err(RuntimeError::Invalid(format!(
            "{} is not an image directory",
            src.display()
        )));
    }
    match std::fs::remove_dir_all(dst) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(format!("remove stale {}", dst.display()))(e)),
    }
    link_tree(src, dst)
}

fn link_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst).map_err(io_err(format!("create {}", dst.display())))?;
    let entries = std::fs::read_dir(src).map_err(io_err(format!("read {}", src.display())))?;
    for entry in entries {
        let entry = entry.map_err(io_err(format!("read {}", src.display())))?;
        let name = entry.file_name();
        let ty = entry
            .file_type()
            .map_err(io_err(format!("stat {}", entry.path().display())))?;
        let to = dst.join(&name);
        if ty.is_dir() {
            link_tree(&entry.path(), &to)?;
        } else if ty.is_file() {
            if RESTORE_OUTPUTS.iter().any(|o| name == *o) {
                continue;
            }
            match std::fs::hard_link(entry.path(), &to) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                    // Correct but slow for GPU-sized images: keep the work dir on the store's
                    // filesystem.
                    tracing::warn!(file = %entry.path().display(), restore_dir = %dst.display(), "restore dir is on another filesystem than the image; copying");
                    std::fs::copy(entry.path(), &to)
                        .map_err(io_err(format!("copy {}", to.display())))?;
                }
                Err(e) => return Err(io_err(format!("link {}", to.display()))(e)),
            }
        }
        // Symlinks and special files are not part of a published image (the store refuses
        // them); skip rather than follow.
    }
    Ok(())
}

/// The image's directory for container `name`, checked to exist.
pub(crate) fn container_dir(image: &Image, name: &str) -> Result<PathBuf> {
    let dir = image.file_path(name)?;
    if !dir.is_dir() {
        return Err(RuntimeError::Invalid(format!(
            "image {} has no container {name:?} (no {})",
            image.location,
            dir.display()
        )));
    }
    Ok(dir)
}

/// The containers to restore: the job's, or every container the image lists.
pub(crate) fn targets(job: &RestoreJob, image: &Image) -> Result<Vec<RestoreTarget>> {
    if !job.containers.is_empty() {
        return Ok(job.containers.clone());
    }
    let names = &image.manifest.meta.source.containers;
    if names.is_empty() {
        return Err(RuntimeError::Invalid(format!(
            "image {} lists no containers",
            image.location
        )));
    }
    Ok(names
        .iter()
        .map(|n| RestoreTarget::Process { name: n.clone() })
        .collect())
}

/// OCI media types of a checkpoint image.
pub mod media_type {
    /// OCI image index.
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Uncompressed tar layer: the checkpoint archive itself.
    pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
}

/// Builds containerd's (and CRI-O's) *checkpoint image* from a kubelet checkpoint archive:
/// an OCI image whose single layer is the archive (a tar, so its entries — `checkpoint/`,
/// `config.dump`, `spec.dump`, … — unpack at `/`, as `buildah add <archive> /` makes it) and
/// whose manifest carries `org.criu.checkpoint.container.name` (containerd's
/// `checkIfCheckpointOCIImage` requires it on the manifest). Import with
/// `tar -C <layout> -cf img.tar . && ctr -n k8s.io images import img.tar`, then create the pod
/// with `image: <reference>` and `imagePullPolicy: IfNotPresent`.
#[derive(Clone, Debug)]
pub struct ContainerdCheckpointImage {
    /// Image reference (`localhost/ferry-checkpoint/<ns>/<pod>-<container>:<digest12>`).
    pub reference: String,
    /// The container the archive holds.
    pub container: String,
}

/// A written OCI image layout.
#[derive(Clone, Debug)]
pub struct CheckpointImageLayout {
    /// The layout directory (`oci-layout`, `index.json`, `blobs/sha256/…`).
    pub dir: PathBuf,
    /// `sha256:…` of the manifest.
    pub manifest_digest: String,
    /// `sha256:…` of the layer (= the archive).
    pub layer_digest: String,
}

fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

impl ContainerdCheckpointImage {
    /// Writes the OCI image layout for `archive` into `out` (created; must not exist). The
    /// archive is copied, not linked: the layout may be handed to tools that write.
    pub fn build_layout(&self, archive: &Path, out: &Path) -> Result<CheckpointImageLayout> {
        if out.exists() {
            return Err(RuntimeError::Invalid(format!(
                "{} already exists",
                out.display()
            )));
        }
        let blobs = out.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err(format!("create {}", blobs.display())))?;
        let (layer_size, layer_hex) =
            hash_file(archive).map_err(io_err(format!("hash {}", archive.display())))?;
        std::fs::copy(archive, blobs.join(&layer_hex))
            .map_err(io_err(format!("copy {}", archive.display())))?;
        let layer_digest = format!("sha256:{layer_hex}");
        let write_blob = |value: &serde_json::Value| -> Result<(String, u64)> {
            let bytes = serde_json::to_vec(value)
                .map_err(|e| RuntimeError::Invalid(format!("serialize OCI blob: {e}")))?;
            let hex = crate::store::sha256_hex(&bytes);
            let path = blobs.join(&hex);
            std::fs::write(&path, &bytes).map_err(io_err(format!("write {}", path.display())))?;
            Ok((format!("sha256:{hex}"), bytes.len() as u64))
        };
        let config = json!({
            "architecture": oci_arch(),
            "os": "linux",
            "created": jiff::Timestamp::now().to_string(),
            "config": {},
            "rootfs": { "type": "layers", "diff_ids": [layer_digest] },
        });
        let (config_digest, config_size) = write_blob(&config)?;
        let annotations = json!({ CRIU_CHECKPOINT_CONTAINER_NAME: self.container });
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": media_type::MANIFEST,
            "config": {
                "mediaType": media_type::CONFIG,
                "digest": config_digest,
                "size": config_size,
            },
            "layers": [{
                "mediaType": media_type::LAYER_TAR,
                "digest": layer_digest,
                "size": layer_size,
            }],
            "annotations": annotations,
        });
        let (manifest_digest, manifest_size) = write_blob(&manifest)?;
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media_type::INDEX,
            "manifests": [{
                "mediaType": media_type::MANIFEST,
                "digest": manifest_digest,
                "size": manifest_size,
                // `ctr images import` unpacks only manifests for its platform; without one
                // the image is stored but not unpacked, and the kubelet cannot create from it.
                "platform": { "architecture": oci_arch(), "os": "linux" },
                "annotations": {
                    // OCI: `ref.name` is the tag; containerd takes the full name from its own
                    // annotation.
                    "org.opencontainers.image.ref.name": self.reference.rsplit_once(':').map_or("latest", |(_, tag)| tag),
                    "io.containerd.image.name": self.reference,
                    CRIU_CHECKPOINT_CONTAINER_NAME: self.container,
                },
            }],
        });
        let write = |name: &str, value: &serde_json::Value| -> Result<()> {
            let path = out.join(name);
            let bytes = serde_json::to_vec(value)
                .map_err(|e| RuntimeError::Invalid(format!("serialize {name}: {e}")))?;
            std::fs::write(&path, bytes).map_err(io_err(format!("write {}", path.display())))
        };
        write("oci-layout", &json!({ "imageLayoutVersion": "1.0.0" }))?;
        write("index.json", &index)?;
        tracing::info!(reference = %self.reference, manifest = %manifest_digest, layer = %layer_digest, dir = %out.display(), "checkpoint image layout written");
        Ok(CheckpointImageLayout {
            dir: out.to_path_buf(),
            manifest_digest,
            layer_digest,
        })
    }
}

/// Packs the OCI image layout `layout` into the tar `out` that `ctr images import` reads.
pub fn pack_layout(layout: &Path, out: &Path, limit: Duration) -> Result<()> {
    let log = out.with_extension("tar.log");
    let stderr =
        std::fs::File::create(&log).map_err(io_err(format!("create {}", log.display())))?;
    let mut cmd = std::process::Command::new("tar");
    cmd.arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(out)
        .args(["oci-layout", "index.json", "blobs"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    let done = crate::exec::run(&mut cmd, "tar of the checkpoint image", limit)?;
    tool_result("tar", "create", done.status, &log)
}

fn tool_result(
    tool: &'static str,
    op: &'static str,
    status: std::process::ExitStatus,
    log: &Path,
) -> Result<()> {
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let message = text
        .lines()
        .rev()
        .take(3)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join(" | ");
    Err(RuntimeError::Tool {
        tool,
        op,
        status: status.to_string(),
        message,
        log: log.to_path_buf(),
    })
}

/// containerd's client `ctr` on the node's containerd socket, in the `k8s.io` namespace (the
/// kubelet's: an image elsewhere is invisible to it).
#[derive(Clone, Debug)]
pub struct Ctr {
    /// The `ctr` binary.
    pub binary: PathBuf,
    /// containerd's socket.
    pub socket: PathBuf,
    /// The snapshotter the CRI plugin uses (its images must be unpacked into that one).
    pub snapshotter: String,
}

impl Ctr {
    /// `ctr images import` of the OCI archive `archive`; `ctr`'s output goes to `log`.
    pub fn import(&self, archive: &Path, log: &Path, limit: Duration) -> Result<()> {
        let out =
            std::fs::File::create(log).map_err(io_err(format!("create {}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(io_err(format!("open {}", log.display())))?;
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io", "images", "import"])
            .arg(format!("--snapshotter={}", self.snapshotter))
            .arg(archive)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err);
        let done = crate::exec::run(&mut cmd, "ctr images import", limit)?;
        tool_result("ctr", "images import", done.status, log)
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = std::process::Command::new(&self.binary);
        cmd.arg("--address")
            .arg(&self.socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(std::process::Stdio::null());
        cmd
    }

    /// Runs a read-only `ctr` command and returns its output (small: listings).
    pub fn query(&self, args: &[&str], limit: Duration) -> Result<String> {
        let out = tempfile::tempfile().map_err(io_err("temporary file for ctr's output"))?;
        let err = tempfile::NamedTempFile::new().map_err(io_err("temporary file for ctr's log"))?;
        let mut cmd = self.command(args);
        cmd.stdout(out.try_clone().map_err(io_err("ctr output file"))?)
            .stderr(err.reopen().map_err(io_err("ctr log file"))?);
        let what = format!("ctr {}", args.join(" "));
        let done = crate::exec::run(&mut cmd, &what, limit)?;
        tool_result("ctr", "query", done.status, err.path())?;
        let mut text = String::new();
        use std::io::{Read, Seek};
        let mut out = out;
        out.rewind()
            .and_then(|_| out.read_to_string(&mut text))
            .map_err(io_err("read ctr's output"))?;
        Ok(text)
    }

    /// `ctr images rm` of `references` (containerd's GC then frees what nothing references).
    pub fn remove_images(&self, references: &[String], limit: Duration) -> Result<()> {
        let err = tempfile::NamedTempFile::new().map_err(io_err("temporary file for ctr's log"))?;
        let mut args = vec!["images", "rm"];
        args.extend(references.iter().map(String::as_str));
        let mut cmd = self.command(&args);
        cmd.stdout(std::process::Stdio::null())
            .stderr(err.reopen().map_err(io_err("ctr log file"))?);
        let done = crate::exec::run(&mut cmd, "ctr images rm", limit)?;
        tool_result("ctr", "images rm", done.status, err.path())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::Value;

    fn read_json(p: &Path) -> Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    #[test]
    fn the_checkpoint_image_is_an_oci_layout_with_the_archive_as_its_layer() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("checkpoint-p_ns-app-2026.tar");
        std::fs::write(&archive, b"not really a tar, but bytes are bytes").unwrap();
        let img = ContainerdCheckpointImage {
            reference: "localhost/ferry-checkpoint/ns/p-app:abc".into(),
            container: "app".into(),
        };
        let out = tmp.path().join("layout");
        let layout = img.build_layout(&archive, &out).unwrap();
        assert_eq!(
            read_json(&out.join("oci-layout"))["imageLayoutVersion"],
            "1.0.0"
        );
        let index = read_json(&out.join("index.json"));
        assert_eq!(index["schemaVersion"], 2);
        let desc = &index["manifests"][0];
        assert_eq!(desc["mediaType"], media_type::MANIFEST);
        assert_eq!(desc["digest"], layout.manifest_digest.as_str());
        assert_eq!(
            desc["annotations"]["org.opencontainers.image.ref.name"],
            "abc"
        );
        assert_eq!(
            desc["annotations"]["io.containerd.image.name"],
            "localhost/ferry-checkpoint/ns/p-app:abc"
        );
        assert_eq!(desc["platform"]["os"], "linux");
        // The layout packs into the tar `ctr images import` reads.
        let tar = tmp.path().join("img.tar");
        pack_layout(&out, &tar, Duration::from_secs(30)).unwrap();
        let listing = std::process::Command::new("tar")
            .arg("-tf")
            .arg(&tar)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.lines().any(|l| l == "index.json"), "{listing}");
        assert!(listing.lines().any(|l| l == "oci-layout"), "{listing}");
        // Every blob is stored under its digest and its size is right.
        let blob = |digest: &str| {
            let hex = digest.strip_prefix("sha256:").unwrap();
            let bytes = std::fs::read(out.join("blobs/sha256").join(hex)).unwrap();
            assert_eq!(crate::store::sha256_hex(&bytes), hex);
            bytes
        };
        let manifest_bytes = blob(&layout.manifest_digest);
        assert_eq!(desc["size"], manifest_bytes.len() as u64);
        let manifest: Value = serde_json::from_slice(&manifest_bytes).unwrap();
        assert_eq!(manifest["mediaType"], media_type::MANIFEST);
        assert_eq!(
            manifest["annotations"]["org.criu.checkpoint.container.name"],
            "app"
        );
        let layer = &manifest["layers"][0];
        assert_eq!(layer["mediaType"], media_type::LAYER_TAR);
        assert_eq!(layer["digest"], layout.layer_digest.as_str());
        assert_eq!(blob(&layout.layer_digest), std::fs::read(&archive).unwrap());
        let config: Value =
            serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
        assert_eq!(config["os"], "linux");
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            layout.layer_digest.as_str()
        );
        // Never over an existing layout.
        assert!(img.build_layout(&archive, &out).is_err());
    }

    #[test]
    fn a_restore_dir_links_every_image_file_but_restore_outputs() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("img");
        std::fs::create_dir_all(src.join("c/sub")).unwrap();
        std::fs::write(src.join("c/pages-1.img"), b"p").unwrap();
        std::fs::write(src.join("c/sub/x.img"), b"x").unwrap();
        std::fs::write(src.join("c/stats-restore"), b"old").unwrap();
        std::fs::write(src.join(MANIFEST_FILE), b"{}").unwrap();
        let dst = tmp.path().join("work/c");
        std::fs::create_dir_all(&dst).unwrap();
        std::fs::write(dst.join("stale"), b"").unwrap();
        restore_dir(&src.join("c"), &dst).unwrap();
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(&dst.join("pages-1.img")),
            ino(&src.join("c/pages-1.img"))
        );
        assert_eq!(std::fs::read(dst.join("sub/x.img")).unwrap(), b"x");
        assert!(!dst.join("stats-restore").exists());
        assert!(!dst.join("stale").exists());
        assert!(restore_dir(&src.join("nope"), &dst).is_err());
    }
}
