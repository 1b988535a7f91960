//! The time limit on a connection's socket: [`IdleTimeout`] fails a read or write that has
//! waited longer than the limit since the connection last moved a byte, so a client that
//! stops reading (or never sends) loses its connection instead of holding it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::limits::TransferStats;

/// A stream whose pending reads and writes fail with `TimedOut` once nothing has moved in
/// either direction for `timeout` (progress either way counts: a client reading a large
/// response sends nothing meanwhile).
pub(super) struct IdleTimeout<S> {
    inner: S,
    timeout: Duration,
    last: Instant,
    sleep: Pin<Box<Sleep>>,
    stats: Arc<TransferStats>,
}

impl<S> IdleTimeout<S> {
    /// Wraps `inner`; `stats.idle_timeouts` counts the connections cut.
    pub(super) fn new(inner: S, timeout: Duration, stats: Arc<TransferStats>) -> Self {
        let last = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            last,
            sleep: Box::pin(tokio::time::sleep_until(last + timeout)),
            stats,
        }
    }

    /// Called when the inner stream is not ready: `Ready(err)` once the limit has passed.
    fn expired(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let deadline = self.last + self.timeout;
        // Reset lazily: progress only moves `last`, the timer catches up here.
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        if Instant::now() >= deadline || self.sleep.as_mut().poll(cx).is_ready() {
            self.stats.idle_timeouts.fetch_add(1, Ordering::Relaxed);
            return Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer moved no data within the idle timeout",
            ));
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleTimeout<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    self.last = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending => self.expired(cx).map(Err),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.expired(cx).map(Err),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_flush(cx) {
            Poll::Pending => self.expired(cx).map(Err),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match Pin::new(&mut self.inner).poll_shutdown(cx) {
            Poll::Pending => self.expired(cx).map(Err),
            ready => ready,
        }
    }
}
