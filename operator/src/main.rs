//! ferry-operator: reconciles `CheckpointRequest`s into checkpoints and live migrations.
//!
//! This build parses its flags, sets up logging and reports what it does not do yet:
//! the reconciler lands with the operator issue. It never pretends to reconcile.

use anyhow::Result;
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// ferry operator: checkpoint and live-migrate GPU pods.
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
}

fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    tracing::info!(
        metrics_addr = %args.metrics_addr,
        lease = %args.lease_name,
        group = ferry_api::GROUP,
        "ferry-operator started"
    );
    tracing::warn!(
        "reconciling CheckpointRequests is not implemented in this build; nothing is watched and no request is acted on"
    );
    anyhow::bail!("ferry-operator: the controller is not implemented yet (see the operator issue)")
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Pretty => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
