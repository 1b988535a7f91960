//! The supervisor's log: one structured line per event on stderr, which is the container's
//! log (`ferry-supervisor: restored pid=17`). Writing never panics: a closed stderr is
//! ignored (`eprintln!` would panic).

use std::io::Write;

/// Writes `ferry-supervisor: <message>` and a newline to stderr, ignoring write errors.
pub fn line(args: std::fmt::Arguments<'_>) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "ferry-supervisor: {args}");
}

/// `say!("restored pid={pid}")`: a log line (see [`line`]).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => { $crate::log::line(format_args!($($arg)*)) };
}
