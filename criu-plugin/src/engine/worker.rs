//! The parallel restore's worker in the main CRIU process: it accepts each restored task's
//! command channel on the rendezvous socket, gives each channel a handler thread that reads,
//! checks and acks the command, then copies the plan's devices (see the `restore` module for
//! the whole sequence).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};

use super::fdpass;
use super::protocol::{
    self, ACK, FD_BATCH_LEN, FD_BATCH_MAGIC, HEADER_LEN, Header, Kind, RENDEZVOUS_TAG,
};
use super::results::Shared;
use super::run_plan::run_plan_with;
use super::slots::Slots;
use crate::contract::BackendLookup;
use crate::error::{PluginError, Result};

/// What the worker and its handler threads share.
pub struct Worker {
    /// The active backends and the context to call them with.
    pub lookup: Arc<dyn BackendLookup>,
    pub shared: Arc<Shared>,
    pub slots: Arc<Slots>,
    /// `FERRY_CHUNK_SIZE`.
    pub chunk: usize,
    /// `FERRY_IO_TIMEOUT`.
    pub io_timeout: Duration,
}

pub fn run(w: Arc<Worker>, server: OwnedFd, stop_rx: OwnedFd) {
    let shared = Arc::clone(&w.shared);
    // Before any handler thread: they share this thread's fs context, not CRIU's.
    if let Err(e) = crate::sys::process::unshare_fs() {
        shared.error(e.to_string());
        return;
    }
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
            accept_one(&w, server.as_fd());
        }
        if stop && !server_ready {
            // Everything sent before RESUME_DEVICES_LATE is already queued: drain it.
            while socket_readable(server.as_fd()) {
                accept_one(&w, server.as_fd());
            }
            return;
        }
    }
}

fn socket_readable(fd: BorrowedFd<'_>) -> bool {
    let mut p = [PollFd::new(&fd, PollFlags::IN)];
    matches!(poll(&mut p, Some(&rustix::event::Timespec { tv_sec: 0, tv_nsec: 0 })), Ok(n) if n > 0)
}

fn accept_one(w: &Arc<Worker>, server: BorrowedFd<'_>) {
    let shared = &w.shared;
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
    let w = Arc::clone(w);
    match std::thread::Builder::new()
        .name("ferry-cmd".into())
        .spawn(move || {
            if let Err(e) = handle_channel(&w, channel) {
                w.shared.error(e.to_string());
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

fn handle_channel(w: &Worker, channel: OwnedFd) -> Result<()> {
    fdpass::set_timeouts(channel.as_fd(), w.io_timeout)?;
    let mut hdr = [0u8; HEADER_LEN];
    fdpass::recv_exact(channel.as_fd(), &mut hdr, "command header")?;
    let header = Header::decode(&hdr)?;
    let mut payload = vec![0u8; header.payload_len as usize];
    fdpass::recv_exact(channel.as_fd(), &mut payload, "command payload")?;
    if let Ok(mut p) = w.shared.pids.lock() {
        p.insert(header.pid);
    }
    if let (Ok(b), Ok(mut v)) = (w.lookup.backend(header.backend), w.shared.vendor.lock()) {
        *v = Some(b.vendor());
    }
    match header.kind {
        Kind::Report => {
            let stats = protocol::decode_report(&header, &payload)?;
            fdpass::send(channel.as_fd(), &[ACK], &[])?;
            if let Ok(mut d) = w.shared.devices.lock() {
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
            let backend = w.lookup.backend(plan.backend)?;
            let cx = w.lookup.ctx();
            let shared = &w.shared;
            run_plan_with(&cx, backend, &plan, w.chunk, &w.slots, &|label, out| {
                shared.record(plan.pid, label, out)
            })?;
            Ok(())
        }
    }
}
