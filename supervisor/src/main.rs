//! `ferry-supervisor`: PID 1 of a placeholder container (`docs/placeholder-restore.md`).
//!
//! `ferry-supervisor run --control DIR [--timeout 30m]` waits for the agent's restore into
//! this container's namespaces, then supervises the restored root; `ferry-supervisor probe
//! --control DIR` is the startup gate (exit 0 only while the restored root runs).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_supervisor::{duration, supervise};

#[derive(Parser)]
#[command(name = "ferry-supervisor", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Be PID 1 of a placeholder container: wait for the restore, supervise the restored root.
    Run {
        /// The control directory shared with the agent.
        #[arg(long, env = "FERRY_SUPERVISOR_CONTROL")]
        control: PathBuf,
        /// How long to wait for the agent (`30m`, `90s`, `1h`).
        #[arg(long, env = "FERRY_SUPERVISOR_TIMEOUT", default_value = "30m", value_parser = duration::parse)]
        timeout: Duration,
        /// How often to look for the agent's control file.
        #[arg(long, default_value = "50ms", value_parser = duration::parse)]
        poll_interval: Duration,
        /// How long a reported pid may not yet be a child before it is refused.
        #[arg(long, default_value = "2s", value_parser = duration::parse)]
        adopt_grace: Duration,
        /// The container's termination message file, written on failures if it exists.
        #[arg(long, default_value = "/dev/termination-log")]
        termination_log: PathBuf,
    },
    /// Startup gate: exit 0 only while the restored root runs under the supervisor.
    Probe {
        /// The control directory shared with the agent.
        #[arg(long, env = "FERRY_SUPERVISOR_CONTROL")]
        control: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            control,
            timeout,
            poll_interval,
            adopt_grace,
            termination_log,
        } => {
            let cfg = supervise::Config {
                control,
                timeout,
                poll: poll_interval,
                adopt_grace,
                termination_log: Some(termination_log),
            };
            ExitCode::from(supervise::run(&cfg))
        }
        Command::Probe { control } => {
            // The kubelet keeps a failed probe's output in the pod's events.
            let (code, line) = supervise::probe(&control);
            let _ = writeln!(std::io::stdout(), "{line}");
            ExitCode::from(code)
        }
    }
}
