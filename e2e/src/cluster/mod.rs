//! A throwaway Kubernetes control plane on loopback: etcd and kube-apiserver (optionally
//! kube-controller-manager, kube-scheduler and kwok for simulated nodes) as child processes,
//! with a generated PKI, ferry's CRDs applied, torn down on drop.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

mod kubectl;
mod nodes;
mod options;

pub use options::Options;

use crate::binaries::{Binaries, NodeBinaries};
use crate::error::{Error, IoContext, Result};
use crate::node::{self, NodeContext, NodeLock, REAL_NODE_LABEL, RealNode};
use crate::pki::{FRONT_PROXY_CLIENT, Pki, SERVICE_CLUSTER_IP_RANGE, User};
use crate::process::{Process, process_exists};

/// The annotation kwok selects the nodes it manages by (`kwok.x-k8s.io/node: fake`).
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// The label the harness puts on the kwok nodes it creates (`ferry.dev/e2e-kwok: "true"`).
pub const KWOK_NODE_LABEL: &str = "ferry.dev/e2e-kwok";
/// The taint on kwok nodes (`kwok.x-k8s.io/node=fake:NoSchedule`): only pods that tolerate it
/// land there, so nothing meant for a real node is "run" by kwok by mistake.
pub const KWOK_NODE_TAINT: &str = "kwok.x-k8s.io/node";

/// The file in a cluster directory that holds the test process's pid, so that a later start
/// can remove the directories of test processes that were killed before they could.
const OWNER_FILE: &str = "owner.pid";
/// The prefix of cluster directories in the temporary directory.
const DIR_PREFIX: &str = "ferry-e2e-";

/// How long the API server gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long real nodes get to register and become Ready (containerd, image imports, kubelet).
const REAL_NODE_READY_TIMEOUT: Duration = Duration::from_secs(180);
/// How long a checkpoint through the kubelet API may take (CRIU dump and archive).
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(120);
/// kubectl's per-request timeout.
const KUBECTL_REQUEST_TIMEOUT: &str = "--request-timeout=60s";

/// A running test cluster. Dropping it stops every component (process groups, SIGTERM then
/// SIGKILL) and removes its directory; set `FERRY_E2E_KEEP=1` to keep the directory (logs,
/// certificates, kubeconfigs), which also happens, with log tails on stderr, when the drop
/// happens during a panic.
///
/// **Keep the thread that starts a cluster alive until the cluster is dropped**: components
/// get SIGKILL when that thread exits (see [`crate::process`]), which is what cleans up
/// after a test binary killed with SIGKILL. Starting a cluster inside a `OnceLock` from one
/// `#[test]` and using it from others therefore does not work; run scenarios from one test.
#[derive(Debug)]
pub struct Cluster {
    binaries: Binaries,
    pki: Pki,
    server: String,
    ports: Vec<u16>,
    processes: Mutex<Vec<Process>>,
    nodes: Mutex<Vec<RealNode>>,
    // Held while real nodes run; released after they are torn down.
    node_lock: Option<NodeLock>,
    next_node: AtomicUsize,
    started_in: Duration,
    // Last, so it is dropped after the processes whose logs live in it.
    dir: Option<tempfile::TempDir>,
}

impl Cluster {
    /// Starts a cluster and waits until it serves (and, with `kwok_nodes`, has Ready nodes).
    pub fn start(options: Options) -> Result<Self> {
        let began = Instant::now();
        let binaries = Binaries::locate()?;
        remove_stale_dirs();
        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .tempdir()
            .io_context("creating the cluster directory", std::env::temp_dir())?;
        let root = dir.path().to_path_buf();
        let owner = root.join(OWNER_FILE);
        fs::write(&owner, std::process::id().to_string())
            .io_context("writing the cluster's owner file", &owner)?;
        let pki = Pki::generate(&root.join("pki"))?;

        let ports = reserve_ports::<6>()?;
        let [
            etcd_client,
            etcd_peer,
            apiserver,
            controller_manager,
            scheduler,
            kwok,
        ] = ports;

        let server = format!("https://127.0.0.1:{apiserver}");
        let mut cluster = Self {
            binaries,
            pki,
            server,
            ports: ports.to_vec(),
            processes: Mutex::new(Vec::new()),
            nodes: Mutex::new(Vec::new()),
            node_lock: None,
            next_node: AtomicUsize::new(0),
            started_in: Duration::ZERO,
            dir: Some(dir),
        };
        for user in User::ALL {
            cluster.pki.write_kubeconfig(user, &cluster.server)?;
        }

        let etcd_data = root.join("etcd");
        let etcd_args = vec![
            "--name=ferry-e2e".to_string(),
            format!("--data-dir={}", etcd_data.display()),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}"),
            format!("--initial-cluster=ferry-e2e=http://127.0.0.1:{etcd_peer}"),
            // A test cluster's data dies with it; fsync only costs time.
            "--unsafe-no-fsync=true".to_string(),
            "--log-level=warn".to_string(),
        ];
        let etcd = cluster.binaries.etcd.clone();
        cluster.spawn("etcd", &etcd, &etcd_args)?;

