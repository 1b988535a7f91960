//! The end-to-end migration scenario, shared by the README demo (`ferry-demo`) and the e2e
//! test: a real control plane with two kwok nodes, the real `ferry-operator` and two real
//! `ferry-agent` processes, and the sim-GPU workload migrated from one agent to the other
//! through checkpoint → TLS transfer → restore, with real CRIU and ferry's plugin.
//!
//! What is simulated, and why: the two nodes are kwok nodes (no kubelet runs here for them),
//! so a pod is a paper pod and the agents run in `--runtime process` mode, where the pod's
//! `ferry.dev/pid` annotation names the host process tree that stands for it. The workload
//! runs as the init of its own pid namespace so that its restored copy can run beside the
//! original (as it does on another node) until the source is deleted. The GPU is ferry's sim
//! device. Everything else — API server, operator, agents, Leases, NodeTasks, tokens, TLS,
//! CRIU, the plugin — is the real thing.

use std::fs;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use serde_json::Value;

use crate::identity::{
    AGENT_SERVICE_ACCOUNT, AgentIdentity, OPERATOR_SERVICE_ACCOUNT, agent_identity,
    apply_node_scope_policy, ensure_service_account,
};
use crate::{Cluster, Options, User, workspace_root};

/// Namespace of the agents' and the operator's Leases.
pub use crate::identity::SYSTEM_NAMESPACE;
/// Namespace of the demo workload.
pub const NAMESPACE: &str = "demo";
/// The pod that stands for the workload.
pub const POD: &str = "trainer";
/// The CheckpointRequest.
pub const REQUEST: &str = "move-trainer";

/// What to migrate and with which binaries.
#[derive(Clone, Debug)]
pub struct MigrationOptions {
    /// Directory with `ferry-operator`, `ferry-agent` and `ferry-sim-workload`.
    pub bin_dir: PathBuf,
    /// ferry's CRIU plugin (`libferry_criu_plugin.so`); copied alone into CRIU's `--libdir`,
    /// since CRIU loads every `.so` in that directory.
    pub plugin: PathBuf,
    /// The CRIU binary.
    pub criu: PathBuf,
    /// Simulated device memory, MiB.
    pub device_mib: u64,
    /// Host memory of the workload, MiB.
    pub host_mib: u64,
    /// Refill device memory in parallel with host memory.
    pub parallel_restore: bool,
    /// Where everything goes (stores, logs, sim devices); a temporary directory if `None`.
    pub work_dir: Option<PathBuf>,
    /// Print progress lines.
    pub verbose: bool,
}

/// What the migration did.
#[derive(Clone, Debug)]
pub struct MigrationReport {
    /// The request's final `status`.
    pub status: Value,
    /// The Restore NodeTask's final `status`.
    pub restore_task: Value,
    /// The Checkpoint NodeTask's final `status`.
    pub checkpoint_task: Value,
    /// The target agent's `ferry_*` metric lines (histogram buckets left out).
    pub target_metrics: Vec<String>,
    /// The source agent's `ferry_*` metric lines (histogram buckets left out).
    pub source_metrics: Vec<String>,
    /// The restored workload's verification (its status file after a verify).
    pub verify: Value,
    /// Pid of the original workload and of its restored copy.
    pub pids: (i32, i32),
    /// Seconds from applying the request to `Succeeded`.
    pub wall_seconds: f64,
    /// Steps the workload had made before and after the migration (it continued, not restarted).
    pub counters: (u64, u64),
}

/// A child process killed (SIGKILL, whole process group) on drop.
struct Guard {
    name: String,
    child: Child,
    /// SIGTERM first (agents and operator shut down cleanly), or SIGKILL at once (a
    /// pid-namespace init ignores SIGTERM).
    term_first: bool,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        let signal = if self.term_first {
            rustix::process::Signal::TERM
        } else {
            rustix::process::Signal::KILL
        };
        if let Some(pgid) = rustix::process::Pid::from_raw(pid) {
            let _ = rustix::process::kill_process_group(pgid, signal);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("{} did not stop on SIGTERM; killed", self.name);
    }
}

/// A process (a pid-namespace init, which ignores SIGTERM) SIGKILLed on drop.
struct PidGuard(i32);

impl Drop for PidGuard {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Guard> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    use std::os::unix::process::CommandExt;
    command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0);
    let child = command
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    Ok(Guard {
        name: name.to_string(),
        child,
        term_first: true,
    })
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn http_get(port: u16, path: &str) -> Result<String> {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    stream.read_to_string(&mut body)?;
    Ok(body
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default())
}

