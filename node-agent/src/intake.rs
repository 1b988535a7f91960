//! Work intake: watches this node's NodeTasks (label `ferry.dev/node=<node>`) and runs each
//! one to a terminal status, at most `workers` at a time.
//!
//! kube-runtime's `Controller` gives the queue: one reconcile per task at a time, bounded
//! concurrency, retries with backoff on API errors, graceful shutdown. A reconcile runs the
//! whole task (minutes for a big image) while a side loop renews `status.heartbeatTime`, so
//! the operator can tell a slow agent from a dead one. The agent is the only writer of
//! NodeTask status (server-side apply, field manager `ferry-agent/<node>`).
//!
//! Restart semantics: a task that is terminal is never redone. A task found `Running` was
//! started by a previous incarnation of this agent; it is handed to the executor with
//! [`Attempt::resumed`] set, and the executor decides (clean up and retry, or fail with a
//! reason where redoing is unsafe).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::names::{field_manager, label};
use ferry_api::{NodeTask, NodeTaskStatus, TaskPhase, TaskResult, TransferStats};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, error, info, info_span, warn};

use crate::metrics::Metrics;

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
}

/// A task failure, as the task's status message says it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TaskFailure(pub String);

/// The result of one task.
pub type TaskOutcome = Result<TaskResult, TaskFailure>;

/// Runs tasks: checkpoint, restore, delete (the agent's `worker` module in production; tests
/// may plug their own where they test intake alone).
pub trait Executor: Send + Sync + 'static {
    /// Runs `task` to its end.
    fn execute(
        &self,
        task: Arc<NodeTask>,
        attempt: Attempt,
    ) -> Pin<Box<dyn Future<Output = TaskOutcome> + Send + 'static>>;
}

/// Intake settings.
#[derive(Clone, Debug)]
pub struct IntakeConfig {
    /// This node.
    pub node: String,
    /// Tasks run at once.
    pub workers: u16,
    /// Period of `status.heartbeatTime` renewals while a task runs.
    pub heartbeat_every: Duration,
    /// After SIGTERM, how long running tasks may still finish before they are failed.
    pub shutdown_grace: Duration,
}

struct Context {
    client: Client,
    config: IntakeConfig,
    executor: Arc<dyn Executor>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
}

/// Errors of the intake loop (API errors; task failures are statuses, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    /// The API server refused or failed a call.
    #[error("API: {0}")]
    Kube(#[from] kube::Error),
    /// The object has no namespace.
    #[error("NodeTask {0} has no namespace")]
    NoNamespace(String),
}

/// Watches and runs this node's tasks until `shutdown` turns true; then waits for running
/// tasks up to the grace period (failing those that do not finish) and returns.
pub async fn run(
    client: Client,
    config: IntakeConfig,
    executor: Arc<dyn Executor>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
) {
    let api: Api<NodeTask> = Api::all(client.clone());
    let selector = format!("{}={}", label::NODE, config.node);
    let workers = config.workers.max(1);
    let mut stop = shutdown.clone();
    let ctx = Arc::new(Context {
        client,
        config,
        executor,
        metrics,
        shutdown,
    });
    Controller::new(api, watcher::Config::default().labels(&selector))
        .with_config(ControllerConfig::default().concurrency(workers))
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                warn!(error = %e, "task reconcile failed");
            }
        })
        .await;
}

fn error_policy(_task: Arc<NodeTask>, err: &IntakeError, _ctx: Arc<Context>) -> Action {
    warn!(error = %err, "retrying the task in 5 s");
    Action::requeue(Duration::from_secs(5))
}

async fn reconcile(task: Arc<NodeTask>, ctx: Arc<Context>) -> Result<Action, IntakeError> {
    let phase = task.phase();
    if phase.is_terminal() || task.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if *ctx.shutdown.borrow() {
        return Ok(Action::await_change());
    }
    let namespace = task
        .namespace()
        .ok_or_else(|| IntakeError::NoNamespace(task.name_any()))?;
    let span = info_span!(
        "task",
        namespace = %namespace,
        name = %task.name_any(),
        operation = task.spec.operation.as_str(),
        request = %task.spec.checkpoint_request,
    );
    run_task(task, ctx, namespace).instrument(span).await
}

