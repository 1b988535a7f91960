#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real kubelet + containerd nodes: two of them on this machine (`ferry-node-a`, `ferry-node-b`)
//! register and become Ready, run a pod each from the locally built counter image (nothing is
//! pulled), the pods' processes are visible on the host, `kubectl logs` reaches them, the
//! kubelet checkpoint API (through the API server's node proxy) writes an archive with CRIU's
//! images in it, that archive made into a checkpoint image restores the container on the other
//! node (counting on from where it was), and teardown leaves no process, mount, cgroup or bridge behind and puts back
//! the kernel settings the kubelets changed.
//!
//! One test runs the whole sequence, because starting two real nodes costs tens of seconds.
//! On a machine that cannot run real nodes (not root, no cgroup controllers, no overlayfs) it
//! prints `SKIP` with the missing capability and checks nothing else: it does not pass for
//! coverage it did not exercise.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_e2e::node::{
    CGROUP_PARENT, HOST_DIRS, KUBELET_SYSCTLS, SAVED_SYSCTLS_FILE, checkpoint_image,
    unsupported_reason,
};
use ferry_e2e::{Cluster, Options, counter, process::process_exists};

fn last_count(log: &str) -> Option<u64> {
    counter::counts(log).last().copied()
}

fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn mounts_under(dir: &Path) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| Path::new(m).starts_with(dir))
        .collect()
}

