//! runtime-bench: the agent's runc checkpoint + restore (through `ferry_agent::runtime::runc::Runc`,
//! into the image store, restore from a restore directory) against the same `runc
//! checkpoint` / `runc restore` commands run by hand, on the same busybox container, side by
//! side in one run (order alternating per run). Prints a markdown table and, with `--json`,
//! JSON. Target: agent / by hand ≤ 1.05 on the median.
//!
//! Needs root, runc, CRIU and busybox-static (`scripts/install-deps`).
//! `cargo build --release -p ferry-bench --bin runtime-bench && target/release/runtime-bench` (as root)

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use ferry_agent::runtime::checkpoint::{CheckpointJob, Checkpointer, ContainerTarget};
use ferry_agent::runtime::criu::Criu;
use ferry_agent::runtime::layout::RUNC_PIDFILE;
use ferry_agent::runtime::restore::{RestoreJob, RestoreTarget, Restorer};
use ferry_agent::runtime::runc::Runc;
use ferry_agent::store::{ImageSource, Store};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "agent runc checkpoint+restore vs runc by hand")]
struct Args {
    /// Runs of each side.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Print JSON after the table.
    #[arg(long)]
    json: bool,
    /// runc binary.
    #[arg(long, default_value = ferry_agent::runtime::runc::DEFAULT_RUNC)]
    runc: PathBuf,
    /// CRIU binary.
    #[arg(long, default_value = ferry_agent::runtime::criu::DEFAULT_CRIU)]
    criu: PathBuf,
    /// busybox (static) for the container's rootfs.
    #[arg(long, default_value = "/usr/bin/busybox")]
    busybox: PathBuf,
    /// Scratch dir (removed at the end); on a real disk, not tmpfs, like an image store.
    #[arg(long, default_value = "/var/tmp/ferry-runtime-bench")]
    work_dir: PathBuf,
}

#[derive(Serialize, Clone, Copy, Debug)]
struct Sample {
    checkpoint_s: f64,
    restore_s: f64,
    total_s: f64,
    /// Agent only: its own time around the runc runs (call wall − runc wall), both calls.
    agent_overhead_s: f64,
}

#[derive(Serialize, Debug)]
struct Report {
    runs: usize,
    agent: Vec<Sample>,
    by_hand: Vec<Sample>,
    /// The agent's image publish (hash + fsync + rename) per run, outside `agent` (by hand has
    /// no store to publish into).
    agent_publish_s: Vec<f64>,
    median_agent_total_s: f64,
    median_by_hand_total_s: f64,
    ratio: f64,
    target_ratio: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

struct Bench {
    args: Args,
    root: PathBuf,
    bundle: PathBuf,
    ids: Vec<String>,
}

impl Bench {
    fn runc_cmd(&self) -> Command {
        let mut c = Command::new(&self.args.runc);
        c.arg("--root").arg(&self.root).stdin(Stdio::null());
        c
    }

    fn build_bundle(&self) -> Result<()> {
        let rootfs = self.bundle.join("rootfs");
        for d in ["bin", "proc", "sys", "dev", "tmp", "data"] {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        std::fs::copy(&self.args.busybox, rootfs.join("bin/busybox"))
            .with_context(|| format!("copy {}", self.args.busybox.display()))?;
        for a in ["sh", "sleep"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))?;
        }
        let st = Command::new(&self.args.runc)
            .args(["spec", "--bundle"])
            .arg(&self.bundle)
            .stdin(Stdio::null())
            .status()?;
        ensure!(st.success(), "runc spec failed");
        let path = self.bundle.join("config.json");
        let mut spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
        spec["process"]["terminal"] = false.into();
        spec["process"]["args"] = serde_json::json!([
            "/bin/sh",
            "-c",
            "i=0; while true; do i=$((i+1)); echo $i > /data/counter; sleep 0.1; done"
        ]);
        spec["root"]["readonly"] = false.into();
        std::fs::write(&path, serde_json::to_vec_pretty(&spec)?)?;
        Ok(())
    }

