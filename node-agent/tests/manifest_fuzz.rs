//! Property-based fuzzing of the image manifest parser (`Manifest::from_bytes`), which reads
//! bytes from other nodes and from images on disk: arbitrary and JSON-shaped bytes never panic
//! and what parses passed every check; valid manifests survive a round trip unchanged; and
//! hostile manifests at the size cap (`MAX_MANIFEST_BYTES`) parse within a bounded multiple of
//! their size, each measured in a child process by its peak resident memory (a parsed
//! free-form JSON tree would take ~100 times the input).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use ferry_agent::store::{
    FileEntry, ImageKind, ImageMeta, ImageSource, MAX_MANIFEST_BYTES, Manifest, StoreError,
};
use jiff::Timestamp;
use proptest::prelude::*;

/// Set in the child process that parses hostile manifests under a memory limit.
const CHILD: &str = "FERRY_MANIFEST_FUZZ_CHILD";

/// Peak resident memory of this process (`VmHWM`), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap()
        * 1024
}

/// A manifest of about `MAX_MANIFEST_BYTES` whose `hole` is filled with `unit` repeated.
fn hostile(template: &str, unit: &str) -> Vec<u8> {
    let (head, tail) = template.split_once("HOLE").unwrap();
    let room = MAX_MANIFEST_BYTES - head.len() - tail.len();
    let n = room / (unit.len() + 1);
    let mut out = String::with_capacity(MAX_MANIFEST_BYTES);
    out.push_str(head);
    for i in 0..n {
        if i > 0 {
            out.push(',');
        }
        out.push_str(unit);
    }
    out.push_str(tail);
    out.into_bytes()
}

const BASE: &str = r#"{"version":1,"createdAt":"2026-01-01T00:00:00Z","kind":"criu","source":{"node":"n","namespace":"ns","pod":"p","containers":[CONTAINERS]},FIELD,"files":[FILES]}"#;

/// The hostile shapes, by name; [`build`] makes one (only it counts in the child's memory).
const SHAPES: [&str; 7] = [
    "topology objects",
    "topology numbers",
    "plugin stats devices",
    "unknown key arrays",
    "unknown key objects",
    "containers",
    "files",
];

