//! One real node: its containerd and kubelet, their configuration, and its teardown.

use std::ffi::{OsStr, OsString};
use std::fs::{self};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::binaries::{NodeBinaries, PAUSE_IMAGE};
use crate::error::{Error, IoContext, Result};
use crate::pki::Pki;
use crate::process::Process;

use super::cleanup::{
    cgroup_hierarchies, delete_link, kill_all, procs_under, remove_cgroups, remove_shim_sockets,
    shims_of, unmount_under,
};
use super::files::write;
use super::names::{BRIDGE_PREFIX, CGROUP_PARENT, REAL_NODE_LABEL, node_letter, node_name};

/// How long a node's containerd gets to answer on its socket.
pub(super) const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);

/// What a node needs from its cluster.
#[derive(Debug, Clone)]
pub struct NodeContext<'a> {
    /// The `kube` multi-call binary (`kube kubelet`).
    pub kube: &'a Path,
    /// containerd, runc, CNI plugins, images.
    pub binaries: &'a NodeBinaries,
    /// The cluster's PKI (node certificates are issued from its CA).
    pub pki: &'a Pki,
    /// The API server's URL.
    pub server: &'a str,
    /// The cluster's directory; the node lives in `<dir>/nodes/<name>`.
    pub cluster_dir: &'a Path,
    /// The nodes' InternalIP (see [`host_ip`]).
    pub ip: IpAddr,
}

/// One running real node: its containerd and kubelet, and what they created on the host.
/// Dropping it tears all of it down ([`RealNode::teardown`]).
#[derive(Debug)]
pub struct RealNode {
    name: String,
    dir: PathBuf,
    ip: IpAddr,
    kubelet_port: u16,
    containerd_socket: PathBuf,
    bridge: String,
    cgroup: String,
    ctr: PathBuf,
    // kubelet last: stopped first.
    processes: Vec<Process>,
    torn_down: bool,
}

