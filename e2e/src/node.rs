//! Real kubelet + containerd nodes on this machine, several at once: each node has its own
//! containerd (root, state, sockets, runc root, CNI bridge and subnet), its own kubelet (root
//! dir, ports, pod log dir, cgroup root), and certificates from the cluster's PKI. They share
//! the host's network namespace and IP address, told apart by port, which is all the API
//! server needs to reach them (logs, exec, the checkpoint API).
//!
//! Nothing is pulled from a registry: the build script makes the sandbox (pause) and workload
//! images as OCI archives, and each node imports them into its containerd before its kubelet
//! starts; pods use `imagePullPolicy: Never`.
//!
//! Some resources are host-wide whatever the configuration (the kubelet's device-plugin socket
//! under `/var/lib/kubelet`, CNI routes for the pod subnets), so real-node clusters on one
//! machine take turns: [`NodeLock`] is an exclusive lock that a cluster holds while its nodes
//! run. Holding it also means that anything left by an earlier real-node run (processes in
//! the harness's cgroups, shims, mounts, bridges) is stale, and [`sweep_stale`] removes it.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::Write as _;
use std::net::{IpAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ferry_agent::runtime::containerd::ContainerdCheckpointImage;

use crate::binaries::{NodeBinaries, PAUSE_IMAGE};
use crate::error::{Error, IoContext, Result};
use crate::pki::Pki;
use crate::process::Process;

/// The label every real node carries (`ferry.dev/e2e-node: real`).
pub const REAL_NODE_LABEL: &str = "ferry.dev/e2e-node";
/// The top-level cgroup (in every hierarchy) under which each node's kubelet gets its
/// `cgroupRoot`, so the two kubelets do not take each other's pod cgroups for orphans.
pub const CGROUP_PARENT: &str = "ferry-e2e";
/// The host-wide lock real-node clusters take turns on.
pub const LOCK_FILE: &str = "/run/lock/ferry-e2e-real-nodes.lock";
/// The prefix of the nodes' CNI bridges (`ferry-a0`, `ferry-b0`, ...).
const BRIDGE_PREFIX: &str = "ferry-";
/// How long a node's containerd gets to answer on its socket.
const CONTAINERD_TIMEOUT: Duration = Duration::from_secs(30);

/// The name of the `index`th real node: `ferry-node-a`, `ferry-node-b`, ...
pub fn node_name(index: usize) -> String {
    format!("ferry-node-{}", node_letter(index))
}

fn node_letter(index: usize) -> char {
    // 26 nodes is far more than a 2-core machine runs; past that the letters wrap and the
    // start fails on a duplicate name, which says what happened.
    let offset = u8::try_from(index % 26).unwrap_or(0);
    char::from(b'a' + offset)
}

/// Why real nodes cannot run on this machine, or `None` when they can (as far as checks
/// before starting anything tell): not root, no cgroup hierarchy with the controllers the
/// kubelet needs, no non-loopback address for the nodes, no overlay filesystem.
pub fn unsupported_reason() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some(
            "real nodes need root (containerd, runc and the kubelet mount and create cgroups)"
                .to_string(),
        );
    }
    let hierarchies = cgroup_hierarchies();
    let has = |controller: &str| {
        hierarchies
            .iter()
            .any(|h| h.controllers.iter().any(|c| c == controller))
    };
    let missing: Vec<&str> = ["cpu", "cpuset", "memory", "pids"]
        .into_iter()
        .filter(|c| !has(c))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "no cgroup hierarchy has the controllers {missing:?} (the kubelet needs them)"
        ));
    }
    if let Err(e) = host_ip() {
        return Some(e.to_string());
    }
    let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !filesystems
        .lines()
        .any(|l| l.trim_end().ends_with("overlay"))
    {
        return Some("the kernel has no overlay filesystem (containerd's snapshotter)".to_string());
    }
    None
}

