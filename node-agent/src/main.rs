//! ferry-agent: the privileged per-node agent that drives CRIU, stores, streams and restores images.
//!
//! This build parses its flags, sets up logging and reports what it does not do yet:
//! the NodeTask worker lands with the node-agent issue. It never pretends to do work.

use anyhow::Result;
use clap::{Parser, ValueEnum};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

/// ferry node agent: checkpoint, transfer and restore containers on this node.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty", env = "FERRY_LOG_FORMAT")]
    log_format: LogFormat,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9400", env = "FERRY_METRICS_ADDR")]
    metrics_addr: String,
    /// This node's name (from the downward API).
    #[arg(long, env = "NODE_NAME", default_value = "local")]
    node_name: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    tracing::info!(
        metrics_addr = %args.metrics_addr,
        node = %args.node_name,
        group = ferry_api::GROUP,
        "ferry-agent started"
    );
    tracing::warn!(
        "the NodeTask worker is not implemented in this build; no task is watched or run"
    );
    anyhow::bail!(
        "ferry-agent: the NodeTask worker is not implemented yet (see the node-agent issue)"
    )
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
