//! ferry's CRIU plugin.
//!
//! CRIU `dlopen`s the `cdylib` and finds [`abi`]'s `CR_PLUGIN_DESC`. Every hook goes through
//! one guard (panic boundary, error → `-errno`) into safe Rust. Layers, top to bottom (a
//! module only imports from layers below it):
//!
//! - [`abi`]: the C entry point (descriptor, hook functions, panic guard);
//! - [`state`]: the one `PluginState` and the hooks' dispatch to the backends;
//! - [`engine`]: the vendor-neutral parallel restore; [`backends`]: the devices (`sim`,
//!   `amdgpu`, `nvidia`), each with its own settings;
//! - [`contract`]: what hooks, backends and engine agree on (stages, claims, the backend
//!   trait, refill, copy plans, image framing);
//! - [`host`] (image files, inventory, fdstore), [`log`] (tracing into CRIU's log), [`sys`]
//!   (CRIU's exports and process calls, the unsafe edge), [`config`] (plugin-wide settings),
//!   [`error`].
//!
//! Configuration comes from environment variables only (names in
//! [`ferry_api::plugin_env`]); CRIU's internal `opts` struct is never read because its layout
//! is private to each CRIU build.

pub mod abi;
pub mod backends;
pub mod config;
pub mod contract;
pub mod engine;
pub mod error;
pub mod host;
pub mod log;
pub mod state;
pub mod sys;

pub use error::{PluginError, Result};

/// The name recorded in CRIU's inventory on dump and checked on restore.
pub const PLUGIN_NAME: &str = "ferry";
