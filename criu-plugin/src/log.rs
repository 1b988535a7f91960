//! Forwards `tracing` events to CRIU's own log (`print_on_level`, always with a `"%s"`
//! format), so plugin lines land in CRIU's `-o` log, prefixed `ferry:`. Outside CRIU (the
//! plugin-host harness) lines go to stderr.

use std::io;
use std::sync::Once;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

use crate::abi::criu;

// CRIU's levels (criu/include/log.h).
const LOG_ERROR: u32 = 1;
const LOG_WARN: u32 = 2;
const LOG_INFO: u32 = 3;
const LOG_DEBUG: u32 = 4;

/// Installs the forwarding subscriber once per process (idempotent; keeps an existing one).
pub fn init() {
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
        if !criu().print(self.level, &line) {
            eprint!("{line}");
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
