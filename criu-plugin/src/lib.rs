//! ferry's CRIU plugin.
//!
//! CRIU `dlopen`s the `cdylib` and finds [`abi`]'s `CR_PLUGIN_DESC`. Every hook goes through
//! one guard (panic boundary, error → `-errno`) into safe Rust: [`state`] holds the one
//! `PluginState`, [`engine`] the vendor-neutral parallel restore, [`backends`] the devices
//! (`sim`, `amdgpu`, `nvidia`).
//!
//! Configuration comes from environment variables only (see [`config`]); CRIU's internal
//! `opts` struct is never read because its layout is private to each CRIU build.

pub mod abi;
pub mod backends;
pub mod config;
pub mod engine;
pub mod error;
pub mod host;
pub mod log;
pub mod state;

pub use error::{PluginError, Result};

/// The name recorded in CRIU's inventory on dump and checked on restore.
pub const PLUGIN_NAME: &str = "ferry";
