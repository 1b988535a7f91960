//! The CheckpointRequest controller: wiring ([`run`]), the reconcile entry point (finalizer
//! dispatch) and the error policy.
//!
//! Its layers, each a folder or file that uses only those after it:
//! * [`request`]: the state machine, one module per phase (I/O shell around pure decisions).
//! * [`children`]: the objects a request creates (NodeTasks, token Secret, restored pod).
//! * [`placement`]: where a migration may go (node selection, node affinity).
//! * [`context`]: the settings and the caches every reconcile gets.

pub mod children;
pub mod context;
pub mod placement;
pub mod request;

pub use context::{Config, Context};

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use ferry_api::names::{FINALIZER, label};
use ferry_api::{CheckpointRequest, NodeTask};
use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{Instrument, info, instrument, warn};

use crate::metrics::Metrics;
use crate::{Error, Result};

/// Runs the controller until `shutdown` completes (or a watch fails for good).
pub async fn run(
    client: Client,
    config: Config,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<()> {
    let requests = Api::<CheckpointRequest>::all(client.clone());
    let tasks = Api::<NodeTask>::all(client.clone());
    let pods = Api::<Pod>::all(client.clone());
    let managed = format!("{}={}", label::MANAGED_BY, label::MANAGED_BY_VALUE);

    let (nodes, nodes_writer) = reflector::store();
    let nodes_watch = reflector(
        nodes_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));
    let (leases, leases_writer) = reflector::store();
    let leases_watch = reflector(
        leases_writer,
        watcher(
            Api::<Lease>::namespaced(client.clone(), &config.agent_namespace),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .for_each(|_| futures::future::ready(()));

    let controller = Controller::new(requests, watcher::Config::default().any_semantic())
        .with_config(kube::runtime::controller::Config::default().concurrency(config.concurrency))
        .owns(tasks, watcher::Config::default().labels(&managed))
        // Restored pods carry the request's name as a label; they are not owned by the
        // request (its deletion must not delete the migrated workload).
        .watches(
            pods,
            watcher::Config::default().labels(label::CHECKPOINT_REQUEST),
            |pod: Pod| {
                let ns = pod.namespace()?;
                let name = pod.labels().get(label::CHECKPOINT_REQUEST)?.clone();
                Some(ObjectRef::new(&name).within(&ns))
            },
        )
        .graceful_shutdown_on(shutdown);
    let reporter = Reporter {
        controller: "ferry-operator".to_string(),
        instance: Some(config.instance.clone()),
    };
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        requests: controller.store(),
        client,
        metrics,
        config,
        nodes: nodes.clone(),
        leases: leases.clone(),
    });
    let caches = async move {
        tokio::time::timeout(Duration::from_secs(60), nodes.wait_until_ready())
            .await
            .map_err(|_| Error::CacheNotReady("Node"))?
            .map_err(|_| Error::CacheNotReady("Node"))?;
        tokio::time::timeout(Duration::from_secs(60), leases.wait_until_ready())
            .await
            .map_err(|_| Error::CacheNotReady("Lease"))?
            .map_err(|_| Error::CacheNotReady("Lease"))?;
        Ok::<(), Error>(())
    };
    let watches = tokio::spawn(async move {
        tokio::join!(nodes_watch, leases_watch);
    });
    let result = async {
        caches.await?;
        info!("caches filled; reconciling CheckpointRequests");
        controller
            .run(reconcile, error_policy, ctx)
            .for_each(|r| async move {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "reconcile failed");
                }
            })
            .await;
        Ok(())
    }
    .await;
    watches.abort();
    result
}

/// Reconciles one request: adds the finalizer, then [`request::apply`] or, while it is
/// being deleted, [`request::cleanup`](request::cleanup::cleanup).
#[instrument(skip(req, ctx), fields(checkpoint = %req.name_any(), namespace = req.namespace().unwrap_or_default()))]
pub async fn reconcile(req: Arc<CheckpointRequest>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_timer();
    let ns = req
        .namespace()
        .ok_or(Error::MissingObjectKey("namespace"))?;
    let api: Api<CheckpointRequest> = Api::namespaced(ctx.client.clone(), &ns);
    finalizer(&api, FINALIZER, req, |event| {
        async {
            match event {
                Finalizer::Apply(r) => request::apply(r, &ctx).await,
                Finalizer::Cleanup(r) => request::cleanup::cleanup(r, &ctx).await,
            }
        }
        .in_current_span()
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))
}

/// Logs and counts a failed reconcile, and retries it after a delay fit for the error.
pub fn error_policy(req: Arc<CheckpointRequest>, error: &Error, ctx: Arc<Context>) -> Action {
    let inner = match error {
        Error::Finalizer(e) => match e.as_ref() {
            kube::runtime::finalizer::Error::ApplyFailed(inner)
            | kube::runtime::finalizer::Error::CleanupFailed(inner) => inner,
            _ => error,
        },
        _ => error,
    };
    if matches!(inner, Error::CleanupPending(_)) {
        tracing::debug!(checkpoint = %req.name_any(), error = %inner, "cleanup pending");
    } else {
        warn!(checkpoint = %req.name_any(), error = %inner, "reconcile failed");
    }
    ctx.metrics.count_error(inner);
    Action::requeue(inner.retry_after())
}
