//! The `KFD_*_CHECK` switches of upstream's topology matching: the amdgpu backend's settings
//! for which GPU properties a restore must match.

use ferry_api::plugin_env::{
    KFD_CACHES_COUNT_CHECK, KFD_CAPABILITY_CHECK, KFD_FW_VER_CHECK, KFD_NUM_GWS_CHECK,
    KFD_NUMA_CHECK, KFD_SDMA_FW_VER_CHECK, KFD_VRAM_SIZE_CHECK,
};

use crate::config::parse_bool;

/// The `KFD_*_CHECK` switches (all on by default), read like upstream's `getenv_bool`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Checks {
    pub fw_version: bool,
    pub sdma_fw_version: bool,
    pub caches_count: bool,
    pub num_gws: bool,
    pub vram_size: bool,
    pub numa: bool,
    pub capability: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            fw_version: true,
            sdma_fw_version: true,
            caches_count: true,
            num_gws: true,
            vram_size: true,
            numa: true,
            capability: true,
        }
    }
}

/// The environment variable of each switch.
pub const CHECK_VARS: [&str; 7] = [
    KFD_FW_VER_CHECK,
    KFD_SDMA_FW_VER_CHECK,
    KFD_CACHES_COUNT_CHECK,
    KFD_NUM_GWS_CHECK,
    KFD_VRAM_SIZE_CHECK,
    KFD_NUMA_CHECK,
    KFD_CAPABILITY_CHECK,
];

impl Checks {
    /// Reads the switches through `get`. Accepted: `0`/`1`, `no`/`yes`, `n`/`y`,
    /// `false`/`true`, `off`/`on` (any case; upstream takes `0/1/NO/YES`); anything else is
    /// logged and ignored, as upstream does.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Checks {
        let mut c = Checks::default();
        for var in CHECK_VARS {
            let Some(v) = get(var) else { continue };
            let on = match parse_bool(var, &v) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("ignoring {e}");
                    continue;
                }
            };
            match var {
                KFD_FW_VER_CHECK => c.fw_version = on,
                KFD_SDMA_FW_VER_CHECK => c.sdma_fw_version = on,
                KFD_CACHES_COUNT_CHECK => c.caches_count = on,
                KFD_NUM_GWS_CHECK => c.num_gws = on,
                KFD_VRAM_SIZE_CHECK => c.vram_size = on,
                KFD_NUMA_CHECK => c.numa = on,
                _ => c.capability = on,
            }
        }
        c
    }
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_switches_accept_upstream_spellings_and_ignore_garbage() {
        let c = Checks::from_lookup(|k| match k {
            KFD_FW_VER_CHECK => Some("NO".into()),
            KFD_NUMA_CHECK => Some("0".into()),
            KFD_VRAM_SIZE_CHECK => Some("maybe".into()),
            _ => None,
        });
        assert!(!c.fw_version);
        assert!(!c.numa);
        assert!(c.vram_size);
        assert!(c.capability);
    }
}