        // Started right away: the API server retries etcd until it answers.
        let pki = &cluster.pki;
        let sa_key = pki.service_account_key();
        let apiserver_args = vec![
            "kube-apiserver".to_string(),
            format!("--etcd-servers=http://127.0.0.1:{etcd_client}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={apiserver}"),
            format!("--cert-dir={}", root.join("apiserver").display()),
            format!("--tls-cert-file={}", pki.serving_cert().display()),
            format!("--tls-private-key-file={}", pki.serving_key().display()),
            format!("--client-ca-file={}", pki.ca_cert().display()),
            format!(
                "--requestheader-client-ca-file={}",
                pki.front_proxy_ca_cert().display()
            ),
            format!("--requestheader-allowed-names={FRONT_PROXY_CLIENT}"),
            "--requestheader-username-headers=X-Remote-User".to_string(),
            "--requestheader-group-headers=X-Remote-Group".to_string(),
            "--requestheader-extra-headers-prefix=X-Remote-Extra-".to_string(),
            format!(
                "--proxy-client-cert-file={}",
                pki.front_proxy_client_cert().display()
            ),
            format!(
                "--proxy-client-key-file={}",
                pki.front_proxy_client_key().display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_string(),
            format!(
                "--service-account-key-file={}",
                pki.service_account_public_key().display()
            ),
            format!("--service-account-signing-key-file={}", sa_key.display()),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--authorization-mode=Node,RBAC".to_string(),
            "--allow-privileged=true".to_string(),
            // The default reconciler would publish 127.0.0.1 as the `kubernetes` Service's
            // endpoint, which endpoint validation rejects (loopback), logging errors forever.
            "--endpoint-reconciler-type=none".to_string(),
            // Towards real nodes' kubelets (logs, exec, the checkpoint API): they know the
            // node by its IP; the node name ("hostname") resolves nowhere.
            format!(
                "--kubelet-client-certificate={}",
                pki.kubelet_client_cert().display()
            ),
            format!(
                "--kubelet-client-key={}",
                pki.kubelet_client_key().display()
            ),
            "--kubelet-preferred-address-types=InternalIP,Hostname".to_string(),
            "--profiling=false".to_string(),
        ];
        let kube = cluster.binaries.kube.clone();
        cluster.spawn("kube-apiserver", &kube, &apiserver_args)?;
        cluster.wait_ready()?;

        if !options.skip_crds {
            cluster.apply_crds()?;
        }

        if options.controllers {
            let kubeconfig = cluster.kubeconfig(User::ControllerManager);
            let args = vec![
                "kube-controller-manager".to_string(),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kubeconfig.display()),
                "--bind-address=127.0.0.1".to_string(),
                format!("--secure-port={controller_manager}"),
                format!("--cert-dir={}", root.join("controller-manager").display()),
                format!(
                    "--service-account-private-key-file={}",
                    cluster.pki.service_account_key().display()
                ),
                format!("--root-ca-file={}", cluster.pki.ca_cert().display()),
                format!(
                    "--cluster-signing-cert-file={}",
                    cluster.pki.ca_cert().display()
                ),
                format!(
                    "--cluster-signing-key-file={}",
                    cluster.pki.ca_key().display()
                ),
                "--use-service-account-credentials=true".to_string(),
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
                "--leader-elect=false".to_string(),
                "--profiling=false".to_string(),
            ];
            cluster.spawn("kube-controller-manager", &kube, &args)?;

            let kubeconfig = cluster.kubeconfig(User::Scheduler);
            let args = vec![
                "kube-scheduler".to_string(),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--authentication-kubeconfig={}", kubeconfig.display()),
                format!("--authorization-kubeconfig={}", kubeconfig.display()),
                "--bind-address=127.0.0.1".to_string(),
                format!("--secure-port={scheduler}"),
                format!("--cert-dir={}", root.join("scheduler").display()),
                "--leader-elect=false".to_string(),
                "--profiling=false".to_string(),
            ];
            cluster.spawn("kube-scheduler", &kube, &args)?;
        }

