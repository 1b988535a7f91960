//! transfer-bench: image transfer throughput on loopback, TLS vs plain TCP, through the same
//! server and client code (ARCHITECTURE.md §4; target: TLS ≥ 1 GB/s and ≥ 90 % of raw TCP).
//!
//! Both stores live under one scratch directory (default `/dev/shm` when it has room), so the
//! numbers measure the transfer path (TLS, HTTP, hashing, the writes' copies) rather than a
//! disk. Each run pulls the whole image into a fresh location; the modes alternate so drift
//! on a shared machine hits both alike.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use ferry_agent::store::{ImageKind, ImageMeta, ImageSource, Store};
use ferry_agent::transfer::{
    ClientTransport, Grant, NodeIdentity, PullSpec, ServerTransport, StaticGrants, Token,
    TransferServer, pinned_client_config, pull_with_transport,
};
use jiff::{SignedDuration, Timestamp};
use tokio::net::TcpListener;

const MIB: u64 = 1 << 20;
const GIB: f64 = (1u64 << 30) as f64;

/// Transfer throughput on loopback: TLS vs plain TCP, same code path.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Image size in GiB.
    #[arg(long, default_value_t = 2.0)]
    size_gib: f64,
    /// Runs per mode (the median is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Files the image is split into.
    #[arg(long, default_value_t = 4)]
    files: u64,
    /// Where to put the stores (default: /dev/shm if it has room, else the temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Write the results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

/// Removes the scratch directory however the bench ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// The request UID the benchmark image is made for and granted to.
const BENCH_UID: &str = "bench-uid";

fn free_bytes(path: &Path) -> u64 {
    rustix::fs::statvfs(path)
        .map(|s| s.f_bavail.saturating_mul(s.f_frsize))
        .unwrap_or(0)
}

fn scratch(args: &Args, bytes: u64) -> Result<Scratch> {
    // Source and one target at a time, plus room to spare.
    let need = 2 * bytes + 256 * MIB;
    let base = match &args.dir {
        Some(dir) => dir.clone(),
        None if free_bytes(Path::new("/dev/shm")) > need => PathBuf::from("/dev/shm"),
        None => std::env::temp_dir(),
    };
    let free = free_bytes(&base);
    if free < need {
        bail!(
            "{} has {free} bytes free, the bench needs {need}",
            base.display()
        );
    }
    let dir = base.join(format!("ferry-transfer-bench-{}", std::process::id()));
    fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    Ok(Scratch(dir))
}

/// Pseudo-random data, cheap to make: one xorshift MiB, each copy stamped with its index.
fn write_data(path: &Path, size: u64, seed: u64) -> Result<()> {
    let mut file = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut state = seed | 1;
    let mut block = vec![0u8; MIB as usize];
    for word in block.chunks_exact_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        word.copy_from_slice(&state.to_le_bytes());
    }
    let (mut left, mut index) = (size, 0u64);
    while left > 0 {
        block[..8].copy_from_slice(&index.to_le_bytes());
        let n = left.min(MIB);
        file.write_all(&block[..n as usize])?;
        left -= n;
        index += 1;
    }
    Ok(())
}

/// CPU seconds (user + system) this process has used: both ends of the transfer run here,
/// so per GB it is the transfer's cost, which a busy shared machine does not distort the way
/// it distorts wall-clock throughput.
fn cpu_seconds() -> f64 {
    let Ok(stat) = fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesized command name; utime and stime are the 14th and 15th.
    let Some(rest) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i).and_then(|f| f.parse::<u64>().ok()))
        .sum();
    // USER_HZ: 100 on every Linux architecture the agent runs on.
    ticks as f64 / 100.0
}

