//! ferry's container image (`scripts/build-image`, the image the Helm chart runs) on a real
//! kubelet + containerd node: imported from its OCI archive, every program the chart and the
//! agent call runs in a pod from it (found on the image's PATH, with the shared libraries the
//! image carries), the chart's own plugin-installing init container (taken from `helm
//! template`) installs the plugin, and the installed plugin's libraries resolve.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
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
    (
        "supervisor",
        &["ferry-supervisor", "--version"],
        "ferry-supervisor ",
    ),
    ("criu", &["criu", "--version"], "Version: 4."),
    ("ctr", &["ctr", "--version"], "containerd/v2"),
    ("tar", &["tar", "--version"], "GNU tar"),
    ("install", &["install", "--version"], "GNU coreutils"),
    (
        "plugin",
        &[
            "/lib64/ld-linux-x86-64.so.2",
            "--list",
            "/host-criu-plugins/libferry_criu_plugin.so",
        ],
        "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6",
    ),
];

fn helm() -> PathBuf {
    let default = PathBuf::from("/opt/ferry/tools/bin/helm");
    if default.is_file() {
        return default;
    }
    PathBuf::from("helm")
}

/// The chart's `install-plugin` init container, rendered by `helm template` and turned into
/// JSON by kubectl (client side only).
fn charts_init_container(cluster: &Cluster) -> serde_json::Value {
    let out = Command::new(helm())
        .args(["template", "ferry"])
        .arg(workspace_root().join("charts/ferry"))
        .args(["--show-only", "templates/agent.yaml"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let yaml = String::from_utf8(out.stdout).unwrap();
    let json = cluster
        .kubectl_stdin(
            &["create", "--dry-run=client", "-o", "json", "-f", "-"],
            Some(&yaml),
        )
        .unwrap();
    // One JSON object per YAML document, one after the other.
    let ds = serde_json::Deserializer::from_str(&json)
        .into_iter::<serde_json::Value>()
        .map(|o| o.unwrap())
        .find(|o| o["kind"] == "DaemonSet")
        .unwrap();
    ds["spec"]["template"]["spec"]["initContainers"][0].clone()
}

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

    let mount =
        serde_json::json!([{"name": "host-criu-plugins", "mountPath": "/host-criu-plugins"}]);
    let containers: Vec<serde_json::Value> = CHECKS
        .iter()
        .map(|(name, command, _)| {
            serde_json::json!({
                "name": name, "image": REF, "imagePullPolicy": "Never", "command": command,
                "volumeMounts": mount,
            })
        })
        .collect();
    // The chart's init container as it renders, on this image, into a scratch volume standing
    // in for the node's CRIU plugin dir.
    let mut init = charts_init_container(&cluster);
    assert_eq!(init["name"], "install-plugin", "{init}");
    assert_eq!(init["volumeMounts"], mount, "{init}");
    init["image"] = REF.into();
    init["imagePullPolicy"] = "Never".into();
    let pod = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "ferry-image", "namespace": "default"},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "initContainers": [init],
            "containers": containers,
            "volumes": [{"name": "host-criu-plugins", "emptyDir": {}}],
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
