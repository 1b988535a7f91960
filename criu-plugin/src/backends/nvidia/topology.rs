//! Which GPUs a dump used and where a restore puts their memory: a pure model, by UUID.
//!
//! A dump records the UUIDs of the GPUs the CRIU process saw (`cuDeviceGetUuid_v2`). A restore
//! on a node that has all of them needs no mapping. Otherwise, with a driver that takes GPU
//! pairs in `CUcheckpointRestoreArgs` (r580+), each missing GPU is mapped onto a GPU of this
//! node that the dump did not use, in order; without that support the restore is refused with
//! the missing UUIDs named.
//!
//! UNVERIFIED: whether the driver wants pairs for every GPU of the process (identity pairs
//! included, as sent here) or only for the GPUs that change. Public notes say the pairs must
//! form a permutation; a full list of the dump's GPUs is one.

use super::driver::GpuPair;

/// A GPU UUID as the driver reports it.
pub type Uuid = [u8; 16];

/// Formats a UUID as `nvidia-smi -L` does: `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(u: &Uuid) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "GPU-{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Parses `GPU-xxxxxxxx-...` (the `GPU-` prefix and dashes are optional).
pub fn parse_uuid(s: &str) -> Option<Uuid> {
    let hex: String = s
        .trim()
        .trim_start_matches("GPU-")
        .chars()
        .filter(|c| *c != '-')
        .collect();
    // Hex digits only: `from_str_radix` alone would also take a `+` sign ("+f" is 15).
    if hex.len() != 32 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut u = [0u8; 16];
    for (i, b) in u.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(u)
}

/// Why the dumped GPUs cannot be restored here.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    #[error(
        "this node lacks GPUs {missing:?} that the checkpoint used (node has {have:?}) and the CUDA driver (version {driver}) cannot restore onto other GPUs (that needs an r580 driver, CUDA 13); restore on a node with those GPUs or upgrade the driver"
    )]
    NoRemap {
        missing: Vec<String>,
        have: Vec<String>,
        driver: i32,
    },
    #[error(
        "this node lacks GPUs {missing:?} that the checkpoint used and has only {spare} unused GPUs to restore them onto (node has {have:?})"
    )]
    TooFewGpus {
        missing: Vec<String>,
        have: Vec<String>,
        spare: usize,
    },
}

/// The GPU pairs for a restore of a dump that used `src` on a node with `dst`: empty when no
/// mapping is needed (or the dump recorded no GPUs).
pub fn plan_remap(
    src: &[Uuid],
    dst: &[Uuid],
    can_remap: bool,
    driver: i32,
) -> Result<Vec<GpuPair>, TopologyError> {
    let missing: Vec<&Uuid> = src.iter().filter(|u| !dst.contains(u)).collect();
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let names = |v: &[&Uuid]| v.iter().map(|u| format_uuid(u)).collect::<Vec<_>>();
    let have = dst.iter().map(format_uuid).collect::<Vec<_>>();
    if !can_remap {
        return Err(TopologyError::NoRemap {
            missing: names(&missing),
            have,
            driver,
        });
    }
    let spare: Vec<&Uuid> = dst.iter().filter(|u| !src.contains(u)).collect();
    if spare.len() < missing.len() {
        return Err(TopologyError::TooFewGpus {
            missing: names(&missing),
            have,
            spare: spare.len(),
        });
    }
    let mut next = spare.into_iter();
    let mut pairs = Vec::with_capacity(src.len());
    for old in src {
        let new = if dst.contains(old) {
            *old
        } else {
            match next.next() {
                Some(n) => *n,
                None => *old,
            }
        };
        pairs.push(GpuPair { old: *old, new });
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(n: u8) -> Uuid {
        [n; 16]
    }

    #[test]
    fn uuids_round_trip_through_the_nvidia_smi_spelling() {
        let x: Uuid = [
            0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        let s = format_uuid(&x);
        assert_eq!(s, "GPU-12345678-9abc-def0-0102-030405060708");
        assert_eq!(parse_uuid(&s), Some(x));
        assert_eq!(parse_uuid("GPU-12"), None);
        // Regression: a `+` passed u8::from_str_radix, so "+f" read as the byte 0x0f.
        assert_eq!(parse_uuid(&format!("GPU-+f{}", "0".repeat(30))), None);
    }

    #[test]
    fn a_node_with_every_dumped_gpu_needs_no_pairs() {
        assert_eq!(plan_remap(&[u(1)], &[u(2), u(1)], false, 12080), Ok(vec![]));
        assert_eq!(plan_remap(&[], &[u(2)], false, 12080), Ok(vec![]));
    }

    #[test]
    fn a_missing_gpu_without_remap_support_is_refused_by_name() {
        let e = plan_remap(&[u(1)], &[u(2)], false, 12080).unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&format_uuid(&u(1))), "{text}");
        assert!(text.contains("r580"), "{text}");
    }

    #[test]
    fn missing_gpus_map_onto_unused_ones_in_order_with_remap_support() {
        let p = plan_remap(&[u(1), u(3)], &[u(3), u(7)], true, 13000).unwrap();
        assert_eq!(
            p,
            vec![
                GpuPair {
                    old: u(1),
                    new: u(7)
                },
                GpuPair {
                    old: u(3),
                    new: u(3)
                }
            ]
        );
        let e = plan_remap(&[u(1), u(2)], &[u(7)], true, 13000).unwrap_err();
        assert!(
            matches!(e, TopologyError::TooFewGpus { spare: 1, .. }),
            "{e}"
        );
    }
}
