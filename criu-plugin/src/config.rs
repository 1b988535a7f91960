//! Plugin-wide settings, read once from the environment in `init` and logged. Each backend
//! reads its own settings in its folder (`backends/<name>/config.rs`); the names are in
//! [`ferry_api::plugin_env`]. Also the value parsers those settings share.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `FERRY_PARALLEL_RESTORE` | `1` | `0` copies device memory inside RESTORE_EXT_FILE (upstream's sequential order) |
//! | `FERRY_CHUNK_SIZE` | `8M` | bytes per read/copy chunk of the pipelined copy (suffix K, M, G) |
//! | `FERRY_WORKERS` | `0` (= one per device) | most device copies running at once (0: no bound) |
//! | `FERRY_IO_TIMEOUT` | `60` | seconds a worker waits on the restore socket before failing the restore |
//! | `FERRY_TEST_FAULT` | unset | tests only: inject a fault (`copy-error`, `child-exit-mid-send`, `corrupt-header`, `panic`) |
//! | `FERRY_IMAGES_DIR` | unset | plugin-host harness only: image dir when CRIU's `criu_get_image_dir` is absent |

use std::path::PathBuf;
use std::time::Duration;

use ferry_api::plugin_env::{
    FERRY_CHUNK_SIZE, FERRY_IMAGES_DIR, FERRY_IO_TIMEOUT, FERRY_PARALLEL_RESTORE, FERRY_TEST_FAULT,
    FERRY_WORKERS,
};

use crate::error::{PluginError, Result};

/// A fault to inject, for tests of the failure paths. Never set in production.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The main process's copy fails after the first chunk.
    CopyError,
    /// The restore child exits after sending half a command.
    ChildExitMidSend,
    /// The restore child sends a command header with a wrong magic.
    CorruptHeader,
    /// The sim backend panics in DUMP_EXT_FILE (the ABI guard must turn it into -EIO).
    Panic,
}

/// The plugin-wide settings.
#[derive(Clone, Debug)]
pub struct Config {
    pub parallel_restore: bool,
    pub chunk_size: usize,
    pub workers: usize,
    pub io_timeout: Duration,
    pub fault: Option<Fault>,
    pub images_dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            parallel_restore: true,
            chunk_size: 8 << 20,
            workers: 0,
            io_timeout: Duration::from_secs(60),
            fault: None,
            images_dir: None,
        }
    }
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads settings through `get` (the environment, or a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let mut c = Config::default();
        if let Some(v) = get(FERRY_PARALLEL_RESTORE) {
            c.parallel_restore = parse_bool(FERRY_PARALLEL_RESTORE, &v)?;
        }
        if let Some(v) = get(FERRY_CHUNK_SIZE) {
            let n = parse_size(FERRY_CHUNK_SIZE, &v)?;
            if !(4096..=(1 << 30)).contains(&n) {
                return Err(PluginError::invalid(format!(
                    "{FERRY_CHUNK_SIZE}={v} is out of range: use 4K..1G"
                )));
            }
            c.chunk_size = n as usize;
        }
        if let Some(v) = get(FERRY_WORKERS) {
            c.workers = v.trim().parse().map_err(|_| {
                PluginError::invalid(format!("{FERRY_WORKERS}={v} is not a number"))
            })?;
        }
        if let Some(v) = get(FERRY_IO_TIMEOUT) {
            let s: u64 = v.trim().parse().map_err(|_| {
                PluginError::invalid(format!("{FERRY_IO_TIMEOUT}={v} is not a number of seconds"))
            })?;
            c.io_timeout = Duration::from_secs(s.max(1));
        }
        if let Some(v) = get(FERRY_TEST_FAULT) {
            c.fault = match v.trim() {
                "" => None,
                "copy-error" => Some(Fault::CopyError),
                "child-exit-mid-send" => Some(Fault::ChildExitMidSend),
                "corrupt-header" => Some(Fault::CorruptHeader),
                "panic" => Some(Fault::Panic),
                other => {
                    return Err(PluginError::invalid(format!(
                        "{FERRY_TEST_FAULT}={other} is unknown: use copy-error, child-exit-mid-send, corrupt-header or panic"
                    )));
                }
            };
        }
        if let Some(v) = get(FERRY_IMAGES_DIR) {
            c.images_dir = Some(PathBuf::from(v));
        }
        Ok(c)
    }
}

/// `1/0`, `y/n`, `yes/no`, `true/false`, `on/off`, any case.
pub fn parse_bool(name: &str, v: &str) -> Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "1" | "y" | "yes" | "true" | "on" => Ok(true),
        "0" | "n" | "no" | "false" | "off" => Ok(false),
        _ => Err(PluginError::invalid(format!(
            "{name}={v} is not a boolean: use 1/0, yes/no, true/false or on/off"
        ))),
    }
}

/// A byte count with an optional `K`/`M`/`G` suffix (powers of 1024), as `KFD_MAX_BUFFER_SIZE`.
pub fn parse_size(name: &str, v: &str) -> Result<u64> {
    let t = v.trim();
    let (digits, shift) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 10),
        Some('m' | 'M') => (&t[..t.len() - 1], 20),
        Some('g' | 'G') => (&t[..t.len() - 1], 30),
        _ => (t, 0),
    };
    let n: u64 = digits.trim().parse().map_err(|_| {
        PluginError::invalid(format!(
            "{name}={v} is not a size: use a number with an optional K, M or G suffix"
        ))
    })?;
    n.checked_shl(shift)
        .filter(|r| r >> shift == n)
        .ok_or_else(|| PluginError::invalid(format!("{name}={v} overflows 64 bits")))
}

#[allow(clippy::unwrap_used, clippy::expect_used)]
#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn cfg(pairs: &[(&str, &str)]) -> Result<Config> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_are_parallel_with_8m_chunks() {
        let c = cfg(&[]).unwrap();
        assert!(c.parallel_restore);
        assert_eq!(c.chunk_size, 8 << 20);
        assert_eq!(c.fault, None);
    }

    #[test]
    fn env_values_are_parsed_with_suffixes() {
        let c = cfg(&[
            (FERRY_PARALLEL_RESTORE, "0"),
            (FERRY_CHUNK_SIZE, "512K"),
            (FERRY_TEST_FAULT, "copy-error"),
        ])
        .unwrap();
        assert!(!c.parallel_restore);
        assert_eq!(c.chunk_size, 512 << 10);
        assert_eq!(c.fault, Some(Fault::CopyError));
        // FERRY_SIM_BANDWIDTH's suffix: see the sim backend's settings tests.
    }

    #[test]
    fn bad_values_name_the_variable() {
        let e = cfg(&[(FERRY_PARALLEL_RESTORE, "maybe")]).unwrap_err();
        assert!(
            e.to_string()
                .contains(&format!("{FERRY_PARALLEL_RESTORE}=maybe")),
            "{e}"
        );
        let e = cfg(&[(FERRY_CHUNK_SIZE, "1")]).unwrap_err();
        assert!(e.to_string().contains("out of range"), "{e}");
        assert!(parse_size("X", "99999999999G").is_err());
    }
}
