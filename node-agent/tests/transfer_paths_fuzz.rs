//! Property-based fuzzing of what the transfer server parses from the network before any
//! check: the URL path (`http_paths::parse`), the `Range` header (`http_paths::parse_range`)
//! and the `Authorization` header (through the server, below). Arbitrary input never panics
//! and yields bounded output (a route's parts are no longer than the path, every file path is
//! a valid store-relative path); every valid route and range round-trips through the client's
//! builders. Bounded cases (`PROPTEST_CASES` raises them).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use ferry_agent::store::validate_relative;
use ferry_agent::transfer::http_paths::{
    self, Route, RouteError, file_path, is_dns1123_label, is_dns1123_subdomain, manifest_path,
    parse_range,
};
use proptest::prelude::*;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048),
        ..ProptestConfig::default()
    }
}

/// Paths shaped like transfer URLs, with the characters that matter to a parser.
fn url_like() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("/".to_string()),
        Just("..".to_string()),
        Just("%2e".to_string()),
        Just("%2F".to_string()),
        Just("%".to_string()),
        Just("%00".to_string()),
        Just("%zz".to_string()),
        Just("%c3%a9".to_string()),
        Just("%ff".to_string()),
        Just(".partial".to_string()),
        Just("manifest".to_string()),
        Just("files/".to_string()),
        "[a-z0-9.-]{0,12}",
        "\\PC{0,4}",
    ];
    proptest::collection::vec(piece, 0..24)
        .prop_map(|parts| format!("{}{}", http_paths::PREFIX, parts.concat()))
}

/// A DNS-1123 label of 1..=63 characters.
fn label() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
}

/// A file path of the kind a manifest lists (any UTF-8 in its segments but `/`).
fn rel_path() -> impl Strategy<Value = String> {
    proptest::collection::vec("[^/\u{0}]{1,16}", 1..5).prop_map(|segs| segs.join("/"))
}

fn check_route(path: &str, route: &Route) {
    let (ns, request, file) = match route {
        Route::Manifest { namespace, request } => (namespace, request, None),
        Route::File {
            namespace,
            request,
            path,
        } => (namespace, request, Some(path)),
    };
    assert!(is_dns1123_label(ns), "{path}: namespace {ns:?}");
    assert!(is_dns1123_subdomain(request), "{path}: request {request:?}");
    if let Some(file) = file {
        // Percent-decoding only shrinks: a route is never larger than its URL.
        assert!(file.len() <= path.len(), "{path}: {file:?}");
        assert!(validate_relative(file).is_ok(), "{path}: file {file:?}");
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_path_parses_or_is_refused_without_panicking(path in "\\PC{0,300}") {
        if let Ok(route) = http_paths::parse(&path) {
            check_route(&path, &route);
        }
    }

    #[test]
    fn url_like_paths_yield_only_safe_routes(path in url_like()) {
        match http_paths::parse(&path) {
            Ok(route) => check_route(&path, &route),
            Err(RouteError::Bad(reason)) => prop_assert!(reason.len() < 2 * path.len() + 200),
            Err(RouteError::NoRoute) => {}
        }
    }

    #[test]
    fn valid_routes_round_trip(ns in label(), request in label(), file in rel_path()) {
        prop_assume!(validate_relative(&file).is_ok());
        prop_assert_eq!(
            http_paths::parse(&manifest_path(&ns, &request)),
            Ok(Route::Manifest { namespace: ns.clone(), request: request.clone() })
        );
        prop_assert_eq!(
            http_paths::parse(&file_path(&ns, &request, &file)),
            Ok(Route::File { namespace: ns, request, path: file })
        );
    }

    #[test]
    fn any_range_header_parses_or_is_refused(value in proptest::collection::vec(any::<u8>(), 0..64)) {
        if let Some(start) = parse_range(&value) {
            // Only `bytes=<digits>-` is accepted, and it says exactly that number.
            prop_assert_eq!(format!("bytes={start}-").into_bytes(), value.clone());
        }
    }

    #[test]
    fn valid_ranges_round_trip(start in any::<u64>()) {
        prop_assert_eq!(parse_range(format!("bytes={start}-").as_bytes()), Some(start));
        prop_assert_eq!(parse_range(format!("bytes={start}-{start}").as_bytes()), None);
        prop_assert_eq!(parse_range(format!("bytes=-{start}").as_bytes()), None);
    }
}
