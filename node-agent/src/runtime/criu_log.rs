//! Reading what CRIU leaves in its log: the error lines that go into a task's message, and the
//! instant the tasks were frozen (the start of the workload's downtime).

use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;

/// How many of CRIU's error lines go into a task's message.
pub const ERROR_LINES: usize = 3;

/// CRIU's error lines in `log`: lines with `Error (` (CRIU's `pr_err`, `Error (file:line): …`)
/// or `Error:`, the timestamp prefix stripped.
pub fn error_lines(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("Error (") || l.contains("Error:"))
        .map(|l| strip_timestamp(l).trim().to_string())
        .collect()
}

/// The last `n` error lines joined into one line for a task's message. Falls back to the
/// log's last line when CRIU printed no error line.
pub fn error_summary(log: &str, n: usize) -> String {
    let lines = error_lines(log);
    if lines.is_empty() {
        return log
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|l| strip_timestamp(l).trim().to_string())
            .unwrap_or_else(|| "no CRIU log".to_string());
    }
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// [`error_summary`] of the log file at `path`.
pub fn log_errors(path: &Path) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => error_summary(&text, ERROR_LINES),
        Err(e) => format!("no CRIU log at {} ({e})", path.display()),
    }
}

fn strip_timestamp(line: &str) -> &str {
    // `(00.123456) text`
    match line.strip_prefix('(').and_then(|r| r.split_once(") ")) {
        Some((ts, rest)) if ts.bytes().all(|b| b.is_ascii_digit() || b == b'.') => rest,
        _ => line,
    }
}

/// Seconds since CRIU started (the log's timestamps) at which it began freezing the tasks:
/// the cgroup freezer (`freezing cgroup …`, containers) or ptrace seizing (`SEIZE`/`Seized
/// task`, process trees), whichever comes first.
pub fn freeze_offset(log: &str) -> Option<Duration> {
    log.lines().find_map(|l| {
        let rest = l.strip_prefix('(')?;
        let (ts, text) = rest.split_once(") ")?;
        let text = text.trim_start();
        let freezing = text.starts_with("freezing cgroup")
            || text.starts_with("SEIZE ")
            || text.starts_with("Seized task")
            || text.starts_with("seized task");
        if !freezing {
            return None;
        }
        let secs: f64 = ts.trim().parse().ok()?;
        Duration::try_from_secs_f64(secs).ok()
    })
}

/// When the tasks were frozen: the log's clock origin plus the log's [`freeze_offset`].
///
/// CRIU's log timestamps count from when it set up the log, which is when it created the log
/// file, so the origin is the log file's birth time (`statx` btime); where the filesystem has
/// none, `started` (the wall clock when the tool was started: for runc that is early by runc's
/// own setup before it starts CRIU, tens of ms). Without a freeze line, the origin itself.
pub fn frozen_at(started: Timestamp, log: &Path) -> Timestamp {
    let origin = log_birth(log)
        // A birth time before the run started would be a stale file: ignore it.
        .filter(|b| {
            *b >= started
                .checked_sub(jiff::SignedDuration::from_secs(1))
                .unwrap_or(started)
        })
        .unwrap_or(started);
    let offset = std::fs::read_to_string(log)
        .ok()
        .and_then(|text| freeze_offset(&text));
    match offset.and_then(|o| jiff::SignedDuration::try_from(o).ok()) {
        Some(o) => origin.checked_add(o).unwrap_or(origin),
        None => origin,
    }
}

/// The birth time of `path`, where the filesystem records one.
fn log_birth(path: &Path) -> Option<Timestamp> {
    let st = rustix::fs::statx(
        rustix::fs::CWD,
        path,
        rustix::fs::AtFlags::empty(),
        rustix::fs::StatxFlags::BTIME,
    )
    .ok()?;
    if st.stx_mask & rustix::fs::StatxFlags::BTIME.bits() == 0 {
        return None;
    }
    Timestamp::new(st.stx_btime.tv_sec, st.stx_btime.tv_nsec as i32).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const LOG: &str = "\
(00.000000) CRIU run id = 1
(00.010000) Dumping processes (pid: 375 comm: sh)
(00.129561) freezing cgroup /sys/fs/cgroup/freezer/c1: 100 x 100ms attempts, timeout: 10s
(00.229942) SEIZE 375 (comm sh): success
(00.072150) Error (criu/util.c:1534): rlimit: Can't setup RLIMIT_NOFILE for self
(00.189418) Error (criu/files-reg.c:1790): Can't lookup mount=27 for fd=1 path=/tmp/out
(00.189445) Error (criu/cr-dump.c:1545): Dump files (pid: 31930) failed with -1
(00.283560) Error (criu/cr-dump.c:1975): Dumping FAILED.
";

    #[test]
    fn the_last_error_lines_make_one_line_without_timestamps() {
        assert_eq!(error_lines(LOG).len(), 4);
        let s = error_summary(LOG, 3);
        assert_eq!(
            s,
            "Error (criu/files-reg.c:1790): Can't lookup mount=27 for fd=1 path=/tmp/out | \
             Error (criu/cr-dump.c:1545): Dump files (pid: 31930) failed with -1 | \
             Error (criu/cr-dump.c:1975): Dumping FAILED."
        );
        assert!(!s.contains('\n'));
        assert_eq!(
            error_summary("(00.1) fine\n(00.2) last words\n", 3),
            "last words"
        );
        assert_eq!(error_summary("", 3), "no CRIU log");
    }

    #[test]
    fn the_freeze_offset_is_the_first_freezer_or_seize_line() {
        assert_eq!(freeze_offset(LOG), Some(Duration::from_micros(129_561)));
        assert_eq!(
            freeze_offset("(01.500000) Seized task 7, state 1\n"),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(freeze_offset("(00.1) nothing\n"), None);
    }

    #[test]
    fn frozen_at_counts_from_the_log_file_s_birth() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("dump.log");
        let before = Timestamp::now();
        std::fs::write(
            &log,
            "(00.000000) start\n(00.250000) SEIZE 7 (comm x): success\n",
        )
        .unwrap();
        let after = Timestamp::now();
        let f = frozen_at(before, &log);
        let lo = before
            .checked_add(jiff::SignedDuration::from_millis(240))
            .unwrap();
        let hi = after
            .checked_add(jiff::SignedDuration::from_millis(260))
            .unwrap();
        assert!(f >= lo && f <= hi, "{f} not in [{lo}, {hi}]");
        // No log: the start.
        assert_eq!(frozen_at(before, &tmp.path().join("none")), before);
    }
}
