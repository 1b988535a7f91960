//! Property-based fuzz tests of the NVIDIA backend's image reader (`ferry-nvidia.json`,
//! `NvidiaImage::read`/`from_bytes`, and the GPU UUIDs in it). Properties: never panics,
//! garbage is an error, valid images round-trip (also after a byte of their JSON changed:
//! then either an error or a valid image), and a file over the cap is refused before it is
//! read.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;

use ferry_criu_plugin::backends::nvidia::driver::ProcessState;
use ferry_criu_plugin::backends::nvidia::images::{
    IMAGE_VERSION, ImageProcess, MAX_GPUS, MAX_IMAGE_BYTES, MAX_PROCESSES, NvidiaImage,
};
use ferry_criu_plugin::backends::nvidia::topology::{format_uuid, parse_uuid};
use proptest::prelude::*;

/// Cases per property.
const CASES: u32 = 256;

fn state() -> impl Strategy<Value = ProcessState> {
    prop_oneof![
        Just(ProcessState::Running),
        Just(ProcessState::Locked),
        Just(ProcessState::Checkpointed),
        Just(ProcessState::Failed),
    ]
}

fn image() -> impl Strategy<Value = NvidiaImage> {
    (
        0..=IMAGE_VERSION,
        any::<i32>(),
        prop::collection::vec(any::<[u8; 16]>(), 0..4),
        prop::collection::vec((1..i32::MAX, state()), 0..6),
    )
        .prop_map(|(version, driver_version, gpus, procs)| NvidiaImage {
            version,
            driver_version,
            gpus: gpus.iter().map(format_uuid).collect(),
            processes: procs
                .into_iter()
                .map(|(pid, initial_state)| ImageProcess { pid, initial_state })
                .collect(),
        })
}

fn check(img: &NvidiaImage) {
    assert!(img.version <= IMAGE_VERSION);
    assert!(img.processes.len() <= MAX_PROCESSES && img.gpus.len() <= MAX_GPUS);
    assert!(img.processes.iter().all(|p| p.pid > 0));
    let _ = img.gpu_uuids();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_and_garbage_is_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..256)
    ) {
        if let Ok(img) = NvidiaImage::from_bytes(&bytes) {
            check(&img);
        }
        // Not a JSON object at all: refused.
        if !bytes.contains(&b'{') {
            prop_assert!(NvidiaImage::from_bytes(&bytes).is_err());
        }
    }

    #[test]
    fn valid_images_round_trip_and_mutated_ones_never_panic(
        img in image(), at in any::<prop::sample::Index>(), x in 1u8..=255,
    ) {
        let json = img.to_json().unwrap();
        let back = NvidiaImage::from_bytes(json.as_bytes()).unwrap();
        prop_assert_eq!(&back, &img);
        let uuids = back.gpu_uuids().unwrap();
        prop_assert_eq!(uuids.iter().map(format_uuid).collect::<Vec<_>>(), img.gpus.clone());
        let mut bytes = json.into_bytes();
        let i = at.index(bytes.len());
        bytes[i] ^= x;
        if let Ok(m) = NvidiaImage::from_bytes(&bytes) {
            check(&m);
        }
    }

    #[test]
    fn json_with_hostile_values_never_panics(
        version in any::<u32>(), pid in any::<i32>(), gpu in ".{0,40}",
        n in 0usize..4,
    ) {
        let text = serde_json::json!({
            "version": version, "driverVersion": 1,
            "gpus": vec![gpu.clone(); n],
            "processes": [{"pid": pid, "initialState": "running"}],
        }).to_string();
        let r = NvidiaImage::from_bytes(text.as_bytes());
        prop_assert_eq!(r.is_ok(), version <= IMAGE_VERSION && pid > 0);
        let _ = parse_uuid(&gpu);
    }

    #[test]
    fn uuid_parsing_never_panics_and_round_trips(s in "\\PC{0,48}", u in any::<[u8; 16]>()) {
        if let Some(v) = parse_uuid(&s) {
            prop_assert_eq!(parse_uuid(&format_uuid(&v)), Some(v));
        }
        prop_assert_eq!(parse_uuid(&format_uuid(&u)), Some(u));
    }
}

/// A file over the cap (here a sparse one of 2^40 bytes) is refused from its size, before
/// any of it is read or allocated.
#[test]
fn an_image_over_the_cap_is_refused_before_reading() {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(b"{}").unwrap();
    f.set_len(1 << 40).unwrap();
    let e = NvidiaImage::read(f).unwrap_err().to_string();
    assert!(
        e.contains(&format!("more than the {MAX_IMAGE_BYTES} allowed")),
        "{e}"
    );
}
