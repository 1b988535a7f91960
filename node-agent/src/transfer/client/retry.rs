//! Retrying a request that failed for a transient reason: up to [`MAX_ATTEMPTS`] in a row
//! without progress, with exponential backoff, on a fresh connection.

use std::time::Duration;

use tracing::warn;

use super::connection::Connection;
use crate::transfer::error::{Result, TransferError};

/// Attempts in a row without progress before a file (or the manifest) gives up.
pub const MAX_ATTEMPTS: u32 = 5;
/// First retry delay; doubled per failed attempt in a row.
const BACKOFF: Duration = Duration::from_millis(200);

/// The pause after `failures` failed attempts in a row (at least 1).
fn delay(failures: u32) -> Duration {
    BACKOFF * 2u32.saturating_pow(failures.saturating_sub(1))
}

/// Waits before the next attempt, or gives up with `err` when it is not transient or after
/// [`MAX_ATTEMPTS`] in a row. The next attempt reconnects.
pub(super) async fn backoff(
    conn: &mut Connection,
    failures: u32,
    err: TransferError,
) -> Result<()> {
    if !err.is_transient() || failures >= MAX_ATTEMPTS {
        return Err(err);
    }
    conn.reset();
    let delay = delay(failures);
    warn!(error = %err, attempt = failures, delay_ms = delay.as_millis() as u64, "transfer attempt failed; retrying");
    tokio::time::sleep(delay).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_delay_doubles_per_failure_in_a_row() {
        let ms: Vec<u128> = (1..=MAX_ATTEMPTS).map(|f| delay(f).as_millis()).collect();
        assert_eq!(ms, [200, 400, 800, 1600, 3200]);
        assert_eq!(delay(0), BACKOFF);
    }
}
