//! The driver calls of one batch: each process gets a worker thread that runs its steps
//! (checkpoint, restore, unlock, rollback) in the driver, while the hook thread lets the
//! processes' restore threads run under ptrace and waits for the workers at most the call
//! timeout (`FERRY_CUDA_CALL_TIMEOUT_MS`). See the backend's module docs for why.

use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use super::driver::{Driver, GpuPair, ProcessState};
use super::ptrace;
use crate::error::{PluginError, Result};
use crate::sys::process::pin_in_memory;

/// A driver step of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Checkpoint,
    Restore,
    Unlock,
    /// Put a process back to its state before the dump (`initial`): read its state, then
    /// restore and/or unlock. The state is read here, on the worker while the restore thread
    /// runs, because the driver's GetState waits for that thread (see `rollback_ops`).
    Rollback(ProcessState),
}

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Checkpoint => "checkpoint",
            Op::Restore => "restore",
            Op::Unlock => "unlock",
            Op::Rollback(_) => "rollback",
        }
    }
}

/// Work for one process: driver steps in order, run on its own worker thread.
#[derive(Clone)]
pub struct Job {
    pub pid: i32,
    pub ops: Vec<Op>,
}

/// What a worker reports back: seconds per step done, and the first error.
pub struct JobOutcome {
    pub pid: i32,
    pub seconds: Vec<(Op, f64)>,
    pub result: std::result::Result<(), String>,
    /// The worker is still in the driver; the hook gave up on it.
    pub abandoned: bool,
}

/// Runs batches of jobs against the driver.
pub struct Runner {
    /// `None` only on a restore whose image has CUDA processes but whose node cannot load the
    /// driver: then every restored CUDA task fails with `unusable`.
    pub driver: Option<Arc<Driver>>,
    pub unusable: String,
    /// `FERRY_CUDA_CALL_TIMEOUT_MS`.
    pub call_timeout_ms: u64,
}

impl Runner {
    /// The driver, or why it cannot be used.
    pub fn driver(&self) -> Result<&Driver> {
        self.driver
            .as_deref()
            .ok_or_else(|| PluginError::Device(self.unusable.clone()))
    }

    /// Runs `jobs` concurrently: the hook thread resumes each restore thread, one worker per
    /// job calls the driver, the hook thread re-stops the restore threads. With
    /// `allow_untraced`, a restore thread that is not stopped under our ptrace (a task CRIU
    /// never seized, on a failed dump) is left alone and the driver is called anyway.
    pub fn run_jobs(
        &self,
        jobs: Vec<Job>,
        pairs: &[GpuPair],
        allow_untraced: bool,
    ) -> Vec<JobOutcome> {
        let Some(driver) = self.driver.as_ref() else {
            return jobs
                .into_iter()
                .map(|j| JobOutcome {
                    pid: j.pid,
                    seconds: vec![],
                    abandoned: false,
                    result: Err(self.unusable.clone()),
                })
                .collect();
        };
        let mut outcomes = Vec::new();
        let mut ready = Vec::new();
        let mut resumed = Vec::new();
        for job in jobs {
            let tid = match driver.restore_thread_id(job.pid) {
                Ok(t) => t,
                Err(e) => {
                    outcomes.push(JobOutcome {
                        pid: job.pid,
                        seconds: vec![],
                        abandoned: false,
                        result: Err(e.to_string()),
                    });
                    continue;
                }
            };
            match ptrace::resume(tid) {
                Ok(r) => {
                    resumed.push((job.pid, r));
                    ready.push(job);
                }
                Err(e) if allow_untraced && e.not_traced() => ready.push(job),
                Err(e) => outcomes.push(JobOutcome {
                    pid: job.pid,
                    seconds: vec![],
                    abandoned: false,
                    result: Err(format!("cannot let the CUDA restore thread run: {e}")),
                }),
            }
        }
        let worked = self.run_workers(driver, ready, pairs);
        outcomes.extend(worked);
        for (pid, r) in resumed {
            let tid = r.tid;
            if let Err(e) = ptrace::stop(r) {
                tracing::error!(
                    pid,
                    tid,
                    "could not stop the CUDA restore thread again: {e}"
                );
                if let Some(o) = outcomes.iter_mut().find(|o| o.pid == pid)
                    && o.result.is_ok()
                {
                    o.result = Err(format!("cannot stop the CUDA restore thread again: {e}"));
                }
            }
        }
        outcomes
    }

