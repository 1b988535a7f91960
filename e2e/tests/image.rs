//! ferry's container image (`scripts/build-image`, the image the Helm chart runs) on a real
//! kubelet + containerd node: imported from its OCI archive, every program the chart and the
//! agent call runs in a pod from it (found on the image's PATH, with the shared libraries the
//! image carries), and the CRIU plugin's libraries resolve inside it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use ferry_e2e::node::unsupported_reason;
use ferry_e2e::{Cluster, Options, counter, workspace_root};

const REF: &str = "localhost/ferry/ferry:e2e";

/// Container name, command, and what its output must contain.
const CHECKS: &[(&str, &[&str], &str)] = &[
    (
        "operator",
        &["ferry-operator", "--version"],
        "ferry-operator ",
    ),
    ("agent", &["ferry-agent", "--version"], "ferry-node-agent "),
    ("criu", &["criu", "--version"], "Version: 4."),
    ("ctr", &["ctr", "--version"], "containerd/v2"),
    ("tar", &["tar", "--version"], "GNU tar"),
    (
        "plugin",
        &[
            "/lib64/ld-linux-x86-64.so.2",
            "--list",
            "/usr/lib/criu/libferry_criu_plugin.so",
        ],
        "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6",
    ),
];

#[test]
fn the_image_runs_every_program_of_ferry_on_a_real_node() {
    if let Some(reason) = unsupported_reason() {
        eprintln!("SKIP image test: {reason}");
        return;
    }
    let cluster = Cluster::start(Options::control_plane().with_real_nodes(1))
        .unwrap_or_else(|e| panic!("starting a real node: {e}"));
    let archive = cluster.dir().join("ferry.oci.tar");
    let out = Command::new(workspace_root().join("scripts/build-image"))
        .args(["--profile", "debug"])
        .arg(&archive)
        .env("FERRY_IMAGE_REF", REF)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build-image failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let node = cluster.real_node_names()[0].clone();
    {
        let nodes = cluster.real_nodes();
        nodes[0].import_image(&archive).unwrap();
    }

    let containers: Vec<serde_json::Value> = CHECKS
        .iter()
        .map(|(name, command, _)| {
            serde_json::json!({
                "name": name, "image": REF, "imagePullPolicy": "Never", "command": command,
            })
        })
        .collect();
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ferry-image", "namespace": "default"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "containers": containers,
        },
    })
    .to_string();
    counter::create(&cluster, &pod).unwrap();
    let phase = cluster
        .poll(
            "the image's pod to finish",
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let phase = cluster
                    .kubectl(&[
                        "get",
                        "pod",
                        "ferry-image",
                        "-o",
                        "jsonpath={.status.phase}",
                    ])
                    .map_err(|e| e.to_string())?;
                match phase.as_str() {
                    "Succeeded" | "Failed" => Ok(Some(phase)),
                    other => Err(other.to_string()),
                }
            },
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.log_tails(30)));
    let mut report = String::new();
    for (name, command, want) in CHECKS {
        let log = cluster
            .kubectl(&["logs", "ferry-image", "-c", name])
            .unwrap_or_default();
        eprintln!("{name}: {}", log.lines().next().unwrap_or(""));
        if !log.contains(want) {
            report.push_str(&format!(
                "{name} ({}): wanted {want:?} in:\n{log}\n",
                command.join(" ")
            ));
        }
    }
    let statuses = cluster
        .kubectl(&[
            "get",
            "pod",
            "ferry-image",
            "-o",
            "jsonpath={.status.containerStatuses}",
        ])
        .unwrap_or_default();
    assert!(
        report.is_empty() && phase == "Succeeded",
        "phase {phase}\n{report}\n{statuses}"
    );
}
