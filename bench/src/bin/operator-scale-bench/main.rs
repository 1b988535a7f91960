//! Scale benchmark of the operator: a real control plane (the e2e harness:
//! etcd, kube-apiserver, controller-manager, kwok) with `--nodes` kwok nodes, an agent Lease
//! per node (renewed), `--requests` Running pods and as many CheckpointRequests, the
//! `ferry-operator` binary (next to this one: `cargo build --release -p ferry-operator -p ferry-bench`) as a
//! separate process running as the `ferry-operator` user with only its RBAC, and a load
//! driver playing the agents: it watches NodeTasks and writes `Running`, then `Succeeded`
//! with plausible results, each after `--agent-delay-ms`.
//!
//! Measured: the reconcile duration histogram scraped from the operator's `/metrics` (p50,
//! p99), request-level latencies seen through a watch (creation → Checkpointing, the agent's
//! final write → the request terminal, creation → terminal), the time until every request is
//! terminal, and the operator's peak RSS (`VmHWM` of `/proc/<pid>/status`). Prints a
//! markdown table and writes JSON (`--json`).
//!
//! ```text
//! cargo build --release -p ferry-operator -p ferry-bench
//! target/release/operator-scale-bench --nodes 500 --requests 1000 --json target/operator-scale-bench.json
//! ```

mod agents;
mod process;
mod report;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use ferry_api::{CheckpointRequest, NodeTask, RequestPhase, TaskPhase};
use ferry_e2e::{Cluster, Options, User};
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;

use agents::*;
use process::*;
use report::*;

pub(crate) const AGENTS: &str = "ferry-system";
const NAMESPACE: &str = "bench";

/// Scale benchmark of ferry-operator against a kwok control plane.
#[derive(Debug, Parser)]
#[command(about)]
pub(crate) struct Args {
    /// kwok nodes (each with an agent Lease).
    #[arg(long, default_value_t = 500)]
    nodes: usize,
    /// CheckpointRequests (one Running pod each, spread round-robin over the nodes).
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// Percent of the requests that are migrations (to any other node) instead of checkpoints.
    #[arg(long, default_value_t = 0)]
    migrate_percent: u32,
    /// The fake agents' delay before each status write (Running, then Succeeded).
    #[arg(long, default_value_t = 200)]
    agent_delay_ms: u64,
    /// Seconds between renewals of the agents' Leases (valid 3x as long).
    #[arg(long, default_value_t = 20)]
    lease_renew_seconds: u64,
    /// Concurrent API writes of the load driver (creations, agent status writes).
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Give up waiting for all requests terminal after this many seconds (partial results).
    #[arg(long, default_value_t = 240)]
    timeout_seconds: u64,
    /// The operator binary (default: `ferry-operator` next to this executable).
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// Where to write the JSON results.
    #[arg(long, default_value = "target/operator-scale-bench.json")]
    json: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.nodes < 2 && args.migrate_percent > 0 {
        bail!("migrations need at least 2 nodes");
    }
    let operator_bin = match &args.operator_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the executable's directory")?
            .join("ferry-operator"),
    };
    if !operator_bin.is_file() {
        bail!(
            "{} not found: build it with `cargo build --release -p ferry-operator` (or pass --operator-bin)",
            operator_bin.display()
        );
    }
    let began = Instant::now();
    eprintln!("starting the control plane with {} kwok nodes", args.nodes);
    // The cluster's components die with the thread that started it: keep it on this one.
    let cluster = Cluster::start(
        Options::control_plane()
            .with_controllers()
            .with_kwok_nodes(args.nodes),
    )
    .context("starting the control plane")?;
    let cluster_up = began.elapsed();
    eprintln!("control plane up in {cluster_up:.1?}");
    cluster.kubectl(&["create", "namespace", AGENTS])?;
    let rbac = ferry_e2e::workspace_root().join("manifests/rbac");
    cluster.kubectl(&["apply", "-f", &rbac.display().to_string()])?;
    cluster.kubectl(&[
        "create",
        "clusterrolebinding",
        "ferry-operator-user",
        "--clusterrole=ferry-operator",
        "--user=ferry-operator",
    ])?;
    cluster.kubectl(&[
        "create",
        "rolebinding",
        "ferry-operator-user",
        "-n",
        AGENTS,
        "--role=ferry-operator",
        "--user=ferry-operator",
    ])?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(run(&args, &cluster, &operator_bin, cluster_up))?;
    drop(runtime);
    print_table(&args, &report);
    if let Some(dir) = args.json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!(
        "wrote {} (whole run {:.1?})",
        args.json.display(),
        began.elapsed()
    );
    drop(cluster);
    Ok(())
}

