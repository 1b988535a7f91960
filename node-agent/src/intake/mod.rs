//! Work intake: watches this node's NodeTasks (label `ferry.dev/node=<node>`) and runs each
//! one to a terminal status, at most `workers` at a time.
//!
//! kube-runtime's `Controller` gives the queue: one reconcile per task at a time, bounded
//! concurrency, retries with backoff on API errors, graceful shutdown. A reconcile runs the
//! whole task (minutes for a big image) while a side loop renews `status.heartbeatTime`, so
//! the operator can tell a slow agent from a dead one. The agent is the only writer of
//! NodeTask status (server-side apply, field manager `ferry-agent/<node>`; [`StatusWriter`]).
//!
//! Each task has a deadline (`options.timeoutSeconds` from its start) and a [`ToolControl`]:
//! at the deadline, when its NodeTask is deleted ([`cancel`]) or when the agent stops, the
//! control kills the tool the task runs (CRIU, runc, ...) with its process group; dropping the
//! executor's future alone would leave it running. A task is checked before it runs
//! ([`trust`]): one this agent must not run fails with the reason and touches nothing.
//!
//! A panic does not take the intake down silently: the executor runs each task on its own
//! tokio task, so a panicking task fails with the panic's message; a panic in the intake's
//! own loop restarts the loop (tasks it was running are resumed, as after an agent restart),
//! so the node never keeps a ready Lease with no loop taking its tasks.
//!
//! Restart semantics: a task that is terminal is never redone. A task found `Running` was
//! started by a previous incarnation of this agent; it is handed to the executor with
//! [`Attempt::resumed`] set, and the executor decides (clean up and retry, or fail with a
//! reason where redoing is unsafe).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_api::names::label;
use ferry_api::{NodeTask, NodeTaskStatus, TaskPhase, TaskResult};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, error, info, info_span, warn};

use crate::executor::error::TaskError;
use crate::executor::task::{Attempt, Executor, Progress, TaskOutcome};
use crate::runtime::control::ToolControl;
use crate::telemetry::metrics::Metrics;

mod cancel;
mod status;
mod trust;

pub use status::StatusWriter;

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
    /// Tasks this process finished: the watch cache may still show them `Running` (our own
    /// status writes queue another reconcile), and such a stale copy must not look like a
    /// task left behind by a previous agent process.
    finished: std::sync::Mutex<std::collections::HashSet<String>>,
    client: Client,
    config: IntakeConfig,
    executor: Arc<dyn Executor>,
    metrics: Arc<Metrics>,
    shutdown: watch::Receiver<bool>,
    /// The tasks running now, cancelled when their NodeTask is deleted.
    running: Arc<cancel::Running>,
}

/// How long a cancelled task's executor may take to end (its tool is killed at once; this
/// covers the clean-up after it: discarding a staged image) before it is abandoned.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Pause before the task loop is started again after it panicked.
const RESTART_AFTER: Duration = Duration::from_secs(1);

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
    let ctx = Arc::new(Context {
        finished: Default::default(),
        client,
        config,
        executor,
        metrics,
        shutdown: shutdown.clone(),
        running: Default::default(),
    });
    let deletions = tokio::spawn(cancel::watch_deletions(
        api.clone(),
        selector.clone(),
        ctx.running.clone(),
        shutdown.clone(),
    ));
    loop {
        let round = tokio::spawn(task_loop(api.clone(), selector.clone(), ctx.clone()));
        let ended = round.await;
        if *shutdown.borrow() {
            break;
        }
        match ended {
            Err(e) if e.is_panic() => error!(
                panic = %panic_message(e.into_panic()),
                "the task loop panicked; restarting it"
            ),
            Err(e) => error!(error = %e, "the task loop was cancelled; restarting it"),
            Ok(()) => warn!("the task loop ended without a shutdown; restarting it"),
        }
        tokio::time::sleep(RESTART_AFTER).await;
    }
    deletions.abort();
}

