//! The stats file that the CRIU plugin writes into the image directory after a dump or a
//! restore, and that the node agent reads into metrics and NodeTask status.
//!
//! Versioned JSON: readers accept their own `version` and refuse newer ones with a clear
//! error, so an old agent never misreads a new plugin's numbers.

use serde::{Deserialize, Serialize};

/// Format version written by this crate.
pub const STATS_VERSION: u32 = 1;

/// File name of the stats written after a restore (in the image directory).
pub const RESTORE_STATS_FILE: &str = "ferry-restore-stats.json";
/// File name of the stats written after a dump (in the image directory).
pub const DUMP_STATS_FILE: &str = "ferry-dump-stats.json";

/// Which CRIU operation the stats describe.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    Dump,
    Restore,
}

/// GPU vendor of a checkpoint (and of the devices the plugin handled). `sim` is ferry's
/// simulated GPU (ARCHITECTURE.md §5), which the demo and the CPU-only tests checkpoint like a real one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "crd", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum GpuVendor {
    Amd,
    Nvidia,
    Sim,
    #[default]
    None,
}

impl GpuVendor {
    /// The label value used in metrics (`vendor="amd"`).
    pub fn as_str(self) -> &'static str {
        match self {
            GpuVendor::Amd => "amd",
            GpuVendor::Nvidia => "nvidia",
            GpuVendor::Sim => "sim",
            GpuVendor::None => "none",
        }
    }
}

/// How device memory was refilled on restore.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreMode {
    /// The main CRIU process copied device memory while the restored task restored host memory.
    #[default]
    Parallel,
    /// Device memory was copied inside RESTORE_EXT_FILE, before host memory (upstream order).
    Sequential,
}

impl RestoreMode {
    /// The label value used in metrics (`mode="parallel"`).
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreMode::Parallel => "parallel",
            RestoreMode::Sequential => "sequential",
        }
    }
}

/// One device of one process: what was moved and how long it took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStats {
    /// Backend-specific device id (sim device index, AMD gpu_id in hex, NVIDIA UUID).
    pub device: String,
    /// Pid of the process that owns the device handle.
    pub pid: u32,
    /// Buffers (BOs) copied.
    pub buffers: u32,
    /// Bytes of device memory moved.
    pub bytes: u64,
    /// Seconds spent copying this device's memory (image read included, pipelined).
    pub copy_seconds: f64,
}

impl DeviceStats {
    /// Copy throughput in bytes per second, 0 when nothing was timed.
    pub fn bytes_per_second(&self) -> f64 {
        if self.copy_seconds > 0.0 {
            self.bytes as f64 / self.copy_seconds
        } else {
            0.0
        }
    }
}

/// Per-process driver timings (NVIDIA: the CUDA driver's checkpoint API steps).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessStats {
    pub pid: u32,
    #[serde(default)]
    pub lock_seconds: f64,
    #[serde(default)]
    pub checkpoint_seconds: f64,
    #[serde(default)]
    pub restore_seconds: f64,
    #[serde(default)]
    pub unlock_seconds: f64,
    /// Device memory of the process, where the driver reports it.
    #[serde(default)]
    pub bytes: u64,
}

/// The whole stats file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginStats {
    pub version: u32,
    pub operation: Operation,
    pub vendor: GpuVendor,
    /// Restore only; dumps leave it at the default.
    #[serde(default)]
    pub mode: RestoreMode,
    #[serde(default)]
    pub devices: Vec<DeviceStats>,
    #[serde(default)]
    pub processes: Vec<ProcessStats>,
    /// Seconds from POST_FORKING (root task forked) to the first RESUME_DEVICES_LATE: the
    /// window in which CRIU restored host memory and the device copy could overlap it.
    #[serde(default)]
    pub host_restore_seconds: f64,
    /// Seconds the main CRIU process waited in RESUME_DEVICES_LATE for device copies.
    #[serde(default)]
    pub resume_wait_seconds: f64,
    /// Wall seconds of the whole device phase (first copy start to last copy end).
    #[serde(default)]
    pub gpu_phase_seconds: f64,
}

/// Why a stats file could not be read.
#[derive(Debug)]
pub enum StatsError {
    Json(serde_json::Error),
    UnsupportedVersion { found: u32, supported: u32 },
}

