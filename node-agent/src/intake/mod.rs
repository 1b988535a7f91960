//! Work intake: watches this node's NodeTasks (label `ferry.dev/node=<node>`) and runs each
//! one to a terminal status, at most `workers` at a time.
//!
//! kube-runtime's `Controller` gives the queue: one reconcile per task at a time, bounded
//! concurrency, retries with backoff on API errors, graceful shutdown. A reconcile runs the
//! whole task (minutes for a big image) while a side loop renews `status.heartbeatTime`, so
//! the operator can tell a slow agent from a dead one. The agent is the only writer of
//! NodeTask status (server-side apply, field manager `ferry-agent/<node>`; [`StatusWriter`]).
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
use tracing::{Instrument, error, info, info_span, warn};

use crate::executor::error::TaskError;
use crate::executor::task::{Attempt, Executor, Progress};
use crate::telemetry::metrics::Metrics;

mod status;

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
        finished: Default::default(),
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
        _ = tokio::time::sleep(timeout) => Err(TaskError::TimedOut {
            seconds: task.spec.options.timeout_seconds,
        }),
        _ = async {
            let _ = shutdown.wait_for(|s| *s).await;
            tokio::time::sleep(grace).await;
        } => Err(TaskError::Stopped {
            node: ctx.config.node.clone(),
            grace_s: grace.as_secs(),
        }),
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

/// Time left of the task's timeout, counted from its start time.
fn remaining(start: &Time, timeout_seconds: i32) -> Duration {
    let elapsed = Timestamp::now().duration_since(start.0);
    let left = jiff::SignedDuration::from_secs(i64::from(timeout_seconds.max(1))) - elapsed;
    Duration::try_from(left).unwrap_or(Duration::ZERO)
}