#[derive(Debug, serde::Serialize)]
struct ModeResult {
    mode: &'static str,
    seconds: Vec<f64>,
    cpu_seconds: Vec<f64>,
    median_cpu_seconds_per_gb: f64,
    median_seconds: f64,
    gb_per_s: f64,
    gib_per_s: f64,
    min_gb_per_s: f64,
    max_gb_per_s: f64,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn summarize(mode: &'static str, mut seconds: Vec<f64>, cpu: Vec<f64>, bytes: u64) -> ModeResult {
    let runs = seconds.clone();
    seconds.sort_by(f64::total_cmp);
    let median_cpu_seconds_per_gb = median(&cpu) / (bytes as f64 / 1e9);
    let median = median(&seconds);
    let rate = |s: f64| if s > 0.0 { bytes as f64 / s } else { 0.0 };
    ModeResult {
        mode,
        seconds: runs,
        cpu_seconds: cpu,
        median_cpu_seconds_per_gb,
        median_seconds: median,
        gb_per_s: rate(median) / 1e9,
        gib_per_s: rate(median) / GIB,
        min_gb_per_s: seconds.last().map_or(0.0, |&s| rate(s) / 1e9),
        max_gb_per_s: seconds.first().map_or(0.0, |&s| rate(s) / 1e9),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if args.runs == 0 || args.files == 0 || args.size_gib <= 0.0 {
        bail!("--runs, --files and --size-gib must be positive");
    }
    let bytes = (args.size_gib * GIB) as u64;
    let scratch = scratch(&args, bytes)?;
    let source_store = Store::open(scratch.0.join("source"))?;
    let target_store = Store::open(scratch.0.join("target"))?;

    eprintln!(
        "generating a {bytes}-byte image in {} files under {}",
        args.files,
        scratch.0.display()
    );
    let staging = source_store.stage("bench/image")?;
    let per_file = bytes / args.files;
    for i in 0..args.files {
        let size = if i + 1 == args.files {
            bytes - per_file * (args.files - 1)
        } else {
            per_file
        };
        write_data(
            &staging.file_path(&format!("c/pages-{i}.img"))?,
            size,
            0x5eed + i,
        )?;
    }
    let mut meta = ImageMeta::new(ImageKind::Criu, ImageSource::default());
    // The source serves an image only to a grant for the request it was made for.
    meta.request_uid = Some(BENCH_UID.into());
    let manifest = staging.build_manifest(meta)?;
    let image = staging.publish(&manifest)?;

    let token = Token::generate().map_err(|e| anyhow::anyhow!("generate token: {e}"))?;
    let identity = NodeIdentity::generate()?;
    // The pulling agent's certificate: the TLS server serves the grant to it only (mutual
    // TLS); the plain baseline has no certificates, so its grant pins none.
    let client = NodeIdentity::generate()?;
    let expires_at = Timestamp::now() + SignedDuration::from_hours(1);
    let (tls_grants, plain_grants) = (StaticGrants::new(), StaticGrants::new());
    for (grants, pin) in [
        (&tls_grants, Some(client.fingerprint())),
        (&plain_grants, None),
    ] {
        let grant = Grant::new(token.clone(), expires_at, "bench", "image", BENCH_UID, pin);
        grants.insert("bench", "image", grant);
    }
    let tls_server = TransferServer::spawn(
        TcpListener::bind("127.0.0.1:0").await?,
        source_store.clone(),
        Arc::new(tls_grants),
        ServerTransport::Tls(identity.server_config()?),
    )?;
    let plain_server = TransferServer::spawn(
        TcpListener::bind("127.0.0.1:0").await?,
        source_store.clone(),
        Arc::new(plain_grants),
        ServerTransport::Plain,
    )?;
    let tls_client = ClientTransport::Tls(pinned_client_config(identity.fingerprint(), &client)?);

    let mut tls_seconds = Vec::new();
    let mut plain_seconds = Vec::new();
    let (mut tls_cpu, mut plain_cpu) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        for (mode, server, transport, scheme) in [
            ("tls", &tls_server, tls_client.clone(), "https"),
            ("raw", &plain_server, ClientTransport::Plain, "http"),
        ] {
            let location = format!("bench/run-{mode}-{run}");
            let spec = PullSpec {
                endpoint: format!("{scheme}://{}", server.local_addr()),
                cert_sha256: identity.fingerprint().to_string(),
                token: token.clone(),
                namespace: "bench".into(),
                request: "image".into(),
                location: location.clone(),
                expected_digest: image.digest.clone(),
            };
            let cpu_before = cpu_seconds();
            let report = pull_with_transport(&spec, &target_store, transport, |_, _| {}).await?;
            let cpu = cpu_seconds() - cpu_before;
            if report.bytes_transferred != bytes || report.digest != image.digest {
                bail!("{mode} run {run} did not transfer the image: {report:?}");
            }
            eprintln!(
                "run {run} {mode}: {:.3} s, {:.2} GB/s, {cpu:.2} CPU s",
                report.seconds,
                report.bytes_per_second / 1e9
            );
            if mode == "tls" {
                tls_seconds.push(report.seconds);
                tls_cpu.push(cpu);
            } else {
                plain_seconds.push(report.seconds);
                plain_cpu.push(cpu);
            }
            target_store.delete(&location)?;
        }
    }
    tls_server.shutdown(Duration::from_secs(5)).await;
    plain_server.shutdown(Duration::from_secs(5)).await;

    let tls = summarize("tls", tls_seconds, tls_cpu, bytes);
    let raw = summarize("raw", plain_seconds, plain_cpu, bytes);
    let ratio = if raw.gb_per_s > 0.0 {
        tls.gb_per_s / raw.gb_per_s
    } else {
        0.0
    };
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "image {:.2} GiB in {} files, {} runs per mode, {cpus} CPUs, stores under {}\n",
        bytes as f64 / GIB,
        args.files,
        args.runs,
        scratch.0.parent().unwrap_or(&scratch.0).display()
    );
    println!("| mode | median s | GB/s | GiB/s | min–max GB/s | CPU s per GB (both ends) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for m in [&tls, &raw] {
        println!(
            "| {} | {:.3} | {:.3} | {:.3} | {:.3}–{:.3} | {:.3} |",
            m.mode,
            m.median_seconds,
            m.gb_per_s,
            m.gib_per_s,
            m.min_gb_per_s,
            m.max_gb_per_s,
            m.median_cpu_seconds_per_gb
        );
    }
    println!(
        "\nTLS / raw: {:.1} % (target ≥ 90 %); TLS {:.3} GB/s (target ≥ 1 GB/s)",
        ratio * 100.0,
        tls.gb_per_s
    );
    let meets_targets = tls.gb_per_s >= 1.0 && ratio >= 0.9;
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "bench": "transfer",
            "size_bytes": bytes,
            "files": args.files,
            "runs": args.runs,
            "cpus": cpus,
            "store_dir": scratch.0.parent().unwrap_or(&scratch.0).display().to_string(),
            "modes": [tls, raw],
            "tls_over_raw": ratio,
            "targets": { "tls_gb_per_s": 1.0, "tls_over_raw": 0.9 },
            "meets_targets": meets_targets,
        });
        fs::write(path, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("write {}", path.display()))?;
    }
    Ok(())
}