/// The host's address on its default route: the nodes' InternalIP (the kubelet refuses a
/// loopback node IP). Found by connecting a UDP socket, which sends nothing.
pub fn host_ip() -> Result<IpAddr> {
    let probe = || -> std::io::Result<IpAddr> {
        let socket = UdpSocket::bind(("0.0.0.0", 0))?;
        // TEST-NET-3: never a local network, so the route to it is the default route.
        socket.connect(("203.0.113.1", 9))?;
        Ok(socket.local_addr()?.ip())
    };
    match probe() {
        Ok(ip) if !ip.is_loopback() && !ip.is_unspecified() => Ok(ip),
        Ok(ip) => Err(Error::Node {
            node: "-".to_string(),
            what: format!(
                "the host's default-route address is {ip}; a kubelet needs a non-loopback node IP"
            ),
        }),
        Err(e) => Err(Error::Node {
            node: "-".to_string(),
            what: format!("could not find the host's default-route address: {e}"),
        }),
    }
}

/// The kernel settings a kubelet sets at start (`protectKernelDefaults: false`, its default:
/// with `true` it refuses to start where they differ). They are host-wide, and two of them
/// matter to whatever else the machine runs (`vm.overcommit_memory=1`, `kernel.panic_on_oops=1`),
/// so [`NodeLock`] saves them before real nodes start and puts them back after.
pub const KUBELET_SYSCTLS: [&str; 6] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
];
/// Where [`NodeLock`] keeps the saved [`KUBELET_SYSCTLS`] (`name=value` lines) and the
/// [`HOST_DIRS`] its run created (`created=<dir>` lines) while nodes run; a file left by a
/// killed run is restored from, and its directories removed, by the next lock holder.
pub const SAVED_SYSCTLS_FILE: &str = "/run/lock/ferry-e2e-real-nodes.sysctls";

/// The host-wide lock real-node clusters take turns on (released when dropped, after the
/// kernel settings the kubelets changed are put back).
#[derive(Debug)]
pub struct NodeLock {
    _file: File,
    /// [`HOST_DIRS`] that did not exist when the lock was taken: removed when it is released.
    created: Vec<&'static str>,
}

/// Directories kubelets and containerd create outside any configurable root: the kubelet's
/// device-plugin socket directory, and containerd's shim socket and fifo directories.
pub const HOST_DIRS: [&str; 2] = ["/var/lib/kubelet", "/run/containerd"];

impl NodeLock {
    /// Waits for the lock, removes what earlier real-node runs left behind, and saves the
    /// kernel settings kubelets change.
    pub fn acquire() -> Result<Self> {
        Self::lock(true)?.ok_or_else(|| Error::Node {
            node: "-".to_string(),
            what: format!("{LOCK_FILE} was not locked although the lock call blocks"),
        })
    }

    /// [`NodeLock::acquire`] if no other real-node cluster holds the lock, else `None`.
    pub fn try_acquire() -> Result<Option<Self>> {
        Self::lock(false)
    }

    fn lock(block: bool) -> Result<Option<Self>> {
        let path = Path::new(LOCK_FILE);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).io_context("creating the lock directory", parent)?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .io_context("opening the real-node lock", path)?;
        let operation = if block {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::NonBlockingLockExclusive
        };
        match rustix::fs::flock(&file, operation) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) if !block => return Ok(None),
            Err(e) => {
                return Err(std::io::Error::from(e)).io_context("locking the real-node lock", path);
            }
        }
        sweep_stale();
        // A saved file here was left by a run killed before it could restore: restore from it
        // (it holds the values from before that run) and take over the host directories that
        // run created; then save the current values.
        let saved = Path::new(SAVED_SYSCTLS_FILE);
        let mut created = if saved.exists() {
            restore_sysctls()
        } else {
            Vec::new()
        };
        created.extend(HOST_DIRS.into_iter().filter(|d| !Path::new(d).exists()));
        created.sort_unstable();
        created.dedup();
        let mut contents: String = KUBELET_SYSCTLS
            .iter()
            .filter_map(|name| {
                let value = fs::read_to_string(Path::new("/proc/sys").join(name)).ok()?;
                Some(format!("{name}={}\n", value.trim()))
            })
            .collect();
        for dir in &created {
            contents.push_str(&format!("{CREATED_KEY}={dir}\n"));
        }
        write(saved, &contents)?;
        Ok(Some(Self {
            _file: file,
            created,
        }))
    }
}

impl Drop for NodeLock {
    fn drop(&mut self) {
        let _ = restore_sysctls();
        for dir in &self.created {
            if let Err(e) = fs::remove_dir_all(dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                eprintln!("ferry-e2e: could not remove {dir}: {e}");
            }
        }
    }
}

/// The key of [`SAVED_SYSCTLS_FILE`] lines that name a created [`HOST_DIRS`] entry.
const CREATED_KEY: &str = "created";

