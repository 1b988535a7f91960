//! Image transfer between agents (ARCHITECTURE.md §4): the target agent pulls a published image
//! from the source agent over HTTPS, streaming with bounded memory, resuming by file and
//! offset, and verifying every file's SHA-256 before the image is published in its store (and
//! so before anything can be restored from it).
//!
//! - `error`: [`TransferError`].
//! - [`tls`]: each agent's self-signed certificate, pinned by fingerprint both ways (mutual TLS).
//! - [`token`]: the per-transfer bearer token, its grant and where the source looks it up.
//! - [`http_paths`]: the URL layout and header grammar both ends share.
//! - [`server`]: the source side, serving images from a [`crate::store::Store`].
//! - [`client`]: the target side, [`client::pull`].
//!
//! The modules import the store and each other downwards only (`client` and `server` use
//! `http_paths`, `token` and `tls`; nothing here imports `crate::cluster`).
//!
//! Protocol (HTTP/1.1 over TLS 1.3):
//! `GET /v1/images/{namespace}/{request}/manifest` returns the manifest bytes as stored with
//! `X-Ferry-Image-Digest`; `GET /v1/images/{namespace}/{request}/files/{path}` with an optional
//! `Range: bytes=N-` streams one file of the manifest. Errors are a status, an
//! `X-Ferry-Error` code and a one-line plain-text reason.

pub mod client;
mod error;
pub mod http_paths;
pub mod server;
pub mod tls;
pub mod token;

pub use client::{ClientTransport, PullReport, PullSpec, pinned_digest, pull, pull_with_transport};
pub use error::{Result, TransferError};
pub use server::{ServerLimits, ServerTransport, TransferServer, TransferStats};
pub use tls::{NodeIdentity, fingerprint_hex, peer_fingerprint, pinned_client_config};
pub use token::{Grant, GrantLookupError, GrantSource, StaticGrants, Token};
