#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A CheckpointRequest migrates a real pod between two real kubelet + containerd nodes: the
//! real operator, and a real agent per node in `--runtime containerd` mode. The source agent
//! checkpoints through its kubelet's checkpoint API (its node-bound ServiceAccount token,
//! authorized by `nodes/checkpoint` in manifests/rbac/agent.yaml), the target agent pulls the
//! image over TLS and imports each archive as a containerd checkpoint image, and the kubelet
//! on the target creates the restored pod's container from it. The counter must count on from
//! where it was checkpointed.
//!
//! On a machine that cannot run real nodes it prints `SKIP` with the reason and checks nothing.

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_e2e::counter::{self, counts};
use ferry_e2e::identity::agent_identity;
use ferry_e2e::migration::{agent_command, bind_ferry_rbac};
use ferry_e2e::node::unsupported_reason;
use ferry_e2e::{Cluster, NodeBinaries, Options, User, workspace_root};

const NAMESPACE: &str = "default";
const SYSTEM_NAMESPACE: &str = "ferry-system";
const REQUEST: &str = "move-counter";
/// The count the source reaches before the migration starts.
const FAR: u64 = 50;

/// A process of this test, stopped (SIGTERM, then SIGKILL) on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(mut command: Command, log: &Path) -> Proc {
    let out = fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    command.stdin(Stdio::null()).stdout(out).stderr(err);
    Proc(
        command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {command:?}: {e}")),
    )
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn target_dir() -> PathBuf {
    // tests run from target/<profile>/deps/
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

#[test]
fn a_real_pod_migrates_between_two_real_nodes_through_the_operator() {
    if let Some(reason) = unsupported_reason() {
        eprintln!("SKIP real-node migration test: {reason}");
        return;
    }
    // The binaries under test come from other packages of the workspace: build them (cheap
    // when fresh) so the test never runs stale ones.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["build", "-p", "ferry-operator", "-p", "ferry-node-agent"])
        .args(["--bin", "ferry-operator", "--bin", "ferry-agent"])
        .current_dir(workspace_root())
        .status()
        .unwrap();
    assert!(status.success(), "building the binaries failed");
    let bin = target_dir();
    let ctr = NodeBinaries::locate().unwrap().ctr;

    let cluster = Cluster::start(Options::control_plane().with_real_nodes(2))
        .unwrap_or_else(|e| panic!("starting 2 real nodes: {e}"));
    let work = cluster.dir().join("migration");
    fs::create_dir_all(&work).unwrap();
    let names = cluster.real_node_names();
    let (source, target) = (names[0].clone(), names[1].clone());

    cluster
        .kubectl(&["create", "namespace", SYSTEM_NAMESPACE])
        .unwrap();
    // The kubelet authenticates each agent by its node-bound token too (webhook authentication).
    bind_ferry_rbac(&cluster).unwrap();

    let mut operator = Command::new(bin.join("ferry-operator"));
    operator
        .env("KUBECONFIG", cluster.kubeconfig(User::Operator))
        .env("RUST_LOG", "info")
        .args(["--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args([
            "--lease-namespace",
            SYSTEM_NAMESPACE,
            "--identity",
            "test-operator",
        ])
        .args(["--agent-namespace", SYSTEM_NAMESPACE]);
    let operator_log = work.join("operator.log");
    let _operator = spawn(operator, &operator_log);

    let mut agents = Vec::new();
    let mut agent_logs = Vec::new();
    {
        let nodes = cluster.real_nodes();
        for (i, node) in nodes.iter().enumerate() {
            let letter = if i == 0 { "a" } else { "b" };
            let transfer = free_port();
            let identity = agent_identity(&cluster, node.name()).unwrap();
            let mut agent = agent_command(
                &bin.join("ferry-agent"),
                &identity,
                &work.join(letter),
                free_port(),
                transfer,
            );
            agent
                .args(["--runtime", "containerd"])
                .args(["--gc-every-seconds", "1"])
                .args([
                    "--kubelet-url",
                    &format!("https://{}:{}", node.ip(), node.kubelet_port()),
                ])
                .arg("--kubelet-ca")
                .arg(cluster.pki().ca_cert())
                .arg("--kubelet-token-file")
                .arg(&identity.token_file)
                .arg("--kubelet-checkpoints-dir")
                .arg(node.checkpoints_dir())
                .arg("--containerd-socket")
                .arg(node.containerd_socket())
                .arg("--ctr")
                .arg(&ctr);
            let log = work.join(format!("agent-{letter}.log"));
            agents.push(spawn(agent, &log));
            agent_logs.push(log);
        }
    }
    let logs = || {
        format!(
            "operator:\n{}\nagent a:\n{}\nagent b:\n{}\n{}",
            tail(&operator_log, 30),
            tail(&agent_logs[0], 30),
            tail(&agent_logs[1], 30),
            cluster.log_tails(20)
        )
    };
    // Both agents' Leases, which the operator requires before it starts a request.
    cluster
        .poll(
            "the agents' Leases",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                let leases = cluster
                    .kubectl(&["get", "leases", "-n", SYSTEM_NAMESPACE, "-o", "name"])
                    .map_err(|e| e.to_string())?;
                let both = names.iter().all(|n| {
                    leases
                        .lines()
                        .any(|l| l.ends_with(&format!("/ferry-agent-{n}")))
                });
                if both { Ok(Some(())) } else { Err(leases) }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));

    counter::create(&cluster, &counter::pod("counter", NAMESPACE, &source, 200)).unwrap();
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod/counter",
            "--timeout=120s",
        ])
        .unwrap_or_else(|e| panic!("the counter is not Ready: {e}\n{}", logs()));
    // Counted far enough (50 × 200 ms = 10 s) that a fresh start could not reach this count in
    // the few seconds between the restored pod running and the check below.
    let before = cluster
        .poll(
            "the counter counting",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let out = cluster
                    .kubectl(&["logs", "counter"])
                    .map_err(|e| e.to_string())?;
                match counts(&out).last() {
                    Some(n) if *n >= FAR => Ok(Some(*n)),
                    _ => Err(out),
                }
            },
        )
        .unwrap();

    let request = format!(
        r#"apiVersion: ferry.dev/v1alpha1
kind: CheckpointRequest
metadata: {{name: {REQUEST}, namespace: {NAMESPACE}}}
spec:
  podName: counter
  migrate: {{targetNode: {target}, deleteSource: true}}
  timeoutSeconds: 240
"#
    );
    cluster
        .kubectl_stdin(&["apply", "-f", "-"], Some(&request))
        .unwrap();
    let status = cluster
        .poll(
            "the request to finish",
            Duration::from_secs(240),
            Duration::from_millis(500),
            || {
                let req = cluster
                    .kubectl_json(&["get", "checkpointrequest", REQUEST, "-o", "json"])
                    .map_err(|e| e.to_string())?;
                match req["status"]["phase"].as_str() {
                    Some("Succeeded" | "Failed") => Ok(Some(req["status"].clone())),
                    _ => Err(req["status"].to_string()),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert_eq!(status["phase"], "Succeeded", "{status:#}\n{}", logs());
    let checkpoint = &status["checkpoint"];
    assert_eq!(checkpoint["archiveContainers"][0], "counter", "{status:#}");
    let restored = status["restoredPodName"].as_str().unwrap().to_string();
    eprintln!("request Succeeded: {status}");

    // The restored pod runs on the target from the checkpoint image the target agent imported.
    let placed = cluster
        .kubectl(&[
            "get",
            "pod",
            &restored,
            "-o",
            "jsonpath={.spec.nodeName} {.status.phase} {.spec.containers[0].image}",
        ])
        .unwrap();
    let expected_image = ferry_api_reference(checkpoint);
    assert_eq!(placed, format!("{target} Running {expected_image}"));
    // deleteSource: the source pod goes.
    cluster
        .poll(
            "the source pod to go",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || match cluster.kubectl(&["get", "pod", "counter", "-o", "name"]) {
                Ok(out) => Err(out),
                Err(_) => Ok(Some(())),
            },
        )
        .unwrap();

    // Restored, not restarted: right after the pod runs its count is already past where the
    // source was before the request (a fresh start needs 10 s to get there), it never goes back
    // (a fresh start after the carried-over log lines would count from 0 again), and it goes on.
    let resumed = cluster
        .poll(
            "the restored counter's first counts",
            Duration::from_secs(5),
            Duration::from_millis(200),
            || {
                let out = cluster
                    .kubectl(&["logs", &restored])
                    .map_err(|e| e.to_string())?;
                match counts(&out).last() {
                    Some(n) if *n >= before => Ok(Some(*n)),
                    _ => Err(format!("log so far: {out:?}")),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let after = cluster
        .poll(
            "the restored counter counting on",
            Duration::from_secs(60),
            Duration::from_millis(500),
            || {
                let out = cluster
                    .kubectl(&["logs", &restored])
                    .map_err(|e| e.to_string())?;
                match counts(&out).last() {
                    Some(n) if *n > resumed + 5 => Ok(Some(out)),
                    _ => Err(format!("log so far: {out:?}")),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    let seen = counts(&after);
    // Non-decreasing, not strictly increasing: the source keeps running after the checkpoint
    // (a migration's checkpoint leaves it running until the restored pod runs), and the log
    // carried over is copied after the dump, so the counts the source printed after its
    // freeze may be printed again by the restored process (seen: `52` twice).
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "the restored counter went backwards (restarted?):\n{after}"
    );
    let restarts = cluster
        .kubectl(&[
            "get",
            "pod",
            &restored,
            "-o",
            "jsonpath={.status.containerStatuses[0].restartCount}",
        ])
        .unwrap();
    assert_eq!(restarts, "0");
    eprintln!(
        "migrated {source} → {target}: count {before} before the request, {:?} after",
        seen.last()
    );

    // The imported checkpoint image stays while the restored pod needs it (the kubelet
    // recreates the container from it), and goes, with the CRI's sha256 alias, once neither
    // the pod nor the request's stored image is left.
    let target_socket = {
        let nodes = cluster.real_nodes();
        let node = nodes.iter().find(|n| n.name() == target).unwrap();
        node.containerd_socket().to_path_buf()
    };
    let images = || {
        let o = Command::new(&ctr)
            .arg("--address")
            .arg(&target_socket)
            .args(["-n", "k8s.io", "images", "ls"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{o:?}");
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                Some((cols.first()?.to_string(), cols.get(2)?.to_string()))
            })
            .collect::<Vec<(String, String)>>()
    };
    let digest = images()
        .into_iter()
        .find(|(r, _)| *r == expected_image)
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("{expected_image} not in the target's containerd"));
    let aliases = images()
        .iter()
        .filter(|(r, d)| *d == digest && r.starts_with("sha256:"))
        .count();
    cluster
        .kubectl(&["delete", "checkpointrequest", REQUEST, "--timeout=60s"])
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        images().iter().any(|(r, _)| *r == expected_image),
        "the checkpoint image went while the restored pod still runs\n{}",
        logs()
    );
    cluster
        .kubectl(&[
            "delete",
            "pod",
            &restored,
            "--grace-period=1",
            "--timeout=60s",
        ])
        .unwrap();
    cluster
        .poll(
            "the checkpoint image to be removed",
            Duration::from_secs(150),
            Duration::from_secs(1),
            || {
                let left: Vec<_> = images().into_iter().filter(|(_, d)| *d == digest).collect();
                if left.is_empty() {
                    Ok(Some(()))
                } else {
                    Err(format!("{left:?}"))
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", logs()));
    assert!(
        images()
            .iter()
            .any(|(r, _)| r == "localhost/ferry/counter:latest"),
        "the pod's own image was removed"
    );
    let agent_b =
        fs::read_to_string(&agent_logs[names.iter().position(|n| *n == target).unwrap()]).unwrap();
    assert!(
        agent_b.contains("checkpoint images no pod or stored image needs removed from containerd"),
        "{}",
        logs()
    );
    eprintln!(
        "checkpoint image {expected_image} and {aliases} alias(es) removed after the pod went"
    );
    drop(agents);
}

/// The checkpoint image the operator names for the restored `counter` container.
fn ferry_api_reference(checkpoint: &serde_json::Value) -> String {
    let digest = checkpoint["sha256"].as_str().unwrap();
    format!(
        "localhost/ferry-checkpoint/{NAMESPACE}/{REQUEST}/counter:{}",
        &digest[..12]
    )
}