fn build(shape: &str) -> Vec<u8> {
    let t = |containers: &str, field: &str, files: &str| {
        BASE.replace("CONTAINERS", containers)
            .replace("FIELD", field)
            .replace("FILES", files)
    };
    let stats =
        r#""pluginStats":{"version":1,"operation":"dump","vendor":"nvidia","devices":[HOLE]}"#;
    let device = r#"{"device":"","pid":0,"buffers":0,"bytes":0,"copySeconds":0}"#;
    let file = format!(r#"{{"path":"a","size":0,"sha256":"{}"}}"#, "0".repeat(64));
    match shape {
        "topology objects" => hostile(&t("", r#""gpuTopology":[HOLE]"#, ""), r#"{"a":0}"#),
        "topology numbers" => hostile(&t("", r#""gpuTopology":[HOLE]"#, ""), "0"),
        "plugin stats devices" => hostile(&t("", stats, ""), device),
        "unknown key arrays" => hostile(&t("", r#""x":[HOLE]"#, ""), "[]"),
        "unknown key objects" => hostile(&t("", r#""x":[HOLE]"#, ""), r#"{"a":0}"#),
        "containers" => hostile(&t("HOLE", r#""y":0"#, ""), r#""""#),
        "files" => hostile(&t("", r#""y":0"#, "HOLE"), &file),
        other => panic!("no shape {other}"),
    }
}

fn json_fragment() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("1".to_string()),
        Just("-1e309".to_string()),
        Just("18446744073709551616".to_string()),
        Just("\"a\"".to_string()),
        Just("\"manifest.json\"".to_string()),
        Just("\"../etc/passwd\"".to_string()),
        Just("\"\\u0000\"".to_string()),
        "[a-z0-9/.]{0,12}".prop_map(|s| format!("\"{s}\"")),
    ];
    leaf.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(|v| format!("[{}]", v.join(","))),
            prop::collection::vec(
                (
                    prop_oneof![
                        Just("version"),
                        Just("createdAt"),
                        Just("kind"),
                        Just("source"),
                        Just("files"),
                        Just("path"),
                        Just("size"),
                        Just("sha256"),
                        Just("gpuTopology"),
                        Just("requestUid"),
                    ],
                    inner
                ),
                0..8
            )
            .prop_map(|kv| format!(
                "{{{}}}",
                kv.iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            )),
        ]
    })
}

fn segment() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9_-]{0,8}(\\.img)?"
}

fn valid_manifest() -> impl Strategy<Value = Manifest> {
    let files = prop::collection::btree_map(
        prop::collection::vec(segment(), 1..4).prop_map(|s| s.join("/")),
        (0u64..(1 << 40), "[0-9a-f]{64}"),
        0..12,
    );
    (
        files,
        0i64..4_000_000_000,
        0i32..1_000_000_000,
        prop::option::of("[0-9a-f-]{36}"),
        prop::option::of("[0-9a-f-]{36}"),
        prop::collection::vec("[a-z]{1,8}", 0..3),
        any::<bool>(),
    )
        .prop_map(
            |(files, secs, nanos, request_uid, pod_uid, containers, archive)| {
                let mut meta = ImageMeta::new(
                    if archive {
                        ImageKind::CheckpointArchive
                    } else {
                        ImageKind::Criu
                    },
                    ImageSource {
                        node: "node-a".into(),
                        namespace: "ns".into(),
                        pod: "p".into(),
                        containers,
                    },
                );
                meta.request_uid = request_uid;
                meta.pod_uid = pod_uid;
                meta.criu_version = Some("4.2".into());
                // A file and a directory of the same name cannot both exist; drop prefixes.
                let paths: Vec<String> = files.keys().cloned().collect();
                let files = files
                    .into_iter()
                    .filter(|(p, _)| !paths.iter().any(|q| q.starts_with(&format!("{p}/"))))
                    .map(|(path, (size, sha256))| FileEntry { path, size, sha256 })
                    .collect();
                Manifest {
                    version: 1,
                    created_at: Timestamp::new(secs, nanos).unwrap(),
                    meta,
                    files,
                }
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096)
    ) {
        if let Err(e) = Manifest::from_bytes("fuzz", &bytes) {
            prop_assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn json_shaped_input_never_panics_and_what_parses_passed_every_check(
        json in json_fragment()
    ) {
        let result = Manifest::from_bytes("fuzz", json.as_bytes());
        // Whatever parses passed every check: safe paths, 64-hex digests, sizes that add up.
        if let Ok(m) = result {
            for f in &m.files {
                ferry_agent::store::validate_relative(&f.path).unwrap();
                prop_assert_eq!(f.sha256.len(), 64);
            }
            prop_assert!(i64::try_from(m.total_bytes()).is_ok());
        }
    }

    #[test]
    fn valid_manifests_round_trip(manifest in valid_manifest()) {
        let bytes = manifest.to_bytes();
        let parsed = Manifest::from_bytes("ns/req", &bytes).unwrap();
        prop_assert_eq!(&parsed, &manifest);
        prop_assert_eq!(parsed.to_bytes(), bytes);
    }

    #[test]
    fn a_flipped_byte_in_a_valid_manifest_never_panics(
        manifest in valid_manifest(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = manifest.to_bytes();
        let i = at.index(bytes.len());
        bytes[i] = byte;
        let _ = Manifest::from_bytes("ns/req", &bytes);
    }
}

#[test]
fn deep_nesting_is_refused_without_exhausting_the_stack() {
    for depth in [64usize, 200, 100_000] {
        let json = format!(
            "{{\"gpuTopology\":{}{}}}",
            "[".repeat(depth),
            "]".repeat(depth)
        );
        assert!(Manifest::from_bytes("deep", json.as_bytes()).is_err());
    }
}

#[test]
fn an_oversized_manifest_is_refused_before_parsing() {
    let mut bytes = vec![b' '; MAX_MANIFEST_BYTES + 1];
    bytes[0] = b'{';
    let err = Manifest::from_bytes("big", &bytes).unwrap_err();
    assert!(
        matches!(&err, StoreError::BadManifest { reason, .. } if reason.contains("more than")),
        "{err}"
    );
}

/// One hostile shape at the size cap, parsed in this process (the child of the test below,
/// which names the shape): prints how much the peak resident memory grew.
#[test]
fn hostile_manifest_child() {
    let Some(wanted) = std::env::var_os(CHILD) else {
        return;
    };
    let name = wanted.to_str().unwrap();
    let bytes = build(name);
    let before = peak_rss();
    let result = Manifest::from_bytes("hostile", &bytes);
    let grew = peak_rss().saturating_sub(before);
    let outcome = match &result {
        Ok(_) => "parsed".to_string(),
        Err(e) => e.to_string().chars().take(60).collect(),
    };
    println!(
        "SHAPE {name}: {} bytes in, {grew} bytes of peak memory, {outcome}",
        bytes.len()
    );
    drop(result);
    // The bound: a few times the input (strings and vectors of small structs), never the
    // ~100x of a parsed JSON tree.
    assert!(
        grew <= 8 * bytes.len() as u64 + (64 << 20),
        "{name}: {grew} bytes for {} bytes of input",
        bytes.len()
    );
}

#[test]
fn hostile_manifests_at_the_cap_parse_in_bounded_memory() {
    for name in SHAPES {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hostile_manifest_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, name)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        println!(
            "{}",
            stdout
                .lines()
                .filter(|l| l.contains("SHAPE"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            out.status.success(),
            "{name}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