/// Children of `pid` (from `/proc/<pid>/task/<pid>/children`).
fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Triggers the sim workload's verify and returns its fresh status.
fn verify(status: &Path) -> Result<Value> {
    let before = fs::metadata(status).and_then(|m| m.modified()).ok();
    let trigger = PathBuf::from(format!("{}.verify", status.display()));
    fs::write(&trigger, b"")?;
    wait_for("the workload's verify", Duration::from_secs(60), || {
        let fresh =
            !trigger.exists() && fs::metadata(status).and_then(|m| m.modified()).ok() != before;
        Ok(fresh.then_some(()))
    })?;
    Ok(serde_json::from_slice(&fs::read(status)?)?)
}

/// Applies the RBAC of `manifests/rbac/` and the agents' node-scope policy of
/// `manifests/policy/` (waiting until it is enforced), creates the ServiceAccounts they bind
/// (`ferry-agent`, `ferry-operator`), and binds the operator's role to the user of the harness's
/// operator client certificate (`ferry-operator`) too, so that the operator and the agents run
/// with exactly those roles. The agents authenticate as their ServiceAccount with node-bound
/// tokens ([`agent_identity`]). `SYSTEM_NAMESPACE` must exist.
pub fn bind_ferry_rbac(cluster: &Cluster) -> crate::Result<()> {
    let rbac = workspace_root().join("manifests/rbac");
    cluster.kubectl(&["apply", "-f", &rbac.display().to_string()])?;
    for account in [AGENT_SERVICE_ACCOUNT, OPERATOR_SERVICE_ACCOUNT] {
        ensure_service_account(cluster, account)?;
    }
    apply_node_scope_policy(cluster)?;
    // The operator runs with its client certificate (user `ferry-operator`): its roles too.
    let role = OPERATOR_SERVICE_ACCOUNT;
    cluster.kubectl(&[
        "create",
        "clusterrolebinding",
        &format!("{role}-user"),
        &format!("--clusterrole={role}"),
        &format!("--user={role}"),
    ])?;
    cluster.kubectl(&[
        "create",
        "rolebinding",
        &format!("{role}-user"),
        "-n",
        SYSTEM_NAMESPACE,
        &format!("--role={role}"),
        &format!("--user={role}"),
    ])?;
    Ok(())
}