        if options.kwok || options.kwok_nodes > 0 {
            let args = vec![
                format!("--kubeconfig={}", cluster.kubeconfig(User::Admin).display()),
                format!("--config={}", cluster.binaries.kwok_stages.display()),
                "--manage-all-nodes=false".to_string(),
                format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                "--cidr=10.244.0.0/16".to_string(),
                "--node-ip=10.0.0.1".to_string(),
                "--node-lease-duration-seconds=40".to_string(),
                format!("--server-address=127.0.0.1:{kwok}"),
            ];
            let kwok_bin = cluster.binaries.kwok.clone();
            cluster.spawn("kwok", &kwok_bin, &args)?;
        }
        if options.kwok_nodes > 0 {
            let nodes = cluster.add_kwok_nodes(options.kwok_nodes)?;
            cluster.wait_nodes_ready(&nodes, Duration::from_secs(300))?;
        }
        if options.real_nodes > 0 {
            cluster.start_real_nodes(options.real_nodes)?;
        }

        cluster.started_in = began.elapsed();
        Ok(cluster)
    }

    fn start_real_nodes(&mut self, count: usize) -> Result<()> {
        if let Some(reason) = node::unsupported_reason() {
            return Err(Error::RealNodesUnsupported { reason });
        }
        let binaries = NodeBinaries::locate()?;
        self.node_lock = Some(NodeLock::acquire()?);
        let ip = node::host_ip()?;
        let dir = self.dir().to_path_buf();
        let mut names = Vec::with_capacity(count);
        for index in 0..count {
            let ports = reserve_ports::<2>()?;
            self.ports.extend(ports);
            let context = NodeContext {
                kube: &self.binaries.kube,
                binaries: &binaries,
                pki: &self.pki,
                server: &self.server,
                cluster_dir: &dir,
                ip,
            };
            let node = RealNode::start(&context, index, ports)?;
            names.push(node.name().to_string());
            self.real_nodes().push(node);
        }
        let selector = format!("{REAL_NODE_LABEL}=real");
        self.wait_labelled_nodes_ready(&names, &selector, REAL_NODE_READY_TIMEOUT)?;
        Ok(())
    }

    /// The real nodes (empty without [`Options::real_nodes`]), in start order.
    pub fn real_nodes(&self) -> MutexGuard<'_, Vec<RealNode>> {
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The real nodes' names.
    pub fn real_node_names(&self) -> Vec<String> {
        self.real_nodes()
            .iter()
            .map(|n| n.name().to_string())
            .collect()
    }

    /// How long [`Cluster::start`] took (PKI, processes, readiness, CRDs, nodes).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The API server's URL (`https://127.0.0.1:<port>`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The generated PKI (CA, serving and client certificates, service-account key).
    pub fn pki(&self) -> &Pki {
        &self.pki
    }

    /// A kubeconfig for `user` (written at start-up).
    pub fn kubeconfig(&self, user: User) -> PathBuf {
        self.dir()
            .join("pki")
            .join(format!("{}.kubeconfig", user.file_stem()))
    }

    /// The cluster's directory (PKI, etcd data, logs).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .unwrap_or_else(|| Path::new("/nonexistent"))
    }

    /// The loopback ports the components listen on.
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    /// Process ids of the running components (each is also a process group id).
    pub fn pids(&self) -> Vec<u32> {
        self.processes().iter().map(Process::pid).collect()
    }

    /// The running components' names and log files (real nodes' as `<node>/<component>`).
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        let mut logs: Vec<(String, PathBuf)> = self
            .processes()
            .iter()
            .map(|p| (p.name().to_string(), p.log().to_path_buf()))
            .collect();
        logs.extend(self.real_nodes().iter().flat_map(RealNode::logs));
        logs
    }

    /// Ok when every component still runs, else the first that exited, with its log tail.
    pub fn check_components(&self) -> Result<()> {
        self.processes()
            .iter_mut()
            .try_for_each(Process::check_running)?;
        self.real_nodes()
            .iter_mut()
            .try_for_each(RealNode::check_running)
    }

    /// Calls `probe` every `interval` until it returns `Ok(Some(_))`, failing early when a
    /// component exits and with the last `Err` observation and log tails on timeout.
    pub fn poll<T>(
        &self,
        what: &str,
        timeout: Duration,
        interval: Duration,
        mut probe: impl FnMut() -> std::result::Result<Option<T>, String>,
    ) -> Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("not checked yet");
        loop {
            self.check_components()?;
            match probe() {
                Ok(Some(value)) => return Ok(value),
                Ok(None) => {}
                Err(observation) => last = observation,
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: what.to_string(),
                    after: timeout,
                    detail: format!("last: {last}\n{}", self.log_tails(20)),
                });
            }
            std::thread::sleep(interval);
        }
    }

    /// The last `lines` lines of every component's log, with headers.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut tails: Vec<String> = self
            .processes()
            .iter()
            .map(|p| {
                format!(
                    "--- {} ({}):\n{}",
                    p.name(),
                    p.log().display(),
                    p.log_tail(lines)
                )
            })
            .collect();
        tails.extend(self.real_nodes().iter().map(|n| n.log_tails(lines)));
        tails.join("\n")
    }

    fn wait_ready(&self) -> Result<()> {
        self.poll(
            "kube-apiserver /readyz",
            READY_TIMEOUT,
            Duration::from_millis(100),
            || {
                let out = self
                    .kubectl_output(&["get", "--raw=/readyz"], None)
                    .map_err(|e| e.to_string())?;
                if out.status.success() {
                    Ok(Some(()))
                } else {
                    Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
                }
            },
        )
    }

    fn spawn(&mut self, name: &str, program: &Path, args: &[String]) -> Result<()> {
        let log = self.dir().join(format!("{name}.log"));
        let process = Process::spawn(name, program, args, &log)?;
        self.processes().push(process);
        Ok(())
    }

    fn processes(&self) -> MutexGuard<'_, Vec<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let keep = std::thread::panicking() || std::env::var_os("FERRY_E2E_KEEP").is_some();
        if std::thread::panicking() {
            eprintln!(
                "ferry-e2e: tearing down after a panic; component logs:\n{}",
                self.log_tails(30)
            );
        }
        // Real nodes first (they run pods the control plane knows of), then the lock that let
        // them run; then reverse start order: clients (kwok, controllers) before the API
        // server before etcd.
        let mut nodes = std::mem::take(&mut *self.real_nodes());
        while let Some(mut node) = nodes.pop() {
            node.teardown();
        }
        if self.node_lock.is_some() {
            node::remove_cgroups(&format!("/{}", node::CGROUP_PARENT));
        }
        drop(self.node_lock.take());
        let mut processes = std::mem::take(&mut *self.processes());
        while let Some(mut process) = processes.pop() {
            process.stop();
        }
        if keep && let Some(dir) = self.dir.take() {
            // Without an owner, a later start does not take the kept directory for stale.
            let _ = fs::remove_file(dir.path().join(OWNER_FILE));
            eprintln!(
                "ferry-e2e: kept the cluster directory {}",
                dir.keep().display()
            );
        }
    }
}

