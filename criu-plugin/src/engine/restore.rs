//! Refilling device memory on restore: in parallel with host memory (the seed design), or
//! sequentially inside RESTORE_EXT_FILE (upstream's order) for comparison.
//!
//! Parallel restore, end to end:
//! 1. `init(RESTORE)`, main CRIU, before the root task is forked: [`RestoreEngine::listen`]
//!    makes a `SOCK_SEQPACKET` socketpair, keeps the server end and puts the client end into
//!    CRIU's fdstore. The fdstore is a service socket that restored tasks keep until the end
//!    of the restore, and unlike an abstract socket name it works across network namespaces.
//! 2. `POST_FORKING`, main CRIU: [`RestoreEngine::start_worker`] starts the worker thread
//!    with SIGCHLD blocked in its mask, so CRIU's main thread keeps receiving SIGCHLD.
//! 3. `RESTORE_EXT_FILE`, in the restored task: the backend recreates the device objects and
//!    calls [`Refill::refill`] with a copy plan. The task makes a private stream socketpair,
//!    sends one end over the rendezvous socket (one SEQPACKET message, so commands of several
//!    tasks never interleave), writes the command and the buffer fds (batches of at most 252)
//!    on its end and waits for the ack. Then it returns the device fd to CRIU and goes on
//!    restoring host memory, while the main process copies.
//! 4. The worker gives each channel a handler thread; the handler reads and checks the
//!    command, acks it, and copies every device of the plan in its own thread (pipelined,
//!    per-device offsets). Errors are kept.
//! 5. `RESUME_DEVICES_LATE`, main CRIU, tasks still stopped: [`RestoreEngine::join_for`]
//!    stops the worker, joins every copy and returns the first errors. CRIU only logs
//!    errors from this hook, so `state` kills the task on error, which makes CRIU's final
//!    detach fail: the restore really fails.
//!
//! Every blocking read has a timeout (`FERRY_IO_TIMEOUT`), so a task that dies or hangs
//! mid-command ends in an error, not a hung CRIU.
//!
//! This module is the engine's face (both ends of the socket); the worker and its handlers
//! are in `worker`, running one plan in `run_plan`, the copy bound in `slots` and what the
//! copies leave behind in `results`. The worker sees the backends only through a
//! [`BackendLookup`], never the plugin's state.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_api::plugin_env::FERRY_TEST_FAULT;
use ferry_api::stats::PluginStats;
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

use super::fdpass::{self, MAX_FDS_PER_MSG};
use super::protocol::{self, ACK, FD_BATCH_LEN, FD_BATCH_MAGIC, Header, RENDEZVOUS_TAG};
use super::results::Shared;
use super::run_plan::run_plan_with;
use super::slots::Slots;
use super::worker::{self, Worker};
use crate::config::{Config, Fault};
use crate::contract::{Backend, BackendLookup, CopyPlan, Ctx, Refill};
use crate::error::{PluginError, Result};
use crate::host::Host;
use crate::sys::process::{SigchldBlocked, exit_now};

#[derive(Default)]
struct Inner {
    /// Rendezvous server end (main process only).
    server: Option<OwnedFd>,
    /// fdstore id of the rendezvous client end; restored tasks inherit this through fork.
    client_id: Option<i32>,
    stop_tx: Option<OwnedFd>,
    worker: Option<JoinHandle<()>>,
    /// `Some` once the copies were joined: their combined result.
    result: Option<std::result::Result<(), String>>,
}

/// The restore engine of one CRIU run.
pub struct RestoreEngine {
    parallel: bool,
    slots: Arc<Slots>,
    chunk: usize,
    io_timeout: Duration,
    fault: Option<Fault>,
    inner: Mutex<Inner>,
    shared: Arc<Shared>,
}

impl RestoreEngine {
    pub fn new(config: &Config) -> Self {
        RestoreEngine {
            parallel: config.parallel_restore,
            slots: Arc::new(Slots::new(config.workers)),
            chunk: config.chunk_size,
            io_timeout: config.io_timeout,
            fault: config.fault,
            inner: Mutex::new(Inner::default()),
            shared: Arc::new(Shared::default()),
        }
    }