/// A `ferry-agent` on loopback for the node of `identity`, as the e2e tests run it: the
/// agent's ServiceAccount with the token bound to its node ([`agent_identity`]), the agents'
/// namespace, metrics and transfer ports, its own store and state dir under `dir` (`store`,
/// `state`), heartbeats every 2 s. The caller adds the runtime and its flags.
pub fn agent_command(
    bin: &Path,
    identity: &AgentIdentity,
    dir: &Path,
    metrics: u16,
    transfer: u16,
) -> Command {
    let mut agent = Command::new(bin);
    agent
        .env("KUBECONFIG", &identity.kubeconfig)
        .env("RUST_LOG", "info,ferry_agent=debug")
        .args([
            "--node-name",
            &identity.node,
            "--namespace",
            SYSTEM_NAMESPACE,
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
        .args(["--transfer-addr", &format!("127.0.0.1:{transfer}")])
        .args(["--advertise-url", &format!("https://127.0.0.1:{transfer}")])
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(["--heartbeat-seconds", "2"]);
    agent
}

/// Runs the scenario. The cluster and every process stop when it returns.
pub fn run(opts: &MigrationOptions) -> Result<MigrationReport> {
    let say = |line: String| {
        if opts.verbose {
            println!("  {line}");
        }
    };
    let tmp;
    let work = match &opts.work_dir {
        Some(dir) => {
            fs::create_dir_all(dir)?;
            dir.clone()
        }
        None => {
            tmp = tempfile::Builder::new()
                .prefix("ferry-migration-")
                .tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let bin = |name: &str| -> Result<PathBuf> {
        let path = opts.bin_dir.join(name);
        if path.is_file() {
            Ok(path)
        } else {
            Err(anyhow!("{} not found (build it first)", path.display()))
        }
    };
    let (operator_bin, agent_bin, workload_bin) = (
        bin("ferry-operator")?,
        bin("ferry-agent")?,
        bin("ferry-sim-workload")?,
    );

    let plugin_dir = work.join("criu-plugins");
    fs::create_dir_all(&plugin_dir)?;
    fs::copy(&opts.plugin, plugin_dir.join("libferry_criu_plugin.so"))
        .with_context(|| format!("copying the plugin {}", opts.plugin.display()))?;

    let started = Instant::now();
    let cluster = Cluster::start(Options::control_plane().with_kwok_nodes(2))?;
    let nodes = cluster.node_names()?;
    let [source, target] = nodes.as_slice() else {
        bail!("expected 2 kwok nodes, got {nodes:?}");
    };
    say(format!(
        "control plane + 2 kwok nodes ({source}, {target}) up in {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    for ns in [SYSTEM_NAMESPACE, NAMESPACE] {
        cluster.kubectl(&["create", "namespace", ns])?;
        // No controller-manager runs (nothing here needs one): create what its service
        // account controller would, so that pods pass admission.
        cluster.kubectl(&["create", "serviceaccount", "default", "-n", ns])?;
    }
    bind_ferry_rbac(&cluster)?;

    // The sim GPU both "nodes" share: on one machine there is one set of sim devices.
    let sim_root = work.join("sim-root");
    let sim_mem = work.join("sim-mem");
    let sim_env = [
        ("FERRY_SIM_ROOT", sim_root.display().to_string()),
        ("FERRY_SIM_MEM", sim_mem.display().to_string()),
    ];

    let operator_port = free_port()?;
    let mut operator = Command::new(&operator_bin);
    operator
        .env("KUBECONFIG", cluster.kubeconfig(User::Operator))
        .env("RUST_LOG", "info")
        .args(["--metrics-addr", &format!("127.0.0.1:{operator_port}")])
        .args([
            "--lease-namespace",
            SYSTEM_NAMESPACE,
            "--identity",
            "demo-operator",
        ])
        .args(["--agent-namespace", SYSTEM_NAMESPACE]);
    let _operator = spawn("ferry-operator", operator, &work.join("operator.log"))?;

    let mut agents = Vec::new();
    let mut metrics_ports = Vec::new();
    for (i, node) in [source, target].into_iter().enumerate() {
        let letter = if i == 0 { "a" } else { "b" };
        let (metrics, transfer) = (free_port()?, free_port()?);
        metrics_ports.push(metrics);
        let identity = agent_identity(&cluster, node)?;
        let mut agent = agent_command(&agent_bin, &identity, &work.join(letter), metrics, transfer);
        agent
            .envs(sim_env.iter().map(|(k, v)| (*k, v.as_str())))
            .args(["--runtime", "process"])
            .arg("--criu")
            .arg(&opts.criu)
            .arg("--plugin-dir")
            .arg(&plugin_dir);
        agents.push(spawn(
            &format!("ferry-agent {node}"),
            agent,
            &work.join(format!("agent-{letter}.log")),
        )?);
    }
    for port in &metrics_ports {
        wait_for("the agents' /readyz", Duration::from_secs(60), || {
            Ok(http_get(*port, "/readyz").ok().filter(|b| b.trim() == "ok"))
        })
        .with_context(|| {
            format!(
                "agent logs: {}",
                crate::process::log_tail(&work.join("agent-a.log"), 20)
            )
        })?;
    }
    say("operator and two agents ready (Leases renewed)".into());

    // The workload: the init of its own pid namespace, in its own session.
    let status_file = work.join("status.json");
    let mut workload = Command::new("unshare");
    workload
        // No --kill-child: CRIU restores the parent-death signal too, and the restored copy's
        // parent (CRIU, detached) exits right away. The workload is killed by pid instead.
        .args(["--pid", "--fork", "setsid"])
        .arg(&workload_bin)
        .args([
            "--devices",
            "1",
            "--device-mib",
            &opts.device_mib.to_string(),
        ])
        .args(["--host-mib", &opts.host_mib.to_string(), "--status"])
        .arg(&status_file)
        .envs(sim_env.iter().map(|(k, v)| (*k, v.as_str())));
    let mut unshare = spawn("workload", workload, &work.join("workload.log"))?;
    unshare.term_first = false;
    let original = wait_for("the workload", Duration::from_secs(60), || {
        Ok(children(unshare.child.id() as i32)
            .first()
            .copied()
            .filter(|_| status_file.exists()))
    })?;
    let original_guard = PidGuard(original);
    let before = verify(&status_file)?;
    say(format!(
        "workload pid {original}: {} MiB sim VRAM, {} MiB host memory, step {}",
        opts.device_mib, opts.host_mib, before["counter"]
    ));

    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": NAMESPACE,
                     "annotations": {"ferry.dev/pid": original.to_string()}},
        "spec": {"nodeName": source,
                 "containers": [{"name": "trainer", "image": "local/sim-trainer:1"}],
                 "tolerations": [{"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"}]},
    });
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&pod.to_string()))?;
    wait_for("the pod to run", Duration::from_secs(60), || {
        let phase = cluster.kubectl(&[
            "get",
            "pod",
            POD,
            "-n",
            NAMESPACE,
            "-o",
            "jsonpath={.status.phase}",
        ])?;
        Ok((phase.trim() == "Running").then_some(()))
    })?;

    let request = format!(
        r#"apiVersion: ferry.dev/v1alpha1
kind: CheckpointRequest
metadata: {{name: {REQUEST}, namespace: {NAMESPACE}}}
spec:
  podName: {POD}
  gpu: {{parallelRestore: {}}}
  migrate: {{targetNode: {target}, deleteSource: true}}
  timeoutSeconds: 300
"#,
        opts.parallel_restore
    );
    say(format!(
        "kubectl apply: CheckpointRequest {REQUEST} (migrate {POD} {source} → {target})"
    ));
    let applied = Instant::now();
    cluster.kubectl_stdin(&["apply", "-f", "-"], Some(&request))?;
    let mut last_phase = String::new();
    let status = wait_for("the request to finish", Duration::from_secs(300), || {
        let req = cluster.kubectl_json(&[
            "get",
            "checkpointrequest",
            REQUEST,
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ])?;
        let phase = req["status"]["phase"].as_str().unwrap_or("").to_string();
        if phase != last_phase {
            say(format!(
                "{:6.2} s  phase {phase}",
                applied.elapsed().as_secs_f64()
            ));
            last_phase = phase.clone();
        }
        Ok(matches!(phase.as_str(), "Succeeded" | "Failed").then(|| req["status"].clone()))
    })?;
    let wall_seconds = applied.elapsed().as_secs_f64();
    let restore_task = cluster
        .kubectl_json(&[
            "get",
            "nodetask",
            &format!("{REQUEST}-restore"),
            "-n",
            NAMESPACE,
        ])
        .map(|t| t["status"].clone())
        .unwrap_or(Value::Null);
    let checkpoint_task = cluster
        .kubectl_json(&[
            "get",
            "nodetask",
            &format!("{REQUEST}-checkpoint"),
            "-n",
            NAMESPACE,
            "-o",
            "json",
        ])
        .map(|t| t["status"].clone())
        .unwrap_or(Value::Null);
    if status["phase"] != "Succeeded" {
        bail!(
            "the migration failed: {}\nrestore task: {restore_task}\nagent a:\n{}\nagent b:\n{}",
            status,
            crate::process::log_tail(&work.join("agent-a.log"), 30),
            crate::process::log_tail(&work.join("agent-b.log"), 30)
        );
    }

    // The restored copy: a second child of a pid-namespace init running the workload.
    let restored = wait_for("the restored workload", Duration::from_secs(30), || {
        Ok(fs::read_dir("/proc")?
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| *pid != original)
            .find(|pid| {
                fs::read_link(format!("/proc/{pid}/exe"))
                    .map(|exe| exe == workload_bin)
                    .unwrap_or(false)
                    && fs::read_to_string(format!("/proc/{pid}/status"))
                        .map(|s| {
                            s.lines()
                                .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1"))
                        })
                        .unwrap_or(false)
            }))
    })?;
    let _restored_guard = PidGuard(restored);
    // The source pod is gone (deleteSource): stop its process, as its kubelet would.
    drop(original_guard);
    drop(unshare);
    wait_for("the original to exit", Duration::from_secs(10), || {
        Ok((!alive(original)).then_some(()))
    })?;
    let after = verify(&status_file)?;
    let ferry_lines = |port: u16| -> Result<Vec<String>> {
        Ok(http_get(port, "/metrics")?
            .lines()
            .filter(|l| l.starts_with("ferry_") && !l.contains("_bucket{"))
            .map(str::to_string)
            .collect())
    };
    let source_metrics = ferry_lines(metrics_ports[0])?;
    let target_metrics = ferry_lines(metrics_ports[1])?;
    drop(agents);
    Ok(MigrationReport {
        status,
        restore_task,
        checkpoint_task,
        target_metrics,
        source_metrics,
        counters: (
            before["counter"].as_u64().unwrap_or(0),
            after["counter"].as_u64().unwrap_or(0),
        ),
        verify: after,
        pids: (original, restored),
        wall_seconds,
    })
}
