//! Property-based fuzzing of the kubelet checkpoint archive reader (issue #14: "fuzzing on
//! stable Rust", finding 10's unbounded tar long name). The archive comes from the kubelet's
//! CRIU, which writes what the container's state says, so every header field is hostile: for
//! any bytes the reader must not panic, a long name longer than the bound is refused before
//! anything of its size is allocated, a member over the cap is skipped, and a well-formed
//! archive still gives its members back.
//!
//! Bounded allocation is checked for real: the hostile cases run again in a child process
//! under `ulimit -v` (an address-space limit far below the sizes the headers claim), where an
//! allocation of a claimed size fails and aborts the child.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::Command;

use ferry_agent::runtime::kubelet::archive::{MAX_LONG_NAME, archive_member};
use proptest::prelude::*;

/// Largest member the reader returns.
const MAX_MEMBER: usize = 1 << 20;
/// The child's address-space limit (KiB for `ulimit -v`): far below the gigabytes the hostile
/// headers claim, well above what the test binary needs.
const CHILD_LIMIT_KIB: u64 = 768 * 1024;

/// Runs the reader on `bytes`.
fn read(bytes: &[u8], name: &str) -> Result<Option<Vec<u8>>, String> {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(bytes).unwrap();
    file.flush().unwrap();
    archive_member(file.path(), name).map_err(|e| e.to_string())
}

/// One tar header: `name`, an octal `size` field as given (any bytes), `typeflag`, ustar magic
/// and `prefix` when `ustar`.
fn header(name: &[u8], size_field: &[u8], typeflag: u8, ustar: bool, prefix: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    let s = size_field.len().min(12);
    h[124..124 + s].copy_from_slice(&size_field[..s]);
    h[156] = typeflag;
    if ustar {
        h[257..263].copy_from_slice(b"ustar\0");
        let p = prefix.len().min(155);
        h[345..345 + p].copy_from_slice(&prefix[..p]);
    }
    h
}

fn octal(size: u64) -> Vec<u8> {
    format!("{size:011o}").into_bytes()
}

/// A well-formed archive of `members` (name, data), GNU long names where a name needs one.
fn archive(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in members {
        if name.len() >= 100 {
            let mut long = name.clone().into_bytes();
            long.push(0);
            out.extend(header(
                b"././@LongLink",
                &octal(long.len() as u64),
                b'L',
                false,
                b"",
            ));
            out.extend(&long);
            out.resize(out.len().div_ceil(512) * 512, 0);
            out.extend(header(b"x", &octal(data.len() as u64), b'0', false, b""));
        } else {
            out.extend(header(
                name.as_bytes(),
                &octal(data.len() as u64),
                b'0',
                false,
                b"",
            ));
        }
        out.extend(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend([0u8; 1024]);
    out
}

/// One hostile entry: any name, a size field that is octal of anything up to 2^36 or raw
/// bytes, any of the interesting type flags or a random one, then up to 2 KiB of data.
fn hostile_entry() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 0..110),
        prop_oneof![
            (0u64..8192).prop_map(octal),
            ((1u64 << 30)..(1 << 33)).prop_map(octal),
            Just(octal(u64::from(u32::MAX))),
            Just(b"77777777777".to_vec()),
            proptest::collection::vec(any::<u8>(), 0..12),
        ],
        prop_oneof![Just(b'L'), Just(b'0'), Just(0u8), Just(b'5'), any::<u8>()],
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..160),
        proptest::collection::vec(any::<u8>(), 0..2048),
    )
        .prop_map(|(name, size, flag, ustar, prefix, data)| {
            let mut e = header(&name, &size, flag, ustar, &prefix).to_vec();
            e.extend(data);
            e
        })
}

/// Checks one hostile archive: no panic (proptest fails on one), a long name over the bound
/// is an error naming it, a returned member is within the cap.
fn check_hostile(bytes: &[u8], name: &str) -> Result<(), TestCaseError> {
    match read(bytes, name) {
        Ok(Some(member)) => prop_assert!(member.len() <= MAX_MEMBER),
        Ok(None) => {}
        Err(e) => prop_assert!(!e.is_empty()),
    }
    Ok(())
}

