//! ferry-agent: the privileged per-node agent (ARCHITECTURE.md §4). Wiring only: flags, logging,
//! the transfer server, the Lease, the task intake, GC and the HTTP endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, ValueEnum};
use ferry_agent::cluster::grants::{CachedGrants, SecretGrants};
use ferry_agent::cluster::lease::{self, LeaseConfig};
use ferry_agent::executor::context::PullIdentity;
use ferry_agent::executor::{RuntimeMode, Worker, WorkerConfig};
use ferry_agent::intake::{self, IntakeConfig};
use ferry_agent::runtime::containerd::Ctr;
use ferry_agent::runtime::criu::Criu;
use ferry_agent::runtime::kubelet::KubeletApi;
use ferry_agent::store::{GcFollowUp, GcLoop, GcPolicy, GcReport, Store, Stores};
use ferry_agent::telemetry::metrics::Metrics;
use ferry_agent::transfer::{NodeIdentity, ServerLimits, ServerTransport, TransferServer};
use ferry_api::names::agent;
use ferry_service::{Endpoints, LogFormat, init_tracing, shutdown_signal};
use tokio::sync::watch;
use tracing::{info, warn};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Runtime {
    /// containerd's runc containers (production).
    Runc,
    /// The kubelet's checkpoint API and containerd's checkpoint-image restore (containerd ≥ 2.1
    /// with `enable_experimental_restore_via_create`).
    Containerd,
    /// Host process trees named by the pod annotation `ferry.dev/pid` (demo and tests only).
    Process,
}

