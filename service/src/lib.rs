//! The process plumbing both ferry binaries share, so that the operator and the agent behave
//! alike to the kubelet and to Prometheus: the `/metrics` `/healthz` `/readyz` endpoints
//! ([`endpoints`]), the tracing set-up ([`logging`]) and the shutdown signals ([`signals`]).
//! See `ARCHITECTURE.md` ("Crates and layers").
//!
//! Both binaries export with the `prometheus` crate in its text format 0.0.4 (see
//! [`endpoints::CONTENT_TYPE`]); [`endpoints::Exposition`] is what a metrics registry gives.

pub mod endpoints;
pub mod logging;
pub mod signals;

pub use endpoints::{Endpoints, Exposition, ServiceError};
pub use logging::{LogFormat, init_tracing};
pub use signals::shutdown_signal;
