//! Messages on stderr (an edge): one line each, `tcptrace: ` first, escaped
//! by the core's one rule ([`tcptrace_core::output::escape`]), and never a
//! panic when stderr is gone (a hung-up terminal gives EIO, a closed pipe
//! EPIPE: a stopping tracer must still close its recording).

use std::io;

use tcptrace_core::output::escape;

/// Writes `tcptrace: MESSAGE` on stderr as one line, escaped ([`crate::say!`]).
pub fn eprint_line(message: std::fmt::Arguments<'_>) {
    let text = message.to_string();
    write_stderr(&format!("tcptrace: {}\n", escape(&text)));
}

/// Writes text tcptrace composed itself (its own control sequences, such as
/// a status line's `\r`, included; outside values in it already escaped) on
/// stderr. Never panics: after a hang-up stderr fails with EIO, and a
/// reader that went away gives EPIPE; a stopping tracer must still close
/// its recording.
pub fn write_stderr(text: &str) {
    let _ = io::Write::write_all(&mut io::stderr().lock(), text.as_bytes());
}

/// `eprintln!` for messages: `tcptrace: ` prefixed, one line, escaped.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::say::eprint_line(format_args!($($arg)*))
    };
}