/// Writes back the values in [`SAVED_SYSCTLS_FILE`] and removes it (best effort); returns the
/// [`HOST_DIRS`] the file says its run created.
fn restore_sysctls() -> Vec<&'static str> {
    let saved = Path::new(SAVED_SYSCTLS_FILE);
    let Ok(values) = fs::read_to_string(saved) else {
        return Vec::new();
    };
    let mut created = Vec::new();
    for line in values.lines() {
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name == CREATED_KEY {
            created.extend(HOST_DIRS.into_iter().filter(|d| *d == value));
            continue;
        }
        if !KUBELET_SYSCTLS.contains(&name) {
            continue;
        }
        let path = Path::new("/proc/sys").join(name);
        if let Err(e) = fs::write(&path, value) {
            eprintln!("ferry-e2e: could not restore {}: {e}", path.display());
        }
    }
    let _ = fs::remove_file(saved);
    created
}

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

/// The annotation containerd requires on a checkpoint image's manifest before it restores from
/// it in CreateContainer (checkpointctl's `CheckpointAnnotationName`): the container's name.
pub const CHECKPOINT_ANNOTATION: &str = "org.criu.checkpoint.container.name";

/// Writes a checkpoint image as an OCI archive to `out`: the kubelet's checkpoint `archive`
/// (an uncompressed tar of `checkpoint/`, `config.dump`, `spec.dump`, ...) as its one layer,
/// [`CHECKPOINT_ANNOTATION`] set to `container`, named `reference`. Imported into a node's
/// containerd ([`RealNode::import_image`]), a pod whose container uses `reference` as its image
/// is restored from the checkpoint instead of started (containerd 2.1 to 2.3, with
/// `enable_experimental_restore_via_create`). The image is the one the agent's containerd
/// restore builds ([`ContainerdCheckpointImage`]).
pub fn checkpoint_image(
    archive: &Path,
    reference: &str,
    container: &str,
    out: &Path,
) -> Result<()> {
    ContainerdCheckpointImage {
        reference: reference.to_string(),
        container: container.to_string(),
    }
    .write_archive(archive, out, CHECKPOINT_IMAGE_LIMIT)
    .map_err(|e| Error::Node {
        node: "-".to_string(),
        what: format!("writing the checkpoint image {}: {e}", out.display()),
    })
}

/// How long packing a checkpoint image may take (a test's archive is MiBs).
const CHECKPOINT_IMAGE_LIMIT: Duration = Duration::from_secs(600);

/// Removes the sockets of the shims a containerd with state directory `state` started: they
/// live in containerd's fixed `/run/containerd/s/`, and each task's bundle records its shim's
/// socket in a file named `address` (`unix:///run/containerd/s/<hash>`).
fn remove_shim_sockets(state: &Path) {
    let tasks = state.join("io.containerd.runtime.v2.task");
    let Ok(namespaces) = fs::read_dir(&tasks) else {
        return;
    };
    for bundle in namespaces
        .flatten()
        .filter_map(|ns| fs::read_dir(ns.path()).ok())
        .flat_map(|bundles| bundles.flatten())
    {
        let Ok(address) = fs::read_to_string(bundle.path().join("address")) else {
            continue;
        };
        if let Some(socket) = address.trim().strip_prefix("unix://")
            && socket.starts_with("/run/containerd/s/")
        {
            let _ = fs::remove_file(socket);
        }
    }
}

/// Cleans up after a cluster whose test process died (SIGKILL) while it ran real nodes in
/// `dir`, before `dir` is removed: its kubelets and containerds died with it, but shims,
/// containers and mounts did not. With the lock free, [`NodeLock`]'s sweep does everything
/// (and puts back the kernel settings); with another cluster holding it, only what is
/// certainly `dir`'s: its shims and its mounts.
pub fn reclaim_stale_cluster_dir(dir: &Path) {
    if !dir.join("nodes").exists() {
        return;
    }
    match NodeLock::try_acquire() {
        Ok(Some(lock)) => drop(lock),
        _ => {
            kill_all(&shims_of(dir));
            unmount_under(dir);
        }
    }
}

