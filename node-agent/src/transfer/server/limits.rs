//! The server's limits, its counters, the log throttle ([`Throttle`]: a flood of identical
//! refusals is one log line per period with a count) and what every connection shares;
//! imported by the other server modules, importing none of them.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::store::Stores;
use crate::transfer::token::GrantSource;

/// Bytes per read from disk (and per body frame).
pub const CHUNK: usize = 1 << 20;
/// Chunks read ahead per response.
pub const CHUNKS_IN_FLIGHT: usize = 4;
/// At most one log line per this period for each kind of refusal.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The server's resource limits.
#[derive(Clone, Copy, Debug)]
pub struct ServerLimits {
    /// Connections served at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// How long a client may take for the TLS handshake.
    pub handshake_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// Longest time a connection may move no data in either direction while the server waits
    /// on it (a reader that stopped reading, a client that sends nothing).
    pub idle_timeout: Duration,
    /// Blocking file reads at once, server-wide.
    pub disk_readers: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 256,
            handshake_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            disk_readers: 16,
        }
    }
}

/// Counters for the agent's metrics.
#[derive(Debug, Default)]
pub struct TransferStats {
    /// File and manifest bytes handed to connections.
    pub bytes_served: AtomicU64,
    /// Requests answered (any status).
    pub requests: AtomicU64,
    /// Requests refused for a missing, wrong or expired token.
    pub auth_failures: AtomicU64,
    /// Connections accepted.
    pub connections: AtomicU64,
    /// Connections whose TLS handshake failed or timed out (no client certificate, …).
    pub handshake_failures: AtomicU64,
    /// Connections closed on accept because [`ServerLimits::max_connections`] were open.
    pub connections_refused: AtomicU64,
    /// Connections cut for moving no data within [`ServerLimits::idle_timeout`].
    pub idle_timeouts: AtomicU64,
}

/// What every connection of one server shares.
pub(super) struct Shared {
    pub(super) stores: Stores,
    pub(super) grants: Arc<dyn GrantSource>,
    pub(super) stats: Arc<TransferStats>,
    pub(super) limits: ServerLimits,
    pub(super) disk_pool: Arc<Semaphore>,
    pub(super) auth_log: Throttle,
    pub(super) lookup_log: Throttle,
    pub(super) connection_log: Throttle,
}

/// At most one log line per `every` for a kind of event that may come in floods.
pub(super) struct Throttle {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    /// One line per `every`.
    pub(super) fn new(every: Duration) -> Self {
        Throttle {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Counts one event; `Some(n)`: log now, for the `n` events since the last line.
    pub(super) fn hit(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1 += 1;
        let due = state.0.is_none_or(|at| at.elapsed() >= self.every);
        if !due {
            return None;
        }
        let n = state.1;
        *state = (Some(Instant::now()), 0);
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throttle_logs_the_first_event_then_counts() {
        let throttle = Throttle::new(Duration::from_secs(3600));
        assert_eq!(throttle.hit(), Some(1));
        for _ in 0..100 {
            assert_eq!(throttle.hit(), None);
        }
        let quick = Throttle::new(Duration::ZERO);
        assert_eq!(quick.hit(), Some(1));
        assert_eq!(quick.hit(), Some(1));
    }
}
