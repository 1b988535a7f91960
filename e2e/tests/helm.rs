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

/// `helm template` that is expected to fail: its stderr.
fn template_error(args: &[&str]) -> String {
    let chart = workspace_root().join("charts/ferry");
    let out = Command::new(helm())
        .args(["template", "ferry"])
        .arg(&chart)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("helm template {args:?}: {e}"));
    assert!(!out.status.success(), "helm template {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every `ferry_…` series a text names, less the histogram suffixes.
fn series_names(text: &str) -> Vec<String> {
    let re = regex::Regex::new(r"\bferry_[a-z_]+").unwrap_or_else(|e| panic!("{e}"));
    re.find_iter(text)
        .map(|m| {
            let name = m.as_str();
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name)
                .to_string()
        })
        .collect()
}

#[test]
fn the_charts_values_schema_rejects_wrong_types_and_unknown_keys() {
    let err = template_error(&["--set", "agent.workers=two"]);
    assert!(
        err.contains("/agent/workers") && err.contains("want integer"),
        "{err}"
    );
    let err = template_error(&["--set", "agent.wrokers=2"]);
    assert!(
        err.contains("additional properties 'wrokers' not allowed"),
        "{err}"
    );
    let err = template_error(&["--set", "agent.runtime=process"]);
    assert!(err.contains("/agent/runtime"), "{err}");
}

#[test]
fn monitoring_objects_render_only_when_enabled_and_name_real_metrics() {
    let chart = workspace_root().join("charts/ferry");
    run(Command::new(helm()).args(["lint", "--strict"]).arg(&chart));
    let off = run(Command::new(helm()).args(["template", "ferry"]).arg(&chart));
    for kind in [
        "PodMonitor",
        "ServiceMonitor",
        "PrometheusRule",
        "ConfigMap",
    ] {
        assert!(
            !off.contains(&format!("kind: {kind}\n")),
            "{kind} rendered by default"
        );
    }
    let on = run(Command::new(helm())
        .args(["template", "ferry", "-n", "gpu-ops"])
        .arg(&chart)
        .args([
            "--set",
            "metrics.podMonitor.enabled=true,metrics.serviceMonitor.enabled=true",
            "--set",
            "metrics.dashboard.enabled=true,metrics.prometheusRule.enabled=true",
            "--set",
            "agent.gc.quotaGiB=100",
        ]));
    for (kind, count) in [
        ("PodMonitor", 2),
        ("ServiceMonitor", 2),
        ("PrometheusRule", 1),
        ("ConfigMap", 1),
    ] {
        assert_eq!(
            on.matches(&format!("kind: {kind}\n")).count(),
            count,
            "{kind}:\n{on}"
        );
    }
    assert!(on.contains("grafana_dashboard: \"1\""), "{on}");
    // 90 % of 100 GiB.
    assert!(on.contains("(ferry_store_bytes) > 96636764160"), "{on}");
    for alert in [
        "FerryTaskFailed",
        "FerryStoreNearQuota",
        "FerryAgentNotReady",
        "FerryOperatorDown",
    ] {
        assert!(on.contains(&format!("alert: {alert}\n")), "{alert}:\n{on}");
    }

    // The dashboard is valid JSON whose queries name only metrics ferry exports, and it plots
    // what operators look at first.
    let dashboard = std::fs::read_to_string(chart.join("dashboards/ferry.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let exprs: Vec<&str> = parsed["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().unwrap())
        .map(|t| t["expr"].as_str().unwrap())
        .collect();
    let used = series_names(&exprs.join("\n"));
    for name in used.iter().chain(series_names(&on).iter()) {
        assert!(
            ferry_api::names::metric::ALL.contains(&name.as_str()),
            "{name} is not a metric ferry exports"
        );
    }
    for needed in [
        ferry_api::names::metric::GPU_RESTORE_DURATION_SECONDS,
        ferry_api::names::metric::GPU_RESTORE_THROUGHPUT_BYTES_PER_SECOND,
        ferry_api::names::metric::MIGRATION_DOWNTIME_SECONDS,
        ferry_api::names::metric::TRANSFER_BYTES_TOTAL,
        ferry_api::names::metric::STORE_BYTES,
    ] {
        assert!(
            used.iter().any(|u| u == needed),
            "the dashboard does not plot {needed}"
        );
    }
}

#[test]
fn the_chart_lints_renders_installs_and_uninstalls() {
    let chart = workspace_root().join("charts/ferry");
    run(Command::new(helm()).args(["lint", "--strict"]).arg(&chart));
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
    let installed = helm_in(&[
        "install",
        "ferry",
        &chart.display().to_string(),
        "-n",
        "gpu-ops",
        "--wait=false",
    ]);
    // NOTES.txt: how to check the agents and apply a first request, and what uninstall keeps.
    for line in [
        "rollout status daemonset/ferry-agent",
        "kind: CheckpointRequest",
        "keeps the CRDs",
    ] {
        assert!(
            installed.contains(line),
            "NOTES lack {line:?}:\n{installed}"
        );
    }
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
    let cluster_scoped = |kind: &str| {
        cluster
            .kubectl(&["get", kind, "-o", "name"])
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let policies = "validatingadmissionpolicies,validatingadmissionpolicybindings";
    assert!(
        cluster_scoped(policies).contains("ferry-agent-node-scope"),
        "the chart installs the agents' node-scope policy"
    );
    helm_in(&["uninstall", "ferry", "-n", "gpu-ops", "--wait"]);
    // Nothing of ferry's is left but what Helm convention and data safety keep: the CRDs.
    for kind in [
        "deployment",
        "daemonset",
        "serviceaccount",
        "role",
        "rolebinding",
        "configmap",
        "service",
    ] {
        let left = names(kind);
        assert!(!left.contains("ferry"), "{kind} left behind: {left}");
    }
    for kind in [
        "clusterrole",
        "clusterrolebinding",
        policies,
        "validatingwebhookconfigurations,mutatingwebhookconfigurations",
    ] {
        let left = cluster_scoped(kind);
        assert!(!left.contains("ferry"), "{kind} left behind: {left}");
    }
    assert!(
        cluster_scoped("crd").contains("checkpointrequests.ferry.dev"),
        "helm uninstall must keep the CRDs (and with them every CheckpointRequest)"
    );
}
