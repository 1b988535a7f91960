//! `ferry-nvidia.json`, the NVIDIA backend's image file: which processes of the tree used CUDA
//! and which GPUs the dumping node had. Versioned JSON, written once per dump.
//!
//! Reading is bounded: at most [`MAX_IMAGE_BYTES`] are read (the size is checked before
//! anything is allocated), and the lists against [`MAX_PROCESSES`] and [`MAX_GPUS`].

use serde::{Deserialize, Serialize};

use super::driver::ProcessState;
use super::topology::{Uuid, format_uuid, parse_uuid};
use crate::error::{PluginError, Result};

/// File name in CRIU's image directory.
pub const IMAGE: &str = "ferry-nvidia.json";
/// Format version written by this plugin.
pub const IMAGE_VERSION: u32 = 1;
/// Largest image read (one process entry is about 60 bytes of pretty JSON).
pub const MAX_IMAGE_BYTES: u64 = 16 << 20;
/// Most CUDA processes an image may list.
pub const MAX_PROCESSES: usize = 65_536;
/// Most GPUs an image may list.
pub const MAX_GPUS: usize = 1024;

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

    /// Reads the image file, at most [`MAX_IMAGE_BYTES`] of it.
    pub fn read(file: std::fs::File) -> Result<Self> {
        let bytes = crate::contract::images::read_capped(file, IMAGE, MAX_IMAGE_BYTES)?;
        Self::from_bytes(&bytes)
    }

    /// Parses the image's bytes (UTF-8 JSON of at most [`MAX_IMAGE_BYTES`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() as u64 > MAX_IMAGE_BYTES {
            return Err(PluginError::invalid(format!(
                "{IMAGE} is {} bytes, more than the {MAX_IMAGE_BYTES} allowed",
                bytes.len()
            )));
        }
        let text = std::str::from_utf8(bytes)
            .map_err(|e| PluginError::invalid(format!("{IMAGE} is not UTF-8: {e}")))?;
        Self::from_json(text)
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
        if img.processes.len() > MAX_PROCESSES || img.gpus.len() > MAX_GPUS {
            return Err(PluginError::invalid(format!(
                "{IMAGE} lists {} processes and {} GPUs, more than the {MAX_PROCESSES} and {MAX_GPUS} allowed",
                img.processes.len(),
                img.gpus.len()
            )));
        }
        if let Some(p) = img.processes.iter().find(|p| p.pid <= 0) {
            return Err(PluginError::invalid(format!(
                "{IMAGE} lists process id {}, which is not a process",
                p.pid
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

    #[test]
    fn oversized_lists_bad_pids_and_non_utf8_are_refused() {
        let pid0 = r#"{"version":1,"driverVersion":1,"gpus":[],"processes":[{"pid":0,"initialState":"running"}]}"#;
        let e = NvidiaImage::from_json(pid0).unwrap_err().to_string();
        assert!(e.contains("process id 0"), "{e}");
        let gpus = vec!["GPU-x"; MAX_GPUS + 1];
        let many = format!(
            r#"{{"version":1,"driverVersion":1,"gpus":{},"processes":[]}}"#,
            serde_json::to_string(&gpus).unwrap()
        );
        let e = NvidiaImage::from_json(&many).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
        assert!(NvidiaImage::from_bytes(b"{\xff}").is_err());
        let big = vec![b' '; MAX_IMAGE_BYTES as usize + 1];
        let e = NvidiaImage::from_bytes(&big).unwrap_err().to_string();
        assert!(e.contains("more than"), "{e}");
    }
}
