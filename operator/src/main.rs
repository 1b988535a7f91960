//! ferry-operator: reconciles `CheckpointRequest`s into checkpoints and live migrations.
//!
//! Wiring only: logging, the HTTP endpoints, leader election and the controller.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use ferry_operator::controller::{self, Config};
use ferry_operator::leader::{self, LeaseConfig};
use ferry_operator::metrics::Metrics;
use ferry_service::{Endpoints, LogFormat, init_tracing, shutdown_signal};

/// ferry operator: checkpoint and live-migrate GPU pods. Reads the kubeconfig from
/// $KUBECONFIG or ~/.kube/config, or the in-cluster service account.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty", env = "FERRY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080", env = "FERRY_METRICS_ADDR")]
    metrics_addr: String,
    /// Lease name for leader election.
    #[arg(long, default_value = "ferry-operator", env = "FERRY_LEASE_NAME")]
    lease_name: String,
    /// Namespace of the leader Lease (the operator's own namespace).
    #[arg(long, default_value = "ferry-system", env = "POD_NAMESPACE")]
    lease_namespace: String,
    /// This replica's identity in the Lease.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a leader lease is valid after a renewal (failover takes at most this).
    #[arg(long, default_value_t = 15, env = "FERRY_LEASE_DURATION_SECONDS")]
    lease_duration_seconds: u64,
    /// Seconds between renewals.
    #[arg(long, default_value_t = 2, env = "FERRY_LEASE_RENEW_SECONDS")]
    renew_seconds: u64,
    /// Reconciles at once (0: unbounded).
    #[arg(long, default_value_t = 16, env = "FERRY_CONCURRENCY")]
    concurrency: u16,
    /// Seconds every container of a restored pod must have run, ready and never restarted,
    /// before a migration deletes its source pod.
    #[arg(long, default_value_t = 5, env = "FERRY_RESTORE_SETTLE_SECONDS")]
    restore_settle_seconds: u64,
    /// Namespace of the agents' Leases (`ferry-agent-<node>`).
    #[arg(long, default_value = "ferry-system", env = "FERRY_AGENT_NAMESPACE")]
    agent_namespace: String,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let identity = args.identity.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}", host.trim(), std::process::id())
    });
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG or run in a pod with a service account")?;
    let metrics = Arc::new(Metrics::new().context("registering the metrics")?);
    let ready = Arc::new(AtomicBool::new(false));
    let server = Endpoints::new(
        metrics.clone(),
        ready.clone(),
        "not connected to the API server yet",
    )
    .spawn(args.metrics_addr.clone(), std::future::pending())
    .await?;
    tracing::info!(metrics_addr = %args.metrics_addr, identity = %identity, lease = %args.lease_name, "ferry-operator started");

    let config = Config {
        agent_namespace: args.agent_namespace.clone(),
        instance: identity.clone(),
        concurrency: args.concurrency,
        restore_settle: Duration::from_secs(args.restore_settle_seconds),
        ..Config::default()
    };
    let lease = LeaseConfig {
        namespace: args.lease_namespace.clone(),
        name: args.lease_name.clone(),
        identity,
        lease_duration: Duration::from_secs(args.lease_duration_seconds),
        renew_every: Duration::from_secs(args.renew_seconds),
    };
    let lead_client = client.clone();
    let outcome = leader::run(client, lease, ready, shutdown_signal(), move |stop| {
        controller::run(lead_client, config, metrics, stop.wait())
    })
    .await;
    server.abort();
    outcome.context("ferry-operator stopped")?;
    tracing::info!("ferry-operator shut down");
    Ok(())
}
