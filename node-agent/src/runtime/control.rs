//! A task's hold on the tools it runs (issue #14, finding 7): the deadline every tool run of
//! the task shares, and the switch that kills the one running now.
//!
//! The intake makes one [`ToolControl`] per task. When the task's deadline passes, its NodeTask
//! is deleted or the agent stops, the intake [`ToolControl::cancel`]s it: a tool that is running
//! is killed with its whole process group (see [`crate::runtime::exec`]) and no further tool of
//! the task starts. Dropping the executor's future is not enough: the tool runs on a blocking
//! thread and outlives it.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::EventfdFlags;

/// The deadline and cancel switch of one task's tool runs. `Default`: no deadline, never
/// cancelled (tools outside a task: GC, `--version`).
#[derive(Clone, Debug, Default)]
pub struct ToolControl(Option<Arc<Inner>>);

#[derive(Debug)]
struct Inner {
    deadline: Option<Instant>,
    cancelled: AtomicBool,
    /// An eventfd that turns readable on cancel, so a tool's watcher wakes at once (it polls
    /// it beside the tool's pidfd). `None` when the kernel gave none: the watcher then looks
    /// at the flag every [`POLL_SLICE`].
    wake: Option<OwnedFd>,
}

/// How often a watcher without an eventfd looks at the cancel flag.
pub(crate) const POLL_SLICE: Duration = Duration::from_millis(100);

impl ToolControl {
    /// A control whose tools must end by `deadline` (none: only their own limits apply).
    pub fn new(deadline: Option<Instant>) -> Self {
        let wake = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
            .map_err(|e| tracing::warn!(error = %e, "no eventfd for tool cancellation; polling"))
            .ok();
        ToolControl(Some(Arc::new(Inner {
            deadline,
            cancelled: AtomicBool::new(false),
            wake,
        })))
    }

    /// Kills the running tool (and its process group) and refuses to start another.
    pub fn cancel(&self) {
        let Some(inner) = &self.0 else { return };
        inner.cancelled.store(true, Ordering::SeqCst);
        if let Some(fd) = &inner.wake {
            // The counter only has to become non-zero; a full counter (never reached) is as good.
            let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
        }
    }

    /// Whether [`ToolControl::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|i| i.cancelled.load(Ordering::SeqCst))
    }

    /// Time left until the deadline (`None`: no deadline).
    pub fn remaining(&self) -> Option<Duration> {
        let deadline = self.0.as_ref()?.deadline?;
        Some(deadline.saturating_duration_since(Instant::now()))
    }

    /// `limit`, shortened to what is left of the deadline.
    pub fn limit(&self, limit: Duration) -> Duration {
        self.remaining().map_or(limit, |left| left.min(limit))
    }

    /// The fd that turns readable on cancel.
    pub(crate) fn wake_fd(&self) -> Option<BorrowedFd<'_>> {
        self.0.as_ref()?.wake.as_ref().map(|fd| fd.as_fd())
    }

    /// Whether this control can be cancelled at all (not the `Default` one).
    pub(crate) fn is_live(&self) -> bool {
        self.0.is_some()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_limit_is_cut_to_the_deadline_and_cancel_is_seen() {
        let none = ToolControl::default();
        assert_eq!(none.limit(Duration::from_secs(9)), Duration::from_secs(9));
        none.cancel();
        assert!(!none.is_cancelled());

        let c = ToolControl::new(Some(Instant::now() + Duration::from_secs(2)));
        assert!(c.limit(Duration::from_secs(600)) <= Duration::from_secs(2));
        assert_eq!(c.limit(Duration::from_millis(5)), Duration::from_millis(5));
        let copy = c.clone();
        assert!(!copy.is_cancelled());
        c.cancel();
        assert!(copy.is_cancelled());
        let mut buf = [0u8; 8];
        rustix::io::read(copy.wake_fd().unwrap(), &mut buf).unwrap();
        assert_eq!(u64::from_ne_bytes(buf), 1);
    }
}
