//! ferry's CRIU plugin as the runtime sees it: the environment that configures it, the stats
//! file it leaves next to CRIU's images, and those stats merged over a pod's containers.

use std::path::Path;

use ferry_api::plugin_env::FERRY_PARALLEL_RESTORE;
use ferry_api::stats::PluginStats;

use crate::runtime::error::{Result, RuntimeError, io_err};

/// The environment for ferry's plugin from a task's options.
pub fn plugin_env(parallel_restore: bool) -> Vec<(String, String)> {
    vec![(
        FERRY_PARALLEL_RESTORE.to_string(),
        if parallel_restore { "1" } else { "0" }.to_string(),
    )]
}

/// Reads the plugin's stats file `name` in `dir` (`ferry-dump-stats.json` /
/// `ferry-restore-stats.json`, written into CRIU's image dir). `None` when the plugin wrote
/// none (no GPU in the tree: the plugin writes stats only when it handled a device).
pub fn read_plugin_stats(dir: &Path, name: &str) -> Result<Option<PluginStats>> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => PluginStats::from_json(&text)
            .map(Some)
            .map_err(|source| RuntimeError::Stats { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(format!("read {}", path.display()))(e)),
    }
}

/// Several containers' stats as one: devices and processes together, the phases the longest.
pub fn merge_stats(all: impl IntoIterator<Item = PluginStats>) -> Option<PluginStats> {
    all.into_iter().reduce(|mut a, b| {
        a.devices.extend(b.devices);
        a.processes.extend(b.processes);
        a.host_restore_seconds = a.host_restore_seconds.max(b.host_restore_seconds);
        a.resume_wait_seconds = a.resume_wait_seconds.max(b.resume_wait_seconds);
        a.gpu_phase_seconds = a.gpu_phase_seconds.max(b.gpu_phase_seconds);
        a
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_env_follows_the_parallel_option() {
        assert_eq!(plugin_env(true)[0].1, "1");
        assert_eq!(plugin_env(false)[0].1, "0");
    }
}
