//! The agent's side of the cluster protocols it shares with the operator: its Lease
//! ([`lease`]: readiness and where its transfer server listens) and the transfer grants the
//! operator mints as Secrets ([`grants`]).
//!
//! Depends on the transfer layer (grants are its [`crate::transfer::GrantSource`]), never the
//! other way round.

pub mod grants;
pub mod lease;