/// Removes what earlier real-node runs left (run under [`NodeLock`], so none of it is live):
/// processes in the harness's cgroups, shims of containerds under a harness directory,
/// mounts under harness node directories, the harness's cgroups and bridges.
pub fn sweep_stale() {
    for hierarchy in cgroup_hierarchies() {
        kill_all(&procs_under(&hierarchy.path(&format!("/{CGROUP_PARENT}"))));
    }
    kill_all(&shims_of(Path::new("/ferry-e2e-")));
    let tmp = std::env::temp_dir();
    for mount in mount_points() {
        let stale = mount
            .strip_prefix(&tmp)
            .ok()
            .and_then(|rest| rest.iter().next().map(|first| (first, rest)))
            .is_some_and(|(first, rest)| {
                first.to_string_lossy().starts_with("ferry-e2e-")
                    && rest.iter().nth(1).is_some_and(|s| s == "nodes")
            });
        if stale {
            unmount(&mount);
        }
    }
    remove_cgroups(&format!("/{CGROUP_PARENT}"));
    if let Ok(links) = fs::read_dir("/sys/class/net") {
        for link in links.flatten() {
            let name = link.file_name().to_string_lossy().into_owned();
            if name.starts_with(BRIDGE_PREFIX) {
                delete_link(&name);
            }
        }
    }
}

/// A mounted cgroup hierarchy.
#[derive(Debug, Clone)]
struct Hierarchy {
    mount: PathBuf,
    /// The v1 controllers bound to it (`name=systemd` style names too); empty for v2.
    controllers: Vec<String>,
    v2: bool,
}

impl Hierarchy {
    fn path(&self, cgroup: &str) -> PathBuf {
        self.mount.join(cgroup.trim_start_matches('/'))
    }
}

/// The cgroup hierarchies mounted on this machine, from `/proc/self/mountinfo`. v2's
/// controllers come from its root's `cgroup.controllers`.
fn cgroup_hierarchies() -> Vec<Hierarchy> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    mountinfo
        .lines()
        .filter_map(|line| {
            // "<id> <parent> <dev> <root> <mount point> <opts> [optional...] - <fstype> <src> <super opts>"
            let (left, right) = line.split_once(" - ")?;
            let mut right = right.split_whitespace();
            let fstype = right.next()?;
            let super_opts = right.nth(1).unwrap_or("");
            let mut left = left.split_whitespace();
            let root = left.nth(3)?;
            let mount = unescape(left.next()?);
            // Bind mounts of a sub-cgroup (containers) are not the hierarchy's root.
            if root != "/" || !seen.insert(mount.clone()) {
                return None;
            }
            match fstype {
                "cgroup2" => {
                    let controllers =
                        fs::read_to_string(Path::new(&mount).join("cgroup.controllers"))
                            .unwrap_or_default()
                            .split_whitespace()
                            .map(str::to_string)
                            .collect();
                    Some(Hierarchy {
                        mount: mount.into(),
                        controllers,
                        v2: true,
                    })
                }
                "cgroup" => {
                    let controllers = super_opts
                        .split(',')
                        .filter(|o| !matches!(*o, "rw" | "ro" | "relatime" | "noatime"))
                        .map(str::to_string)
                        .collect();
                    Some(Hierarchy {
                        mount: mount.into(),
                        controllers,
                        v2: false,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// Mount points as listed in `/proc/self/mountinfo` (octal escapes decoded).
fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| {
            line.split_whitespace()
                .nth(4)
                .map(|m| PathBuf::from(unescape(m)))
        })
        .collect()
}

fn unescape(field: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::with_capacity(field.len());
    let mut chars = field.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            let digits: String = chars.clone().take(3).collect();
            if digits.len() == 3
                && let Ok(value) = u8::from_str_radix(&digits, 8)
            {
                out.push(char::from(value));
                chars.nth(2);
                continue;
            }
        }
        out.push(c);
    }
    out
}

/// Every pid in `dir`'s `cgroup.procs` and its descendants'.
fn procs_under(dir: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
            pids.extend(procs.lines().filter_map(|l| l.trim().parse::<u32>().ok()));
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    pids
}

/// Pids of `containerd-shim-runc-v2` processes whose command line names `address` (a shim
/// is started with `-address <containerd socket>`; a prefix matches every socket under it).
fn shims_of(address: &Path) -> Vec<u32> {
    let needle = address.display().to_string();
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first()
                .is_some_and(|a| a.ends_with("containerd-shim-runc-v2"))
                && args.iter().any(|a| a.contains(&needle))
        })
        .collect()
}