async fn run_task(
    task: Arc<NodeTask>,
    ctx: Arc<Context>,
    namespace: String,
) -> Result<Action, IntakeError> {
    let writer = StatusWriter::new(&ctx.client, &namespace, &ctx.config.node);
    let name = task.name_any();
    let resumed = task.phase() == TaskPhase::Running;
    let previous = task.status.clone().unwrap_or_default();
    let start_time = previous
        .start_time
        .clone()
        .filter(|_| resumed)
        .unwrap_or_else(|| Time(Timestamp::now()));
    let (progress, mut progress_rx) = Progress::new();
    progress.say(if resumed {
        "resuming after an agent restart"
    } else {
        "started"
    });
    let mut status = NodeTaskStatus {
        phase: Some(TaskPhase::Running),
        message: Some(progress_rx.borrow().message.clone()),
        heartbeat_time: Some(Time(Timestamp::now())),
        start_time: Some(start_time.clone()),
        completion_time: None,
        result: None,
    };
    writer.apply(&name, &status).await?;
    info!(resumed, "task started");

    // The heartbeat loop: renews heartbeatTime and copies progress into the status.
    let (done_tx, mut done_rx) = watch::channel(false);
    let heartbeat = {
        let writer = writer.clone();
        let name = name.clone();
        let mut status = status.clone();
        let every = ctx.config.heartbeat_every;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = done_rx.wait_for(|d| *d) => break,
                }
                let state = progress_rx.borrow_and_update().clone();
                status.heartbeat_time = Some(Time(Timestamp::now()));
                status.message = Some(state.message);
                if let Some(transfer) = state.transfer {
                    status.result = Some(TaskResult {
                        transfer: Some(transfer),
                        ..Default::default()
                    });
                }
                if let Err(e) = writer.apply(&name, &status).await {
                    warn!(error = %e, "could not write the task heartbeat");
                }
            }
        })
    };

    let timeout = remaining(&start_time, task.spec.options.timeout_seconds);
    let started = Instant::now();
    let exec = ctx.executor.execute(
        task.clone(),
        Attempt {
            resumed,
            progress: progress.clone(),
        },
    );
    let mut shutdown = ctx.shutdown.clone();
    let grace = ctx.config.shutdown_grace;
    let outcome = tokio::select! {
        r = exec => r,
        _ = tokio::time::sleep(timeout) => Err(TaskFailure(format!(
            "timed out after {} s (options.timeoutSeconds)",
            task.spec.options.timeout_seconds
        ))),
        _ = async {
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => Err(TaskFailure(format!(
            "the agent on {} was stopped (SIGTERM) and the task did not finish within {} s; nothing was published",
            ctx.config.node,
            grace.as_secs()
        ))),
    };
    let _ = done_tx.send(true);
    let _ = heartbeat.await;

    let now = Time(Timestamp::now());
    status.heartbeat_time = Some(now.clone());
    status.completion_time = Some(now);
    let result_label = match outcome {
        Ok(result) => {
            info!(seconds = started.elapsed().as_secs_f64(), "task succeeded");
            status.phase = Some(TaskPhase::Succeeded);
            status.message = Some("done".into());
            status.result = Some(result);
            TaskPhase::Succeeded
        }
        Err(TaskFailure(message)) => {
            error!(seconds = started.elapsed().as_secs_f64(), error = %message, "task failed");
            status.phase = Some(TaskPhase::Failed);
            status.message = Some(message);
            TaskPhase::Failed
        }
    };
    // The final status must land: retry a few times before leaving it to the error policy
    // (which re-runs the reconcile, and the executor sees `resumed`).
    let mut attempt = 0;
    loop {
        match writer.apply(&name, &status).await {
            Ok(()) => break,
            Err(e) if attempt < 5 => {
                attempt += 1;
                warn!(error = %e, attempt, "could not write the final task status; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    ctx.metrics
        .task(task.spec.operation.as_str(), result_label.as_str());
    Ok(Action::await_change())
}

/// Time left of the task's timeout, counted from its start time.
fn remaining(start: &Time, timeout_seconds: i32) -> Duration {
    let elapsed = Timestamp::now().duration_since(start.0);
    let left = jiff::SignedDuration::from_secs(i64::from(timeout_seconds.max(1))) - elapsed;
    Duration::try_from(left).unwrap_or(Duration::ZERO)
}

/// Writes a task's status by server-side apply, as this node's agent.
#[derive(Clone)]
pub struct StatusWriter {
    api: Api<NodeTask>,
    params: PatchParams,
}

impl StatusWriter {
    /// A writer for tasks in `namespace`, as the agent of `node`.
    pub fn new(client: &Client, namespace: &str, node: &str) -> Self {
        StatusWriter {
            api: Api::namespaced(client.clone(), namespace),
            params: PatchParams::apply(&field_manager::agent(node)).force(),
        }
    }

    /// Applies the whole status (fields this agent stops setting are removed).
    pub async fn apply(&self, name: &str, status: &NodeTaskStatus) -> kube::Result<()> {
        let body = json!({
            "apiVersion": format!("{}/{}", ferry_api::GROUP, ferry_api::VERSION),
            "kind": "NodeTask",
            "status": status,
        });
        self.api
            .patch_status(name, &self.params, &Patch::Apply(&body))
            .await
            .map(|_| ())
    }
}
