//! The one `PluginState`: created in `init`, dropped in `fini`. Hooks take a clone of the
//! `Arc` and release the global lock at once, so the parallel worker (which needs the
//! backends) never waits on a hook and a hook never waits on the worker while holding it.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use ferry_api::stats::{
    DUMP_STATS_FILE, GpuVendor, Operation, PluginStats, RESTORE_STATS_FILE, RestoreMode,
};

use crate::backends;
use crate::config::Config;
use crate::contract::{Backend, BackendId, BackendLookup, Claim, Ctx, Stage, VmaUpdate};
use crate::engine::restore::RestoreEngine;
use crate::error::{PluginError, Result};
use crate::host::Host;

/// Everything the plugin keeps between hooks of one CRIU run.
pub struct PluginState {
    pub stage: Stage,
    pub config: Config,
    pub host: Host,
    pub backends: Vec<Box<dyn Backend>>,
    pub stats: Mutex<PluginStats>,
    pub engine: RestoreEngine,
    /// Restore: the image was dumped without this plugin, so nothing here is ours.
    pub disabled: bool,
    /// Dump: a backend claimed something, so the inventory carries our name.
    inventory_added: AtomicBool,
    /// Restore: when POST_FORKING ran (start of the host-restore window).
    pub forked_at: Mutex<Option<Instant>>,
}

static STATE: Mutex<Option<Arc<PluginState>>> = Mutex::new(None);

/// The current state, if `init` ran.
pub fn current() -> Option<Arc<PluginState>> {
    STATE.lock().ok().and_then(|s| s.clone())
}

impl PluginState {
    /// Builds the state for `stage`; the backends whose hardware is absent are left out.
    pub fn new(stage: Stage, config: Config, candidates: Vec<Box<dyn Backend>>) -> Result<Self> {
        let host = Host::new(config.images_dir.clone());
        let disabled = stage == Stage::Restore && host.check_inventory() == Some(false);
        let engine = RestoreEngine::new(&config);
        let mut state = PluginState {
            stage,
            config,
            host,
            backends: Vec::new(),
            stats: Mutex::new(PluginStats::new(
                match stage {
                    Stage::Restore => Operation::Restore,
                    _ => Operation::Dump,
                },
                GpuVendor::None,
            )),
            engine,
            disabled,
            inventory_added: AtomicBool::new(false),
            forked_at: Mutex::new(None),
        };
        if let Ok(mut s) = state.stats.lock() {
            s.mode = if state.config.parallel_restore {
                RestoreMode::Parallel
            } else {
                RestoreMode::Sequential
            };
        }
        if !disabled {
            for b in candidates {
                let cx = state.ctx();
                match b.probe(&cx) {
                    Ok(true) => state.backends.push(b),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(backend = ?b.id(), "backend left out: {e}"),
                }
            }
        }
        Ok(state)
    }

    /// The context handed to backends.
    pub fn ctx(&self) -> Ctx<'_> {
        Ctx {
            stage: self.stage,
            config: &self.config,
            host: &self.host,
            stats: &self.stats,
            refill: &self.engine,
        }
    }

    fn mark_claimed(&self, b: &dyn Backend) {
        if let Ok(mut s) = self.stats.lock()
            && s.vendor == GpuVendor::None
        {
            s.vendor = b.vendor();
        }
        if self.stage != Stage::Restore && !self.inventory_added.swap(true, Ordering::SeqCst) {
            self.host.add_inventory();
        }
    }

    /// Asks each backend in turn until one claims.
    fn first_claim(&self, f: impl Fn(&dyn Backend, &Ctx<'_>) -> Result<Claim>) -> Result<Claim> {
        let cx = self.ctx();
        for b in &self.backends {
            if f(b.as_ref(), &cx)? == Claim::Done {
                self.mark_claimed(b.as_ref());
                return Ok(Claim::Done);
            }
        }
        Ok(Claim::NotMine)
    }

    /// Finds the backend for a copy plan.
    pub fn backend(&self, id: BackendId) -> Result<&dyn Backend> {
        self.backends
            .iter()
            .find(|b| b.id() == id)
            .map(|b| b.as_ref())
            .ok_or_else(|| PluginError::Device(format!("backend {id:?} is not active here")))
    }
}

impl BackendLookup for PluginState {
    fn backend(&self, id: BackendId) -> Result<&dyn Backend> {
        PluginState::backend(self, id)
    }

    fn ctx(&self) -> Ctx<'_> {
        PluginState::ctx(self)
    }
}

/// `init(stage)`.
pub fn init(stage: Stage) -> Result<()> {
    let config = Config::from_env()?;
    let state = PluginState::new(stage, config, backends::all()?)?;
    tracing::info!(
        stage = ?stage,
        parallel = state.config.parallel_restore,
        chunk = state.config.chunk_size,
        workers = state.config.workers,
        backends = ?state.backends.iter().map(|b| b.id()).collect::<Vec<_>>(),
        disabled = state.disabled,
        "plugin initialised"
    );
    if stage == Stage::Restore && !state.disabled {
        // Before CRIU forks the root task, so the restored tasks can reach the main process
        // (plans in parallel mode, copy stats in sequential mode).
        state.engine.listen(&state.host)?;
    }
    let mut g = STATE
        .lock()
        .map_err(|_| PluginError::Device("plugin state poisoned".into()))?;
    *g = Some(Arc::new(state));
    Ok(())
}