/// What one request went through, as seen by the bench.
#[derive(Debug, Default, Clone)]
pub(crate) struct Track {
    created: Option<Instant>,
    checkpointing: Option<Instant>,
    /// When the fake agent wrote the last task status the request waits for.
    agent_done: Option<Instant>,
    terminal: Option<Instant>,
    phase: Option<RequestPhase>,
}

pub(crate) type Tracks = Arc<Mutex<HashMap<String, Track>>>;

pub(crate) fn with_track(tracks: &Tracks, name: &str, f: impl FnOnce(&mut Track)) {
    if let Ok(mut t) = tracks.lock() {
        f(t.entry(name.to_string()).or_default());
    }
}

async fn client(cluster: &Cluster, user: User) -> Result<Client> {
    let kc = Kubeconfig::read_from(cluster.kubeconfig(user))?;
    let mut cfg = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    cfg.read_timeout = Some(Duration::from_secs(120));
    Ok(Client::try_from(cfg)?)
}

pub(crate) fn now_micro() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string()
}

fn nodes_of(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("kwok-node-{i:04}")).collect()
}

async fn run(
    args: &Args,
    cluster: &Cluster,
    operator_bin: &std::path::Path,
    cluster_up: Duration,
) -> Result<serde_json::Value> {
    let admin = client(cluster, User::Admin).await?;
    let nodes = nodes_of(args.nodes);

    // Agents' Leases, renewed in the background.
    let setup = Instant::now();
    renew_leases(&admin, &nodes, args).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let renewer = {
        let (admin, nodes, stop) = (admin.clone(), nodes.clone(), stop.clone());
        let every = Duration::from_secs(args.lease_renew_seconds.max(1));
        let conc = args.concurrency;
        let duration = lease_duration(args);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(every).await;
                if let Err(e) = renew_all(&admin, &nodes, conc, duration).await {
                    eprintln!("lease renewal: {e:#}");
                }
            }
        })
    };
    eprintln!("{} agent leases in {:.1?}", nodes.len(), setup.elapsed());

    // The namespace and its pods (kwok runs them).
    let ns_api: Api<Namespace> = Api::all(admin.clone());
    ns_api
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": NAMESPACE}}))?,
        )
        .await?;
    let sa: Api<ServiceAccount> = Api::namespaced(admin.clone(), NAMESPACE);
    let deadline = Instant::now() + Duration::from_secs(60);
    while sa.get_opt("default").await?.is_none() {
        if Instant::now() > deadline {
            bail!("no default service account in {NAMESPACE}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pods_began = Instant::now();
    let pods: Api<Pod> = Api::namespaced(admin.clone(), NAMESPACE);
    futures::stream::iter(0..args.requests)
        .map(|i| {
            let pods = pods.clone();
            let node = nodes[i % nodes.len()].clone();
            async move {
                let pod = json!({"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": format!("p{i:05}"), "labels": {"app": "trainer"}},
                    "spec": {"nodeName": node,
                        "containers": [{"name": "main", "image": "registry.example/trainer:1"}],
                        "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]}});
                pods.create(&PostParams::default(), &serde_json::from_value(pod)?)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await
        .context("creating pods")?;
    loop {
        let list = pods.list(&ListParams::default()).await?;
        let running = list
            .items
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running >= args.requests {
            break;
        }
        if pods_began.elapsed() > Duration::from_secs(180) {
            bail!(
                "only {running} of {} pods Running after 180 s",
                args.requests
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let pods_running = pods_began.elapsed();
    eprintln!("{} pods Running in {pods_running:.1?}", args.requests);

    // The operator, as its own process and user.
    let port = free_port()?;
    let log_path = args.json.with_extension("operator.log");
    if let Some(dir) = log_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let mut operator = OperatorProcess(
        Command::new(operator_bin)
            .env("KUBECONFIG", cluster.kubeconfig(User::Operator))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .args([
                "--metrics-addr",
                &format!("127.0.0.1:{port}"),
                "--lease-namespace",
                AGENTS,
                "--agent-namespace",
                AGENTS,
                "--identity",
                "bench",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", operator_bin.display()))?,
    );
    let pid = operator.0.id();
    let rss = Arc::new(RssSampler::default());
    let sampler = {
        let (rss, stop) = (rss.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                rss.sample(pid);
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let ready_deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = operator.0.try_wait()? {
            bail!("the operator exited ({status}); see {}", log_path.display());
        }
        if http_get(port, "/readyz").is_ok_and(|(code, _)| code == 200) {
            break;
        }
        if Instant::now() > ready_deadline {
            bail!(
                "the operator never became ready; see {}",
                log_path.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Let it become leader and sync its caches before the load starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss_idle_kib = rss.current();
    eprintln!("operator pid {pid} ready, RSS {rss_idle_kib} KiB");

    // Watchers: the requests (phases) and the tasks (the fake agents).
    let tracks: Tracks = Arc::default();
    let terminal = Arc::new(AtomicU64::new(0));
    let requests_api: Api<CheckpointRequest> = Api::namespaced(admin.clone(), NAMESPACE);
    let req_watch = {
        let (api, tracks, terminal) = (requests_api.clone(), tracks.clone(), terminal.clone());
        tokio::spawn(async move {
            let mut stream = watcher(api, watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(item) = stream.next().await {
                let Ok(r) = item else { continue };
                let phase = r.phase();
                let seen = Instant::now();
                let name = r.name_any();
                with_track(&tracks, &name, |t| {
                    if phase != RequestPhase::Pending && t.checkpointing.is_none() {
                        t.checkpointing = Some(seen);
                    }
                    if phase.is_terminal() && t.terminal.is_none() {
                        t.terminal = Some(seen);
                        terminal.fetch_add(1, Ordering::Relaxed);
                    }
                    t.phase = Some(phase);
                });
            }
        })
    };
    let agent_writes = Arc::new(AtomicU64::new(0));
    let agent = {
        let (admin, tracks, writes) = (admin.clone(), tracks.clone(), agent_writes.clone());
        let delay = Duration::from_millis(args.agent_delay_ms);
        let limit = Arc::new(tokio::sync::Semaphore::new(args.concurrency));
        tokio::spawn(async move {
            let api: Api<NodeTask> = Api::namespaced(admin, NAMESPACE);
            let mut seen = HashSet::new();
            let mut stream = watcher(api.clone(), watcher::Config::default())
                .applied_objects()
                .boxed();
            while let Some(item) = stream.next().await {
                let Ok(task) = item else { continue };
                if task.phase() != TaskPhase::Pending || !seen.insert(task.name_any()) {
                    continue;
                }
                let (api, tracks, writes, limit) =
                    (api.clone(), tracks.clone(), writes.clone(), limit.clone());
                tokio::spawn(async move {
                    if let Err(e) = play_agent(&api, &task, delay, &limit, &tracks, &writes).await {
                        eprintln!("agent on {}: {e:#}", task.name_any());
                    }
                });
            }
        })
    };

    // The load: every request at once, as fast as the API server takes them.
    let load_began = Instant::now();
    futures::stream::iter(0..args.requests)
        .map(|i| {
            let (api, tracks) = (requests_api.clone(), tracks.clone());
            let migrate = (i % 100) < args.migrate_percent as usize;
            async move {
                let name = format!("r{i:05}");
                let mut spec = json!({"podName": format!("p{i:05}"), "timeoutSeconds": 600});
                if migrate {
                    spec["migrate"] = json!({});
                }
                let obj = json!({"apiVersion": "ferry.dev/v1alpha1", "kind": "CheckpointRequest",
                    "metadata": {"name": name}, "spec": spec});
                with_track(&tracks, &name, |t| t.created = Some(Instant::now()));
                api.create(&PostParams::default(), &serde_json::from_value(obj)?)
                    .await
                    .map(|_| ())
                    .map_err(anyhow::Error::from)
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<Vec<()>>()
        .await
        .context("creating CheckpointRequests")?;
    let created_in = load_began.elapsed();
    eprintln!("{} requests created in {created_in:.1?}", args.requests);
    let deadline = load_began + Duration::from_secs(args.timeout_seconds);
    let mut last_print = Instant::now();
    while (terminal.load(Ordering::Relaxed) as usize) < args.requests && Instant::now() < deadline {
        if let Some(status) = operator.0.try_wait()? {
            bail!("the operator exited ({status}); see {}", log_path.display());
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "{:.0?}: {} of {} terminal, operator RSS {} KiB",
                load_began.elapsed(),
                terminal.load(Ordering::Relaxed),
                args.requests,
                rss.current()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_terminal = (terminal.load(Ordering::Relaxed) as usize) >= args.requests;
    let metrics = http_get(port, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let hwm_kib = read_status_kib(pid, "VmHWM:").unwrap_or(0);
    let rss_end_kib = read_status_kib(pid, "VmRSS:").unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    operator.stop();
    req_watch.abort();
    agent.abort();
    renewer.abort();
    let _ = sampler.join();

    // Results.
    let tracks = tracks.lock().map(|t| t.clone()).unwrap_or_default();
    let terminal_at: Vec<Instant> = tracks.values().filter_map(|t| t.terminal).collect();
    let time_to_all_terminal = terminal_at
        .iter()
        .max()
        .map(|t| t.duration_since(load_began));
    let mut phases: HashMap<&'static str, usize> = HashMap::new();
    for t in tracks.values() {
        *phases
            .entry(t.phase.map_or("none", RequestPhase::as_str))
            .or_default() += 1;
    }
    let ms = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
        (Some(a), Some(b)) => Some(b.saturating_duration_since(a).as_secs_f64() * 1000.0),
        _ => None,
    };
    let accept: Vec<f64> = tracks
        .values()
        .filter_map(|t| ms(t.created, t.checkpointing))
        .collect();
    let react: Vec<f64> = tracks
        .values()
        .filter_map(|t| ms(t.agent_done, t.terminal))
        .collect();
    let e2e: Vec<f64> = tracks
        .values()
        .filter_map(|t| ms(t.created, t.terminal))
        .collect();
    let hist = parse_histogram(&metrics, "ferry_reconcile_duration_seconds");
    let errors = metric_sum(&metrics, "ferry_reconcile_errors_total");
    Ok(json!({
        "nodes": args.nodes,
        "requests": args.requests,
        "migrate_percent": args.migrate_percent,
        "agent_delay_ms": args.agent_delay_ms,
        "operator": "separate process (ferry-operator), RSS from /proc/<pid>/status",
        "cluster_up_s": cluster_up.as_secs_f64(),
        "pods_running_s": pods_running.as_secs_f64(),
        "requests_created_s": created_in.as_secs_f64(),
        "all_terminal": all_terminal,
        "terminal": terminal_at.len(),
        "final_phases": phases,
        "time_to_all_terminal_s": time_to_all_terminal.map(|d| d.as_secs_f64()),
        "reconcile": {
            "count": hist.count,
            "mean_ms": if hist.count > 0.0 { hist.sum / hist.count * 1000.0 } else { 0.0 },
            "p50_ms": hist.quantile(0.50) * 1000.0,
            "p99_ms": hist.quantile(0.99) * 1000.0,
            "errors": errors,
            "buckets": hist.buckets,
        },
        "request_latency_ms": {
            "create_to_checkpointing": summary(accept),
            "agent_done_to_terminal": summary(react),
            "create_to_terminal": summary(e2e),
        },
        "agent_status_writes": agent_writes.load(Ordering::Relaxed),
        "operator_rss_kib": {
            "idle_after_sync": rss_idle_kib,
            "peak_sampled": rss.peak(),
            "vm_hwm": hwm_kib,
            "end": rss_end_kib,
        },
        "targets": {
            "reconcile_p99_under_1s": hist.quantile(0.99) < 1.0,
            "rss_under_200_mib": hwm_kib < 200 * 1024,
        },
    }))
}