/// ferry node agent: checkpoint, transfer and restore containers on this node. Reads the
/// kubeconfig from $KUBECONFIG or ~/.kube/config, or the in-cluster service account.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Log format.
    #[arg(long, value_enum, default_value = "pretty", env = "FERRY_LOG_FORMAT")]
    log_format: LogFormat,
    /// This node's name (from the downward API).
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Namespace of the agents' Leases.
    #[arg(long, default_value = agent::DEFAULT_NAMESPACE, env = "FERRY_AGENT_NAMESPACE")]
    namespace: String,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9400", env = "FERRY_METRICS_ADDR")]
    metrics_addr: SocketAddr,
    /// Address of the TLS transfer server.
    #[arg(long, default_value = "0.0.0.0:9443", env = "FERRY_TRANSFER_ADDR")]
    transfer_addr: SocketAddr,
    /// URL other agents pull from (published on the Lease). Default: https://<node IP>:<port>.
    #[arg(long, env = "FERRY_ADVERTISE_URL")]
    advertise_url: Option<String>,
    /// This node's IP (downward API `status.hostIP`), for the default advertise URL.
    #[arg(long, env = "NODE_IP")]
    node_ip: Option<String>,
    /// The image store (the default hostPath of CheckpointRequests).
    #[arg(long, default_value = ferry_api::storage::DEFAULT_HOST_PATH, env = "FERRY_STORE")]
    store: PathBuf,
    /// Other host paths requests may name as their store (repeatable).
    #[arg(
        long = "allow-host-path",
        env = "FERRY_ALLOWED_HOST_PATHS",
        value_delimiter = ','
    )]
    allowed_host_paths: Vec<PathBuf>,
    /// The agent's own state: TLS identity, restore work dirs.
    #[arg(long, default_value = "/var/lib/ferry/agent", env = "FERRY_STATE_DIR")]
    state_dir: PathBuf,
    /// How pods map to processes.
    #[arg(long, value_enum, default_value = "runc", env = "FERRY_RUNTIME")]
    runtime: Runtime,
    /// runc binary.
    #[arg(long, default_value = "runc", env = "FERRY_RUNC")]
    runc: PathBuf,
    /// containerd's runc state dir.
    #[arg(
        long,
        default_value = "/run/containerd/runc/k8s.io",
        env = "FERRY_RUNC_ROOT"
    )]
    runc_root: PathBuf,
    /// containerd runtime: this node's kubelet, `https://<node IP>:10250`.
    #[arg(long, env = "FERRY_KUBELET_URL")]
    kubelet_url: Option<String>,
    /// containerd runtime: the name the kubelet's serving certificate is checked against
    /// (default: the URL's host).
    #[arg(long, env = "FERRY_KUBELET_SERVER_NAME")]
    kubelet_server_name: Option<String>,
    /// containerd runtime: CA bundle (PEM) that signs the kubelet's serving certificate.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
        env = "FERRY_KUBELET_CA"
    )]
    kubelet_ca: PathBuf,
    /// containerd runtime: client certificate (PEM) the kubelet authenticates the agent by
    /// (x509); without it, the bearer token of --kubelet-token-file (webhook authentication).
    #[arg(
        long,
        env = "FERRY_KUBELET_CLIENT_CERT",
        requires = "kubelet_client_key"
    )]
    kubelet_client_cert: Option<PathBuf>,
    /// containerd runtime: the client certificate's key (PEM).
    #[arg(
        long,
        env = "FERRY_KUBELET_CLIENT_KEY",
        requires = "kubelet_client_cert"
    )]
    kubelet_client_key: Option<PathBuf>,
    /// containerd runtime: bearer token file for the kubelet, used without a client cert.
    #[arg(
        long,
        default_value = "/var/run/secrets/kubernetes.io/serviceaccount/token",
        env = "FERRY_KUBELET_TOKEN_FILE"
    )]
    kubelet_token_file: PathBuf,
    /// containerd runtime: where the kubelet writes checkpoint archives, as it reports them.
    #[arg(long, default_value = ferry_agent::runtime::kubelet::KUBELET_CHECKPOINTS_DIR, env = "FERRY_KUBELET_CHECKPOINTS_DIR")]
    kubelet_checkpoints_dir: PathBuf,
    /// containerd runtime: the same directory as this agent sees it (its hostPath mount);
    /// default: --kubelet-checkpoints-dir.
    #[arg(long, env = "FERRY_KUBELET_CHECKPOINTS_MOUNT")]
    kubelet_checkpoints_mount: Option<PathBuf>,
    /// containerd runtime: containerd's socket (checkpoint images are imported through it).
    #[arg(
        long,
        default_value = "/run/containerd/containerd.sock",
        env = "FERRY_CONTAINERD_SOCKET"
    )]
    containerd_socket: PathBuf,
    /// containerd runtime: the `ctr` binary.
    #[arg(long, default_value = "ctr", env = "FERRY_CTR")]
    ctr: PathBuf,
    /// containerd runtime: the CRI plugin's snapshotter, which imported images are unpacked into.
    #[arg(
        long,
        default_value = "overlayfs",
        env = "FERRY_CONTAINERD_SNAPSHOTTER"
    )]
    containerd_snapshotter: String,
    /// CRIU binary.
    #[arg(long, default_value = "criu", env = "FERRY_CRIU")]
    criu: PathBuf,
    /// Directory with ferry's CRIU plugin (CRIU's --libdir). Default: CRIU's own (/usr/lib/criu).
    #[arg(long, env = "FERRY_PLUGIN_DIR")]
    plugin_dir: Option<PathBuf>,
    /// Tasks run at once.
    #[arg(long, default_value_t = 2, env = "FERRY_WORKERS")]
    workers: u16,
    /// Seconds between task heartbeats.
    #[arg(long, default_value_t = 5)]
    heartbeat_seconds: u64,
    /// Seconds the agent Lease is valid after a renewal.
    #[arg(long, default_value_t = 15)]
    lease_seconds: u64,
    /// Seconds between Lease renewals.
    #[arg(long, default_value_t = 5)]
    lease_renew_seconds: u64,
    /// After SIGTERM, seconds running tasks may still finish before they are failed.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_seconds: u64,
    /// Delete images older than this many hours (0: never).
    #[arg(long, default_value_t = 72, env = "FERRY_GC_TTL_HOURS")]
    gc_ttl_hours: u64,
    /// Keep the store under this many GiB, oldest images first (0: no quota). On by default
    /// (200 GiB: a few dumps of a large GPU pod) so retained images cannot grow without bound;
    /// each checkpoint also checks free space before it freezes anything.
    #[arg(long, default_value_t = 200, env = "FERRY_GC_QUOTA_GIB")]
    gc_quota_gib: u64,
    /// Seconds between GC runs.
    #[arg(long, default_value_t = 300)]
    gc_every_seconds: u64,
    /// Transfer connections served at once; more are closed on accept.
    #[arg(long, default_value_t = 256, env = "FERRY_TRANSFER_MAX_CONNECTIONS")]
    transfer_max_connections: usize,
    /// Seconds a transfer connection may move no data before it is closed (a stalled reader).
    #[arg(
        long,
        default_value_t = 30,
        env = "FERRY_TRANSFER_IDLE_TIMEOUT_SECONDS"
    )]
    transfer_idle_timeout_seconds: u64,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    init_tracing(args.log_format);
    let store = Store::open(&args.store)
        .with_context(|| format!("opening the image store {}", args.store.display()))?;
    let stores = Stores::new(store.clone(), args.allowed_host_paths.clone())
        .context("opening the --allow-host-path stores")?;
    let identity = Arc::new(
        NodeIdentity::load_or_create(&args.state_dir)
            .context("loading or creating the transfer TLS identity")?,
    );
    let client = kube::Client::try_default()
        .await
        .context("connecting to the API server")?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = watch::channel(false);

    // The transfer server: mutual TLS with this node's pinned certificate, grants from the
    // Secrets of the agents' namespace only.
    let listener = tokio::net::TcpListener::bind(args.transfer_addr)
        .await
        .with_context(|| format!("binding the transfer server to {}", args.transfer_addr))?;
    let transfer = TransferServer::spawn_with_limits(
        listener,
        stores.clone(),
        Arc::new(CachedGrants::new(
            SecretGrants::new(client.clone(), args.namespace.clone()),
            Duration::from_secs(5),
        )),
        ServerTransport::Tls(identity.server_config()?),
        ServerLimits {
            max_connections: args.transfer_max_connections.max(1),
            idle_timeout: Duration::from_secs(args.transfer_idle_timeout_seconds.max(1)),
            ..ServerLimits::default()
        },
    )?;
    let advertise = lease::advertise_url(
        args.advertise_url.as_deref(),
        args.node_ip.as_deref(),
        transfer.local_addr(),
    );
    info!(
        node = %args.node_name,
        transfer = %transfer.local_addr(),
        advertise = %advertise,
        cert_sha256 = %identity.fingerprint(),
        store = %store.root().display(),
        runtime = ?args.runtime,
        "ferry-agent starting"
    );

    // Served bytes and refused pulls are counted by the server; /metrics reads them.
    metrics.attach_transfer(transfer.stats());

    let http = {
        let mut stop = stop_rx.clone();
        Endpoints::new(
            metrics.clone(),
            ready.clone(),
            "not ready: the agent Lease is not renewed or the task watch is not running",
        )
        .spawn(args.metrics_addr, async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await?
    };

    let lease_task = tokio::spawn(lease::run(
        client.clone(),
        LeaseConfig {
            namespace: args.namespace.clone(),
            node: args.node_name.clone(),
            transfer_endpoint: advertise,
            cert_sha256: identity.fingerprint().to_string(),
            duration: Duration::from_secs(args.lease_seconds),
            renew_every: Duration::from_secs(args.lease_renew_seconds),
        },
        ready.clone(),
        stop_rx.clone(),
    ));

    let ctr = Ctr {
        binary: args.ctr.clone(),
        socket: args.containerd_socket.clone(),
        snapshotter: args.containerd_snapshotter.clone(),
    };
    // Checkpoint images imported into containerd are collected with the store's images.
    let image_ctr = matches!(args.runtime, Runtime::Containerd).then(|| ctr.clone());
    let gc_task = tokio::spawn(
        GcLoop {
            stores: stores.clone(),
            policy: GcPolicy::from_hours_and_gib(args.gc_ttl_hours, args.gc_quota_gib),
            every: Duration::from_secs(args.gc_every_seconds.max(1)),
            on_report: Some(Arc::new({
                let metrics = metrics.clone();
                move |store: &str, r: &GcReport| {
                    metrics.store_gc(store, r.deleted.len(), r.remaining_bytes)
                }
            })),
            follow_up: image_ctr.map(|ctr| containerd_image_gc(ctr, metrics.clone())),
        }
        .run(stop_rx.clone()),
    );

    let mut criu = Criu::new(&args.criu);
    if let Some(dir) = &args.plugin_dir {
        criu = criu.with_libdir(dir);
    }
    let runtime = match args.runtime {
        Runtime::Runc => RuntimeMode::Runc {
            binary: args.runc.clone(),
            root: args.runc_root.clone(),
        },
        Runtime::Containerd => RuntimeMode::Containerd {
            kubelet: kubelet_api(&args)?,
            ctr,
        },
        Runtime::Process => {
            warn!(
                "process runtime: pods name host process trees by annotation; for demos and tests only"
            );
            RuntimeMode::Process
        }
    };
    // The sim GPU's settings reach the plugin through CRIU's environment.
    let plugin_env = std::env::vars()
        .filter(|(k, _)| {
            [
                ferry_api::plugin_env::FERRY_SIM_ROOT,
                ferry_api::plugin_env::FERRY_SIM_MEM,
                ferry_api::plugin_env::FERRY_SIM_BANDWIDTH,
                ferry_api::plugin_env::FERRY_CHUNK_SIZE,
                ferry_api::plugin_env::FERRY_IO_TIMEOUT,
            ]
            .contains(&k.as_str())
        })
        .collect();
    let worker = Worker::new(
        client.clone(),
        WorkerConfig {
            node: args.node_name.clone(),
            stores: stores.clone(),
            work_dir: args.state_dir.join("work"),
            criu,
            runtime,
            plugin_env,
            // Pulls read grants from the agents' namespace and present this node's certificate.
            pull_identity: Some(PullIdentity {
                namespace: args.namespace.clone(),
                identity: identity.clone(),
            }),
        },
        metrics.clone(),
    );
    let intake_task = tokio::spawn(intake::run(
        client,
        IntakeConfig {
            node: args.node_name.clone(),
            workers: args.workers,
            heartbeat_every: Duration::from_secs(args.heartbeat_seconds.max(1)),
            shutdown_grace: Duration::from_secs(args.shutdown_grace_seconds),
        },
        Arc::new(worker),
        metrics,
        stop_rx,
    ));

    shutdown_signal().await;
    info!("SIGTERM: finishing running tasks, then stopping");
    let _ = stop_tx.send(true);
    if let Err(e) = intake_task.await {
        warn!(error = %e, "task intake ended abnormally");
    }
    transfer
        .shutdown(Duration::from_secs(args.shutdown_grace_seconds))
        .await;
    let _ = lease_task.await;
    let _ = gc_task.await;
    let _ = http.await;
    info!("ferry-agent stopped");
    Ok(())
}

