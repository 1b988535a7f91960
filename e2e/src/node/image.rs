//! Checkpoint images for containerd's restore-from-image path, built by the agent's builder.

use std::path::Path;
use std::time::Duration;

use ferry_agent::runtime::containerd::ContainerdCheckpointImage;

use crate::error::{Error, Result};

/// The annotation containerd requires on a checkpoint image's manifest before it restores from
/// it in CreateContainer (checkpointctl's `CheckpointAnnotationName`): the container's name.
pub const CHECKPOINT_ANNOTATION: &str = "org.criu.checkpoint.container.name";

/// Writes a checkpoint image as an OCI archive to `out`: the kubelet's checkpoint `archive`
/// (an uncompressed tar of `checkpoint/`, `config.dump`, `spec.dump`, ...) as its one layer,
/// [`CHECKPOINT_ANNOTATION`] set to `container`, named `reference`. Imported into a node's
/// containerd ([`RealNode::import_image`]), a pod whose container uses `reference` as its image
/// is restored from the checkpoint instead of started (containerd 2.1 to 2.3, with
/// `enable_experimental_restore_via_create`). The image is the one the agent's containerd
/// restore builds ([`ContainerdCheckpointImage`]).
pub fn checkpoint_image(
    archive: &Path,
    reference: &str,
    container: &str,
    out: &Path,
) -> Result<()> {
    ContainerdCheckpointImage {
        reference: reference.to_string(),
        container: container.to_string(),
    }
    .write_archive(archive, out, CHECKPOINT_IMAGE_LIMIT)
    .map_err(|e| Error::Node {
        node: "-".to_string(),
        what: format!("writing the checkpoint image {}: {e}", out.display()),
    })
}

/// How long packing a checkpoint image may take (a test's archive is MiBs).
pub(super) const CHECKPOINT_IMAGE_LIMIT: Duration = Duration::from_secs(600);

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::process::Command;

    #[test]
    fn a_checkpoint_image_carries_the_archive_and_the_annotation() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("checkpoint.tar");
        fs::write(
            &archive,
            b"not really a tar, the image does not look inside",
        )
        .unwrap();
        let out = dir.path().join("image.tar");
        checkpoint_image(&archive, "localhost/ferry/cp:v1", "counter", &out).unwrap();

        let unpacked = dir.path().join("unpacked");
        fs::create_dir(&unpacked).unwrap();
        let status = Command::new("tar")
            .arg("-xf")
            .arg(&out)
            .arg("-C")
            .arg(&unpacked)
            .status()
            .unwrap();
        assert!(status.success());
        let index: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(unpacked.join("index.json")).unwrap())
                .unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "localhost/ferry/cp:v1"
        );
        assert_eq!(entry["annotations"][CHECKPOINT_ANNOTATION], "counter");
        let blob = |digest: &serde_json::Value| {
            let digest = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
            unpacked.join("blobs/sha256").join(digest)
        };
        let manifest: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(blob(&entry["digest"])).unwrap()).unwrap();
        assert_eq!(manifest["annotations"][CHECKPOINT_ANNOTATION], "counter");
        let layer = fs::read(blob(&manifest["layers"][0]["digest"])).unwrap();
        assert_eq!(layer, fs::read(&archive).unwrap());
        assert_eq!(manifest["layers"][0]["size"], layer.len());
        let config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(blob(&manifest["config"]["digest"])).unwrap())
                .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            manifest["layers"][0]["digest"]
        );
    }
}
