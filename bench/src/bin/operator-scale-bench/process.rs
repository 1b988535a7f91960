//! The operator as a child process: start, stop, peak RSS, its HTTP endpoints.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::process::Child;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, Result};

/// Kills the operator when dropped (error paths included).
pub(crate) struct OperatorProcess(pub(crate) Child);

impl OperatorProcess {
    pub(crate) fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Default)]
pub(crate) struct RssSampler {
    current: AtomicU64,
    peak: AtomicU64,
}

impl RssSampler {
    pub(crate) fn sample(&self, pid: u32) {
        if let Some(kib) = read_status_kib(pid, "VmRSS:") {
            self.current.store(kib, Ordering::Relaxed);
            self.peak.fetch_max(kib, Ordering::Relaxed);
        }
    }
    pub(crate) fn current(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

/// A `kB` field of `/proc/<pid>/status`.
pub(crate) fn read_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].split_whitespace().next()?.parse().ok()
}

pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A plain HTTP/1.0 GET on localhost: (status code, body).
pub(crate) fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((code, body))
}