    /// One worker thread per job, calling the driver; waits for all of them at most the call
    /// timeout. A worker still in the driver then is abandoned (see the module docs).
    fn run_workers(
        &self,
        driver: &Arc<Driver>,
        jobs: Vec<Job>,
        pairs: &[GpuPair],
    ) -> Vec<JobOutcome> {
        let timeout = Duration::from_millis(self.call_timeout_ms);
        let (tx, rx) = mpsc::channel::<JobOutcome>();
        let mut outcomes = Vec::new();
        let mut waiting: Vec<Job> = Vec::new();
        for job in jobs {
            let (driver, pairs, tx, work) =
                (driver.clone(), pairs.to_vec(), tx.clone(), job.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("ferry-cuda-{}", job.pid))
                .spawn(move || {
                    // The receiver is gone only when the hook gave up on this worker.
                    let _ = tx.send(run_job(&driver, &work, &pairs));
                });
            match spawned {
                Ok(_) => waiting.push(job),
                Err(e) => outcomes.push(JobOutcome {
                    pid: job.pid,
                    seconds: vec![],
                    abandoned: false,
                    result: Err(format!("cannot start a driver worker thread: {e}")),
                }),
            }
        }
        drop(tx);
        let deadline = Instant::now() + timeout;
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(o) => {
                    waiting.retain(|j| j.pid != o.pid);
                    outcomes.push(o);
                }
                // A worker that panicked dropped its sender without sending.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    for job in waiting.drain(..) {
                        outcomes.push(JobOutcome {
                            pid: job.pid,
                            seconds: vec![],
                            abandoned: false,
                            result: Err("driver worker panicked".into()),
                        });
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    let pinned = pin_in_memory();
                    for job in waiting.drain(..) {
                        let ops: Vec<&str> = job.ops.iter().map(|o| o.name()).collect();
                        outcomes.push(JobOutcome {
                            pid: job.pid,
                            seconds: vec![],
                            result: Err(format!(
                                "the CUDA driver did not finish {} of process {} within {} ms (FERRY_CUDA_CALL_TIMEOUT_MS); the process is left as it is{}",
                                ops.join(" + "),
                                job.pid,
                                self.call_timeout_ms,
                                if pinned { "" } else { " (and the plugin could not pin itself in memory)" }
                            )),
                            abandoned: true,
                        });
                    }
                }
            }
        }
        outcomes
    }
}

/// The steps that put a process found in state `now` back to `initial`: restore what we
/// checkpointed, unlock what we locked; a process found locked or checkpointed stays so.
fn rollback_ops(initial: ProcessState, now: ProcessState) -> Vec<Op> {
    let mut ops = Vec::new();
    if now == ProcessState::Checkpointed && initial != ProcessState::Checkpointed {
        ops.push(Op::Restore);
    }
    if initial == ProcessState::Running
        && matches!(now, ProcessState::Locked | ProcessState::Checkpointed)
    {
        ops.push(Op::Unlock);
    }
    ops
}

/// Runs on a worker thread: driver calls only (no ptrace, no logging).
fn run_job(driver: &Driver, job: &Job, pairs: &[GpuPair]) -> JobOutcome {
    let mut seconds = Vec::new();
    let mut ops = job.ops.clone();
    let mut i = 0;
    while i < ops.len() {
        let op = ops[i];
        i += 1;
        let t = Instant::now();
        let r = match op {
            Op::Checkpoint => driver.checkpoint(job.pid),
            Op::Restore => driver.restore(job.pid, pairs),
            Op::Unlock => driver.unlock(job.pid),
            Op::Rollback(initial) => match driver.state(job.pid) {
                Ok(now) => {
                    ops.splice(i..i, rollback_ops(initial, now));
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = r {
            return JobOutcome {
                pid: job.pid,
                seconds,
                abandoned: false,
                result: Err(e.to_string()),
            };
        }
        seconds.push((op, t.elapsed().as_secs_f64()));
    }
    JobOutcome {
        pid: job.pid,
        seconds,
        abandoned: false,
        result: Ok(()),
    }
}