    fn inner(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| PluginError::Device("restore engine state poisoned".into()))
    }

    /// Main CRIU process, before the root task is forked.
    pub fn listen(&self, host: &Host) -> Result<()> {
        let (server, client) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| PluginError::io("socketpair for the restore socket", e.into()))?;
        let id = host.fdstore_add(client)?;
        let mut inner = self.inner()?;
        inner.server = Some(server);
        inner.client_id = Some(id);
        Ok(())
    }

    /// Main CRIU process, POST_FORKING: starts the worker with SIGCHLD blocked. `lookup`
    /// finds the backend of each copy plan the worker receives.
    pub fn start_worker(&self, lookup: Arc<dyn BackendLookup>) -> Result<()> {
        let mut inner = self.inner()?;
        let Some(server) = inner.server.take() else {
            return Ok(());
        };
        let (stop_rx, stop_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| PluginError::io("pipe for the worker's stop signal", e.into()))?;
        inner.stop_tx = Some(stop_tx);
        let w = Arc::new(Worker {
            lookup,
            shared: Arc::clone(&self.shared),
            slots: Arc::clone(&self.slots),
            chunk: self.chunk,
            io_timeout: self.io_timeout,
        });
        let _mask = SigchldBlocked::new()?;
        let handle = std::thread::Builder::new()
            .name("ferry-restore".into())
            .spawn(move || worker::run(w, server, stop_rx))
            .map_err(|e| PluginError::io("spawn the restore worker", e))?;
        inner.worker = Some(handle);
        Ok(())
    }

    /// Main CRIU process, RESUME_DEVICES_LATE: waits for every copy (once) and returns the
    /// combined result. Later calls return the same result.
    /// The run's stats get the wait, the devices' stats and the device phase's span.
    pub fn join_for(&self, stats: &Mutex<PluginStats>) -> Result<()> {
        let mut inner = self.inner()?;
        if inner.result.is_none() {
            let waited = Instant::now();
            let r = self.stop_and_join(&mut inner);
            if let Ok(mut s) = stats.lock() {
                s.resume_wait_seconds = waited.elapsed().as_secs_f64();
                if let Ok(d) = self.shared.devices.lock() {
                    s.devices = d.clone();
                }
                if let Ok(Some((a, b))) = self.shared.span.lock().map(|s| *s) {
                    s.gpu_phase_seconds = (b - a).as_secs_f64();
                } else {
                    // Sequential: the restored task copied plan after plan.
                    s.gpu_phase_seconds = s.devices.iter().map(|d| d.copy_seconds).sum();
                }
                if let Ok(Some(v)) = self.shared.vendor.lock().map(|v| *v) {
                    s.vendor = v;
                }
            }
            inner.result = Some(r);
        }
        match &inner.result {
            Some(Err(e)) => Err(PluginError::Copy(e.clone())),
            _ => Ok(()),
        }
    }

    fn stop_and_join(&self, inner: &mut Inner) -> std::result::Result<(), String> {
        if let Some(tx) = inner.stop_tx.take() {
            // The worker drains what is queued, then exits; closing the pipe is the signal.
            drop(tx);
        }
        if let Some(w) = inner.worker.take()
            && w.join().is_err()
        {
            self.shared.error("the restore worker panicked".into());
        }
        loop {
            let batch: Vec<JoinHandle<()>> = match self.shared.handlers.lock() {
                Ok(mut h) => h.drain(..).collect(),
                Err(_) => break,
            };
            if batch.is_empty() {
                break;
            }
            for h in batch {
                if h.join().is_err() {
                    self.shared
                        .error("a restore command handler panicked".into());
                }
            }
        }
        let errors = self
            .shared
            .errors
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "device memory restore failed ({} error{}): {}",
                errors.len(),
                if errors.len() == 1 { "" } else { "s" },
                errors.join("; ")
            ))
        }
    }

    /// True when some command came from `pid`.
    pub fn had_work_for(&self, pid: i32) -> bool {
        self.shared
            .pids
            .lock()
            .map(|p| p.contains(&(pid as u32)))
            .unwrap_or(false)
    }

    /// `fini`: ends the worker even when the restore failed before RESUME_DEVICES_LATE.
    pub fn shutdown(&self, stats: &Mutex<PluginStats>) -> Result<()> {
        let pending = self.inner()?.result.is_none();
        if pending {
            return self.join_for(stats);
        }
        Ok(())
    }

    /// Restored task: sends a command (and fds) to the main process and waits for the ack.
    fn send(
        &self,
        host: &Host,
        header: Header,
        payload: &[u8],
        fds: &[BorrowedFd<'_>],
    ) -> Result<()> {
        let id = self.inner()?.client_id.ok_or_else(|| {
            PluginError::Device("no restore socket: init(RESTORE) did not set one up".into())
        })?;
        let rendezvous = host.fdstore_get(id)?;
        let (mine, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| PluginError::io("socketpair for a restore command", e.into()))?;
        fdpass::set_timeouts(mine.as_fd(), self.io_timeout)?;
        fdpass::send(rendezvous.as_fd(), RENDEZVOUS_TAG, &[theirs.as_fd()])?;
        drop(theirs);
        drop(rendezvous);

        let mut hdr = header.encode();
        if self.fault == Some(Fault::CorruptHeader) {
            hdr[0] ^= 0xff;
        }
        fdpass::send(mine.as_fd(), &hdr, &[])?;
        if self.fault == Some(Fault::ChildExitMidSend) {
            fdpass::send(mine.as_fd(), &payload[..payload.len() / 2], &[])?;
            tracing::warn!("{FERRY_TEST_FAULT}=child-exit-mid-send: the restored task exits now");
            exit_now(1);
        }
        fdpass::send(mine.as_fd(), payload, &[])?;
        for batch in fds.chunks(MAX_FDS_PER_MSG) {
            let mut b = [0u8; FD_BATCH_LEN];
            b[..4].copy_from_slice(&FD_BATCH_MAGIC);
            b[4..].copy_from_slice(&(batch.len() as u32).to_le_bytes());
            fdpass::send(mine.as_fd(), &b, batch)?;
        }
        let mut ack = [0u8; 1];
        fdpass::recv_exact(mine.as_fd(), &mut ack, "ack").map_err(|e| {
            PluginError::Copy(format!(
                "the main CRIU process did not accept the copy plan ({e}); see its log for why"
            ))
        })?;
        if ack[0] != ACK {
            return Err(PluginError::Copy(format!(
                "unexpected ack byte {:#x}",
                ack[0]
            )));
        }
        Ok(())
    }
}

impl Refill for RestoreEngine {
    fn refill(&self, cx: &Ctx<'_>, backend: &dyn Backend, plan: CopyPlan) -> Result<()> {
        plan.validate()?;
        if self.parallel {
            let (header, payload) = protocol::encode_plan(&plan)?;
            let fds: Vec<BorrowedFd<'_>> = plan.buffers.iter().map(|b| b.fd.as_fd()).collect();
            self.send(cx.host, header, &payload, &fds)?;
            tracing::info!(
                pid = plan.pid,
                ext_id = plan.ext_id,
                buffers = plan.buffers.len(),
                "copy plan handed to the main CRIU process"
            );
            return Ok(());
        }
        // Sequential: copy here, in the restored task, before host memory is restored.
        let stats = run_plan_with(cx, backend, &plan, self.chunk, &self.slots, &|_, _| {})?;
        let (header, payload) =
            protocol::encode_report(plan.backend, plan.ext_id, plan.pid, &stats)?;
        if let Err(e) = self.send(cx.host, header, &payload, &[]) {
            // The copy itself succeeded; losing its stats must not fail the restore.
            tracing::warn!("could not report sequential copy stats: {e}");
        }
        Ok(())
    }
}
