//! NVIDIA GPUs through the CUDA driver's process checkpoint API (r555+), called directly: no
//! `cuda-checkpoint` binary, and the processes of one tree are handled concurrently.
//!
//! Hooks (CRIU 4.x order; `docs/nvidia.md` has the whole picture):
//! - dump: PAUSE_DEVICES(pid), once per task while CRIU collects the tree, locks each CUDA
//!   process (`cuCheckpointProcessLock`) and records its initial state. The first
//!   CHECKPOINT_DEVICES checkpoints every locked process at once (one worker thread each) and
//!   writes [`images::IMAGE`]; later calls return their pid's recorded result.
//! - restore: the first RESUME_DEVICES_LATE finds the CUDA processes of the restored tree, maps
//!   GPUs ([`topology`]), and restores and unlocks all of them at once; each call returns its
//!   pid's result. A process whose GPU state could not be restored is killed, so the restore
//!   fails instead of resuming a process without its device memory (CRIU only logs this hook's
//!   errors).
//! - `fini` of a failed or leave-running dump puts every touched process back as it was
//!   (restore + unlock if checkpointed, unlock if only locked by us).
//!
//! Threads: CRIU's tasks are ptrace-stopped, and the driver works on each process through its
//! restore thread, which therefore has to run during the call. ptrace only accepts requests
//! from the tracer thread, so the hook's thread resumes and re-stops every restore thread
//! ([`ptrace`]); the worker threads only call the driver. Workers never log either: CRIU's
//! logger writes through one static buffer and is not thread-safe, so results are logged by the
//! hook thread after the join.
//!
//! A driver call that never returns must not hang CRIU (on an H200 two misuses did, silently):
//! the hook waits for a batch at most `FERRY_CUDA_CALL_TIMEOUT_MS`, then fails the processes
//! still in the driver and abandons their workers. Those processes are left alone afterwards
//! (no rollback call that could block the hook thread too), and the plugin's object is pinned
//! in memory so that a late return does not land in code CRIU has `dlclose`d.

pub mod config;
pub mod driver;
pub mod images;
pub mod jobs;
pub mod ptrace;
pub mod topology;
pub mod tree;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use ferry_api::stats::{GpuVendor, ProcessStats};

use self::config::NvidiaConfig;
use self::driver::{Driver, ProcessState};
use self::images::{IMAGE, IMAGE_VERSION, ImageProcess, NvidiaImage};
use self::jobs::{Job, JobOutcome, Op, Runner};
use self::tree::{kill, tree_pids};
use crate::contract::{Backend, BackendId, Claim, Ctx, Stage};
use crate::error::{PluginError, Result};
use crate::sys::criu::set_compel_interrupt_only_mode;

/// The backend; inactive until `probe` found a usable driver.
#[derive(Default)]
pub struct NvidiaBackend {
    active: OnceLock<Active>,
}

struct Active {
    /// The driver (if it loaded) and the batches' call timeout.
    runner: Runner,
    cfg: NvidiaConfig,
    inner: Mutex<Inner>,
}

/// One process PAUSE_DEVICES locked (or found locked or checkpointed).
#[derive(Clone, Debug)]
struct Tracked {
    pid: i32,
    initial: ProcessState,
}

#[derive(Default)]
struct Inner {
    tracked: Vec<Tracked>,
    gpus: Vec<topology::Uuid>,
    image: Option<NvidiaImage>,
    batch_done: bool,
    /// The batch could not run at all (driver init, image): every CUDA pid fails with it.
    batch_error: Option<String>,
    /// Per pid: the result of the checkpoint (dump) or restore + unlock (restore) batch.
    results: HashMap<i32, std::result::Result<(), String>>,
    stats: BTreeMap<i32, ProcessStats>,
    gpu_phase_seconds: f64,
    /// Processes whose worker was abandoned inside the driver (call timeout): never called
    /// again.
    abandoned: HashSet<i32>,
}

fn lock_inner(a: &Active) -> Result<std::sync::MutexGuard<'_, Inner>> {
    a.inner
        .lock()
        .map_err(|_| PluginError::Device("nvidia backend state poisoned".into()))
}