impl std::fmt::Display for StatsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StatsError::Json(e) => write!(f, "plugin stats are not valid JSON: {e}"),
            StatsError::UnsupportedVersion { found, supported } => write!(
                f,
                "plugin stats version {found} is newer than this reader supports ({supported}); upgrade the agent to match the plugin"
            ),
        }
    }
}

impl std::error::Error for StatsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StatsError::Json(e) => Some(e),
            StatsError::UnsupportedVersion { .. } => None,
        }
    }
}

impl PluginStats {
    /// Empty stats for one operation.
    pub fn new(operation: Operation, vendor: GpuVendor) -> Self {
        PluginStats {
            version: STATS_VERSION,
            operation,
            vendor,
            mode: RestoreMode::default(),
            devices: Vec::new(),
            processes: Vec::new(),
            host_restore_seconds: 0.0,
            resume_wait_seconds: 0.0,
            gpu_phase_seconds: 0.0,
        }
    }

    /// Device bytes per device, in the order the devices first appear (a device's buffers
    /// may be spread over several processes).
    pub fn bytes_per_device(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = Vec::new();
        for d in &self.devices {
            match out.iter_mut().find(|(id, _)| *id == d.device) {
                Some((_, bytes)) => *bytes += d.bytes,
                None => out.push((d.device.clone(), d.bytes)),
            }
        }
        out
    }

    /// Total device bytes moved.
    pub fn total_bytes(&self) -> u64 {
        self.devices.iter().map(|d| d.bytes).sum::<u64>()
            + self.processes.iter().map(|p| p.bytes).sum::<u64>()
    }

    /// Parses a stats file, refusing versions newer than [`STATS_VERSION`].
    pub fn from_json(text: &str) -> Result<Self, StatsError> {
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let probe: Probe = serde_json::from_str(text).map_err(StatsError::Json)?;
        if probe.version > STATS_VERSION {
            return Err(StatsError::UnsupportedVersion {
                found: probe.version,
                supported: STATS_VERSION,
            });
        }
        serde_json::from_str(text).map_err(StatsError::Json)
    }

    /// Serialises to pretty JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain numbers, strings and vectors cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_bytes_add_up_per_device_in_first_seen_order() {
        let mut s = PluginStats::new(Operation::Dump, GpuVendor::Amd);
        for (device, pid, bytes) in [("0x1a2b", 10, 100), ("0x3c4d", 10, 5), ("0x1a2b", 11, 20)] {
            s.devices.push(DeviceStats {
                device: device.into(),
                pid,
                buffers: 1,
                bytes,
                copy_seconds: 0.0,
            });
        }
        assert_eq!(
            s.bytes_per_device(),
            [("0x1a2b".to_string(), 120), ("0x3c4d".to_string(), 5)]
        );
        assert_eq!(s.total_bytes(), 125);
    }

    #[test]
    fn stats_round_trip_through_json() {
        let mut s = PluginStats::new(Operation::Restore, GpuVendor::Sim);
        s.mode = RestoreMode::Sequential;
        s.devices.push(DeviceStats {
            device: "0".into(),
            pid: 42,
            buffers: 3,
            bytes: 1 << 20,
            copy_seconds: 0.5,
        });
        s.host_restore_seconds = 1.25;
        let back = PluginStats::from_json(&s.to_json()).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.total_bytes(), 1 << 20);
        assert_eq!(back.devices[0].bytes_per_second(), 2.0 * (1 << 20) as f64);
        assert!(s.to_json().contains("\"mode\": \"sequential\""));
    }

    #[test]
    fn stats_from_a_newer_plugin_are_refused_with_a_reason() {
        let text = r#"{"version": 99, "operation": "restore", "vendor": "amd"}"#;
        let err = PluginStats::from_json(text).unwrap_err();
        assert!(err.to_string().contains("version 99"), "{err}");
    }

    #[test]
    fn stats_with_only_required_fields_get_defaults() {
        let text = r#"{"version": 1, "operation": "dump", "vendor": "nvidia"}"#;
        let s = PluginStats::from_json(text).unwrap();
        assert_eq!(s.mode, RestoreMode::Parallel);
        assert!(s.devices.is_empty());
        assert_eq!(s.total_bytes(), 0);
    }
}
