//! The plugin's one error type. `abi` turns it into `-errno` for CRIU, after logging it.

use std::io;

/// Everything a hook can fail with. Messages say what failed, with the values involved.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    /// An image file, a command on the restore socket or a setting is malformed.
    #[error("{0}")]
    Invalid(String),
    /// A device or its driver refused an operation.
    #[error("{0}")]
    Device(String),
    /// The device copy failed or was aborted; the restore must fail.
    #[error("{0}")]
    Copy(String),
    /// A wait ran past its bound (the peer hung or died).
    #[error("{0}")]
    Timeout(String),
}

impl PluginError {
    /// Wraps an `io::Error` with what was being done.
    pub fn io(what: impl Into<String>, source: io::Error) -> Self {
        PluginError::Io {
            what: what.into(),
            source,
        }
    }

    /// Shorthand for an [`PluginError::Invalid`] built from a message.
    pub fn invalid(msg: impl Into<String>) -> Self {
        PluginError::Invalid(msg.into())
    }

    /// The positive errno CRIU receives (negated) for this error.
    pub fn errno(&self) -> i32 {
        match self {
            PluginError::Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            PluginError::Invalid(_) => libc::EINVAL,
            PluginError::Device(_) | PluginError::Copy(_) => libc::EIO,
            PluginError::Timeout(_) => libc::ETIMEDOUT,
        }
    }
}

impl From<rustix::io::Errno> for PluginError {
    fn from(e: rustix::io::Errno) -> Self {
        PluginError::io("system call", io::Error::from(e))
    }
}

/// `Result` with [`PluginError`] as the default error.
pub type Result<T, E = PluginError> = std::result::Result<T, E>;

/// Adds context to `io::Result`s.
pub trait IoContext<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| PluginError::io(what(), e))
    }
}
