//! The committed CRD YAML is what the types generate (drift check), parses back into the
//! same CRDs, and the `crdgen` binary writes and checks it.
#![cfg(feature = "crd")]
// Helpers outside #[test] functions panic to fail their caller, as the tests themselves do.
#![allow(clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_api::crdgen::{CRD_DIRS, REGENERATE_COMMAND, crd_yaml_files, crd_yaml_stream, crds};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("api/ has a parent")
        .to_path_buf()
}

#[test]
fn committed_crd_yaml_matches_the_types() {
    let root = workspace_root();
    let files = crd_yaml_files().expect("CRDs render");
    assert_eq!(files.len(), 2 * CRD_DIRS.len());
    let mut stale = Vec::new();
    for (relative, expected) in &files {
        let committed = std::fs::read_to_string(root.join(relative)).unwrap_or_default();
        if committed != *expected {
            stale.push(relative.as_str());
        }
    }
    assert!(
        stale.is_empty(),
        "CRD YAML out of date with api/src: {}. Run `{REGENERATE_COMMAND}` and commit the result.",
        stale.join(", ")
    );
}

#[test]
fn generated_files_are_named_after_the_crds_and_say_how_to_regenerate() {
    let files = crd_yaml_files().expect("CRDs render");
    let paths: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        paths,
        [
            "manifests/crds/checkpointrequests.ferry.dev.yaml",
            "manifests/crds/nodetasks.ferry.dev.yaml",
            "charts/ferry/crds/checkpointrequests.ferry.dev.yaml",
            "charts/ferry/crds/nodetasks.ferry.dev.yaml",
        ]
    );
    for (path, yaml) in &files {
        let first = yaml.lines().next().unwrap_or("");
        assert!(first.starts_with("# Generated"), "{path}: {first}");
        assert!(first.contains(REGENERATE_COMMAND), "{path}: {first}");
    }
    assert_eq!(REGENERATE_COMMAND, "cargo run -p ferry-api --bin crdgen");
}

#[test]
fn generated_yaml_parses_back_into_the_same_crds() {
    let files = crd_yaml_files().expect("CRDs render");
    for ((path, yaml), crd) in files.iter().zip(crds().iter().cycle()) {
        let parsed: CustomResourceDefinition =
            serde_saphyr::from_str(yaml).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(&parsed, crd, "{path}");
    }
}

#[test]
fn the_stdout_stream_holds_every_crd_as_separate_documents() {
    let stream = crd_yaml_stream().expect("CRDs render");
    let docs: Vec<&str> = stream.split("\n---\n").collect();
    assert_eq!(docs.len(), crds().len());
    assert!(docs[0].contains("name: checkpointrequests.ferry.dev"));
    assert!(docs[1].contains("name: nodetasks.ferry.dev"));
}

#[test]
fn the_chart_is_a_helm_v2_chart_with_the_crds_in_its_crds_dir() {
    let root = workspace_root();
    let chart = std::fs::read_to_string(root.join("charts/ferry/Chart.yaml")).expect("Chart.yaml");
    let chart: serde_json::Value = serde_saphyr::from_str(&chart).expect("Chart.yaml is YAML");
    assert_eq!(chart["apiVersion"], "v2");
    assert_eq!(chart["name"], "ferry");
    assert_eq!(chart["version"], "0.1.0");
    assert_eq!(chart["appVersion"], "0.1.0");
    assert!(chart["description"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(CRD_DIRS.contains(&"charts/ferry/crds"));
}

fn crdgen(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_crdgen"))
        .args(args)
        .output()
        .expect("crdgen runs")
}

#[test]
fn crdgen_writes_every_file_and_check_then_passes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_str().expect("utf-8 temp path");
    assert!(crdgen(&["--check", "--root", root]).status.code() == Some(1));
    let write = crdgen(&["--root", root]);
    assert!(write.status.success(), "{write:?}");
    for (relative, yaml) in crd_yaml_files().expect("CRDs render") {
        let written = std::fs::read_to_string(dir.path().join(&relative)).expect("written");
        assert_eq!(written, yaml, "{relative}");
    }
    assert!(crdgen(&["--check", "--root", root]).status.success());
}

#[test]
fn crdgen_check_names_the_drifted_file_and_the_command_to_fix_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().to_str().expect("utf-8 temp path");
    assert!(crdgen(&["--root", root]).status.success());
    let drifted = dir
        .path()
        .join("charts/ferry/crds/nodetasks.ferry.dev.yaml");
    std::fs::write(&drifted, "# edited by hand\n").expect("write");
    let check = crdgen(&["--check", "--root", root]);
    assert_eq!(check.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert!(
        stderr.contains("charts/ferry/crds/nodetasks.ferry.dev.yaml"),
        "{stderr}"
    );
    assert!(stderr.contains(REGENERATE_COMMAND), "{stderr}");
    assert!(!stderr.contains("manifests/crds/nodetasks"), "{stderr}");
}

#[test]
fn crdgen_rejects_unknown_arguments_with_its_usage() {
    let out = crdgen(&["--frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage: crdgen"));
}
