//! The README demo: migrates the sim-GPU workload from one ferry agent to another through a
//! real control plane and the real operator (see `ferry_e2e::migration`), then prints the
//! timings and the metrics the target agent exported.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Parser;
use ferry_e2e::migration::{self, MigrationOptions};

/// Live-migrate a sim-GPU workload between two ferry agents.
#[derive(Debug, Parser)]
#[command(about)]
struct Args {
    /// Directory with ferry-operator, ferry-agent, ferry-sim-workload and the plugin
    /// (default: this binary's directory).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// CRIU binary.
    #[arg(long, default_value = "/usr/local/sbin/criu")]
    criu: PathBuf,
    /// Simulated device memory, MiB.
    #[arg(long, default_value_t = 1024)]
    device_mib: u64,
    /// Workload host memory, MiB.
    #[arg(long, default_value_t = 512)]
    host_mib: u64,
    /// Refill device memory after host memory instead of in parallel.
    #[arg(long)]
    sequential: bool,
    /// Keep the working directory (logs, stores) here.
    #[arg(long)]
    work_dir: Option<PathBuf>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let bin_dir = match args.bin_dir {
        Some(d) => d,
        None => std::env::current_exe()?
            .parent()
            .context("this binary has no directory")?
            .to_path_buf(),
    };
    println!("ferry demo: live migration of a sim-GPU workload between two agents");
    let report = migration::run(&MigrationOptions {
        plugin: bin_dir.join("libferry_criu_plugin.so"),
        bin_dir,
        criu: args.criu,
        device_mib: args.device_mib,
        host_mib: args.host_mib,
        parallel_restore: !args.sequential,
        work_dir: args.work_dir,
        verbose: true,
    })?;
    let t = &report.status["timings"];
    let ms = |k: &str| t[k].as_i64().map_or("-".to_string(), |v| format!("{v} ms"));
    println!();
    println!("| step | time |");
    println!("|---|---|");
    for (label, key) in [
        ("checkpoint (CRIU dump + plugin)", "checkpointMs"),
        ("transfer (TLS pull, verified)", "transferMs"),
        ("restore (CRIU + plugin)", "restoreMs"),
        ("  host memory part", "hostRestoreMs"),
        ("  GPU memory part", "gpuRestoreMs"),
        ("downtime (frozen → restored pod running)", "downtimeMs"),
    ] {
        println!("| {label} | {} |", ms(key));
    }
    println!("| apply → Succeeded | {:.2} s |", report.wall_seconds);
    let c = &report.status["checkpoint"];
    println!(
        "\nimage: {} bytes, sha256 {}",
        c["sizeBytes"],
        c["sha256"].as_str().unwrap_or("-")
    );
    println!(
        "workload: pid {} → restored pid {}; step {} before, {} after; host memory ok: {}, device memory ok: {}",
        report.pids.0,
        report.pids.1,
        report.counters.0,
        report.counters.1,
        report.verify["hostOk"],
        report.verify["devicesOk"]
    );
    println!("\nmetrics exported by the target agent (/metrics, ferry_*; buckets omitted):");
    for line in &report.target_metrics {
        println!("  {line}");
    }
    Ok(())
}
