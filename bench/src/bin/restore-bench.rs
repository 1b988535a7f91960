//! Restore benchmark: real CRIU restores of the sim-GPU workload, parallel vs sequential
//! device-memory restore in one run, for host:device ratios 2:1, 1:1 and 1:2. Prints a
//! table and writes JSON. Needs root and CRIU (scripts/install-deps).
//!
//! The sim copy engine's bandwidth is calibrated first to this machine's host-memory restore
//! speed (a restore with almost no device memory), so a 1:1 byte ratio is also a 1:1 time
//! ratio, which is the case the parallel design is for: ideally parallel wall is the larger
//! of the two phases, sequential the sum.
//!
//! `cargo build --release -p ferry-criu-plugin -p ferry-bench && target/release/restore-bench`

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use ferry_api::plugin_env;
use ferry_api::stats::{PluginStats, RESTORE_STATS_FILE};
use serde::Serialize;

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Parallel vs sequential GPU-memory restore with real CRIU"
)]
struct Args {
    /// Size of one ratio unit in MiB (1:2 means UNIT host + 2*UNIT device).
    #[arg(long, default_value_t = 1024)]
    unit_mib: u64,
    /// Restores per mode and ratio (the median is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Sim devices the device memory is spread over.
    #[arg(long, default_value_t = 1)]
    devices: u64,
    /// Work directory (images, sim devices); page-cache backed.
    #[arg(long, default_value = "/var/tmp/ferry-restore-bench")]
    work: PathBuf,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/restore-bench.json")]
    json: PathBuf,
    /// Copy-engine bandwidth in bytes/s; 0 = calibrate to the host restore speed.
    #[arg(long, default_value_t = 0)]
    bandwidth: u64,
    /// criu binary.
    #[arg(long, default_value = "/usr/local/sbin/criu")]
    criu: PathBuf,
}

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
struct Sample {
    wall: f64,
    host: f64,
    device: f64,
    resume_wait: f64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    ratio: String,
    host_mib: u64,
    device_mib: u64,
    sequential: Sample,
    parallel: Sample,
    /// 1 - parallel wall / sequential wall.
    wall_reduction: f64,
    /// Parallel restore window (host phase + wait in RESUME_DEVICES_LATE) over
    /// max(host, device) measured sequentially.
    parallel_over_max: f64,
    /// Share of the shorter phase hidden under the longer one.
    overlap: f64,
}

struct Paths {
    lib: PathBuf,
    workload: PathBuf,
}

fn artifacts() -> Result<Paths> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("bench exe has no directory")?;
    let so = dir.join("libferry_criu_plugin.so");
    let workload = dir.join("ferry-sim-workload");
    for p in [&so, &workload] {
        ensure!(
            p.exists(),
            "{} is missing: run `cargo build --release -p ferry-criu-plugin -p ferry-bench` first",
            p.display()
        );
    }
    Ok(Paths { lib: so, workload })
}

struct Bench {
    args: Args,
    paths: Paths,
    libdir: PathBuf,
}

impl Bench {
    fn sim_env(&self) -> Vec<(String, String)> {
        vec![
            (
                plugin_env::FERRY_SIM_ROOT.into(),
                self.args.work.join("sim-root").display().to_string(),
            ),
            (
                plugin_env::FERRY_SIM_MEM.into(),
                "/dev/shm/ferry-restore-bench".into(),
            ),
        ]
    }

    fn wipe_devices(&self) {
        let _ = std::fs::remove_dir_all("/dev/shm/ferry-restore-bench");
        let _ = std::fs::remove_dir_all(self.args.work.join("sim-root/ctx"));
    }

    fn criu(&self, args: &[&str], env: &[(String, String)]) -> Result<(bool, Duration)> {
        let t = Instant::now();
        let st = Command::new("timeout")
            .arg("600")
            .arg(&self.args.criu)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("run criu")?;
        Ok((st.success(), t.elapsed()))
    }

