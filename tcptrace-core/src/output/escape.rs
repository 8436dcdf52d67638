//! One escaping rule for every text sink (terminal, stderr, the journal,
//! `report` text): names that come from outside — process names any user
//! can set with `prctl(PR_SET_NAME)`, a recording's host field, cgroup paths,
//! file names — never reach a terminal raw. Control characters are shown
//! escaped, as `top` and JSON already do: C0 controls and DEL as `\x1b`,
//! C1 controls (U+0080..U+009F, which some terminals obey as escapes) as
//! `\u{9b}`.
//!
//! Two ways in: [`escape`] for one value (a newline in a value is escaped
//! too: it could forge a line), and [`EscapeWriter`] wrapping a whole text
//! sink, which keeps the sink's own line breaks.

use std::{borrow::Cow, fmt::Write as _, io};

fn needs_escape(c: char, keep_newline: bool) -> bool {
    c.is_control() && !(keep_newline && c == '\n')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

fn escape_with(s: &str, keep_newline: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| needs_escape(c, keep_newline)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if needs_escape(c, keep_newline) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `s` with every control character (newlines included) escaped; borrowed
/// when there is nothing to escape.
pub fn escape(s: &str) -> Cow<'_, str> {
    escape_with(s, false)
}

/// A text sink whose bytes are escaped on the way out, line breaks kept.
/// Bytes that are not UTF-8 are shown as `\xNN`; a character split across
/// two writes is held until it is complete.
#[derive(Debug)]
pub struct EscapeWriter<W: io::Write> {
    inner: W,
    /// The start of a UTF-8 sequence cut by the end of the last write.
    partial: Vec<u8>,
}

impl<W: io::Write> EscapeWriter<W> {
    pub fn new(inner: W) -> Self {
        Self {
            inner,
            partial: Vec::new(),
        }
    }

    pub fn get_ref(&self) -> &W {
        &self.inner
    }

    fn write_escaped(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let mut out = String::new();
        loop {
            match std::str::from_utf8(bytes) {
                Ok(s) => {
                    out.push_str(&escape_with(s, true));
                    break;
                }
                Err(e) => {
                    let (good, rest) = bytes.split_at(e.valid_up_to());
                    // `good` is UTF-8 up to `valid_up_to`.
                    out.push_str(&escape_with(
                        std::str::from_utf8(good).unwrap_or_default(),
                        true,
                    ));
                    match e.error_len() {
                        Some(n) => {
                            for b in &rest[..n] {
                                let _ = write!(out, "\\x{b:02x}");
                            }
                            bytes = &rest[n..];
                        }
                        None => {
                            // Incomplete at the end: wait for the rest.
                            self.partial.extend_from_slice(rest);
                            break;
                        }
                    }
                }
            }
        }
        self.inner.write_all(out.as_bytes())
    }
}

impl<W: io::Write> io::Write for EscapeWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.partial.is_empty() {
            self.write_escaped(buf)?;
        } else {
            let mut joined = std::mem::take(&mut self.partial);
            joined.extend_from_slice(buf);
            self.write_escaped(&joined)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            let mut out = String::new();
            for b in rest {
                let _ = write!(out, "\\x{b:02x}");
            }
            self.inner.write_all(out.as_bytes())?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use proptest::prelude::*;

    use super::*;

    const HOSTILE: &str = "\u{1b}]0;PWN\u{7}\u{1b}[2J\u{1b}[31m";

    #[test]
    fn a_hostile_process_name_is_shown_escaped() {
        assert_eq!(escape(HOSTILE), "\\x1b]0;PWN\\x07\\x1b[2J\\x1b[31m");
        assert_eq!(escape("a\nb\u{9b}c\u{7f}"), "a\\x0ab\\u{9b}c\\x7f");
        assert!(matches!(escape("java"), Cow::Borrowed("java")));
    }

    #[test]
    fn the_writer_keeps_line_breaks_and_escapes_the_rest() {
        let mut w = EscapeWriter::new(Vec::new());
        writeln!(w, "x {HOSTILE} y").unwrap();
        // A C1 control split across two writes, then a stray byte.
        w.write_all(&[0xc2]).unwrap();
        w.write_all(&[0x9b, b'z', 0xff, b'\n']).unwrap();
        w.flush().unwrap();
        let out = String::from_utf8(w.inner).unwrap();
        assert_eq!(
            out,
            "x \\x1b]0;PWN\\x07\\x1b[2J\\x1b[31m y\n\\u{9b}z\\xff\n"
        );
    }

    proptest! {
        #[test]
        fn nothing_escaped_is_a_control_character(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut w = EscapeWriter::new(Vec::new());
            w.write_all(&bytes).unwrap();
            w.flush().unwrap();
            let out = String::from_utf8(w.inner).expect("escaped output is UTF-8");
            prop_assert!(!out.chars().any(|c| c.is_control() && c != '\n'));
            let lossy = String::from_utf8_lossy(&bytes);
            prop_assert!(!escape(&lossy).chars().any(char::is_control));
        }
    }
}
