//! The load driver playing the agents: Lease renewals and NodeTask status writes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use ferry_api::names::field_manager;
use ferry_api::{NodeTask, TaskOperation};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;

use crate::{AGENTS, Args, Tracks, now_micro, with_track};

pub(crate) fn lease_duration(args: &Args) -> i64 {
    i64::try_from(args.lease_renew_seconds.max(1) * 3).unwrap_or(60)
}

pub(crate) async fn renew_leases(admin: &Client, nodes: &[String], args: &Args) -> Result<()> {
    renew_all(admin, nodes, args.concurrency, lease_duration(args)).await
}

/// Plays every agent's readiness Lease renewal (server-side apply, as the agent would).
pub(crate) async fn renew_all(
    admin: &Client,
    nodes: &[String],
    conc: usize,
    duration: i64,
) -> Result<()> {
    let api: Api<Lease> = Api::namespaced(admin.clone(), AGENTS);
    futures::stream::iter(nodes.iter().cloned())
        .map(|node| {
            let api = api.clone();
            async move {
                let name = ferry_api::agent_lease::lease_name(&node);
                let lease = json!({
                    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name},
                    "spec": {"holderIdentity": node, "leaseDurationSeconds": duration, "renewTime": now_micro()},
                });
                api.patch(
                    &name,
                    &PatchParams::apply(&field_manager::agent(&node)).force(),
                    &Patch::Apply(&lease),
                )
                .await
                .map(|_| ())
                .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(conc.max(1))
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// One fake agent task: `Running` after `delay`, then the result after another `delay`.
pub(crate) async fn play_agent(
    api: &Api<NodeTask>,
    task: &NodeTask,
    delay: Duration,
    limit: &tokio::sync::Semaphore,
    tracks: &Tracks,
    writes: &AtomicU64,
) -> Result<()> {
    let name = task.name_any();
    let manager = field_manager::agent(&task.spec.node_name);
    let request = task
        .labels()
        .get(ferry_api::names::label::CHECKPOINT_REQUEST)
        .cloned()
        .unwrap_or_default();
    let started = now_micro();
    let (running, done, last) = match task.spec.operation {
        TaskOperation::Checkpoint => {
            let frozen = now_micro();
            (
                json!({"phase": "Running", "startTime": started, "heartbeatTime": started}),
                json!({"phase": "Succeeded", "startTime": started, "result": {
                    "sizeBytes": 2_147_483_648_i64, "files": 12, "sha256": "0".repeat(64),
                    "gpuVendor": "none", "hostMemoryBytes": 1_073_741_824_i64,
                    "timings": {"checkpointMs": 2 * delay.as_millis() as i64, "frozenAt": frozen}}}),
                // A migration's restore comes later and overwrites the time.
                true,
            )
        }
        TaskOperation::Restore => (
            json!({"phase": "Running", "startTime": started, "result": {
                "timings": {"transferMs": delay.as_millis() as i64},
                "transfer": {"bytes": 2_147_483_648_i64}}}),
            json!({"phase": "Succeeded", "startTime": started, "result": {
                "timings": {"transferMs": delay.as_millis() as i64, "restoreMs": delay.as_millis() as i64},
                "transfer": {"bytes": 2_147_483_648_i64}}}),
            true,
        ),
        TaskOperation::Delete => (
            json!({"phase": "Running", "startTime": started}),
            json!({"phase": "Succeeded", "startTime": started}),
            false,
        ),
    };
    for (i, status) in [running, done].into_iter().enumerate() {
        tokio::time::sleep(delay).await;
        let mut status = status;
        if i == 1 {
            status["completionTime"] = json!(now_micro());
        }
        let body =
            json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "NodeTask", "status": status});
        let _permit = limit.acquire().await?;
        api.patch_status(
            &name,
            &PatchParams::apply(&manager).force(),
            &Patch::Apply(&body),
        )
        .await
        .with_context(|| format!("writing {name}'s status"))?;
        writes.fetch_add(1, Ordering::Relaxed);
    }
    if last && !request.is_empty() {
        with_track(tracks, &request, |t| t.agent_done = Some(Instant::now()));
    }
    Ok(())
}