impl NvidiaBackend {
    fn active(&self) -> Option<&Active> {
        self.active.get()
    }
}

impl Active {
    fn driver(&self) -> Result<&Driver> {
        self.runner.driver()
    }

    fn record(&self, inner: &mut Inner, outcomes: &[JobOutcome]) {
        for o in outcomes {
            let st = inner.stats.entry(o.pid).or_insert_with(|| ProcessStats {
                pid: o.pid as u32,
                ..ProcessStats::default()
            });
            for (op, secs) in &o.seconds {
                match op {
                    Op::Checkpoint => st.checkpoint_seconds += secs,
                    Op::Restore => st.restore_seconds += secs,
                    Op::Unlock => st.unlock_seconds += secs,
                    Op::Rollback(_) => {}
                }
                tracing::info!(
                    pid = o.pid,
                    op = op.name(),
                    seconds = secs,
                    "nvidia step done"
                );
            }
            if let Err(e) = &o.result {
                tracing::error!(pid = o.pid, "nvidia step failed: {e}");
            }
            if o.abandoned {
                inner.abandoned.insert(o.pid);
            }
        }
    }
}

fn result_claim(r: Option<&std::result::Result<(), String>>) -> Result<Claim> {
    match r {
        None => Ok(Claim::NotMine),
        Some(Ok(())) => Ok(Claim::Done),
        Some(Err(e)) => Err(PluginError::Device(e.clone())),
    }
}

impl Backend for NvidiaBackend {
    fn id(&self) -> BackendId {
        BackendId::Nvidia
    }

    fn vendor(&self) -> GpuVendor {
        GpuVendor::Nvidia
    }

    fn probe(&self, cx: &Ctx<'_>) -> Result<bool> {
        if cx.stage == Stage::PreDump {
            return Ok(false);
        }
        let cfg = NvidiaConfig::from_env()?;
        let image = if cx.stage == Stage::Restore {
            if !cx.host.image_exists(IMAGE) {
                return Ok(false);
            }
            Some(NvidiaImage::read(cx.host.open_image(IMAGE)?)?)
        } else {
            None
        };
        let driver = match Driver::load(&cfg.lib) {
            Ok(d) => d,
            Err(e) => {
                let Some(img) = image.filter(|i| !i.processes.is_empty()) else {
                    tracing::info!("nvidia backend disabled: {e}");
                    return Ok(false);
                };
                // The image needs the driver: keep the backend so each CUDA task fails loudly.
                let unusable = format!(
                    "the checkpoint holds {} CUDA processes but {e}; restore on a node with an NVIDIA r555+ driver",
                    img.processes.len()
                );
                tracing::error!("{unusable}");
                let _ = self.active.set(Active {
                    runner: Runner {
                        driver: None,
                        unusable,
                        call_timeout_ms: cfg.call_timeout_ms,
                    },
                    cfg,
                    inner: Mutex::new(Inner {
                        image: Some(img),
                        ..Inner::default()
                    }),
                });
                return Ok(true);
            }
        };
        let mut inner = Inner {
            image,
            ..Inner::default()
        };
        // cuInit runs here, in init, for restores too: at RESUME_DEVICES_LATE the restored
        // tasks are stopped under CRIU's ptrace and CRIU's SIGCHLD handler is armed, and a
        // first cuInit there never returned on an H200 (driver 580). The driver's fds opened
        // now are closed in the restored tasks by CRIU, which closes every fd not in the image.
        if cx.stage == Stage::Dump || cx.stage == Stage::Restore {
            if let Err(e) = driver.init() {
                tracing::info!("nvidia backend disabled: {e}");
                return Ok(false);
            }
            match driver.device_uuids() {
                Ok(Some(g)) => inner.gpus = g,
                Ok(None) => {
                    tracing::warn!("the CUDA driver has no device queries; GPUs not recorded")
                }
                Err(e) => tracing::warn!("cannot list GPUs, not recording them: {e}"),
            }
            // Like CRIU's cuda plugin: the restore threads must stay resumable, so CRIU must
            // stop tasks with ptrace interrupts, not only with the cgroup freezer.
            if cx.stage == Stage::Dump {
                set_compel_interrupt_only_mode();
            }
        }
        tracing::info!(
            lib = %cfg.lib.display(),
            driver_version = driver.version(),
            remap = driver.supports_remap(),
            lock_timeout_ms = cfg.lock_timeout_ms,
            leave_running = cfg.leave_running,
            leave_running_from = ?cfg.leave_running_source,
            gpus = inner.gpus.len(),
            "nvidia backend ready"
        );
        let _ = self.active.set(Active {
            runner: Runner {
                driver: Some(Arc::new(driver)),
                unusable: String::new(),
                call_timeout_ms: cfg.call_timeout_ms,
            },
            cfg,
            inner: Mutex::new(inner),
        });
        Ok(true)
    }

