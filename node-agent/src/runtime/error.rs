//! The runtime layer's error: what went wrong running CRIU, runc, `ctr` or the kubelet's
//! checkpoint API. The executor wraps it into the task's failure reason; its text is what an
//! operator reads in the NodeTask's status, so it names the tool, CRIU's own error lines and
//! the kept log.

use std::path::PathBuf;
use std::time::Duration;

use ferry_api::stats::StatsError;

use crate::store::StoreError;

/// What went wrong checkpointing or restoring.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// CRIU (directly or under runc) failed; `message` holds CRIU's last error lines.
    #[error("{tool} {op} failed ({status}): {message} (log: {})", log.display())]
    Tool {
        /// `criu` or `runc`.
        tool: &'static str,
        /// `dump`, `restore`, `checkpoint`, ...
        op: &'static str,
        /// The exit status, as text.
        status: String,
        /// CRIU's error lines (and runc's own error, for runc), one line.
        message: String,
        /// CRIU's log (kept: next to the staged image, or in the restore directory).
        log: PathBuf,
    },
    /// A tool could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The binary.
        program: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A tool ran past its limit and was killed.
    #[error("{what} did not finish within {after:?} and was killed")]
    Timeout {
        /// What ran.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The task was cancelled (deleted, past its deadline, agent stopping): the running tool
    /// was killed with its process group, or none was started.
    #[error("{what} was cancelled and killed")]
    Cancelled {
        /// What ran (or was about to run).
        what: String,
    },
    /// The request cannot be carried out as asked.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The kubelet's checkpoint API failed.
    #[error("kubelet checkpoint API: {0}")]
    Kubelet(String),
    /// The plugin's stats file is there but unreadable.
    #[error("plugin stats {}: {source}", path.display())]
    Stats {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: StatsError,
    },
    /// The image store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// I/O, with what was being done.
    #[error("{context}: {source}")]
    Io {
        /// What and where.
        context: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Result of the runtime modules.
pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// `map_err` adapter: an I/O error with what was being done.
pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RuntimeError {
    let context = context.into();
    move |source| RuntimeError::Io { context, source }
}
