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

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ferry_api::stats::DeviceStats;
use rustix::event::{PollFd, PollFlags, poll};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair, sockopt};

use crate::backends::{Backend, Ctx};
use crate::config::{Config, Fault};
use crate::engine::copy::{CopyOutcome, copy_device};
use crate::engine::fdpass::{self, MAX_FDS_PER_MSG};
use crate::engine::plan::CopyPlan;
use crate::engine::protocol::{self, ACK, FD_BATCH_LEN, FD_BATCH_MAGIC, HEADER_LEN, Header, Kind};
use crate::error::{PluginError, Result};
use crate::host::Host;
use crate::state::PluginState;

const RENDEZVOUS_TAG: &[u8; 4] = b"FRYR";

/// Where RESTORE_EXT_FILE hands a backend's copy plan.
pub trait Refill: Sync {
    /// Copies now (sequential) or hands the plan to the main CRIU process (parallel).
    fn refill(&self, cx: &Ctx<'_>, backend: &dyn Backend, plan: CopyPlan) -> Result<()>;
}

/// Bounds how many device copies run at once (`FERRY_WORKERS`; 0 = no bound).
struct Slots {
    limit: usize,
    busy: Mutex<usize>,
    freed: std::sync::Condvar,
}

impl Slots {
    fn new(limit: usize) -> Self {
        Slots {
            limit,
            busy: Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits for a free slot; the slot is returned when the guard drops.
    fn acquire(&self) -> SlotGuard<'_> {
        if self.limit > 0
            && let Ok(mut busy) = self.busy.lock()
        {
            while *busy >= self.limit {
                match self.freed.wait(busy) {
                    Ok(b) => busy = b,
                    Err(_) => return SlotGuard(None),
                }
            }
            *busy += 1;
            return SlotGuard(Some(self));
        }
        SlotGuard(None)
    }
}

struct SlotGuard<'a>(Option<&'a Slots>);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if let Some(s) = self.0
            && let Ok(mut busy) = s.busy.lock()
        {
            *busy -= 1;
            s.freed.notify_one();
        }
    }
}

#[derive(Default)]
struct Shared {
    handlers: Mutex<Vec<JoinHandle<()>>>,
    errors: Mutex<Vec<String>>,
    pids: Mutex<HashSet<u32>>,
    devices: Mutex<Vec<DeviceStats>>,
    /// First copy start and last copy end, for the device-phase wall time.
    span: Mutex<Option<(Instant, Instant)>>,
    /// Vendor of the backend whose commands arrived (restored tasks claim in their own copy
    /// of the state, so the main process learns it here).
    vendor: Mutex<Option<ferry_api::stats::GpuVendor>>,
}

impl Shared {
    fn error(&self, e: String) {
        tracing::error!("device copy failed: {e}");
        if let Ok(mut v) = self.errors.lock() {
            v.push(e);
        }
    }

    fn record(&self, pid: u32, label: &str, out: &CopyOutcome) {
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
    slots: Slots,
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
            slots: Slots::new(config.workers),
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

    /// Main CRIU process, POST_FORKING: starts the worker with SIGCHLD blocked.
    pub fn start_worker(state: &Arc<PluginState>) -> Result<()> {
        let engine = &state.engine;
        let mut inner = engine.inner()?;
        let Some(server) = inner.server.take() else {
            return Ok(());
        };
        let (stop_rx, stop_tx) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| PluginError::io("pipe for the worker's stop signal", e.into()))?;
        inner.stop_tx = Some(stop_tx);
        let st = Arc::clone(state);
        let _mask = SigchldBlocked::new()?;
        let handle = std::thread::Builder::new()
            .name("ferry-restore".into())
            .spawn(move || worker(st, server, stop_rx))
            .map_err(|e| PluginError::io("spawn the restore worker", e))?;
        inner.worker = Some(handle);
        Ok(())
    }

