//! Forwards `tracing` events to CRIU's own log (`print_on_level`, always with a `"%s"`
//! format), so plugin lines land in CRIU's `-o` log, prefixed `ferry:`. Outside CRIU (the
//! plugin-host harness) lines go to stderr.
//!
//! CRIU's logger formats into one static buffer and is not thread-safe, so only the thread
//! that runs hooks writes to it. Lines from the plugin's worker threads are queued and
//! written by the next hook (and at the latest by `fini`).

use std::io;
use std::sync::{Mutex, Once, OnceLock};
use std::thread::ThreadId;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::sys::criu::criu;

// CRIU's levels (criu/include/log.h).
const LOG_ERROR: u32 = 1;
const LOG_WARN: u32 = 2;
const LOG_INFO: u32 = 3;
const LOG_DEBUG: u32 = 4;

/// The thread CRIU calls hooks on (the first thread that called [`init`]).
static HOOK_THREAD: OnceLock<ThreadId> = OnceLock::new();
/// Lines from other threads, waiting for the hook thread.
static PENDING: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

fn on_hook_thread() -> bool {
    HOOK_THREAD.get() == Some(&std::thread::current().id())
}

/// Writes the lines queued by worker threads; call from the hook thread.
pub fn flush() {
    if !on_hook_thread() {
        return;
    }
    let lines: Vec<(u32, String)> = match PENDING.lock() {
        Ok(mut p) => p.drain(..).collect(),
        Err(_) => return,
    };
    for (level, line) in lines {
        emit(level, &line);
    }
}

fn emit(level: u32, line: &str) {
    if !criu().print(level, line) {
        eprint!("{line}");
    }
}

/// Installs the forwarding subscriber once per process (idempotent; keeps an existing one).
pub fn init() {
    let _ = HOOK_THREAD.set(std::thread::current().id());
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_writer(CriuLog)
            .with_max_level(Level::DEBUG)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_level(false)
            .try_init();
    });
}

/// Makes one [`LineWriter`] per event.
#[derive(Clone, Copy)]
struct CriuLog;

/// Buffers one formatted event and emits it on drop.
struct LineWriter {
    level: u32,
    buf: Vec<u8>,
}

impl io::Write for LineWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end();
        if text.is_empty() {
            return;
        }
        let tag = match self.level {
            LOG_ERROR => "Error ",
            LOG_WARN => "Warn ",
            _ => "",
        };
        let line = format!("{tag}ferry: {text}\n");
        if on_hook_thread() || !criu().in_criu() {
            flush();
            emit(self.level, &line);
        } else if let Ok(mut p) = PENDING.lock() {
            p.push((self.level, line));
        }
    }
}

impl<'a> MakeWriter<'a> for CriuLog {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter {
            level: LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        let level = match *meta.level() {
            Level::ERROR => LOG_ERROR,
            Level::WARN => LOG_WARN,
            Level::INFO => LOG_INFO,
            _ => LOG_DEBUG,
        };
        LineWriter {
            level,
            buf: Vec::new(),
        }
    }
}