    /// Starts the workload, dumps it (killing it) and returns the image dir.
    fn checkpoint(&self, host_mib: u64, device_mib: u64, tag: &str) -> Result<PathBuf> {
        let dir = self.args.work.join(tag);
        let _ = std::fs::remove_dir_all(&dir);
        let images = dir.join("images");
        std::fs::create_dir_all(&images)?;
        self.wipe_devices();
        let status = dir.join("status.json");
        let mut child = Command::new("setsid")
            .arg(&self.paths.workload)
            .args(["--devices", &self.args.devices.to_string()])
            .args([
                "--device-mib",
                &(device_mib / self.args.devices).max(1).to_string(),
            ])
            .args(["--host-mib", &host_mib.to_string()])
            .arg("--status")
            .arg(&status)
            .envs(self.sim_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start the sim workload")?;
        let t = Instant::now();
        while !status.exists() {
            ensure!(
                t.elapsed() < Duration::from_secs(300),
                "workload never got ready"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let img = images.display().to_string();
        let lib = self.libdir.display().to_string();
        let pid = child.id().to_string();
        let (ok, _) = self.criu(
            &["dump", "-t", &pid, "-D", &img, "-o", "dump.log", "-L", &lib],
            &self.sim_env(),
        )?;
        let _ = child.kill();
        let _ = child.wait();
        ensure!(ok, "criu dump failed; see {}/dump.log", img);
        Ok(dir)
    }

    /// One restore; checks the workload came back intact, then kills it.
    fn restore(&self, dir: &Path, parallel: bool) -> Result<Sample> {
        self.wipe_devices();
        let images = dir.join("images");
        let _ = std::fs::remove_file(images.join(RESTORE_STATS_FILE));
        let mut env = self.sim_env();
        env.push((
            plugin_env::FERRY_PARALLEL_RESTORE.into(),
            if parallel { "1" } else { "0" }.into(),
        ));
        env.push((
            plugin_env::FERRY_SIM_BANDWIDTH.into(),
            self.args.bandwidth.to_string(),
        ));
        let img = images.display().to_string();
        let lib = self.libdir.display().to_string();
        let (ok, wall) = self.criu(
            &["restore", "-D", &img, "-o", "restore.log", "-L", &lib, "-d"],
            &env,
        )?;
        ensure!(ok, "criu restore failed; see {img}/restore.log");
        let stats = PluginStats::from_json(
            &std::fs::read_to_string(images.join(RESTORE_STATS_FILE))
                .context("read the plugin's restore stats")?,
        )?;
        let status = dir.join("status.json");
        let trigger = dir.join("status.json.verify");
        std::fs::write(&trigger, b"")?;
        let t = Instant::now();
        while trigger.exists() {
            ensure!(
                t.elapsed() < Duration::from_secs(120),
                "restored workload does not answer"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&status)?)?;
        let intact = v["hostOk"] == true
            && v["devicesOk"]
                .as_array()
                .is_some_and(|a| a.iter().all(|x| *x == true));
        if let Some(pid) = v["pid"].as_i64() {
            kill_and_wait(pid)?;
        }
        ensure!(intact, "restored workload failed its memory check: {v}");
        let device = stats.gpu_phase_seconds;
        let host = if parallel {
            stats.host_restore_seconds
        } else {
            // Sequential: the window from fork to resume includes the device copy.
            (stats.host_restore_seconds - device).max(0.0)
        };
        Ok(Sample {
            wall: wall.as_secs_f64(),
            host,
            device,
            resume_wait: stats.resume_wait_seconds,
        })
    }
}

/// Kills a restored workload and waits until its pid is free (init reaps it), since the
/// next restore must recreate the same pid.
fn kill_and_wait(pid: i64) -> Result<()> {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    let t = Instant::now();
    while Path::new(&format!("/proc/{pid}")).exists() {
        ensure!(
            t.elapsed() < Duration::from_secs(30),
            "pid {pid} was not reaped"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn median(mut v: Vec<Sample>, key: impl Fn(&Sample) -> f64) -> Sample {
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v.get(v.len() / 2).cloned().unwrap_or_default()
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !rustix::process::geteuid().is_root() {
        bail!("restore-bench needs root (CRIU)");
    }
    let paths = artifacts()?;
    std::fs::create_dir_all(&args.work)?;
    let libdir = args.work.join("lib");
    std::fs::create_dir_all(&libdir)?;
    std::fs::copy(&paths.lib, libdir.join("libferry_criu_plugin.so"))?;
    let mut bench = Bench {
        args,
        paths,
        libdir,
    };
    let unit = bench.args.unit_mib;

    if bench.args.bandwidth == 0 {
        // Host-only restore: its host phase gives this machine's host restore speed.
        bench.args.bandwidth = 1 << 40;
        let dir = bench.checkpoint(unit, 4, "calibrate")?;
        let samples = (0..bench.args.repeat)
            .map(|_| bench.restore(&dir, true))
            .collect::<Result<Vec<_>>>()?;
        let host = median(samples, |s| s.host).host.max(1e-3);
        bench.args.bandwidth = ((unit << 20) as f64 / host) as u64;
        println!(
            "calibrated: host memory restores at {:.2} GiB/s; sim copy engine set to the same",
            bench.args.bandwidth as f64 / (1u64 << 30) as f64
        );
    }

    let mut rows = Vec::new();
    for (h, d) in [(2, 1), (1, 1), (1, 2)] {
        let (host_mib, device_mib) = (h * unit, d * unit);
        let dir = bench.checkpoint(host_mib, device_mib, &format!("ratio-{h}-{d}"))?;
        let (mut seq, mut par) = (Vec::new(), Vec::new());
        for _ in 0..bench.args.repeat {
            // Alternate so drift on a shared machine hits both modes alike.
            seq.push(bench.restore(&dir, false)?);
            par.push(bench.restore(&dir, true)?);
        }
        let s = median(seq, |s| s.wall);
        let p = median(par, |s| s.wall);
        let longer = s.host.max(s.device);
        let shorter = s.host.min(s.device);
        let par_window = p.host + p.resume_wait;
        rows.push(Row {
            ratio: format!("{h}:{d}"),
            host_mib,
            device_mib,
            wall_reduction: 1.0 - p.wall / s.wall,
            parallel_over_max: par_window / longer,
            overlap: if shorter > 0.0 {
                ((s.host + s.device - par_window) / shorter).clamp(0.0, 1.0)
            } else {
                0.0
            },
            sequential: s,
            parallel: p,
        });
        let _ = std::fs::remove_dir_all(&dir);
    }

    println!(
        "\nrestore-bench: {} MiB unit, {} device(s), sim copy engine {:.2} GiB/s, median of {}",
        unit,
        bench.args.devices,
        bench.args.bandwidth as f64 / (1u64 << 30) as f64,
        bench.args.repeat
    );
    println!(
        "| host:device | seq wall s | par wall s | wall -% | host s | device s | par window s | par/max | overlap |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} ({}+{} MiB) | {:.3} | {:.3} | {:.1} | {:.3} | {:.3} | {:.3} | {:.3} | {:.0}% |",
            r.ratio,
            r.host_mib,
            r.device_mib,
            r.sequential.wall,
            r.parallel.wall,
            100.0 * r.wall_reduction,
            r.sequential.host,
            r.sequential.device,
            r.parallel.host + r.parallel.resume_wait,
            r.parallel_over_max,
            100.0 * r.overlap
        );
    }
    let out = serde_json::json!({
        "unitMib": unit,
        "devices": bench.args.devices,
        "simBandwidthBytesPerSecond": bench.args.bandwidth,
        "repeat": bench.args.repeat,
        "rows": rows,
    });
    if let Some(p) = bench.args.json.parent() {
        std::fs::create_dir_all(p)?;
    }
    std::fs::write(&bench.args.json, serde_json::to_vec_pretty(&out)?)?;
    println!("\nJSON: {}", bench.args.json.display());
    bench.wipe_devices();
    let _ = std::fs::remove_dir_all(bench.args.work.join("calibrate"));
    Ok(())
}
