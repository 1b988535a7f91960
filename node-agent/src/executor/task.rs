//! The contract between the intake and the executor: the [`Executor`] trait a task is handed
//! to, with its [`Attempt`] (was it resumed, where to report progress), and what it returns.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ferry_api::{NodeTask, TaskResult, TransferStats};
use tokio::sync::watch;

use crate::executor::error::TaskError;
use crate::runtime::control::ToolControl;

/// What a worker reports while it runs; the heartbeat loop copies it into the status.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProgressState {
    /// One line: what the agent is doing.
    pub message: String,
    /// Pull progress, when pulling.
    pub transfer: Option<TransferStats>,
}

/// A worker's handle to report progress.
#[derive(Clone, Debug)]
pub struct Progress(Arc<watch::Sender<ProgressState>>);

impl Progress {
    /// A progress handle and the receiver the heartbeat loop reads.
    pub fn new() -> (Self, watch::Receiver<ProgressState>) {
        let (tx, rx) = watch::channel(ProgressState::default());
        (Progress(Arc::new(tx)), rx)
    }

    /// Replaces the message.
    pub fn say(&self, message: impl Into<String>) {
        let message = message.into();
        self.0.send_modify(|s| s.message = message);
    }

    /// Records pull progress.
    pub fn transfer(&self, message: impl Into<String>, stats: TransferStats) {
        let message = message.into();
        self.0.send_modify(|s| {
            s.message = message;
            s.transfer = Some(stats);
        });
    }
}

/// How a task reaches its executor.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The task was `Running` when this agent found it: a previous agent process started it
    /// and did not finish.
    pub resumed: bool,
    /// Progress reporting.
    pub progress: Progress,
    /// The task's deadline and cancel switch: every tool the task runs ends with it (the
    /// intake cancels it at the deadline, on the NodeTask's deletion and on shutdown).
    pub control: ToolControl,
}

/// The result of one task.
pub type TaskOutcome = Result<TaskResult, TaskError>;

/// Runs tasks: checkpoint, restore, delete ([`crate::executor::worker::Worker`] in production;
/// tests may plug their own where they test the intake alone).
pub trait Executor: Send + Sync + 'static {
    /// Runs `task` to its end.
    fn execute(
        &self,
        task: Arc<NodeTask>,
        attempt: Attempt,
    ) -> Pin<Box<dyn Future<Output = TaskOutcome> + Send + 'static>>;
}