/// Picks `N` distinct free loopback ports. Each listener is held until all are picked, so no
/// two components get the same port; another process can still take one before the component
/// binds it, which shows up as that component exiting with "address already in use".
fn reserve_ports<const N: usize>() -> Result<[u16; N]> {
    let mut listeners = Vec::with_capacity(N);
    let mut ports = [0; N];
    for port in &mut ports {
        let listener = TcpListener::bind(("127.0.0.1", 0)).map_err(Error::Port)?;
        *port = listener.local_addr().map_err(Error::Port)?.port();
        listeners.push(listener);
    }
    Ok(ports)
}

/// Removes cluster directories left by test processes that no longer exist (killed with
/// SIGKILL, so no `Drop` ran; their components died with them, see [`crate::process`]).
/// Best effort: a directory that cannot be read or removed is left alone.
fn remove_stale_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let is_cluster_dir = entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(DIR_PREFIX));
        if !is_cluster_dir {
            continue;
        }
        let owner = fs::read_to_string(path.join(OWNER_FILE))
            .ok()
            .and_then(|pid| pid.trim().parse::<u32>().ok());
        if let Some(pid) = owner
            && !process_exists(pid)
        {
            // Mounts and shims of its real nodes first: removing files under live mounts
            // would fail (netns bind mounts) or reach into container filesystems.
            node::reclaim_stale_cluster_dir(&path);
            let _ = fs::remove_dir_all(&path);
        }
    }
}
