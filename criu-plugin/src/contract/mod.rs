//! What the hooks, the backends and the restore engine agree on: the stage of the CRIU run,
//! the [`Backend`] trait with the context its hooks get and the answers they give, the copy
//! plan a backend hands to [`Refill`], the [`CopyEngine`] that writes device memory, the image
//! framing every backend writes, and the narrow [`BackendLookup`] the engine sees.
//!
//! This layer imports nothing above it (no `abi`, `state`, `engine` or `backends`): only the
//! error type, the plugin-wide settings and the host services, so every other layer can
//! depend on it without a cycle.

pub mod backend;
pub mod backend_id;
pub mod copy_engine;
pub mod images;
pub mod lookup;
pub mod plan;
pub mod stage;

pub use backend::{Backend, Claim, Ctx, Refill, VmaUpdate};
pub use backend_id::BackendId;
pub use copy_engine::CopyEngine;
pub use lookup::BackendLookup;
pub use plan::{CopyPlan, PlanBuffer, PlanDevice};
pub use stage::Stage;
