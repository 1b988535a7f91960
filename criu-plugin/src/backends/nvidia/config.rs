//! Settings of the NVIDIA backend, read once in `probe` from `FERRY_CUDA_*` variables.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `FERRY_CUDA_LIB` | `libcuda.so.1` | the CUDA driver library (tests point it at a stand-in) |
//! | `FERRY_CUDA_LOCK_TIMEOUT_MS` | `10000` | how long `cuCheckpointProcessLock` may wait for running work |
//! | `FERRY_CUDA_CALL_TIMEOUT_MS` | `600000` | how long a batch of checkpoint/restore/unlock calls may take before the hook gives up on the processes still in the driver and fails (CRIU fails instead of hanging) |
//! | `FERRY_LEAVE_RUNNING` | unset | `1`: the dump is a leave-running one (`criu dump -R`), so every CUDA process is put back as it was after the dump; `0`: it is not. Unset: read CRIU's command line (see [`leave_running_from_cmdline`]) |
//!
//! Why an environment variable for leave-running: CRIU does not tell plugins its options, and
//! its `opts` struct is private to each CRIU build. At `fini` the tasks still exist in both cases
//! (CRIU kills or releases them only after the plugins' `fini`), so the plugin cannot observe the
//! difference either. The command line covers `criu dump -R`; callers that use CRIU's RPC
//! (`criu swrk`) or a config file must set `FERRY_LEAVE_RUNNING=1` themselves.

use std::path::PathBuf;

use ferry_api::plugin_env::{
    FERRY_CUDA_CALL_TIMEOUT_MS, FERRY_CUDA_LIB, FERRY_CUDA_LOCK_TIMEOUT_MS, FERRY_LEAVE_RUNNING,
};

use crate::config::parse_bool;
use crate::error::{PluginError, Result};

/// Where the leave-running decision came from (logged once).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaveRunningSource {
    Env,
    Cmdline,
}

/// All settings of the backend.
#[derive(Clone, Debug)]
pub struct NvidiaConfig {
    pub lib: PathBuf,
    pub lock_timeout_ms: u32,
    pub call_timeout_ms: u64,
    pub leave_running: bool,
    pub leave_running_source: LeaveRunningSource,
}

impl NvidiaConfig {
    /// Reads the process environment and CRIU's command line.
    pub fn from_env() -> Result<Self> {
        let cmdline = std::fs::read("/proc/self/cmdline").unwrap_or_default();
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        Self::from_lookup(|k| std::env::var(k).ok(), &args)
    }

    /// Reads settings through `get` and `args` (CRIU's argv).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>, args: &[String]) -> Result<Self> {
        let lib = get(FERRY_CUDA_LIB)
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("libcuda.so.1"));
        let lock_timeout_ms = match get(FERRY_CUDA_LOCK_TIMEOUT_MS) {
            None => 10_000,
            Some(v) => v.trim().parse().map_err(|_| {
                PluginError::invalid(format!(
                    "{FERRY_CUDA_LOCK_TIMEOUT_MS}={v} is not a number of milliseconds"
                ))
            })?,
        };
        let call_timeout_ms = match get(FERRY_CUDA_CALL_TIMEOUT_MS) {
            None => 600_000,
            Some(v) => match v.trim().parse() {
                Ok(ms) if ms > 0 => ms,
                _ => {
                    return Err(PluginError::invalid(format!(
                        "{FERRY_CUDA_CALL_TIMEOUT_MS}={v} is not a positive number of milliseconds"
                    )));
                }
            },
        };
        let (leave_running, leave_running_source) = match get(FERRY_LEAVE_RUNNING) {
            Some(v) if !v.trim().is_empty() => (
                parse_bool(FERRY_LEAVE_RUNNING, &v)?,
                LeaveRunningSource::Env,
            ),
            _ => (
                leave_running_from_cmdline(args),
                LeaveRunningSource::Cmdline,
            ),
        };
        Ok(NvidiaConfig {
            lib,
            lock_timeout_ms,
            call_timeout_ms,
            leave_running,
            leave_running_source,
        })
    }
}

/// True when CRIU's argv asks for `-R`/`--leave-running` (also inside a cluster of short
/// flags without arguments, such as `-vR`, and before a `--` end of options).
pub fn leave_running_from_cmdline(args: &[String]) -> bool {
    for a in args.iter().skip(1) {
        if a == "--" {
            break;
        }
        if a == "--leave-running" {
            return true;
        }
        // Short options that take no argument in CRIU; a cluster made of them may hold R.
        if let Some(cluster) = a.strip_prefix('-')
            && !cluster.starts_with('-')
            && !cluster.is_empty()
            && cluster
                .chars()
                .all(|c| "RvsdS".contains(c) || c.is_ascii_digit())
            && cluster.contains('R')
        {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn cfg(pairs: &[(&str, &str)], argv: &str) -> Result<NvidiaConfig> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        NvidiaConfig::from_lookup(|k| m.get(k).cloned(), &args(argv))
    }

    #[test]
    fn leave_running_is_read_from_criu_flags() {
        assert!(leave_running_from_cmdline(&args("criu dump -t 1 -D d -R")));
        assert!(leave_running_from_cmdline(&args(
            "criu dump --leave-running -t 1"
        )));
        assert!(leave_running_from_cmdline(&args("criu dump -vR -t 1")));
        assert!(!leave_running_from_cmdline(&args("criu dump -t 1 -D R")));
        assert!(!leave_running_from_cmdline(&args(
            "criu dump -t 1 -D d -v4"
        )));
        assert!(!leave_running_from_cmdline(&args("criu swrk 3")));
    }

    #[test]
    fn the_environment_overrides_the_command_line() {
        let c = cfg(&[(FERRY_LEAVE_RUNNING, "0")], "criu dump -R").unwrap();
        assert!(!c.leave_running);
        assert_eq!(c.leave_running_source, LeaveRunningSource::Env);
        let c = cfg(&[(FERRY_LEAVE_RUNNING, "1")], "criu swrk 3").unwrap();
        assert!(c.leave_running);
        let c = cfg(&[], "criu dump -R").unwrap();
        assert!(c.leave_running);
        assert_eq!(c.leave_running_source, LeaveRunningSource::Cmdline);
    }

    #[test]
    fn defaults_load_libcuda_with_a_ten_second_lock_timeout() {
        let c = cfg(&[], "criu dump").unwrap();
        assert_eq!(c.lib, PathBuf::from("libcuda.so.1"));
        assert_eq!(c.lock_timeout_ms, 10_000);
        assert_eq!(c.call_timeout_ms, 600_000);
        let e = cfg(&[(FERRY_CUDA_CALL_TIMEOUT_MS, "0")], "criu").unwrap_err();
        assert!(e.to_string().contains("positive"), "{e}");
        let e = cfg(&[(FERRY_CUDA_LOCK_TIMEOUT_MS, "soon")], "criu").unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{FERRY_CUDA_LOCK_TIMEOUT_MS}=soon")),
            "{e}"
        );
    }
}