    /// Starts a counter container and waits until it counted a few steps.
    fn start(&mut self, id: &str) -> Result<()> {
        let counter = self.bundle.join("rootfs/data/counter");
        let _ = std::fs::remove_file(&counter);
        self.ids.push(id.to_string());
        let st = self
            .runc_cmd()
            .args(["run", "-d", "--bundle"])
            .arg(&self.bundle)
            .arg(id)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        ensure!(st.success(), "runc run {id} failed");
        let t = Instant::now();
        loop {
            let n: u64 = std::fs::read_to_string(&counter)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            if n >= 5 {
                return Ok(());
            }
            ensure!(t.elapsed() < Duration::from_secs(30), "{id} did not count");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn remove(&self, id: &str) {
        let _ = self.runc_cmd().args(["kill", id, "KILL"]).output();
        std::thread::sleep(Duration::from_millis(50));
        let _ = self.runc_cmd().args(["delete", "-f", id]).output();
    }

    /// One run through the agent's code.
    fn agent(&mut self, store: &Store, runc: &Runc, i: usize) -> Result<(Sample, f64)> {
        let id = format!("bench-agent-{i}");
        self.start(&id)?;
        let location = format!("bench/agent/{i}");
        let staging = store.stage(&location)?;
        let mut job = CheckpointJob::new(
            ImageSource::default(),
            vec![ContainerTarget::Runc {
                name: "app".into(),
                id: id.clone(),
            }],
        );
        job.leave_running = false;
        let t = Instant::now();
        let out = runc.checkpoint(&job, &staging)?;
        let checkpoint_s = t.elapsed().as_secs_f64();
        let mut tool_s: f64 = out
            .containers
            .iter()
            .map(|c| c.tool_wall.as_secs_f64())
            .sum();
        let t = Instant::now();
        let manifest = staging.build_manifest(out.meta)?;
        let image = staging.publish(&manifest)?;
        let publish_s = t.elapsed().as_secs_f64();
        let new_id = format!("{id}-r");
        self.ids.push(new_id.clone());
        let mut rjob = RestoreJob::new(self.args.work_dir.join(format!("agent-work-{i}")));
        rjob.containers = vec![RestoreTarget::Runc {
            name: "app".into(),
            id: new_id.clone(),
            bundle: self.bundle.clone(),
        }];
        let t = Instant::now();
        let restored = runc.restore(&rjob, &image)?;
        let restore_s = t.elapsed().as_secs_f64();
        tool_s += restored
            .restored
            .iter()
            .map(|r| r.tool_wall.as_secs_f64())
            .sum::<f64>();
        self.remove(&new_id);
        Ok((
            Sample {
                checkpoint_s,
                restore_s,
                total_s: checkpoint_s + restore_s,
                agent_overhead_s: checkpoint_s + restore_s - tool_s,
            },
            publish_s,
        ))
    }

    /// The same commands by hand: identical arguments, the image dir used as is.
    fn by_hand(&mut self, i: usize) -> Result<Sample> {
        let id = format!("bench-hand-{i}");
        self.start(&id)?;
        let dir = self.args.work_dir.join(format!("hand-{i}/app"));
        std::fs::create_dir_all(&dir)?;
        let run = |args: Vec<OsString>, stderr: &Path| -> Result<f64> {
            let t = Instant::now();
            let st = self
                .runc_cmd()
                .args(&args)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(stderr)?)
                .status()?;
            let s = t.elapsed().as_secs_f64();
            if !st.success() {
                bail!("runc {args:?} failed: {}", std::fs::read_to_string(stderr)?);
            }
            Ok(s)
        };
        let criu: OsString = self.args.criu.clone().into();
        let checkpoint_s = run(
            vec![
                "--criu".into(),
                criu.clone(),
                "checkpoint".into(),
                "--image-path".into(),
                dir.clone().into(),
                "--work-path".into(),
                dir.clone().into(),
                id.clone().into(),
            ],
            &dir.join("runc-checkpoint.log"),
        )?;
        let new_id = format!("{id}-r");
        let restore_s = run(
            vec![
                "--criu".into(),
                criu,
                "restore".into(),
                "--detach".into(),
                "--image-path".into(),
                dir.clone().into(),
                "--work-path".into(),
                dir.clone().into(),
                "--bundle".into(),
                self.bundle.clone().into(),
                "--pid-file".into(),
                dir.join(RUNC_PIDFILE).into(),
                new_id.clone().into(),
            ],
            &dir.join("runc-restore.log"),
        );
        self.ids.push(new_id.clone());
        let restore_s = restore_s?;
        self.remove(&new_id);
        Ok(Sample {
            checkpoint_s,
            restore_s,
            total_s: checkpoint_s + restore_s,
            agent_overhead_s: 0.0,
        })
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for id in self.ids.clone() {
            self.remove(&id);
        }
        let _ = std::fs::remove_dir_all(&self.args.work_dir);
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    // The agent's own logs (each tool run's wall time), to stderr, with RUST_LOG set.
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    ensure!(args.runs > 0, "--runs must be at least 1");
    ensure!(
        rustix::process::geteuid().is_root(),
        "runtime-bench needs root (runc, CRIU)"
    );
    for p in [&args.runc, &args.criu, &args.busybox] {
        ensure!(p.exists(), "{} missing (scripts/install-deps)", p.display());
    }
    let _ = std::fs::remove_dir_all(&args.work_dir);
    std::fs::create_dir_all(&args.work_dir)?;
    let root = args.work_dir.join("runc-root");
    let bundle = args.work_dir.join("bundle");
    let store = Store::open(args.work_dir.join("store"))?;
    let runc = Runc::new(&args.runc, &root, Criu::new(&args.criu));
    let runs = args.runs;
    let mut bench = Bench {
        args,
        root,
        bundle,
        ids: Vec::new(),
    };
    bench.build_bundle()?;
    // Warm-up (page cache, CRIU's first run): one of each, not counted.
    bench.agent(&store, &runc, 1000)?;
    bench.by_hand(1000)?;

    let (mut agent, mut hand, mut publish) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        if i % 2 == 0 {
            let (s, p) = bench.agent(&store, &runc, i)?;
            agent.push(s);
            publish.push(p);
            hand.push(bench.by_hand(i)?);
        } else {
            hand.push(bench.by_hand(i)?);
            let (s, p) = bench.agent(&store, &runc, i)?;
            agent.push(s);
            publish.push(p);
        }
    }
    let m = |v: &[Sample], f: fn(&Sample) -> f64| median(v.iter().map(f).collect());
    let report = Report {
        runs,
        median_agent_total_s: m(&agent, |s| s.total_s),
        median_by_hand_total_s: m(&hand, |s| s.total_s),
        ratio: m(&agent, |s| s.total_s) / m(&hand, |s| s.total_s),
        target_ratio: 1.05,
        agent_publish_s: publish.clone(),
        agent,
        by_hand: hand,
    };
    println!("runc checkpoint + restore of a busybox counter container, median of {runs}\n");
    println!("| side | checkpoint s | restore s | total s |");
    println!("|---|---|---|---|");
    for (name, v) in [
        ("agent (ferry_agent::runtime::runc::Runc)", &report.agent),
        ("runc by hand", &report.by_hand),
    ] {
        println!(
            "| {name} | {:.4} | {:.4} | {:.4} |",
            m(v, |s| s.checkpoint_s),
            m(v, |s| s.restore_s),
            m(v, |s| s.total_s)
        );
    }
    println!(
        "\nagent / by hand: **{:.3}×** (target ≤ {:.2}×); the agent's image publish (hash, fsync, rename), outside the ratio: median {:.4} s",
        report.ratio,
        report.target_ratio,
        median(publish)
    );
    println!(
        "agent's own time around the runc runs (call wall − runc wall, checkpoint + restore): median {:.2} ms",
        m(&report.agent, |s| s.agent_overhead_s) * 1000.0
    );
    if bench.args.json {
        println!("\n{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}