/// The controller over this node's tasks, until shutdown.
async fn task_loop(api: Api<NodeTask>, selector: String, ctx: Arc<Context>) {
    let workers = ctx.config.workers.max(1);
    let mut stop = ctx.shutdown.clone();
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

/// A panic's message (`panic!` with a literal or a formatted string), else a placeholder.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => payload
            .downcast_ref::<&str>()
            .map_or_else(|| "a non-string panic".to_string(), |s| s.to_string()),
    }
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
    let uid = task.uid().unwrap_or_default();
    if ctx
        .finished
        .lock()
        .is_ok_and(|finished| finished.contains(&uid))
    {
        return Ok(Action::await_change());
    }
    // The cache can lag behind the API server: decide on the current object.
    let api: Api<NodeTask> = Api::namespaced(ctx.client.clone(), &namespace);
    let Some(task) = api.get_opt(&task.name_any()).await?.map(Arc::new) else {
        return Ok(Action::await_change());
    };
    if task.phase().is_terminal() || task.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
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
    let uid = task.uid().unwrap_or_default();
    if let Err(refusal) = trust::check(&task, &namespace, &ctx.config.node) {
        return refuse(&ctx, &writer, &task, refusal).await;
    }
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
        let running = ctx.running.clone();
        let uid = uid.clone();
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
                match writer.apply(&name, &status).await {
                    Ok(()) => {}
                    // Gone: the deletion watch may not have said so yet.
                    Err(kube::Error::Api(s)) if s.is_not_found() => running.deleted(&uid),
                    Err(e) => warn!(error = %e, "could not write the task heartbeat"),
                }
            }
        })
    };

    let timeout = remaining(&start_time, task.spec.options.timeout_seconds);
    let started = Instant::now();
    // Every tool of the task ends by the task's deadline, and with the task.
    let control = ToolControl::new(Some(started + timeout));
    let _cancel_on_drop = CancelOnDrop(control.clone());
    let mut registration = ctx.running.register(&uid);
    // Its own tokio task: a panic in the executor fails this task, not the loop.
    let mut exec = tokio::spawn(ctx.executor.execute(
        task.clone(),
        Attempt {
            resumed,
            progress: progress.clone(),
            control: control.clone(),
        },
    ));
    let mut shutdown = ctx.shutdown.clone();
    let grace = ctx.config.shutdown_grace;
    let outcome = tokio::select! {
        r = &mut exec => joined(r),
        _ = tokio::time::sleep(timeout) => {
            stop(&control, exec).await;
            Err(TaskError::TimedOut { seconds: task.spec.options.timeout_seconds })
        }
        _ = registration.deleted() => {
            stop(&control, exec).await;
            Err(TaskError::Deleted)
        }
        _ = async {
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => {
            stop(&control, exec).await;
            Err(TaskError::Stopped { node: ctx.config.node.clone(), grace_s: grace.as_secs() })
        }
    };
    let deleted = matches!(outcome, Err(TaskError::Deleted));
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
        Err(failure) => {
            let message = failure.to_string();
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
            // A deleted task has no status left to write.
            Err(kube::Error::Api(s)) if s.is_not_found() && deleted => break,
            Err(e) if attempt < 5 => {
                attempt += 1;
                warn!(error = %e, attempt, "could not write the final task status; retrying");
                tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    if let Ok(mut finished) = ctx.finished.lock() {
        finished.insert(task.uid().unwrap_or_default());
    }
    ctx.metrics
        .task(task.spec.operation.as_str(), result_label.as_str());
    Ok(Action::await_change())
}

/// The executor's result; a panic in it is the task's failure.
fn joined(r: Result<TaskOutcome, tokio::task::JoinError>) -> TaskOutcome {
    r.unwrap_or_else(|e| {
        let message = if e.is_panic() {
            panic_message(e.into_panic())
        } else {
            e.to_string()
        };
        error!(panic = %message, "the task's executor panicked");
        Err(TaskError::Panicked { message })
    })
}

/// Cancels the task's tools and gives its executor [`STOP_GRACE`] to end (it sees its tool
/// killed and cleans up); after that it is aborted.
async fn stop(control: &ToolControl, mut exec: JoinHandle<TaskOutcome>) {
    control.cancel();
    match tokio::time::timeout(STOP_GRACE, &mut exec).await {
        Ok(r) => {
            if let Err(e) = joined(r) {
                info!(error = %e, "the cancelled task's executor ended");
            }
        }
        Err(_) => {
            warn!(
                grace_s = STOP_GRACE.as_secs(),
                "the cancelled task's executor did not end in time; abandoning it"
            );
            exec.abort();
        }
    }
}

/// Cancels a task's tools when its reconcile is dropped (a panic in the loop, a shutdown), so
/// that no tool outlives the code that waits for it.
struct CancelOnDrop(ToolControl);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// Fails a task this agent must not run ([`trust::check`]) without touching anything.
async fn refuse(
    ctx: &Context,
    writer: &StatusWriter,
    task: &NodeTask,
    refusal: TaskError,
) -> Result<Action, IntakeError> {
    warn!(error = %refusal, "task refused");
    let now = Time(Timestamp::now());
    let status = NodeTaskStatus {
        phase: Some(TaskPhase::Failed),
        message: Some(refusal.to_string()),
        heartbeat_time: Some(now.clone()),
        start_time: Some(now.clone()),
        completion_time: Some(now),
        result: None,
    };
    // The API server may refuse the write too (the node-scope policy lets an agent write only
    // its own node's tasks): there is nothing to retry then.
    if let Err(e) = writer.apply(&task.name_any(), &status).await {
        warn!(error = %e, "could not mark the refused task failed");
    }
    if let Ok(mut finished) = ctx.finished.lock() {
        finished.insert(task.uid().unwrap_or_default());
    }
    ctx.metrics
        .task(task.spec.operation.as_str(), TaskPhase::Failed.as_str());
    Ok(Action::await_change())
}

/// Time left of the task's timeout, counted from its start time.
fn remaining(start: &Time, timeout_seconds: i32) -> Duration {
    let elapsed = Timestamp::now().duration_since(start.0);
    let left = jiff::SignedDuration::from_secs(i64::from(timeout_seconds.max(1))) - elapsed;
    Duration::try_from(left).unwrap_or(Duration::ZERO)
}
