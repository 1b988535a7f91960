//! Every `unsafe` of the AMDGPU backend: the KFD ioctls ([`kfd`]), libdrm_amdgpu loaded at run
//! time ([`libdrm`], with the header mirrors in [`libdrm_abi`]), the page-aligned host staging
//! buffer ([`staging`]), and CRIU's `find_unused_fd_pid` export and the named semaphore
//! ([`os`]). Each item is a safe function or an RAII handle; the rest of the backend is safe
//! Rust and imports them through the re-exports here.
//!
//! Struct sizes are pinned with `const _: () = assert!(...)`; sizes, field offsets and ioctl
//! numbers are also compared against the C headers by `tests/amdgpu_uapi.rs`, which compiles
//! a small C program at test time.

pub mod ioc;
pub mod kfd;
pub mod libdrm;
pub mod libdrm_abi;
pub mod os;
pub mod staging;

pub use ioc::{io_none, ioc, ior, iow, iowr};
pub use kfd::*;
pub use libdrm::*;
pub use libdrm_abi::*;
pub use os::{criu_find_unused_fd, ensure_named_semaphore};
pub use staging::{HostBuffer, page_size};
