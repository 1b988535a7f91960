//! Where a running pull stands: its report so far, the bytes done of the total, and the
//! caller's progress callback, updated together as data lands or is found on disk.

use super::spec::PullReport;

/// A pull's running tally.
pub(super) struct Tally<F> {
    /// The report being filled in.
    pub(super) report: PullReport,
    /// Bytes of the image on disk so far (received or resumed).
    pub(super) done: u64,
    /// Bytes of the image.
    pub(super) total: u64,
    /// Called with `(done, total)` as data lands.
    pub(super) progress: F,
}

impl<F: FnMut(u64, u64) + Send> Tally<F> {
    /// `len` bytes arrived over the network.
    pub(super) fn received(&mut self, len: u64) {
        self.done += len;
        self.report.bytes_transferred += len;
        (self.progress)(self.done, self.total);
    }

    /// A whole file was already on disk and matches: it is not fetched.
    pub(super) fn already_complete(&mut self, size: u64) {
        self.report.bytes_resumed += size;
        self.done += size;
        (self.progress)(self.done, self.total);
    }
}