    /// Main CRIU process, RESUME_DEVICES_LATE: waits for every copy (once) and returns the
    /// combined result. Later calls return the same result.
    pub fn join_for(&self, state: &PluginState, _pid: i32) -> Result<()> {
        let mut inner = self.inner()?;
        if inner.result.is_none() {
            let waited = Instant::now();
            let r = self.stop_and_join(&mut inner);
            if let Ok(mut s) = state.stats.lock() {
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
    pub fn shutdown(&self, state: &PluginState) -> Result<()> {
        let pending = self.inner()?.result.is_none();
        if pending {
            return self.join_for(state, 0);
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
        set_timeouts(mine.as_fd(), self.io_timeout)?;
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
            tracing::warn!("FERRY_TEST_FAULT=child-exit-mid-send: the restored task exits now");
            crate::abi::exit_now(1);
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

/// Copies every device of a plan, one thread per device, at most `slots.limit` at once
/// across all plans.
fn run_plan_with(
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

fn set_timeouts(fd: BorrowedFd<'_>, t: Duration) -> Result<()> {
    sockopt::set_socket_timeout(fd, sockopt::Timeout::Recv, Some(t))
        .and_then(|()| sockopt::set_socket_timeout(fd, sockopt::Timeout::Send, Some(t)))
        .map_err(|e| PluginError::io("set restore socket timeouts", e.into()))
}

/// Blocks SIGCHLD in the calling thread until dropped, so a thread spawned meanwhile
/// inherits the blocked mask (CRIU's main thread must keep receiving SIGCHLD).
struct SigchldBlocked {
    old: crate::abi::SigMask,
}

impl SigchldBlocked {
    fn new() -> Result<Self> {
        let old = crate::abi::block_sigchld()?;
        Ok(SigchldBlocked { old })
    }
}

impl Drop for SigchldBlocked {
    fn drop(&mut self) {
        crate::abi::restore_sigmask(&self.old);
    }
}

fn worker(state: Arc<PluginState>, server: OwnedFd, stop_rx: OwnedFd) {
    let shared = Arc::clone(&state.engine.shared);
    loop {
        let mut fds = [
            PollFd::new(&server, PollFlags::IN),
            PollFd::new(&stop_rx, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                shared.error(format!("poll on the restore socket: {e}"));
                return;
            }
        }
        let server_ready = !fds[0].revents().is_empty();
        let stop = !fds[1].revents().is_empty();
        if server_ready {
            accept_one(&state, server.as_fd());
        }
        if stop && !server_ready {
            // Everything sent before RESUME_DEVICES_LATE is already queued: drain it.
            while socket_readable(server.as_fd()) {
                accept_one(&state, server.as_fd());
            }
            return;
        }
    }
}

fn socket_readable(fd: BorrowedFd<'_>) -> bool {
    let mut p = [PollFd::new(&fd, PollFlags::IN)];
    matches!(poll(&mut p, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
}

fn accept_one(state: &Arc<PluginState>, server: BorrowedFd<'_>) {
    let shared = &state.engine.shared;
    let mut tag = [0u8; 8];
    let (n, fds) = match fdpass::recv(server, &mut tag) {
        Ok(x) => x,
        Err(e) => {
            shared.error(format!("receive on the rendezvous socket: {e}"));
            return;
        }
    };
    if n != RENDEZVOUS_TAG.len() || &tag[..4] != RENDEZVOUS_TAG || fds.len() != 1 {
        shared.error(format!(
            "malformed rendezvous message ({n} bytes, {} fds)",
            fds.len()
        ));
        return;
    }
    let Some(channel) = fds.into_iter().next() else {
        return;
    };
    let st = Arc::clone(state);
    match std::thread::Builder::new()
        .name("ferry-cmd".into())
        .spawn(move || {
            if let Err(e) = handle_channel(&st, channel) {
                st.engine.shared.error(e.to_string());
            }
        }) {
        Ok(h) => {
            if let Ok(mut v) = shared.handlers.lock() {
                v.push(h);
            }
        }
        Err(e) => shared.error(format!("spawn a command handler: {e}")),
    }
}

fn handle_channel(state: &PluginState, channel: OwnedFd) -> Result<()> {
    let engine = &state.engine;
    set_timeouts(channel.as_fd(), engine.io_timeout)?;
    let mut hdr = [0u8; HEADER_LEN];
    fdpass::recv_exact(channel.as_fd(), &mut hdr, "command header")?;
    let header = Header::decode(&hdr)?;
    let mut payload = vec![0u8; header.payload_len as usize];
    fdpass::recv_exact(channel.as_fd(), &mut payload, "command payload")?;
    if let Ok(mut p) = engine.shared.pids.lock() {
        p.insert(header.pid);
    }
    if let (Ok(b), Ok(mut v)) = (state.backend(header.backend), engine.shared.vendor.lock()) {
        *v = Some(b.vendor());
    }
    match header.kind {
        Kind::Report => {
            let stats = protocol::decode_report(&header, &payload)?;
            fdpass::send(channel.as_fd(), &[ACK], &[])?;
            if let Ok(mut d) = engine.shared.devices.lock() {
                d.extend(stats);
            }
            Ok(())
        }
        Kind::Plan => {
            let mut fds = Vec::with_capacity(header.n_buffers as usize);
            while fds.len() < header.n_buffers as usize {
                let mut b = [0u8; FD_BATCH_LEN];
                let got = fdpass::recv_exact(channel.as_fd(), &mut b, "fd batch")?;
                let count = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
                if b[..4] != FD_BATCH_MAGIC || got.len() != count || count == 0 {
                    return Err(PluginError::invalid(format!(
                        "malformed fd batch: announced {count} fds, received {}",
                        got.len()
                    )));
                }
                fds.extend(got);
            }
            let plan = protocol::decode_plan(&header, &payload, fds)?;
            fdpass::send(channel.as_fd(), &[ACK], &[])?;
            drop(channel);
            let backend = state.backend(plan.backend)?;
            let cx = state.ctx();
            let shared = &engine.shared;
            run_plan_with(
                &cx,
                backend,
                &plan,
                engine.chunk,
                &engine.slots,
                &|label, out| shared.record(plan.pid, label, out),
            )?;
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn ferry_workers_bounds_concurrent_device_copies() {
        let slots = Slots::new(2);
        let now = AtomicUsize::new(0);
        let peak = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let _g = slots.acquire();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(30));
                    now.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        assert_eq!(*slots.busy.lock().unwrap(), 0);
    }

    #[test]
    fn zero_workers_means_no_bound() {
        let slots = Slots::new(0);
        let a = slots.acquire();
        let b = slots.acquire();
        let c = slots.acquire();
        assert!(a.0.is_none() && b.0.is_none() && c.0.is_none());
    }
}
