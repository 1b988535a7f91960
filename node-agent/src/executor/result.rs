//! What a task reports: the [`TaskResult`] each operation's outcome becomes.

use std::time::Duration;

use ferry_api::stats::PluginStats;
use ferry_api::{
    GpuInfo, GpuVendor, ImageSummary, StepTimings, TaskResult, TaskTimings, TransferStats,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

use crate::runtime::restore::RestoreOutcome;
use crate::store::{Image, ImageKind};

/// What a Restore task's pull moved, when it pulled.
#[derive(Clone, Debug, Default)]
pub struct Pulled {
    /// Wall time of the pull.
    pub transfer_ms: Option<i64>,
    /// Bytes and rate.
    pub stats: Option<TransferStats>,
}

/// The result of a Restore task whose processes CRIU restored.
pub fn restore_result(image: &Image, outcome: &RestoreOutcome, pulled: Pulled) -> TaskResult {
    TaskResult {
        image: ImageSummary {
            host_memory_bytes: Some(host_memory_bytes(image) as i64),
            ..image_summary(image, outcome.plugin_stats.as_ref())
        },
        files: Some(image.manifest.files.len() as i64),
        timings: Some(TaskTimings {
            steps: StepTimings {
                transfer_ms: pulled.transfer_ms,
                restore_ms: Some(outcome.duration.as_millis() as i64),
                host_restore_ms: outcome.host_restore.map(|d| d.as_millis() as i64),
                gpu_restore_ms: outcome.gpu_restore.map(|d| d.as_millis() as i64),
                ..Default::default()
            },
            ..Default::default()
        }),
        transfer: pulled.stats,
    }
}

/// The result of a Restore task that imported checkpoint images: the image's own figures (as
/// its checkpoint reported them) with the import's timings; the kubelet restores the
/// containers later.
pub fn import_result(image: &Image, outcome: &RestoreOutcome, pulled: Pulled) -> TaskResult {
    let mut result = checkpoint_result(image, None, None);
    result.timings = Some(TaskTimings {
        steps: StepTimings {
            transfer_ms: pulled.transfer_ms,
            restore_ms: Some(outcome.duration.as_millis() as i64),
            ..Default::default()
        },
        ..Default::default()
    });
    result.transfer = pulled.stats;
    result.image.archive_containers = image.manifest.meta.source.containers.clone();
    result
}

fn vendor_of(stats: Option<&PluginStats>, image: &Image) -> GpuVendor {
    stats
        .map(|s| s.vendor)
        .or(image.manifest.meta.gpu_vendor)
        .unwrap_or_default()
}

/// Bytes of CRIU's memory page images (`pages-*.img`) in the image.
fn host_memory_bytes(image: &Image) -> u64 {
    image
        .manifest
        .files
        .iter()
        .filter(|f| {
            let name = f.path.rsplit('/').next().unwrap_or_default();
            name.starts_with("pages-") && name.ends_with(".img")
        })
        .map(|f| f.size)
        .sum()
}

/// The result of a Checkpoint task (and of one that found its image already published).
pub fn checkpoint_result(
    image: &Image,
    duration: Option<Duration>,
    frozen_at: Option<MicroTime>,
) -> TaskResult {
    let kind = image.manifest.meta.kind;
    TaskResult {
        image: ImageSummary {
            // The pages of a kubelet archive are inside its tar, not counted here: unknown,
            // not 0.
            host_memory_bytes: (kind == ImageKind::Criu).then(|| host_memory_bytes(image) as i64),
            // The operator gives the restored pod's containers checkpoint images for these.
            archive_containers: if kind == ImageKind::CheckpointArchive {
                image.manifest.meta.source.containers.clone()
            } else {
                Vec::new()
            },
            ..image_summary(image, image.manifest.meta.plugin_stats.as_ref())
        },
        files: Some(image.manifest.files.len() as i64),
        timings: Some(TaskTimings {
            steps: StepTimings {
                checkpoint_ms: duration.map(|d| d.as_millis() as i64),
                ..Default::default()
            },
            frozen_at,
        }),
        transfer: None,
    }
}

/// What every result says of the image, and of the GPUs in `stats` (the checkpoint's or the
/// restore's plugin stats).
fn image_summary(image: &Image, stats: Option<&PluginStats>) -> ImageSummary {
    ImageSummary {
        size_bytes: Some(image.manifest.total_bytes() as i64),
        sha256: Some(image.digest.clone()),
        gpu_vendor: Some(vendor_of(stats, image)),
        gpu_memory_bytes: stats.map(|s| s.total_bytes() as i64),
        gpus: gpus_of(stats),
        ..Default::default()
    }
}

/// The GPUs in the plugin's stats, with the device memory each one held.
fn gpus_of(stats: Option<&PluginStats>) -> Vec<GpuInfo> {
    stats
        .map(|s| {
            s.bytes_per_device()
                .into_iter()
                .map(|(id, bytes)| GpuInfo {
                    id,
                    model: None,
                    memory_bytes: (bytes > 0).then_some(bytes as i64),
                })
                .collect()
        })
        .unwrap_or_default()
}
