//! ferry's shared API: CRD types, names and the CRIU plugin stats format. No I/O.

pub mod stats;

/// The API group of every ferry CRD.
pub const GROUP: &str = "ferry.dev";
/// The API version of every ferry CRD.
pub const VERSION: &str = "v1alpha1";