    fn pause_devices(&self, _cx: &Ctx<'_>, pid: i32) -> Result<Claim> {
        let Some(a) = self.active() else {
            return Ok(Claim::NotMine);
        };
        let driver = a.driver()?;
        let mut inner = lock_inner(a)?;
        if inner.tracked.iter().any(|t| t.pid == pid) {
            return Ok(Claim::Done);
        }
        if let Err(e) = driver.restore_thread_id(pid) {
            tracing::debug!(
                pid,
                hook = "PAUSE_DEVICES",
                "nvidia: not a CUDA process ({e})"
            );
            return Ok(Claim::NotMine);
        }
        let initial = driver
            .state(pid)
            .map_err(|e| PluginError::Device(e.to_string()))?;
        if initial == ProcessState::Failed {
            return Err(PluginError::Device(format!(
                "CUDA process {pid} is in the FAILED checkpoint state; it cannot be dumped"
            )));
        }
        if initial == ProcessState::Running {
            let t = Instant::now();
            if let Err(e) = driver.lock(pid, a.cfg.lock_timeout_ms) {
                // A lock that timed out may leave the process half locked: undo it.
                if matches!(driver.state(pid), Ok(ProcessState::Locked)) {
                    let _ = driver.unlock(pid);
                }
                return Err(PluginError::Device(format!(
                    "{e}; the process did not reach a lockable point within {} ms (FERRY_CUDA_LOCK_TIMEOUT_MS)",
                    a.cfg.lock_timeout_ms
                )));
            }
            let secs = t.elapsed().as_secs_f64();
            inner.stats.insert(
                pid,
                ProcessStats {
                    pid: pid as u32,
                    lock_seconds: secs,
                    ..ProcessStats::default()
                },
            );
            tracing::info!(pid, hook = "PAUSE_DEVICES", seconds = secs, "nvidia locked");
        } else {
            tracing::info!(
                pid,
                hook = "PAUSE_DEVICES",
                state = initial.as_str(),
                "nvidia found already paused"
            );
        }
        inner.tracked.push(Tracked { pid, initial });
        Ok(Claim::Done)
    }

    fn checkpoint_devices(&self, cx: &Ctx<'_>, pid: i32) -> Result<Claim> {
        let Some(a) = self.active() else {
            return Ok(Claim::NotMine);
        };
        let mut inner = lock_inner(a)?;
        if !inner.tracked.iter().any(|t| t.pid == pid) {
            return Ok(Claim::NotMine);
        }
        if !inner.batch_done {
            inner.batch_done = true;
            let jobs: Vec<Job> = inner
                .tracked
                .iter()
                .filter(|t| t.initial != ProcessState::Checkpointed)
                .map(|t| Job {
                    pid: t.pid,
                    ops: vec![Op::Checkpoint],
                })
                .collect();
            let n = jobs.len();
            tracing::info!(
                hook = "CHECKPOINT_DEVICES",
                processes = n,
                "nvidia checkpoint batch starts"
            );
            let t = Instant::now();
            let outcomes = a.runner.run_jobs(jobs, &[], false);
            inner.gpu_phase_seconds = t.elapsed().as_secs_f64();
            a.record(&mut inner, &outcomes);
            for o in outcomes {
                inner.results.insert(o.pid, o.result);
            }
            tracing::info!(
                hook = "CHECKPOINT_DEVICES",
                processes = n,
                seconds = inner.gpu_phase_seconds,
                "nvidia checkpointed all"
            );
            let mut img = NvidiaImage {
                version: IMAGE_VERSION,
                driver_version: a.driver()?.version(),
                gpus: vec![],
                processes: inner
                    .tracked
                    .iter()
                    .map(|t| ImageProcess {
                        pid: t.pid,
                        initial_state: t.initial,
                    })
                    .collect(),
            };
            img.set_gpus(&inner.gpus);
            if let Err(e) = img
                .to_json()
                .and_then(|j| cx.host.write_image(IMAGE, j.as_bytes()))
            {
                inner.batch_error = Some(e.to_string());
            }
        }
        if let Some(e) = &inner.batch_error {
            return Err(PluginError::Device(e.clone()));
        }
        let claim = result_claim(inner.results.get(&pid))?;
        // Already checkpointed before the dump: nothing to do, but it is ours.
        Ok(if claim == Claim::NotMine {
            Claim::Done
        } else {
            claim
        })
    }

