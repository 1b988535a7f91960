//! The harness's error type. Messages say what failed, the values involved and what to do.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Everything that can go wrong while starting or driving a test cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A binary the harness runs is not where the build script puts it.
    #[error(
        "{binary} not found at {}: build the e2e cluster binaries with `{}` \
         (10-15 minutes cold on 2 cores, seconds once cached), \
         or point FERRY_K8S_BIN at a directory that holds them",
        path.display(),
        build_command
    )]
    BinaryMissing {
        /// The binary's file name (`kube`, `etcd`, `kwok`).
        binary: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The command that builds it.
        build_command: String,
    },

    /// kubectl is not installed.
    #[error(
        "kubectl not found (looked at $FERRY_KUBECTL, {} and on PATH): run `scripts/install-deps` as root",
        default.display()
    )]
    KubectlMissing {
        /// The path `scripts/install-deps` installs it to.
        default: PathBuf,
    },

    /// A file or directory operation failed.
    #[error("{what} ({}): {source}", path.display())]
    Io {
        /// What the harness was doing.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// Spawning a process failed.
    #[error("could not start {name} ({}): {source}", program.display())]
    Spawn {
        /// The component (`etcd`, `kube-apiserver`, ...).
        name: String,
        /// The program that was run.
        program: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// No free loopback port could be reserved.
    #[error("could not reserve a free port on 127.0.0.1: {0}")]
    Port(#[source] std::io::Error),

    /// Certificate or key generation failed.
    #[error("generating {what}: {source}")]
    Certificate {
        /// Which certificate or key.
        what: String,
        /// The underlying error.
        #[source]
        source: rcgen::Error,
    },

    /// A component exited while the harness was waiting for it.
    #[error("{name} exited with {status} while starting; last lines of {}:\n{log_tail}", log.display())]
    Exited {
        /// The component.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// Its log file.
        log: PathBuf,
        /// The last lines of its log.
        log_tail: String,
    },

    /// Something did not happen in time.
    #[error("{what} did not happen within {after:?}; {detail}")]
    Timeout {
        /// What the harness waited for.
        what: String,
        /// How long it waited.
        after: Duration,
        /// The last observation and where to look (log tails).
        detail: String,
    },

    /// A kubectl command failed.
    #[error("`kubectl {args}` failed with {status}: {stderr}")]
    Kubectl {
        /// The arguments (space-joined).
        args: String,
        /// How it exited.
        status: ExitStatus,
        /// Its standard error.
        stderr: String,
    },

    /// kubectl printed something the harness could not parse.
    #[error("`kubectl {args}` printed output that is not the expected JSON: {source}")]
    KubectlOutput {
        /// The arguments (space-joined).
        args: String,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },

    /// This machine cannot run real kubelet + containerd nodes (checked before starting any).
    #[error("real kubelet + containerd nodes cannot run on this machine: {reason}")]
    RealNodesUnsupported {
        /// The missing capability.
        reason: String,
    },

    /// An agent's node-bound identity (Pod, token, kubeconfig) is not what it must be.
    #[error("the agent identity for node {node}: {what}")]
    AgentIdentity {
        /// The node the identity is for.
        node: String,
        /// What is wrong.
        what: String,
    },

    /// A real node could not be set up or driven.
    #[error("real node {node}: {what}")]
    Node {
        /// The node (`ferry-node-a`; `-` before a node is named).
        node: String,
        /// What went wrong.
        what: String,
    },
}

/// Shorthand for results of harness operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attach a path and a description to an I/O error.
pub(crate) trait IoContext<T> {
    fn io_context(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn io_context(self, what: &'static str, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::Io {
            what,
            path: path.into(),
            source,
        })
    }
}
