//! Running one copy plan: one thread per device, each opening its pages image and the
//! backend's copy engine and running the pipelined copy, at most the slot bound at once.

use ferry_api::stats::DeviceStats;

use super::copy::{CopyOutcome, copy_device};
use super::slots::Slots;
use crate::contract::{Backend, CopyPlan, Ctx};
use crate::error::{PluginError, Result};

/// Copies every device of a plan, one thread per device, at most `slots.limit` at once
/// across all plans.
pub fn run_plan_with(
    cx: &Ctx<'_>,
    backend: &dyn Backend,
    plan: &CopyPlan,
    chunk: usize,
    slots: &Slots,
    on_done: &(dyn Fn(&str, &CopyOutcome) + Sync),
) -> Result<Vec<DeviceStats>> {
    let results: Vec<Result<DeviceStats>> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .devices
            .iter()
            .enumerate()
            .map(|(d, dev)| {
                std::thread::Builder::new()
                    .name(format!("ferry-copy-{}", dev.label))
                    .spawn_scoped(s, move || -> Result<DeviceStats> {
                        let _slot = slots.acquire();
                        let buffers: Vec<_> = plan
                            .buffers
                            .iter()
                            .filter(|b| b.device as usize == d)
                            .collect();
                        let pages = cx.host.open_image(&dev.pages_image)?;
                        let mut engine = backend.copy_engine(cx, dev.key)?;
                        let out =
                            copy_device(&pages, &dev.pages_image, &buffers, engine.as_mut(), chunk)
                                .map_err(|e| {
                                    PluginError::Copy(format!("device {}: {e}", dev.label))
                                })?;
                        on_done(&dev.label, &out);
                        tracing::info!(
                            device = %dev.label,
                            pid = plan.pid,
                            bytes = out.bytes,
                            seconds = out.elapsed.as_secs_f64(),
                            "device memory restored"
                        );
                        Ok(DeviceStats {
                            device: dev.label.clone(),
                            pid: plan.pid,
                            buffers: out.buffers,
                            bytes: out.bytes,
                            copy_seconds: out.elapsed.as_secs_f64(),
                        })
                    })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|_| {
                    Err(PluginError::Copy("a device copy thread panicked".into()))
                }),
                Err(e) => Err(PluginError::io("spawn a device copy thread", e)),
            })
            .collect()
    });
    results.into_iter().collect()
}
