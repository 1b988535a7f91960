//! containerd's (and CRI-O's) *checkpoint image*: the OCI image a kubelet checkpoint archive
//! becomes so that containerd ≥ 2.1 restores a container from it when the kubelet creates the
//! container with it as its image. This is the one builder of it: the agent's containerd
//! restore and the end-to-end tests' real nodes both use it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_api::names::annotation::CRIU_CHECKPOINT_CONTAINER_NAME;
use serde_json::json;

use crate::runtime::control::ToolControl;
use crate::runtime::error::{Result, RuntimeError, io_err};
use crate::runtime::exec::{self, tool_result};
use crate::store::{hash_file, sha256_hex};

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
            let hex = sha256_hex(&bytes);
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

    /// Writes the checkpoint image for `archive` as the OCI archive `out` that
    /// `ctr images import` reads, building the layout in a temporary directory.
    pub fn write_archive(&self, archive: &Path, out: &Path, limit: Duration) -> Result<()> {
        let tmp = tempfile::Builder::new()
            .prefix("ferry-checkpoint-image-")
            .tempdir()
            .map_err(io_err("create a checkpoint image directory"))?;
        let layout = self.build_layout(archive, &tmp.path().join("layout"))?;
        pack(
            &layout.dir,
            out,
            &tmp.path().join("tar.log"),
            limit,
            &ToolControl::default(),
        )
    }
}

/// Packs the OCI image layout `layout` into the tar `out` that `ctr images import` reads;
/// `tar`'s messages go to `out` with the extension `tar.log`. `tar` is a task's tool: it
/// ends with `control`'s deadline or cancel.
pub fn pack_layout(
    layout: &Path,
    out: &Path,
    limit: Duration,
    control: &ToolControl,
) -> Result<()> {
    pack(layout, out, &out.with_extension("tar.log"), limit, control)
}

fn pack(
    layout: &Path,
    out: &Path,
    log: &Path,
    limit: Duration,
    control: &ToolControl,
) -> Result<()> {
    let stderr = std::fs::File::create(log).map_err(io_err(format!("create {}", log.display())))?;
    let mut cmd = std::process::Command::new("tar");
    cmd.arg("-C")
        .arg(layout)
        .arg("-cf")
        .arg(out)
        .args(["oci-layout", "index.json", "blobs"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(stderr);
    let done = exec::run(&mut cmd, "tar of the checkpoint image", limit, control)?;
    tool_result("tar", "create", done.status, log)
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
        pack_layout(&out, &tar, Duration::from_secs(30), &ToolControl::default()).unwrap();
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
    fn the_archive_form_is_the_layout_packed_for_ctr() {
        let tmp = tempfile::tempdir().unwrap();
        let archive = tmp.path().join("checkpoint.tar");
        std::fs::write(&archive, b"the image does not look inside").unwrap();
        let img = ContainerdCheckpointImage {
            reference: "localhost/ferry/cp:v1".into(),
            container: "counter".into(),
        };
        let out = tmp.path().join("image.tar");
        img.write_archive(&archive, &out, Duration::from_secs(30))
            .unwrap();
        // Read back with the kubelet archive reader: `ctr` sees the same members.
        let member = |name: &str| -> Value {
            let bytes = crate::runtime::kubelet::archive_member(&out, name)
                .unwrap()
                .unwrap_or_else(|| panic!("no {name} in the archive"));
            serde_json::from_slice(&bytes).unwrap()
        };
        assert_eq!(member("oci-layout")["imageLayoutVersion"], "1.0.0");
        let index = member("index.json");
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "localhost/ferry/cp:v1"
        );
        let digest = entry["digest"].as_str().unwrap();
        let manifest = member(&format!("blobs/sha256/{}", &digest["sha256:".len()..]));
        assert_eq!(
            manifest["annotations"][CRIU_CHECKPOINT_CONTAINER_NAME],
            "counter"
        );
        // Nothing but the archive is left next to `out`.
        let mut left: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["checkpoint.tar", "image.tar"]);
    }
}
