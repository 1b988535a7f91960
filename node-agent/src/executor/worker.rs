//! The [`Executor`] the intake hands this node's tasks to: one operation per task kind.

use std::sync::Arc;

use ferry_api::{NodeTask, TaskOperation};
use futures::future::BoxFuture;
use kube::Client;

use crate::executor::checkpoint;
use crate::executor::context::{Context, WorkerConfig};
use crate::executor::delete;
use crate::executor::restore;
use crate::executor::task::{Attempt, Executor, TaskOutcome};
use crate::telemetry::metrics::Metrics;

/// Runs NodeTasks.
#[derive(Clone)]
pub struct Worker {
    ctx: Arc<Context>,
}

impl Worker {
    /// A worker using `client` for pods and Secrets.
    pub fn new(client: Client, config: WorkerConfig, metrics: Arc<Metrics>) -> Self {
        Worker {
            ctx: Arc::new(Context {
                client,
                config,
                metrics,
            }),
        }
    }
}

impl Executor for Worker {
    fn execute(&self, task: Arc<NodeTask>, attempt: Attempt) -> BoxFuture<'static, TaskOutcome> {
        let ctx = self.ctx.for_task(&attempt.control);
        Box::pin(async move {
            match task.spec.operation {
                TaskOperation::Checkpoint => checkpoint::run(&ctx, task, attempt).await,
                TaskOperation::Restore => restore::run(&ctx, task, attempt).await,
                TaskOperation::Delete => delete::run(&ctx, task),
            }
        })
    }
}
