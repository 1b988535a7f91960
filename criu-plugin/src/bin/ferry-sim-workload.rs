//! A workload that uses ferry's simulated GPU the way a training process uses a real one:
//! it fills host memory and N devices' memory with a seeded pattern, then keeps working —
//! a step counter in host memory, mirrored into device memory every step. When the file
//! `<status>.verify` appears it checks every byte of host and device memory against the
//! pattern and writes `<status>` (JSON). After a checkpoint/restore this proves both kinds
//! of memory came back intact and that the process continued from its step.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Parser;
use ferry_api::plugin_env::{FERRY_SIM_MEM, FERRY_SIM_ROOT};
use ferry_criu_plugin::backends::sim::device::{SimContext, SimPaths};
use serde::Serialize;

/// Simulated-GPU workload for ferry's tests, demo and benchmark.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Simulated devices to use.
    #[arg(long, default_value_t = 1)]
    devices: u32,
    /// Device memory per device, MiB.
    #[arg(long, default_value_t = 64)]
    device_mib: u64,
    /// Buffers per device (device memory is split evenly).
    #[arg(long, default_value_t = 4)]
    buffers: u64,
    /// Host memory, MiB.
    #[arg(long, default_value_t = 64)]
    host_mib: u64,
    /// Pattern seed.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Status file (JSON), written at start and on each verify request.
    #[arg(long)]
    status: PathBuf,
    /// Milliseconds per step.
    #[arg(long, default_value_t = 20)]
    interval_ms: u64,
    /// Processes in the tree: the root spawns `procs - 1` children, each with its own
    /// devices and status file `<status>.child<i>`.
    #[arg(long, default_value_t = 1)]
    procs: u32,
    /// Where sim device handles live.
    #[arg(long, env = FERRY_SIM_ROOT, default_value = "/var/lib/ferry-sim")]
    sim_root: PathBuf,
    /// Where sim device memory lives.
    #[arg(long, env = FERRY_SIM_MEM, default_value = "/dev/shm/ferry-sim")]
    sim_mem: PathBuf,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    pid: u32,
    counter: u64,
    host_ok: bool,
    devices_ok: Vec<bool>,
    device_steps: Vec<u64>,
    host_bytes: u64,
    device_bytes: u64,
}

/// xorshift64*, written as little-endian words: cheap to fill and to check at GB sizes.
fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for w in buf.chunks_mut(8) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        w.copy_from_slice(&v[..w.len()]);
    }
}

fn matches(buf: &[u8], seed: u64, skip_first: usize) -> bool {
    let mut x = seed | 1;
    for (i, w) in buf.chunks(8).enumerate() {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        if i * 8 >= skip_first && w != &v[..w.len()] {
            return false;
        }
    }
    true
}

fn write_status(path: &Path, s: &Status) -> Result<()> {
    let tmp = path.with_extension("partial");
    std::fs::write(&tmp, serde_json::to_vec_pretty(s)?)
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("rename to {}", path.display()))
}

/// Starts the other processes of the tree and waits until each has its memory ready.
fn spawn_children(a: &Args) -> Result<Vec<std::process::Child>> {
    let mut children = Vec::new();
    if a.procs <= 1 {
        return Ok(children);
    }
    let exe = std::env::current_exe().context("find own executable")?;
    for i in 1..a.procs {
        let status = PathBuf::from(format!("{}.child{i}", a.status.display()));
        let child = std::process::Command::new(&exe)
            .args(["--devices", &a.devices.to_string()])
            .args(["--device-mib", &a.device_mib.to_string()])
            .args(["--buffers", &a.buffers.to_string()])
            .args(["--host-mib", &a.host_mib.to_string()])
            .args(["--seed", &(a.seed + u64::from(i)).to_string()])
            .args(["--interval-ms", &a.interval_ms.to_string()])
            .arg("--status")
            .arg(&status)
            .stdin(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("spawn child {i}"))?;
        children.push(child);
        while !status.exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    Ok(children)
}

fn main() -> Result<()> {
    let a = Args::parse();
    let paths = SimPaths::new(&a.sim_root, &a.sim_mem);
    let per_buffer = (a.device_mib << 20) / a.buffers.max(1);
    let sizes: Vec<u64> = (0..a.buffers.max(1))
        .map(|_| per_buffer.max(4096))
        .collect();

    let mut host = vec![0u8; (a.host_mib << 20) as usize];
    fill(&mut host, a.seed);
    let mut ctxs = Vec::new();
    for d in 0..a.devices {
        let mut c = SimContext::create(paths.clone(), d, &sizes)
            .with_context(|| format!("open sim device {d}"))?;
        for (i, b) in c.buffers.iter_mut().enumerate() {
            fill(b.as_mut_slice(), a.seed ^ (u64::from(d) << 32) ^ i as u64);
        }
        ctxs.push(c);
    }
    let _children = spawn_children(&a)?;
    let device_bytes: u64 = sizes.iter().sum::<u64>() * u64::from(a.devices);
    let trigger = PathBuf::from(format!("{}.verify", a.status.display()));
    let mut counter = 0u64;
    let mut verify = true;
    loop {
        if verify {
            let mut devices_ok = Vec::new();
            let mut steps = Vec::new();
            for (d, c) in ctxs.iter().enumerate() {
                let mut ok = true;
                for (i, b) in c.buffers.iter().enumerate() {
                    let skip = if i == 0 { 8 } else { 0 };
                    ok &= matches(b.as_slice(), a.seed ^ ((d as u64) << 32) ^ i as u64, skip);
                }
                let mut w = [0u8; 8];
                if let Some(b) = c.buffers.first() {
                    w.copy_from_slice(&b.as_slice()[..8]);
                }
                steps.push(u64::from_le_bytes(w));
                devices_ok.push(ok);
            }
            write_status(
                &a.status,
                &Status {
                    pid: std::process::id(),
                    counter,
                    host_ok: matches(&host, a.seed, 0),
                    devices_ok,
                    device_steps: steps,
                    host_bytes: host.len() as u64,
                    device_bytes,
                },
            )?;
            let _ = std::fs::remove_file(&trigger);
        }
        std::thread::sleep(Duration::from_millis(a.interval_ms));
        counter += 1;
        for c in &mut ctxs {
            if let Some(b) = c.buffers.first_mut() {
                b.as_mut_slice()[..8].copy_from_slice(&counter.to_le_bytes());
            }
        }
        verify = trigger.exists();
    }
}