impl RealNode {
    /// Starts node number `index`: containerd, the image imports, then the kubelet, which
    /// registers the node. Does not wait for the node to be Ready.
    pub fn start(ctx: &NodeContext<'_>, index: usize, ports: [u16; 2]) -> Result<Self> {
        let name = node_name(index);
        let letter = node_letter(index);
        let dir = ctx.cluster_dir.join("nodes").join(&name);
        let [kubelet_port, healthz_port] = ports;
        let containerd_dir = dir.join("containerd");
        let mut node = Self {
            name: name.clone(),
            ip: ctx.ip,
            kubelet_port,
            containerd_socket: containerd_dir.join("containerd.sock"),
            bridge: format!("{BRIDGE_PREFIX}{letter}0"),
            cgroup: format!("/{CGROUP_PARENT}/{name}"),
            ctr: ctx.binaries.ctr.clone(),
            processes: Vec::new(),
            torn_down: false,
            dir,
        };
        for sub in ["containerd", "kubelet", "cni/net.d", "cni/ipam", "pod-logs"] {
            let path = node.dir.join(sub);
            fs::create_dir_all(&path).io_context("creating a node directory", &path)?;
        }
        node.create_cgroups()?;

        // containerd, with its shim and the host's tools (CRIU for checkpoints) on its PATH.
        let config = node.dir.join("containerd/config.toml");
        let toml = node.containerd_config(ctx.binaries, index);
        write(&config, &toml)?;
        let cni = node.dir.join("cni/net.d/10-ferry.conflist");
        write(&cni, &format!("{:#}\n", node.cni_config(index)))?;
        let mut path = OsString::from(ctx.binaries.shim_dir.as_os_str());
        path.push(":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
        let args = vec![
            format!("--config={}", config.display()),
            "--log-level=info".to_string(),
        ];
        node.spawn(
            "containerd",
            &ctx.binaries.containerd,
            &args,
            &[("PATH", path.as_os_str())],
        )?;
        node.wait_containerd()?;
        for image in [&ctx.binaries.pause_image, &ctx.binaries.counter_image] {
            node.import_image(image)?;
        }

        // The kubelet.
        let certs = ctx.pki.issue_node(&name, ctx.ip, ctx.server)?;
        let kubelet_config = node.dir.join("kubelet/config.json");
        let config = node.kubelet_config(ctx, &certs, healthz_port);
        write(&kubelet_config, &format!("{config:#}\n"))?;
        let args = vec![
            "kubelet".to_string(),
            format!("--config={}", kubelet_config.display()),
            format!("--kubeconfig={}", certs.kubeconfig.display()),
            format!("--root-dir={}", node.dir.join("kubelet").display()),
            format!("--hostname-override={name}"),
            format!("--node-ip={}", ctx.ip),
            format!("--node-labels={REAL_NODE_LABEL}=real"),
            "--v=2".to_string(),
        ];
        node.spawn("kubelet", ctx.kube, &args, &[])?;
        Ok(node)
    }

    /// The node's name (`ferry-node-a`, ...).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's directory (containerd and kubelet state, configs, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubelet's HTTPS port (on [`RealNode::ip`]).
    pub fn kubelet_port(&self) -> u16 {
        self.kubelet_port
    }

    /// The node's InternalIP.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The node's containerd socket.
    pub fn containerd_socket(&self) -> &Path {
        &self.containerd_socket
    }

    /// The kubelet's checkpoint directory (`<root-dir>/checkpoints`), where the checkpoint
    /// API writes its archives.
    pub fn checkpoints_dir(&self) -> PathBuf {
        self.dir.join("kubelet/checkpoints")
    }

    /// The node's cgroup (the kubelet's `cgroupRoot`), as a path inside each hierarchy.
    pub fn cgroup(&self) -> &str {
        &self.cgroup
    }

    /// Process ids of every process in the node's cgroups: its pods' containers (and sandboxes).
    pub fn pod_pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = cgroup_hierarchies()
            .iter()
            .flat_map(|h| procs_under(&h.path(&self.cgroup)))
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Runs `ctr --address <socket> -n k8s.io <args>` and returns its stdout.
    pub fn ctr(&self, args: &[&OsStr]) -> Result<String> {
        let output = Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.containerd_socket)
            .args(["-n", "k8s.io"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .io_context("running ctr", &self.ctr)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(Error::Node {
                node: self.name.clone(),
                what: format!(
                    "`ctr {}` failed with {}: {}",
                    args.iter()
                        .map(|a| a.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(" "),
                    output.status,
                    String::from_utf8_lossy(&output.stderr).trim()
                ),
            })
        }
    }

    /// Imports an OCI archive (an image layout as a tar) into the node's containerd, in the
    /// `k8s.io` namespace the kubelet uses; pods then use it with `imagePullPolicy: Never`.
    pub fn import_image(&self, archive: &Path) -> Result<()> {
        self.ctr(&[
            "images".as_ref(),
            "import".as_ref(),
            "--snapshotter=overlayfs".as_ref(),
            archive.as_os_str(),
        ])
        .map(drop)
    }

    /// Ok while containerd and the kubelet run, else the first that exited, with its log tail.
    pub fn check_running(&mut self) -> Result<()> {
        self.processes
            .iter_mut()
            .try_for_each(Process::check_running)
    }

    /// The node's components' names (`ferry-node-a/kubelet`) and log files.
    pub fn logs(&self) -> Vec<(String, PathBuf)> {
        self.processes
            .iter()
            .map(|p| (p.name().to_string(), p.log().to_path_buf()))
            .collect()
    }

    /// The last `lines` lines of containerd's and the kubelet's logs, with headers.
    pub fn log_tails(&self, lines: usize) -> String {
        self.processes
            .iter()
            .map(|p| {
                format!(
                    "--- {} ({}):\n{}",
                    p.name(),
                    p.log().display(),
                    p.log_tail(lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the kubelet, kills the pods' processes and the node's shims, stops containerd,
    /// unmounts everything under the node's directory, removes its cgroups and its bridge.
    /// Best effort and idempotent: what fails is reported on stderr and the rest goes on.
    pub fn teardown(&mut self) {
        if self.torn_down {
            return;
        }
        self.torn_down = true;
        // The kubelet first, so it does not restart what is killed next.
        if let Some(mut kubelet) = self.processes.pop() {
            kubelet.stop();
        }
        kill_all(&self.pod_pids());
        kill_all(&shims_of(&self.containerd_socket));
        while let Some(mut process) = self.processes.pop() {
            process.stop();
        }
        // Shims that were starting while containerd stopped.
        kill_all(&shims_of(&self.containerd_socket));
        remove_shim_sockets(&self.dir.join("containerd/state"));
        unmount_under(&self.dir);
        remove_cgroups(&self.cgroup);
        delete_link(&self.bridge);
    }

    fn spawn(
        &mut self,
        component: &str,
        program: &Path,
        args: &[String],
        env: &[(&str, &OsStr)],
    ) -> Result<()> {
        let log = self.dir.join(format!("{component}.log"));
        let name = format!("{}/{component}", self.name);
        let process = Process::spawn_with_env(&name, program, args, env, &log)?;
        self.processes.push(process);
        Ok(())
    }

    fn wait_containerd(&mut self) -> Result<()> {
        let deadline = Instant::now() + CONTAINERD_TIMEOUT;
        loop {
            self.check_running()?;
            let last = match self.ctr(&["version".as_ref()]) {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: format!("{}'s containerd answering", self.name),
                    after: CONTAINERD_TIMEOUT,
                    detail: format!("last: {last}\n{}", self.log_tails(30)),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Creates the node's cgroup in every hierarchy (the kubelet checks that its cgroupRoot
    /// exists). cgroup v1's cpuset starts empty in a new cgroup, and nothing can join it
    /// until `cpuset.cpus` and `cpuset.mems` are set, so they are copied from the parent;
    /// on cgroup v2 the controllers are enabled for the children.
    fn create_cgroups(&self) -> Result<()> {
        for hierarchy in cgroup_hierarchies() {
            let mut current = hierarchy.mount.clone();
            for part in self.cgroup.trim_start_matches('/').split('/') {
                let parent = current.clone();
                current.push(part);
                if !current.exists() {
                    fs::create_dir(&current).io_context("creating a node cgroup", &current)?;
                }
                if hierarchy.controllers.iter().any(|c| c == "cpuset") {
                    for file in ["cpuset.cpus", "cpuset.mems"] {
                        let value = fs::read_to_string(parent.join(file))
                            .io_context("reading a cpuset", parent.join(file))?;
                        let target = current.join(file);
                        let existing = fs::read_to_string(&target).unwrap_or_default();
                        if existing.trim().is_empty() {
                            fs::write(&target, value.trim())
                                .io_context("writing a cpuset", &target)?;
                        }
                    }
                }
                if hierarchy.v2 {
                    // Only controllers the parent delegates can be enabled; the rest are left.
                    let available =
                        fs::read_to_string(parent.join("cgroup.controllers")).unwrap_or_default();
                    for controller in available.split_whitespace() {
                        let _ = fs::write(
                            parent.join("cgroup.subtree_control"),
                            format!("+{controller}"),
                        );
                    }
                }
            }
        }
        Ok(())
    }

    fn containerd_config(&self, binaries: &NodeBinaries, index: usize) -> String {
        let c = self.dir.join("containerd");
        let d = |p: &Path| toml_string(&p.display().to_string());
        // Version 4 is containerd 2.3's format (3 is migrated with a warning at every start);
        // in it the servers are plugins (`io.containerd.server.v1.grpc`, not `[grpc]`).
        // Everything host-wide by default is moved into the node's directory (sockets, runc
        // root, opt dir, network namespaces) or turned off (NRI's socket, the debug and
        // metrics servers, the /etc/containerd/conf.d imports).
        format!(
            r#"# {name}'s containerd, written by ferry's e2e harness.
version = 4
root = {root}
state = {state}
imports = []
disabled_plugins = ['io.containerd.nri.v1.nri']
# Node {index}: keeps the OOM score of the harness; pods get the kubelet's scores.
oom_score = 0

[plugins.'io.containerd.server.v1.grpc']
  address = {socket}

[plugins.'io.containerd.server.v1.ttrpc']
  address = {ttrpc}

[plugins.'io.containerd.server.v1.debug']
  address = ''

[plugins.'io.containerd.server.v1.metrics']
  address = ''

[plugins.'io.containerd.internal.v1.opt']
  path = {opt}

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  # Nothing is pulled: the sandbox image is the locally built pause image, imported at start.
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = {pause}

[plugins.'io.containerd.cri.v1.runtime']
  netns_mounts_under_state_dir = true
  # The kubelet asks for -998 (sandboxes) and -997 (Guaranteed pods); lowering a score needs
  # CAP_SYS_RESOURCE, which sandboxed CI machines may not have in their bounding set (runc
  # then fails: "nsexec: failed to update /proc/self/oom_score_adj: Permission denied").
  # This clamps requested scores to containerd's own, so the nodes run either way.
  restrict_oom_score_adj = true
  # Restore from a checkpoint image through CreateContainer: containerd 2.3.4+ has it off
  # by default (it is deprecated for KEP-5823's RestorePod); ferry's migration path uses it.
  enable_criu = true
  enable_experimental_restore_via_create = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = {runc}
        Root = {runc_root}
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [{cni_bin}]
    conf_dir = {cni_conf}
    max_conf_num = 1

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
  stream_server_port = '0'
"#,
            name = self.name,
            root = d(&c.join("root")),
            state = d(&c.join("state")),
            socket = d(&self.containerd_socket),
            ttrpc = d(&c.join("containerd.sock.ttrpc")),
            opt = d(&c.join("opt")),
            pause = toml_string(PAUSE_IMAGE),
            runc = d(&binaries.runc),
            runc_root = d(&c.join("runc")),
            cni_bin = d(&binaries.cni_dir),
            cni_conf = d(&self.dir.join("cni/net.d")),
        )
    }

    /// A bridge network of the node's own (bridge `ferry-<letter>0`, subnet 10.89.<n>.0/24),
    /// without masquerading, so the harness adds no iptables rules to the host.
    fn cni_config(&self, index: usize) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": format!("10.89.{index}.0/24") }]],
                    "dataDir": self.dir.join("cni/ipam"),
                },
            }],
        })
    }

    fn kubelet_config(
        &self,
        ctx: &NodeContext<'_>,
        certs: &crate::pki::NodeCerts,
        healthz_port: u16,
    ) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": ctx.ip.to_string(),
            "port": self.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": healthz_port,
            "tlsCertFile": certs.serving_cert,
            "tlsPrivateKeyFile": certs.serving_key,
            "authentication": {
                "anonymous": { "enabled": false },
                "webhook": { "enabled": true },
                "x509": { "clientCAFile": ctx.pki.ca_cert() },
            },
            "authorization": { "mode": "Webhook" },
            "containerRuntimeEndpoint": format!("unix://{}", self.containerd_socket.display()),
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": self.cgroup,
            // Test machines (and this project's CI) may still boot with cgroup v1; the kubelet
            // only runs there when told not to refuse it.
            "failCgroupV1": false,
            "failSwapOn": false,
            // The kubelet's own score (default -999) needs CAP_SYS_RESOURCE too; see above.
            "oomScoreAdj": 0,
            "podLogsDir": self.dir.join("pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            "maxPods": 20,
            // A test node's disk is the host's: do not evict or collect images because the
            // host's disk is fuller than a dedicated node's would be.
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "featureGates": { "ContainerCheckpoint": true },
            "serializeImagePulls": false,
            "nodeStatusUpdateFrequency": "2s",
            "syncFrequency": "10s",
        })
    }
}

impl Drop for RealNode {
    fn drop(&mut self) {
        self.teardown();
    }
}

pub(super) fn toml_string(s: &str) -> String {
    // TOML basic strings escape like JSON's for what paths contain.
    serde_json::Value::String(s.to_string()).to_string()
}