    fn resume_devices_late(&self, _cx: &Ctx<'_>, pid: i32) -> Result<Claim> {
        let Some(a) = self.active() else {
            return Ok(Claim::NotMine);
        };
        let mut inner = lock_inner(a)?;
        if !inner.batch_done {
            inner.batch_done = true;
            self.restore_batch(a, &mut inner, pid);
        }
        if !inner.results.contains_key(&pid) && inner.batch_error.is_none() {
            // Not in the first pid's tree (e.g. restored as a sibling): handle it on its own.
            self.restore_batch(a, &mut inner, pid);
        }
        match (inner.results.get(&pid), &inner.batch_error) {
            (Some(r), _) => result_claim(Some(r)),
            (None, Some(e)) => {
                // The driver was unusable; only a CUDA task can be told apart without it when
                // the image lists it.
                let listed = inner
                    .image
                    .as_ref()
                    .is_some_and(|i| i.processes.iter().any(|p| p.pid == pid));
                if listed {
                    kill(pid);
                    return Err(PluginError::Device(e.clone()));
                }
                Ok(Claim::NotMine)
            }
            (None, None) => Ok(Claim::NotMine),
        }
    }

    fn fini(&self, cx: &Ctx<'_>, ret: i32) {
        let Some(a) = self.active() else {
            return;
        };
        let Ok(mut inner) = lock_inner(a) else {
            return;
        };
        if cx.stage == Stage::Dump && !inner.tracked.is_empty() && (ret != 0 || a.cfg.leave_running)
        {
            tracing::info!(
                ret,
                leave_running = a.cfg.leave_running,
                processes = inner.tracked.len(),
                "nvidia putting CUDA processes back as they were"
            );
            self.rollback(a, &mut inner);
        }
        if let Ok(mut s) = cx.stats.lock() {
            if !inner.stats.is_empty() {
                s.vendor = GpuVendor::Nvidia;
            }
            s.processes.extend(inner.stats.values().cloned());
            s.gpu_phase_seconds = s.gpu_phase_seconds.max(inner.gpu_phase_seconds);
        }
    }
}

