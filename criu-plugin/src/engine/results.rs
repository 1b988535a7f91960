//! What the copies of one restore leave behind, shared by the engine, its worker, the command
//! handlers and the copy threads: errors, the pids that sent commands, per-device stats, the
//! device phase's span, the vendor, and the handler threads still to join.

use std::collections::HashSet;
use std::sync::Mutex;
use std::thread::JoinHandle;
use std::time::Instant;

use ferry_api::stats::{DeviceStats, GpuVendor};

use super::copy::CopyOutcome;

#[derive(Default)]
pub struct Shared {
    pub handlers: Mutex<Vec<JoinHandle<()>>>,
    pub errors: Mutex<Vec<String>>,
    pub pids: Mutex<HashSet<u32>>,
    pub devices: Mutex<Vec<DeviceStats>>,
    /// First copy start and last copy end, for the device-phase wall time.
    pub span: Mutex<Option<(Instant, Instant)>>,
    /// Vendor of the backend whose commands arrived (restored tasks claim in their own copy
    /// of the state, so the main process learns it here).
    pub vendor: Mutex<Option<GpuVendor>>,
}

impl Shared {
    pub fn error(&self, e: String) {
        tracing::error!("device copy failed: {e}");
        if let Ok(mut v) = self.errors.lock() {
            v.push(e);
        }
    }

    pub fn record(&self, pid: u32, label: &str, out: &CopyOutcome) {
        if let Ok(mut d) = self.devices.lock() {
            d.push(DeviceStats {
                device: label.to_string(),
                pid,
                buffers: out.buffers,
                bytes: out.bytes,
                copy_seconds: out.elapsed.as_secs_f64(),
            });
        }
        if let (Some(start), Ok(mut span)) = (out.started, self.span.lock()) {
            let end = start + out.elapsed;
            *span = Some(match *span {
                None => (start, end),
                Some((a, b)) => (a.min(start), b.max(end)),
            });
        }
    }
}
