//! The plugin's unsafe edge with its host process (besides the hook entry points in
//! [`crate::abi`] and the device ioctls in the backends): CRIU's exported functions and a few
//! process-wide libc calls, each behind a safe function.

pub mod criu;
pub mod process;