impl NvidiaBackend {
    /// Restore: find the CUDA tasks of the tree under `root`, map GPUs, restore and unlock them
    /// all at once, kill those that failed.
    fn restore_batch(&self, a: &Active, inner: &mut Inner, root: i32) {
        let driver = match a.driver() {
            Ok(d) => d,
            Err(e) => {
                inner.batch_error = Some(e.to_string());
                return;
            }
        };
        if let Err(e) = driver.init() {
            inner.batch_error = Some(format!(
                "cannot initialise the CUDA driver for the restore: {e}"
            ));
            return;
        }
        tracing::info!(
            hook = "RESUME_DEVICES_LATE",
            root,
            "nvidia restore: driver initialised, finding CUDA tasks"
        );
        let first = inner.results.is_empty();
        let cuda: Vec<i32> = tree_pids(root)
            .into_iter()
            .filter(|p| !inner.results.contains_key(p) && driver.restore_thread_id(*p).is_ok())
            .collect();
        if let Some(img) = &inner.image
            && img.processes.len() != cuda.len()
            && first
        {
            tracing::warn!(
                dumped = img.processes.len(),
                found = cuda.len(),
                "nvidia: the restored tree has a different number of CUDA processes than the dump"
            );
        }
        let src = inner
            .image
            .as_ref()
            .map(|i| i.gpu_uuids())
            .transpose()
            .map(|g| g.unwrap_or_default());
        let pairs = src.and_then(|src| {
            let dst = match driver.device_uuids() {
                Ok(Some(d)) => d,
                Ok(None) => return Ok(Vec::new()),
                Err(e) => {
                    return Err(PluginError::Device(format!(
                        "cannot list this node's GPUs: {e}"
                    )));
                }
            };
            topology::plan_remap(&src, &dst, driver.supports_remap(), driver.version())
                .map_err(|e| PluginError::Device(e.to_string()))
        });
        let pairs = match pairs {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(hook = "RESUME_DEVICES_LATE", "nvidia: {e}");
                for pid in cuda {
                    kill(pid);
                    inner.results.insert(pid, Err(e.to_string()));
                }
                return;
            }
        };
        if !pairs.is_empty() {
            for p in &pairs {
                tracing::info!(
                    old = %topology::format_uuid(&p.old),
                    new = %topology::format_uuid(&p.new),
                    "nvidia restoring GPU memory onto another GPU"
                );
            }
        }
        tracing::info!(
            hook = "RESUME_DEVICES_LATE",
            processes = cuda.len(),
            pairs = pairs.len(),
            "nvidia restore: CUDA tasks found"
        );
        let mut jobs = Vec::new();
        for pid in &cuda {
            // No cuCheckpointProcessGetState here: it waits for the task's restore thread,
            // which CRIU holds stopped until `run_jobs` resumes it, so on an H200 (driver
            // 580) the call never returned. Every CUDA task in a finished dump was
            // checkpointed by CHECKPOINT_DEVICES, so restore and unlock it.
            let ops = vec![Op::Restore, Op::Unlock];
            jobs.push(Job { pid: *pid, ops });
        }
        let n = jobs.len();
        if n > 0 {
            tracing::info!(
                hook = "RESUME_DEVICES_LATE",
                processes = n,
                "nvidia restore batch starts"
            );
        }
        let t = Instant::now();
        let outcomes = a.runner.run_jobs(jobs, &pairs, false);
        let secs = t.elapsed().as_secs_f64();
        inner.gpu_phase_seconds += secs;
        a.record(inner, &outcomes);
        for o in outcomes {
            if o.result.is_err() {
                // CRIU only logs this hook's errors; a process without its GPU memory must not
                // run, and a killed task makes CRIU's final detach, and so the restore, fail.
                tracing::error!(pid = o.pid, "nvidia: killing the task so the restore fails");
                kill(o.pid);
            }
            inner.results.insert(o.pid, o.result);
        }
        if n > 0 || first {
            tracing::info!(
                hook = "RESUME_DEVICES_LATE",
                processes = n,
                seconds = secs,
                "nvidia restored all"
            );
        }
    }

    /// Dump `fini` after a failure or with leave-running: restore what was checkpointed, unlock
    /// what we locked; processes found locked or checkpointed stay so. CRIU calls `fini` before
    /// it releases the tasks, so they are still ptrace-stopped: each process's state is read by
    /// its worker once the restore thread runs (a GetState from here would never return).
    fn rollback(&self, a: &Active, inner: &mut Inner) {
        if a.driver().is_err() {
            return;
        }
        for pid in &inner.abandoned {
            tracing::error!(
                pid,
                "nvidia: not rolling back a process the driver never returned from"
            );
        }
        let jobs: Vec<Job> = inner
            .tracked
            .iter()
            .filter(|t| !inner.abandoned.contains(&t.pid))
            .map(|t| Job {
                pid: t.pid,
                ops: vec![Op::Rollback(t.initial)],
            })
            .collect();
        let n = jobs.len();
        let t = Instant::now();
        let outcomes = a.runner.run_jobs(jobs, &[], true);
        a.record(inner, &outcomes);
        tracing::info!(
            processes = n,
            seconds = t.elapsed().as_secs_f64(),
            failed = outcomes.iter().filter(|o| o.result.is_err()).count(),
            "nvidia rolled back"
        );
    }
}
