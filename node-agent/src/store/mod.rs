//! The image store: one directory per image under a root (`/var/lib/ferry/checkpoints` or a
//! PVC mount), each with a `manifest.json` that lists every file with its size and SHA-256.
//!
//! Images are written into `<location>.partial`, fsynced and renamed into place with
//! `RENAME_NOREPLACE`, so a reader never sees half an image and a published image is never
//! overwritten. Every path that comes from outside (a CR's `image.location`, a file name in a
//! manifest received from another node) goes through [`validate_relative`] and a symlink check,
//! so nothing resolves outside the store's root.
//!
//! One concern per module, lowest first (each imports only those above it):
//! - `error`: [`StoreError`].
//! - `digest`: SHA-256 in hex, of bytes and files.
//! - `paths`: the on-disk names, [`validate_relative`], symlink-safe joins and opens.
//! - `marker`: the `.ferry-store` marker that makes a directory a store.
//! - `manifest`: [`Manifest`] and what it says about an image.
//! - [`in_use`]: images a task holds or the server used a moment ago, which GC spares.
//! - `image`: a published [`Image`] and its verification.
//! - `staging`: writing and publishing an image ([`Staging`]).
//! - `root`: one [`Store`].
//! - `entries`: what a store holds ([`Store::list`]).
//! - `registry`: the agent's stores ([`Stores`]).
//! - `gc`: [`GcPolicy`], [`Store::gc`] and the periodic [`GcLoop`].

mod digest;
mod entries;
mod error;
mod gc;
mod image;
pub mod in_use;
mod manifest;
mod marker;
mod paths;
mod registry;
mod root;
mod staging;
#[cfg(test)]
mod tests;

pub use digest::{hash_file, hash_reader, hex, sha256_hex};
pub use entries::Entry;
pub use error::{Result, StoreError};
pub use gc::{GcFollowUp, GcLoop, GcPolicy, GcReport, GcReporter};
pub use image::Image;
pub use manifest::{
    FileEntry, ImageKind, ImageMeta, ImageSource, MANIFEST_VERSION, MAX_MANIFEST_BYTES, Manifest,
    RawJson,
};
pub use paths::{
    MANIFEST_FILE, MARKER_FILE, PARTIAL_SUFFIX, QUARANTINE_DIR, validate_location,
    validate_relative,
};
pub use registry::Stores;
pub use root::Store;
pub use staging::Staging;