fn hostile_archive() -> impl Strategy<Value = (Vec<u8>, String)> {
    (
        proptest::collection::vec(hostile_entry(), 1..6),
        prop_oneof![
            Just("checkpoint/ferry-dump-stats.json".to_string()),
            "[a-z]{1,8}"
        ],
    )
        .prop_map(|(entries, name)| (entries.concat(), name))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_do_not_panic_the_reader(
        bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        name in "[a-z/.]{0,20}",
    ) {
        check_hostile(&bytes, &name)?;
    }

    #[test]
    fn hostile_headers_do_not_panic_the_reader((bytes, name) in hostile_archive()) {
        check_hostile(&bytes, &name)?;
    }

    #[test]
    fn a_long_name_over_the_bound_is_refused(
        size in (MAX_LONG_NAME + 1)..(1u64 << 33),
        tail in proptest::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut bytes = header(b"././@LongLink", &octal(size), b'L', false, b"").to_vec();
        bytes.extend(tail);
        let e = read(&bytes, "a").expect_err("an over-long long name is an error");
        prop_assert!(e.contains("long name"), "{}", e);
    }

    #[test]
    fn well_formed_archives_give_their_members_back(
        members in proptest::collection::btree_map(
            "[a-z]{1,8}(/[a-z]{1,8}){0,2}|d{100,140}/[a-z]{1,4}",
            proptest::collection::vec(any::<u8>(), 0..3000),
            1..5,
        ),
    ) {
        let members: Vec<(String, Vec<u8>)> = members.into_iter().collect();
        let bytes = archive(&members);
        for (name, data) in &members {
            let r = read(&bytes, name);
            prop_assert_eq!(r.as_ref().map(Option::as_deref), Ok(Some(data.as_slice())));
        }
        prop_assert_eq!(read(&bytes, "not/there"), Ok(None));
    }
}

/// The hostile cases again, in a child under an address-space limit ([`CHILD_LIMIT_KIB`]): a
/// reader that allocated what a header claims (gigabytes) would abort the child.
#[test]
fn hostile_archives_are_read_within_a_memory_limit() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -v {CHILD_LIMIT_KIB} && exec \"$0\" \"$@\""))
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            "hostile_archives_under_the_limit",
            "--test-threads",
            "1",
        ])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("1 passed"),
        "the reader failed under a {CHILD_LIMIT_KIB} KiB address-space limit ({}):\n{text}",
        out.status
    );
}

/// Run by [`hostile_archives_are_read_within_a_memory_limit`] in a child with the limit.
#[test]
#[ignore = "run under an address-space limit by hostile_archives_are_read_within_a_memory_limit"]
fn hostile_archives_under_the_limit() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    });
    runner
        .run(&hostile_archive(), |(bytes, name)| {
            check_hostile(&bytes, &name)
        })
        .unwrap();
    // The attack itself: a long name claiming 8 GiB.
    let mut bytes = header(b"././@LongLink", &octal(1 << 33), b'L', false, b"").to_vec();
    bytes.extend([b'a'; 512]);
    assert!(read(&bytes, "a").is_err());
}

/// The attack of finding 10: a long-name header that claims 64 GiB. Before the fix the reader
/// tried to allocate the claimed size; now it refuses the archive with a reason.
#[test]
fn a_long_name_claiming_gigabytes_is_refused() {
    let mut bytes = header(b"././@LongLink", &octal(1 << 36), b'L', false, b"").to_vec();
    bytes.extend([b'a'; 512]);
    let e = read(&bytes, "a").expect_err("a 64 GiB long name is an error");
    assert!(
        e.contains("long name") && e.contains(&MAX_LONG_NAME.to_string()),
        "{e}"
    );

    // A long name within the bound still names the next member.
    let long = format!("{}/f", "d".repeat(300));
    let bytes = archive(&[(long.clone(), b"long".to_vec())]);
    assert_eq!(read(&bytes, &long), Ok(Some(b"long".to_vec())));
}