fn kill_all(pids: &[u32]) {
    for pid in pids {
        if let Some(pid) = i32::try_from(*pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
    // Give the kernel a moment to reap them, so their cgroups can be removed.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|p| crate::process::process_exists(*p)) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Lazily unmounts every mount at or under `dir`, deepest first.
fn unmount_under(dir: &Path) {
    let mut mounts: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    mounts.dedup();
    for mount in mounts {
        unmount(&mount);
    }
}

fn unmount(path: &Path) {
    // A path can be mounted over several times (the kubelet's rshared bind of its root dir);
    // unmount until it is no longer a mount point, a few times at most.
    for _ in 0..8 {
        if rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH).is_err() {
            break;
        }
    }
}

/// Removes `cgroup` and its descendants in every hierarchy (deepest first; a cgroup with
/// processes left in it stays, with a note on stderr).
pub fn remove_cgroups(cgroup: &str) {
    for hierarchy in cgroup_hierarchies() {
        let top = hierarchy.path(cgroup);
        if !top.exists() {
            continue;
        }
        let mut dirs = Vec::new();
        let mut stack = vec![top];
        while let Some(dir) = stack.pop() {
            if let Ok(entries) = fs::read_dir(&dir) {
                stack.extend(
                    entries
                        .flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
            dirs.push(dir);
        }
        for dir in dirs.iter().rev() {
            if let Err(e) = fs::remove_dir(dir) {
                eprintln!("ferry-e2e: could not remove cgroup {}: {e}", dir.display());
            }
        }
    }
}

fn delete_link(name: &str) {
    if !Path::new("/sys/class/net").join(name).exists() {
        return;
    }
    let status = Command::new("ip")
        .args(["link", "delete", name])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status();
    if !status.is_ok_and(|s| s.success()) {
        eprintln!("ferry-e2e: could not delete the network link {name}");
    }
}

fn toml_string(s: &str) -> String {
    // TOML basic strings escape like JSON's for what paths contain.
    serde_json::Value::String(s.to_string()).to_string()
}

fn write(path: &Path, contents: &str) -> Result<()> {
    let mut file = File::create(path).io_context("writing a node config", path)?;
    file.write_all(contents.as_bytes())
        .io_context("writing a node config", path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_by_letter() {
        assert_eq!(node_name(0), "ferry-node-a");
        assert_eq!(node_name(1), "ferry-node-b");
        assert_eq!(node_name(25), "ferry-node-z");
    }

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape(r"/plain"), "/plain");
        assert_eq!(unescape(r"/odd\04"), r"/odd\04");
    }

    #[test]
    fn a_checkpoint_image_carries_the_archive_and_the_annotation() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("checkpoint.tar");
        fs::write(
            &archive,
            b"not really a tar, the image does not look inside",
        )
        .unwrap();
        let out = dir.path().join("image.tar");
        checkpoint_image(&archive, "localhost/ferry/cp:v1", "counter", &out).unwrap();

        let unpacked = dir.path().join("unpacked");
        fs::create_dir(&unpacked).unwrap();
        let status = Command::new("tar")
            .arg("-xf")
            .arg(&out)
            .arg("-C")
            .arg(&unpacked)
            .status()
            .unwrap();
        assert!(status.success());
        let index: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(unpacked.join("index.json")).unwrap())
                .unwrap();
        let entry = &index["manifests"][0];
        assert_eq!(
            entry["annotations"]["io.containerd.image.name"],
            "localhost/ferry/cp:v1"
        );
        assert_eq!(entry["annotations"][CHECKPOINT_ANNOTATION], "counter");
        let blob = |digest: &serde_json::Value| {
            let digest = digest.as_str().unwrap().strip_prefix("sha256:").unwrap();
            unpacked.join("blobs/sha256").join(digest)
        };
        let manifest: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(blob(&entry["digest"])).unwrap()).unwrap();
        assert_eq!(manifest["annotations"][CHECKPOINT_ANNOTATION], "counter");
        let layer = fs::read(blob(&manifest["layers"][0]["digest"])).unwrap();
        assert_eq!(layer, fs::read(&archive).unwrap());
        assert_eq!(manifest["layers"][0]["size"], layer.len());
        let config: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(blob(&manifest["config"]["digest"])).unwrap())
                .unwrap();
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            manifest["layers"][0]["digest"]
        );
    }
}
