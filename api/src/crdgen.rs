//! The CRD YAML files, generated from the types. `cargo run -p ferry-api --bin crdgen` writes
//! them; a test fails when the committed files drift from what this module generates.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::{CheckpointRequest, NodeTask};

/// The one command that regenerates every file of [`crd_yaml_files`].
pub const REGENERATE_COMMAND: &str = "cargo run -p ferry-api --bin crdgen";

/// Directories, relative to the workspace root, that hold the CRD files: the plain manifests
/// and the Helm chart's `crds/` (Helm installs those before the chart's templates).
pub const CRD_DIRS: [&str; 2] = ["manifests/crds", "charts/ferry/crds"];

/// Why the CRDs could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum CrdgenError {
    #[error("cannot render CRD {name} as YAML: {source}")]
    Yaml {
        name: String,
        #[source]
        source: serde_saphyr::ser::Error,
    },
}

/// Every ferry CRD.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![CheckpointRequest::crd(), NodeTask::crd()]
}

/// One CRD as YAML, with a header saying it is generated and how to regenerate it.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdgenError> {
    let name = crd.metadata.name.clone().unwrap_or_default();
    let body = serde_saphyr::to_string(crd).map_err(|source| CrdgenError::Yaml {
        name: name.clone(),
        source,
    })?;
    Ok(format!(
        "# Generated from ferry-api (api/src) by `{REGENERATE_COMMAND}`. Do not edit.\n{body}"
    ))
}

/// `(file name, YAML)` per CRD; the file name is `<plural>.<group>.yaml`.
pub fn crd_yaml_by_name() -> Result<Vec<(String, String)>, CrdgenError> {
    crds()
        .iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), crd_yaml(crd)?))
        })
        .collect()
}

/// `(path relative to the workspace root, YAML)` of every generated file: each CRD in each
/// of [`CRD_DIRS`].
pub fn crd_yaml_files() -> Result<Vec<(String, String)>, CrdgenError> {
    let by_name = crd_yaml_by_name()?;
    Ok(CRD_DIRS
        .iter()
        .flat_map(|dir| {
            by_name
                .iter()
                .map(move |(file, yaml)| (format!("{dir}/{file}"), yaml.clone()))
        })
        .collect())
}

/// Every CRD in one multi-document YAML stream (for `kubectl apply -f -`).
pub fn crd_yaml_stream() -> Result<String, CrdgenError> {
    let docs = crd_yaml_by_name()?;
    Ok(docs
        .into_iter()
        .map(|(_, yaml)| yaml)
        .collect::<Vec<_>>()
        .join("---\n"))
}