/// The GC rounds' follow-up with the containerd runtime: checkpoint images imported into
/// containerd that no pod and no stored image needs any more.
fn containerd_image_gc(ctr: Ctr, metrics: Arc<Metrics>) -> GcFollowUp {
    Arc::new(move |stores: &Stores| {
        match ferry_agent::runtime::containerd::gc::collect(&ctr, stores, Duration::from_secs(60)) {
            Ok(refs) if !refs.is_empty() => {
                metrics.containerd_images_removed(refs.len());
                info!(
                    removed = ?refs,
                    "checkpoint images no pod or stored image needs removed from containerd"
                )
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "containerd checkpoint image GC failed"),
        }
    })
}

/// The kubelet checkpoint API client from the `--kubelet-*` flags.
fn kubelet_api(args: &Args) -> Result<KubeletApi> {
    let url = args
        .kubelet_url
        .as_deref()
        .context("--runtime containerd needs --kubelet-url (https://<node IP>:10250)")?;
    let (address, host) = KubeletApi::address_of(url)?;
    let ca = std::fs::read(&args.kubelet_ca)
        .with_context(|| format!("reading --kubelet-ca {}", args.kubelet_ca.display()))?;
    let client = match (&args.kubelet_client_cert, &args.kubelet_client_key) {
        (Some(cert), Some(key)) => Some((
            std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?,
            std::fs::read(key).with_context(|| format!("reading {}", key.display()))?,
        )),
        _ => None,
    };
    let tls = KubeletApi::tls_config(
        &ca,
        client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice())),
    )?;
    let mut api = KubeletApi::new(
        address,
        args.kubelet_server_name.clone().unwrap_or(host),
        tls,
    );
    if client.is_none() {
        let token = std::fs::read_to_string(&args.kubelet_token_file).with_context(|| {
            format!(
                "reading --kubelet-token-file {} (or pass --kubelet-client-cert/--kubelet-client-key)",
                args.kubelet_token_file.display()
            )
        })?;
        api.bearer_token = Some(token.trim().to_string());
    }
    api.host_checkpoints_dir = args.kubelet_checkpoints_dir.clone();
    api.local_checkpoints_dir = args
        .kubelet_checkpoints_mount
        .clone()
        .unwrap_or_else(|| args.kubelet_checkpoints_dir.clone());
    Ok(api)
}
