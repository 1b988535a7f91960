//! Writes the CRD YAML generated from ferry-api's types into `manifests/crds/` and
//! `charts/ferry/crds/`.
//!
//! ```text
//! cargo run -p ferry-api --bin crdgen              # write the files
//! cargo run -p ferry-api --bin crdgen -- --check   # exit 1 when a file differs (CI)
//! cargo run -p ferry-api --bin crdgen -- --stdout  # print every CRD, for kubectl apply -f -
//! ```
//! `--root DIR` names the workspace root (default: the one this binary was built from).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use ferry_api::crdgen::{REGENERATE_COMMAND, crd_yaml_files, crd_yaml_stream};

const USAGE: &str = "usage: crdgen [--check | --stdout] [--root DIR]";

enum Mode {
    Write,
    Check,
    Stdout,
}

fn main() -> ExitCode {
    match run(std::env::args().skip(1)) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("crdgen: {message}");
            ExitCode::from(2)
        }
    }
}

fn run(mut args: impl Iterator<Item = String>) -> Result<ExitCode, String> {
    let mut mode = Mode::Write;
    // The workspace root is the parent of this crate's directory.
    let mut root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => mode = Mode::Check,
            "--stdout" => mode = Mode::Stdout,
            "--root" => {
                root = args
                    .next()
                    .map(PathBuf::from)
                    .ok_or_else(|| format!("--root needs a directory; {USAGE}"))?;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                return Ok(ExitCode::SUCCESS);
            }
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }

    if let Mode::Stdout = mode {
        print!("{}", crd_yaml_stream().map_err(|e| e.to_string())?);
        return Ok(ExitCode::SUCCESS);
    }

    let files = crd_yaml_files().map_err(|e| e.to_string())?;
    let mut stale = Vec::new();
    for (relative, yaml) in &files {
        let path = root.join(relative);
        let current = std::fs::read_to_string(&path).ok();
        if current.as_deref() == Some(yaml.as_str()) {
            continue;
        }
        match mode {
            Mode::Check => stale.push(relative.clone()),
            _ => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir)
                        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                }
                std::fs::write(&path, yaml)
                    .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
                println!("wrote {relative}");
            }
        }
    }
    if stale.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "crdgen: these CRD files differ from the types in api/src: {}\nrun `{REGENERATE_COMMAND}` and commit the result",
        stale.join(", ")
    );
    Ok(ExitCode::FAILURE)
}
