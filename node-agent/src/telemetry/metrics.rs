//! The agent's Prometheus metrics (names from `ferry_api::names::metric`; the list is in
//! `ARCHITECTURE.md`, "Metrics"), above all the VRAM restore timings the plugin reports.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use ferry_api::names::metric;
use ferry_api::stats::PluginStats;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Durations from 10 ms to 10 min.
const DURATION_BUCKETS: [f64; 14] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 180.0, 600.0,
];
/// Image sizes from 1 MiB to 1 TiB.
const SIZE_BUCKETS: [f64; 11] = [
    1048576.0,
    16777216.0,
    134217728.0,
    536870912.0,
    1073741824.0,
    4294967296.0,
    17179869184.0,
    68719476736.0,
    137438953472.0,
    549755813888.0,
    1099511627776.0,
];
/// Throughputs from 100 MB/s to 100 GB/s.
const THROUGHPUT_BUCKETS: [f64; 9] = [1e8, 2.5e8, 5e8, 1e9, 2e9, 4e9, 1e10, 2.5e10, 1e11];

/// Every metric the agent exports, in one registry.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    checkpoint_duration: HistogramVec,
    checkpoint_size: HistogramVec,
    restore_duration: HistogramVec,
    host_restore_duration: HistogramVec,
    gpu_restore_duration: HistogramVec,
    gpu_restore_bytes: IntCounterVec,
    gpu_restore_throughput: HistogramVec,
    transfer_bytes: IntCounterVec,
    transfer_duration: HistogramVec,
    tasks: IntCounterVec,
    transfer_served_bytes: IntCounter,
    transfer_auth_failures: IntCounter,
    store_bytes: IntGaugeVec,
    gc_removed: IntCounterVec,
    /// The transfer server's counters, read into the Prometheus ones at each scrape.
    transfer: Arc<Mutex<Option<TransferMirror>>>,
}

/// The transfer server's own counters and what was already added from them.
#[derive(Debug)]
struct TransferMirror {
    stats: Arc<crate::transfer::TransferStats>,
    served: u64,
    refused: u64,
}