/// `exit(stage, ret)`.
pub fn fini(stage: Option<Stage>, ret: i32) {
    let Some(state) = STATE.lock().ok().and_then(|mut g| g.take()) else {
        return;
    };
    let cx = state.ctx();
    if state.stage == Stage::Restore {
        // Ends the worker even when the restore failed before RESUME_DEVICES_LATE.
        if let Err(e) = state.engine.shutdown(&state.stats) {
            tracing::error!("device copy failed: {e}");
        }
    }
    for b in &state.backends {
        b.fini(&cx, ret);
    }
    let stats = state.stats.lock().ok().map(|s| s.clone());
    if let Some(stats) = stats {
        let worth = !stats.devices.is_empty() || !stats.processes.is_empty();
        if worth && stage != Some(Stage::PreDump) {
            let name = match state.stage {
                Stage::Restore => RESTORE_STATS_FILE,
                _ => DUMP_STATS_FILE,
            };
            if let Err(e) = state.host.replace_file(name, stats.to_json().as_bytes()) {
                tracing::warn!("could not write {name}: {e}");
            }
        }
    }
    tracing::info!(ret, "plugin finished");
}

fn with_state<T>(default: T, f: impl FnOnce(&PluginState) -> Result<T>) -> Result<T> {
    match current() {
        Some(s) if !s.disabled => f(&s),
        _ => Ok(default),
    }
}

pub fn dump_file(fd: BorrowedFd<'_>, id: u32) -> Result<Claim> {
    with_state(Claim::NotMine, |s| {
        s.first_claim(|b, cx| b.dump_file(cx, fd, id))
    })
}

pub fn handle_device_vma(fd: BorrowedFd<'_>, st: &libc::stat) -> Result<Claim> {
    with_state(Claim::NotMine, |s| {
        s.first_claim(|b, cx| b.handle_device_vma(cx, fd, st))
    })
}

pub fn pause_devices(pid: i32) -> Result<Claim> {
    with_state(Claim::NotMine, |s| {
        s.first_claim(|b, cx| b.pause_devices(cx, pid))
    })
}

pub fn checkpoint_devices(pid: i32) -> Result<Claim> {
    with_state(Claim::NotMine, |s| {
        s.first_claim(|b, cx| b.checkpoint_devices(cx, pid))
    })
}

pub fn restore_file(id: u32) -> Result<Option<OwnedFd>> {
    with_state(None, |s| {
        let cx = s.ctx();
        for b in &s.backends {
            if let Some(fd) = b.restore_file(&cx, id)? {
                s.mark_claimed(b.as_ref());
                return Ok(Some(fd));
            }
        }
        Ok(None)
    })
}

pub fn update_vma_map(path: &str, addr: u64, old_pgoff: u64) -> Result<Option<VmaUpdate>> {
    with_state(None, |s| {
        let cx = s.ctx();
        for b in &s.backends {
            if let Some(u) = b.update_vma_map(&cx, path, addr, old_pgoff)? {
                return Ok(Some(u));
            }
        }
        Ok(None)
    })
}

pub fn post_forking() -> Result<Claim> {
    let Some(state) = current() else {
        return Ok(Claim::NotMine);
    };
    if state.disabled {
        return Ok(Claim::NotMine);
    }
    if let Ok(mut t) = state.forked_at.lock() {
        *t = Some(Instant::now());
    }
    state.engine.start_worker(state.clone())?;
    Ok(Claim::Done)
}

pub fn resume_devices_late(pid: i32) -> Result<Claim> {
    let Some(state) = current() else {
        return Ok(Claim::NotMine);
    };
    if state.disabled {
        return Ok(Claim::NotMine);
    }
    // The first call closes the host-restore window.
    let window = state
        .forked_at
        .lock()
        .ok()
        .and_then(|mut t| t.take())
        .map(|t| t.elapsed().as_secs_f64());
    if let (Some(w), Ok(mut s)) = (window, state.stats.lock()) {
        s.host_restore_seconds = w;
    }
    let mut claim = Claim::NotMine;
    if let Err(e) = state.engine.join_for(&state.stats) {
        // CRIU only logs errors from this hook, and the task is still stopped under ptrace:
        // killing it makes CRIU's final detach fail, so the restore really fails.
        tracing::error!(
            pid,
            "device memory was not restored, killing the task to fail the restore"
        );
        let _ = rustix::process::kill_process(
            rustix::process::Pid::from_raw(pid).ok_or_else(|| PluginError::invalid("pid 0"))?,
            rustix::process::Signal::KILL,
        );
        return Err(e);
    }
    if state.engine.had_work_for(pid) {
        claim = Claim::Done;
    }
    if state.first_claim(|b, cx| b.resume_devices_late(cx, pid))? == Claim::Done {
        claim = Claim::Done;
    }
    Ok(claim)
}
