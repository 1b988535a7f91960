//! Settings of the sim backend, read once when the backend is built in `init`.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `FERRY_SIM_ROOT` | `/var/lib/ferry-sim` | where simulated device handles live |
//! | `FERRY_SIM_MEM` | `/dev/shm/ferry-sim` | where simulated device memory lives |
//! | `FERRY_SIM_BANDWIDTH` | `4G` | copy-engine bandwidth in bytes/s (models an SDMA engine) |

use std::path::PathBuf;

use ferry_api::plugin_env::{FERRY_SIM_BANDWIDTH, FERRY_SIM_MEM, FERRY_SIM_ROOT};

use crate::config::parse_size;
use crate::error::Result;

/// All settings of the backend.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub root: PathBuf,
    pub mem: PathBuf,
    pub bandwidth: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            root: PathBuf::from("/var/lib/ferry-sim"),
            mem: PathBuf::from("/dev/shm/ferry-sim"),
            bandwidth: 4 << 30,
        }
    }
}

impl SimConfig {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = SimConfig::default();
        if let Some(v) = get(FERRY_SIM_ROOT) {
            c.root = PathBuf::from(v);
        }
        if let Some(v) = get(FERRY_SIM_MEM) {
            c.mem = PathBuf::from(v);
        }
        if let Some(v) = get(FERRY_SIM_BANDWIDTH) {
            c.bandwidth = parse_size(FERRY_SIM_BANDWIDTH, &v)?.max(1);
        }
        Ok(c)
    }
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sim_settings_are_parsed_with_suffixes() {
        let c = SimConfig::from_lookup(|k| match k {
            FERRY_SIM_BANDWIDTH => Some("2G".into()),
            FERRY_SIM_ROOT => Some("/tmp/sim-root".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.bandwidth, 2 << 30);
        assert_eq!(c.root, PathBuf::from("/tmp/sim-root"));
        assert_eq!(c.mem, PathBuf::from("/dev/shm/ferry-sim"));
        let e = SimConfig::from_lookup(|k| (k == FERRY_SIM_BANDWIDTH).then(|| "fast".into()))
            .unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{FERRY_SIM_BANDWIDTH}=fast")),
            "{e}"
        );
    }
}
