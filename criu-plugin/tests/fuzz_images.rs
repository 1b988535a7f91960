//! Property-based fuzz tests of the image framing every backend shares
//! (`contract::images`: 8-byte little-endian payload length, then the payload). Properties:
//! never panics on any header and file, refuses headers that disagree with the file or
//! exceed the caller's cap, round-trips valid images, and a header claiming 2^60 bytes is
//! refused before allocation (the allocation itself would abort the test process).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::File;
use std::io::{Seek, Write};

use ferry_criu_plugin::contract::images::{
    HEADER_LEN, check_header, payload_len, read_capped, read_sized, write_sized,
};
use proptest::prelude::*;

/// Cases per property: the pure header check 256, the ones that write a temp file 128.
const CASES: u32 = 256;
const FILE_CASES: u32 = 128;

fn temp_with(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f.rewind().unwrap();
    f
}

fn header() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..96,
        (0u64..16).prop_map(|x| u64::MAX - x),
        (0u64..16).prop_map(|x| (1u64 << 60) + x),
        any::<u64>(),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, ..ProptestConfig::default() })]

    #[test]
    fn header_checks_never_overflow_and_match_exact_arithmetic(
        len in header(), file_len in prop_oneof![0u64..128, any::<u64>()],
    ) {
        let r = check_header("x.img", len.to_le_bytes(), file_len);
        let fits = u128::from(HEADER_LEN) + u128::from(len) <= u128::from(file_len);
        prop_assert_eq!(r.is_ok(), fits);
        if let Ok(n) = r {
            prop_assert_eq!(n, len);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: FILE_CASES, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_files_never_panic_and_only_consistent_ones_read(
        len in header(), body in prop::collection::vec(any::<u8>(), 0..96),
        max in prop_oneof![0u64..128, Just(u64::MAX)],
        raw in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        let mut bytes = len.to_le_bytes().to_vec();
        bytes.extend_from_slice(&body);
        let r = read_sized(temp_with(&bytes), "x.img", max);
        let ok = len <= body.len() as u64 && len <= max;
        prop_assert_eq!(r.is_ok(), ok);
        if let Ok(v) = r {
            prop_assert_eq!(&v[..], &body[..len as usize]);
        }
        // Files shorter than a header, or any bytes at all.
        let _ = payload_len(&temp_with(&raw), "x.img");
        let _ = read_sized(temp_with(&raw), "x.img", max);
        let r = read_capped(temp_with(&raw), "x.json", max);
        prop_assert_eq!(r.is_ok(), raw.len() as u64 <= max);
    }

    #[test]
    fn written_images_round_trip(payload in prop::collection::vec(any::<u8>(), 0..256)) {
        let mut f = tempfile::tempfile().unwrap();
        write_sized(&mut f, "x.img", &payload).unwrap();
        f.rewind().unwrap();
        prop_assert_eq!(payload_len(&f, "x.img").unwrap(), payload.len() as u64);
        prop_assert_eq!(read_sized(f, "x.img", payload.len() as u64).unwrap(), payload);
    }
}

/// Headers claiming far more than the file holds, or than the cap, are refused before the
/// payload buffer is allocated; so are files over `read_capped`'s cap, even sparse ones.
#[test]
fn huge_claims_are_refused_before_allocation() {
    for claim in [1u64 << 60, u64::MAX, u64::MAX - 7, 1 << 40] {
        let mut bytes = claim.to_le_bytes().to_vec();
        bytes.extend_from_slice(b"tiny");
        let e = read_sized(temp_with(&bytes), "x.img", u64::MAX).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }
    // A sparse file that really is 2^40 bytes long: refused by the cap, not read.
    let f = temp_with(&(1u64 << 40).to_le_bytes());
    f.set_len(HEADER_LEN + (1 << 40)).unwrap();
    let e = read_sized(f.try_clone().unwrap(), "x.img", 1 << 20).unwrap_err();
    assert!(
        e.to_string().contains("more than the 1048576 allowed"),
        "{e}"
    );
    let e = read_capped(f, "x.json", 1 << 20).unwrap_err();
    assert!(
        e.to_string().contains("more than the 1048576 allowed"),
        "{e}"
    );
}