#[test]
fn two_real_nodes_run_pods_and_checkpoint_them() {
    if let Some(reason) = unsupported_reason() {
        eprintln!("SKIP real-node smoke test: {reason}");
        return;
    }
    let sysctls_before = sysctls_to_expect();
    // Host directories a killed run created count as absent: the harness removes them too.
    let saved = std::fs::read_to_string(SAVED_SYSCTLS_FILE).unwrap_or_default();
    let host_dirs_before: Vec<bool> = HOST_DIRS
        .iter()
        .map(|d| Path::new(d).exists() && !saved.lines().any(|l| l == format!("created={d}")))
        .collect();
    let cluster = Cluster::start(Options::control_plane().with_real_nodes(2))
        .unwrap_or_else(|e| panic!("starting 2 real nodes: {e}"));
    eprintln!(
        "control plane + 2 real nodes Ready in {:?}",
        cluster.started_in()
    );
    let names = cluster.real_node_names();
    assert_eq!(names, ["ferry-node-a", "ferry-node-b"]);

    for (i, node) in names.iter().enumerate() {
        let pod = counter::pod(&format!("counter-{i}"), "default", node, 200);
        counter::create(&cluster, &pod).unwrap();
    }
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod",
            "-l",
            "app=ferry-counter",
            "--timeout=120s",
        ])
        .unwrap_or_else(|e| panic!("pods did not become Ready: {e}\n{}", cluster.log_tails(40)));

    let mut counter_pids = Vec::new();
    for (i, node) in names.iter().enumerate() {
        let pod = format!("counter-{i}");
        let placed = cluster
            .kubectl(&[
                "get",
                "pod",
                &pod,
                "-o",
                "jsonpath={.spec.nodeName} {.status.phase}",
            ])
            .unwrap();
        assert_eq!(placed, format!("{node} Running"));

        // The container's process runs on this host, in the node's cgroup.
        let pids: Vec<u32> = {
            let nodes = cluster.real_nodes();
            let real = nodes.iter().find(|n| n.name() == node).unwrap();
            real.pod_pids()
        };
        let counters: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|p| comm(*p) == "ferry-counter")
            .collect();
        assert_eq!(
            counters.len(),
            1,
            "{node}'s cgroup holds {pids:?} with commands {:?}",
            pids.iter().map(|p| comm(*p)).collect::<Vec<_>>()
        );
        assert!(
            pids.iter().any(|p| comm(*p) == "pause"),
            "no sandbox (pause) process in {node}'s cgroup: {pids:?}"
        );
        counter_pids.push(counters[0]);

        // The API server reaches the kubelet (logs go through it).
        let logs = cluster
            .poll(
                "the counter's log",
                Duration::from_secs(30),
                Duration::from_millis(200),
                || {
                    let out = cluster
                        .kubectl(&["logs", &pod])
                        .map_err(|e| e.to_string())?;
                    if out.lines().count() >= 3 {
                        Ok(Some(out))
                    } else {
                        Err(format!("log so far: {out:?}"))
                    }
                },
            )
            .unwrap();
        assert!(logs.starts_with("ferry-counter 0\n"), "{logs}");
    }

    // The kubelet checkpoint API on node a, through the API server's node proxy.
    let archive = cluster
        .checkpoint(&names[0], "default", "counter-0", "counter")
        .unwrap_or_else(|e| panic!("checkpoint API: {e}\n{}", cluster.log_tails(40)));
    let checkpoints_dir: PathBuf = cluster.real_nodes()[0].checkpoints_dir();
    assert!(
        archive.starts_with(&checkpoints_dir),
        "{} is not under {}",
        archive.display(),
        checkpoints_dir.display()
    );
    let size = std::fs::metadata(&archive).unwrap().len();
    let listing = Command::new("tar")
        .arg("-tf")
        .arg(&archive)
        .output()
        .unwrap();
    assert!(listing.status.success(), "{listing:?}");
    let listing = String::from_utf8_lossy(&listing.stdout);
    for entry in ["config.dump", "spec.dump", "checkpoint/inventory.img"] {
        assert!(
            listing.lines().any(|l| l.trim_start_matches("./") == entry),
            "{entry} missing from {} ({size} bytes):\n{listing}",
            archive.display()
        );
    }
    eprintln!(
        "checkpoint archive {} ({size} bytes, {} entries)",
        archive.display(),
        listing.lines().count()
    );
    // Checkpointing leaves the container running.
    assert!(process_exists(counter_pids[0]));

    // Restore on the other node: the archive as a checkpoint image, imported into node b's
    // containerd, and a pod on node b whose container uses it.
    let last_dumped = last_count(&String::from_utf8_lossy(
        &Command::new("tar")
            .arg("-xOf")
            .arg(&archive)
            .arg("container.log")
            .output()
            .unwrap()
            .stdout,
    ))
    .expect("the checkpoint's container.log has counts");
    let image = cluster.dir().join("checkpoint-image.tar");
    let reference = "localhost/ferry/checkpoint-counter-0:latest";
    checkpoint_image(&archive, reference, "counter", &image).unwrap();
    cluster.real_nodes()[1].import_image(&image).unwrap();
    let mut restored_pod: serde_json::Value =
        serde_json::from_str(&counter::pod("counter-restored", "default", &names[1], 200)).unwrap();
    restored_pod["spec"]["containers"][0]["image"] = reference.into();
    restored_pod["metadata"]["labels"]["app"] = "ferry-counter-restored".into();
    cluster
        .kubectl_stdin(&["create", "-f", "-"], Some(&restored_pod.to_string()))
        .unwrap();
    cluster
        .kubectl(&[
            "wait",
            "--for=condition=Ready",
            "pod/counter-restored",
            "--timeout=120s",
        ])
        .unwrap_or_else(|e| panic!("restored pod not Ready: {e}\n{}", cluster.log_tails(40)));
    let restored = cluster
        .poll(
            "the restored counter counting on",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let out = cluster
                    .kubectl(&["logs", "counter-restored"])
                    .map_err(|e| e.to_string())?;
                match last_count(&out) {
                    Some(n) if n > last_dumped + 2 => Ok(Some(out)),
                    _ => Err(format!("log so far: {out:?}")),
                }
            },
        )
        .unwrap();
    // Restored, not restarted: the count carries on from the checkpoint (a fresh start would
    // count from 0 again after the log lines the checkpoint carried over).
    let counts = counter::counts(&restored);
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "the restored counter went backwards (restarted?):\n{restored}"
    );
    let restored_pids = cluster.real_nodes()[1].pod_pids();
    let restored_counters: Vec<u32> = restored_pids
        .iter()
        .copied()
        .filter(|p| comm(*p) == "ferry-counter" && !counter_pids.contains(p))
        .collect();
    assert_eq!(restored_counters.len(), 1, "{restored_pids:?}");
    counter_pids.push(restored_counters[0]);
    eprintln!(
        "restored on {} from count {last_dumped}, now at {:?}",
        names[1],
        counts.last()
    );

    // Teardown leaves nothing behind.
    let dir = cluster.dir().to_path_buf();
    let node_dirs: Vec<PathBuf> = cluster
        .real_nodes()
        .iter()
        .map(|n| n.dir().to_path_buf())
        .collect();
    assert!(!mounts_under(&dir).is_empty(), "expected the nodes' mounts");
    let component_pids = cluster.pids();
    drop(cluster);
    for pid in counter_pids.iter().chain(&component_pids) {
        assert!(!process_exists(*pid), "pid {pid} survived teardown");
    }
    assert_eq!(mounts_under(&dir), Vec::<String>::new());
    for node_dir in node_dirs {
        assert!(!node_dir.exists(), "{} survived", node_dir.display());
    }
    for controller in ["memory", "cpu", "pids", ""] {
        let cgroup = Path::new("/sys/fs/cgroup")
            .join(controller)
            .join(CGROUP_PARENT);
        assert!(!cgroup.exists(), "{} survived", cgroup.display());
    }
    assert!(!Path::new("/sys/class/net/ferry-a0").exists());
    assert!(!Path::new("/sys/class/net/ferry-b0").exists());
    // The kernel settings the kubelets changed are back, and the host directories they and
    // containerd create outside their roots are gone unless they were there before.
    assert_eq!(sysctls(), sysctls_before);
    let host_dirs_after: Vec<bool> = HOST_DIRS.iter().map(|d| Path::new(d).exists()).collect();
    assert_eq!(host_dirs_after, host_dirs_before, "{HOST_DIRS:?}");
}

/// The kernel settings to expect after teardown: the current ones, or those a killed run saved
/// before its kubelets changed them (the harness puts those back first).
fn sysctls_to_expect() -> Vec<(String, String)> {
    let saved = std::fs::read_to_string(SAVED_SYSCTLS_FILE).unwrap_or_default();
    sysctls()
        .into_iter()
        .map(|(name, value)| {
            let prefix = format!("{name}=");
            let value = saved
                .lines()
                .find_map(|l| l.strip_prefix(&prefix).map(str::to_string))
                .unwrap_or(value);
            (name, value)
        })
        .collect()
}

fn sysctls() -> Vec<(String, String)> {
    KUBELET_SYSCTLS
        .iter()
        .map(|name| {
            let value = std::fs::read_to_string(Path::new("/proc/sys").join(name)).unwrap();
            (name.to_string(), value.trim().to_string())
        })
        .collect()
}