impl Metrics {
    /// Registers every metric in a fresh registry. Fails only on an invalid metric definition
    /// (a programming error the unit tests catch).
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, buckets: &[f64], labels: &[&str]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                labels,
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let vendor = &["vendor"][..];
        let vendor_mode = &["vendor", "mode"][..];
        let transfer_bytes = counter(
            metric::TRANSFER_BYTES_TOTAL,
            "Image bytes pulled from other agents (direction=in) or served (direction=out).",
            &["direction"],
        )?;
        let transfer_auth_failures = IntCounter::new(
            metric::TRANSFER_AUTH_FAILURES_TOTAL,
            "Pulls refused for a missing, wrong or expired token.",
        )?;
        registry.register(Box::new(transfer_auth_failures.clone()))?;
        let store_bytes = IntGaugeVec::new(
            Opts::new(
                metric::STORE_BYTES,
                "Bytes of images (published and partial) in an image store, as of the last GC round.",
            ),
            &["store"],
        )?;
        registry.register(Box::new(store_bytes.clone()))?;
        Ok(Metrics {
            checkpoint_duration: histogram(
                metric::CHECKPOINT_DURATION_SECONDS,
                "Seconds of a checkpoint (CRIU dump or runtime checkpoint) on this node.",
                &DURATION_BUCKETS,
                vendor,
            )?,
            checkpoint_size: histogram(
                metric::CHECKPOINT_SIZE_BYTES,
                "Bytes of a checkpoint image written on this node.",
                &SIZE_BUCKETS,
                vendor,
            )?,
            restore_duration: histogram(
                metric::RESTORE_DURATION_SECONDS,
                "Seconds of a restore on this node (CRIU restore, host and device memory).",
                &DURATION_BUCKETS,
                vendor_mode,
            )?,
            host_restore_duration: histogram(
                metric::HOST_RESTORE_DURATION_SECONDS,
                "Seconds the restore spent on host memory (CRIU's part).",
                &DURATION_BUCKETS,
                vendor_mode,
            )?,
            gpu_restore_duration: histogram(
                metric::GPU_RESTORE_DURATION_SECONDS,
                "Seconds the restore spent refilling device memory (the plugin's GPU phase).",
                &DURATION_BUCKETS,
                vendor_mode,
            )?,
            gpu_restore_bytes: counter(
                metric::GPU_RESTORE_BYTES_TOTAL,
                "Bytes of device memory restored.",
                vendor_mode,
            )?,
            gpu_restore_throughput: histogram(
                metric::GPU_RESTORE_THROUGHPUT_BYTES_PER_SECOND,
                "Device memory restore throughput of each restore, bytes per second.",
                &THROUGHPUT_BUCKETS,
                vendor_mode,
            )?,
            transfer_duration: histogram(
                metric::TRANSFER_DURATION_SECONDS,
                "Seconds of an image pull from another agent.",
                &DURATION_BUCKETS,
                &[],
            )?,
            tasks: counter(
                metric::TASKS_TOTAL,
                "NodeTasks this agent finished, by operation and result.",
                &["operation", "result"],
            )?,
            gc_removed: counter(
                metric::GC_REMOVED_IMAGES_TOTAL,
                "Images GC removed: store images (kind=store) and checkpoint images imported into containerd, aliases included (kind=containerd).",
                &["kind"],
            )?,
            store_bytes,
            transfer: Arc::new(Mutex::new(None)),
            transfer_served_bytes: transfer_bytes.with_label_values(&["out"]),
            transfer_bytes,
            transfer_auth_failures,
            registry,
        })
    }

    /// A finished checkpoint: its duration and image size.
    pub fn checkpoint(&self, vendor: &str, seconds: f64, bytes: u64) {
        self.checkpoint_duration
            .with_label_values(&[vendor])
            .observe(seconds);
        self.checkpoint_size
            .with_label_values(&[vendor])
            .observe(bytes as f64);
    }

    /// A finished restore: its wall time, and the plugin's host/GPU split when it ran.
    pub fn restore(&self, seconds: f64, stats: Option<&PluginStats>) {
        let (vendor, mode) =
            stats.map_or(("none", "none"), |s| (s.vendor.as_str(), s.mode.as_str()));
        self.restore_duration
            .with_label_values(&[vendor, mode])
            .observe(seconds);
        let Some(stats) = stats else { return };
        self.host_restore_duration
            .with_label_values(&[vendor, mode])
            .observe(stats.host_restore_seconds);
        self.gpu_restore_duration
            .with_label_values(&[vendor, mode])
            .observe(stats.gpu_phase_seconds);
        let bytes = stats.total_bytes();
        self.gpu_restore_bytes
            .with_label_values(&[vendor, mode])
            .inc_by(bytes);
        if stats.gpu_phase_seconds > 0.0 && bytes > 0 {
            self.gpu_restore_throughput
                .with_label_values(&[vendor, mode])
                .observe(bytes as f64 / stats.gpu_phase_seconds);
        }
    }

    /// A finished image pull.
    pub fn pulled(&self, bytes: u64, seconds: f64) {
        self.transfer_bytes.with_label_values(&["in"]).inc_by(bytes);
        self.transfer_duration
            .with_label_values::<&str>(&[])
            .observe(seconds);
    }

    /// Bytes this agent's transfer server sent.
    pub fn served(&self, bytes: u64) {
        self.transfer_served_bytes.inc_by(bytes);
    }

    /// `count` pulls refused for their token.
    pub fn auth_failures(&self, count: u64) {
        self.transfer_auth_failures.inc_by(count);
    }

    /// A GC round of the store at `root`: what it removed and what is left.
    pub fn store_gc(&self, root: &str, removed: usize, remaining_bytes: u64) {
        self.gc_removed
            .with_label_values(&["store"])
            .inc_by(removed as u64);
        self.store_bytes
            .with_label_values(&[root])
            .set(i64::try_from(remaining_bytes).unwrap_or(i64::MAX));
    }

    /// Checkpoint images (and aliases) removed from containerd.
    pub fn containerd_images_removed(&self, count: usize) {
        self.gc_removed
            .with_label_values(&["containerd"])
            .inc_by(count as u64);
    }

    /// A finished NodeTask.
    pub fn task(&self, operation: &str, result: &str) {
        self.tasks.with_label_values(&[operation, result]).inc();
    }

    /// Exports the transfer server's served bytes and refused pulls (read at each scrape).
    pub fn attach_transfer(&self, stats: Arc<crate::transfer::TransferStats>) {
        let mut t = self.transfer.lock().unwrap_or_else(|e| e.into_inner());
        *t = Some(TransferMirror {
            stats,
            served: 0,
            refused: 0,
        });
    }

    fn sync_transfer(&self) {
        let mut t = self.transfer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(m) = t.as_mut() else { return };
        let served = m.stats.bytes_served.load(Ordering::Relaxed);
        let refused = m.stats.auth_failures.load(Ordering::Relaxed);
        self.served(served.saturating_sub(m.served));
        self.auth_failures(refused.saturating_sub(m.refused));
        (m.served, m.refused) = (served, refused);
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        self.sync_transfer();
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

impl ferry_service::Exposition for Metrics {
    fn encode(&self) -> String {
        Metrics::encode(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_api::GpuVendor;
    use ferry_api::stats::{DeviceStats, Operation};

    #[test]
    fn every_design_metric_is_exported_with_its_labels() {
        let m = Metrics::new().unwrap();
        let mut stats = PluginStats::new(Operation::Restore, GpuVendor::Sim);
        stats.gpu_phase_seconds = 0.5;
        stats.host_restore_seconds = 0.7;
        stats.devices.push(DeviceStats {
            device: "sim0".into(),
            pid: 1,
            buffers: 1,
            bytes: 1 << 30,
            copy_seconds: 0.5,
        });
        m.checkpoint("sim", 1.5, 3 << 30);
        m.restore(0.9, Some(&stats));
        m.pulled(3 << 30, 2.0);
        m.served(10);
        m.task("Restore", "Succeeded");
        m.store_gc("/var/lib/ferry/checkpoints", 2, 5 << 30);
        let transfer = Arc::new(crate::transfer::TransferStats::default());
        m.attach_transfer(transfer.clone());
        transfer.bytes_served.store(32, Ordering::Relaxed);
        transfer.auth_failures.store(3, Ordering::Relaxed);
        m.containerd_images_removed(2);
        let text = m.encode();
        for name in [
            metric::CHECKPOINT_DURATION_SECONDS,
            metric::RESTORE_DURATION_SECONDS,
            metric::GPU_RESTORE_DURATION_SECONDS,
            metric::GPU_RESTORE_BYTES_TOTAL,
            metric::GPU_RESTORE_THROUGHPUT_BYTES_PER_SECOND,
            metric::HOST_RESTORE_DURATION_SECONDS,
            metric::TRANSFER_BYTES_TOTAL,
            metric::TRANSFER_DURATION_SECONDS,
            metric::CHECKPOINT_SIZE_BYTES,
            metric::TASKS_TOTAL,
            metric::STORE_BYTES,
            metric::GC_REMOVED_IMAGES_TOTAL,
        ] {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing:\n{text}"
            );
        }
        assert!(
            text.contains(
                r#"ferry_gpu_restore_bytes_total{mode="parallel",vendor="sim"} 1073741824"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_store_bytes{store="/var/lib/ferry/checkpoints"} 5368709120"#),
            "{text}"
        );
        // Read at the scrape: 10 served before, 32 from the server; and again only the news.
        assert!(
            text.contains(r#"ferry_transfer_bytes_total{direction="out"} 42"#),
            "{text}"
        );
        assert!(
            text.contains("ferry_transfer_auth_failures_total 3"),
            "{text}"
        );
        transfer.bytes_served.store(40, Ordering::Relaxed);
        assert!(
            m.encode()
                .contains(r#"ferry_transfer_bytes_total{direction="out"} 50"#)
        );
        for kind in ["store", "containerd"] {
            assert!(
                text.contains(&format!(
                    "ferry_gc_removed_images_total{{kind=\"{kind}\"}} 2"
                )),
                "{text}"
            );
        }
        assert!(
            text.contains(
                r#"ferry_gpu_restore_duration_seconds_sum{mode="parallel",vendor="sim"} 0.5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"ferry_tasks_total{operation="Restore",result="Succeeded"} 1"#),
            "{text}"
        );
    }
}
