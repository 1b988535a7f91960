//! `ferry-nvidia.json`, the NVIDIA backend's image file: which processes of the tree used CUDA
//! and which GPUs the dumping node had. Versioned JSON, written once per dump.

use serde::{Deserialize, Serialize};

use super::driver::ProcessState;
use super::topology::{Uuid, format_uuid, parse_uuid};
use crate::error::{PluginError, Result};

/// File name in CRIU's image directory.
pub const IMAGE: &str = "ferry-nvidia.json";
/// Format version written by this plugin.
pub const IMAGE_VERSION: u32 = 1;

/// One CUDA process at dump time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageProcess {
    pub pid: i32,
    /// The state before the dump touched it.
    pub initial_state: ProcessState,
}

/// The whole file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NvidiaImage {
    pub version: u32,
    pub driver_version: i32,
    /// `GPU-…` UUIDs the dumping CRIU saw; empty when the driver could not tell.
    pub gpus: Vec<String>,
    pub processes: Vec<ImageProcess>,
}

impl NvidiaImage {
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self)
            .map_err(|e| PluginError::invalid(format!("cannot encode {IMAGE}: {e}")))
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let img: NvidiaImage = serde_json::from_str(text)
            .map_err(|e| PluginError::invalid(format!("{IMAGE} is not valid: {e}")))?;
        if img.version > IMAGE_VERSION {
            return Err(PluginError::invalid(format!(
                "{IMAGE} has version {}, newer than this plugin reads ({IMAGE_VERSION}); restore with the plugin that dumped it",
                img.version
            )));
        }
        Ok(img)
    }

    pub fn set_gpus(&mut self, gpus: &[Uuid]) {
        self.gpus = gpus.iter().map(format_uuid).collect();
    }

    pub fn gpu_uuids(&self) -> Result<Vec<Uuid>> {
        self.gpus
            .iter()
            .map(|s| {
                parse_uuid(s)
                    .ok_or_else(|| PluginError::invalid(format!("{IMAGE}: bad GPU UUID {s:?}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_round_trips_and_refuses_newer_versions() {
        let mut img = NvidiaImage {
            version: IMAGE_VERSION,
            driver_version: 12080,
            gpus: vec![],
            processes: vec![ImageProcess {
                pid: 7,
                initial_state: ProcessState::Running,
            }],
        };
        img.set_gpus(&[[0xab; 16]]);
        let back = NvidiaImage::from_json(&img.to_json().unwrap()).unwrap();
        assert_eq!(back, img);
        assert_eq!(back.gpu_uuids().unwrap(), vec![[0xab; 16]]);
        assert!(
            img.to_json()
                .unwrap()
                .contains("\"initialState\": \"running\"")
        );
        let newer = r#"{"version":9,"driverVersion":1,"gpus":[],"processes":[]}"#;
        assert!(
            NvidiaImage::from_json(newer)
                .unwrap_err()
                .to_string()
                .contains("version 9")
        );
    }
}
