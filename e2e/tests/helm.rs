//! The Helm chart: lint, render, and install/uninstall against a real API server (control
//! plane only: the Deployment and DaemonSet are created, nothing runs them here).

use std::path::PathBuf;
use std::process::Command;

use ferry_e2e::{Cluster, Options, User, workspace_root};

fn helm() -> PathBuf {
    let default = PathBuf::from("/opt/ferry/tools/bin/helm");
    if default.is_file() {
        return default;
    }
    PathBuf::from("helm")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_charts_rbac_is_the_manifests_rbac() {
    let root = workspace_root();
    for file in ["operator.yaml", "agent.yaml"] {
        let manifest = std::fs::read(root.join("manifests/rbac").join(file)).unwrap();
        let chart = std::fs::read(root.join("charts/ferry/rbac").join(file)).unwrap();
        assert!(
            manifest == chart,
            "charts/ferry/rbac/{file} differs from manifests/rbac/{file}; copy it over"
        );
    }
}

#[test]
fn the_chart_lints_renders_installs_and_uninstalls() {
    let chart = workspace_root().join("charts/ferry");
    run(Command::new(helm()).arg("lint").arg(&chart));
    let rendered = run(Command::new(helm())
        .args(["template", "ferry", "-n", "gpu-ops"])
        .arg(&chart));
    for kind in [
        "Deployment",
        "DaemonSet",
        "ClusterRole",
        "Role",
        "ServiceAccount",
    ] {
        assert!(
            rendered.contains(&format!("kind: {kind}\n")),
            "no {kind}:\n{rendered}"
        );
    }
    assert!(!rendered.contains("namespace: ferry-system"), "{rendered}");
    // The plugin goes into the node's CRIU plugin dir unless told otherwise.
    assert!(rendered.contains("- name: install-plugin"), "{rendered}");
    let without = run(Command::new(helm())
        .args(["template", "ferry", "--set", "agent.installPlugin=false"])
        .arg(&chart));
    assert!(
        !without.contains("install-plugin") && !without.contains("host-criu-plugins"),
        "{without}"
    );
    assert!(!rendered.contains("verbs: [\"*\"]") && !rendered.contains("resources: [\"*\"]"));

    // No CRDs from the harness: the chart's crds/ must install them.
    let options = Options {
        skip_crds: true,
        ..Options::control_plane().with_controllers()
    };
    let cluster = Cluster::start(options).unwrap_or_else(|e| panic!("{e}"));
    cluster
        .kubectl(&["create", "namespace", "gpu-ops"])
        .unwrap_or_else(|e| panic!("{e}"));
    let kubeconfig = cluster.kubeconfig(User::Admin);
    let helm_in = |args: &[&str]| {
        run(Command::new(helm())
            .env("KUBECONFIG", &kubeconfig)
            .env("HELM_CACHE_HOME", cluster.dir().join("helm-cache"))
            .env("HELM_CONFIG_HOME", cluster.dir().join("helm-config"))
            .env("HELM_DATA_HOME", cluster.dir().join("helm-data"))
            .args(args))
    };
    helm_in(&[
        "install",
        "ferry",
        &chart.display().to_string(),
        "-n",
        "gpu-ops",
        "--wait=false",
    ]);
    let names = |kind: &str| {
        cluster
            .kubectl(&["get", kind, "-n", "gpu-ops", "-o", "name"])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    assert!(names("deployment").contains("ferry-operator"));
    assert!(names("daemonset").contains("ferry-agent"));
    assert!(names("role").contains("ferry-agent"));
    let crds = cluster
        .kubectl(&["get", "crd", "-o", "name"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(crds.contains("checkpointrequests.ferry.dev"), "{crds}");
    helm_in(&["uninstall", "ferry", "-n", "gpu-ops", "--wait"]);
    assert!(!names("deployment").contains("ferry-operator"));
    assert!(!names("daemonset").contains("ferry-agent"));
    let roles = cluster
        .kubectl(&["get", "clusterrole", "-o", "name"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !roles.contains("ferry-agent") && !roles.contains("ferry-operator"),
        "{roles}"
    );
}
