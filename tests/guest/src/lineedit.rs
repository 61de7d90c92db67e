//! A minimal line editor for PV console input: it collects bytes into a
//! line and tells the caller what to echo.
//!
//! A line ends at `\r` or `\n`; `\r\n` counts as one end (terminals send
//! `\r` for Enter, pipes send `\n`, `xl console` may send both). Backspace
//! (0x08) and DEL (0x7f) remove the last byte. A line longer than
//! [`LINE_MAX`] keeps its first [`LINE_MAX`] bytes.

/// Longest line kept.
pub const LINE_MAX: usize = 256;

/// What the caller should do with the byte just pushed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// Echo the byte as it is.
    Echo,
    /// A byte was erased: echo "\x08 \x08".
    Erase,
    /// The line is complete: echo a newline; [`LineEditor::line`] has it.
    Line,
    /// Nothing to echo (the `\n` of `\r\n`, or backspace on an empty line).
    Ignore,
}

pub struct LineEditor {
    buf: [u8; LINE_MAX],
    len: usize,
    /// The previous byte was `\r`.
    after_cr: bool,
    /// The previous push completed a line (cleared by the next push).
    done: bool,
}

impl Default for LineEditor {
    fn default() -> Self {
        Self::new()
    }
}

impl LineEditor {
    pub const fn new() -> Self {
        LineEditor {
            buf: [0; LINE_MAX],
            len: 0,
            after_cr: false,
            done: false,
        }
    }

    pub fn push(&mut self, b: u8) -> Key {
        if self.done {
            self.done = false;
            self.len = 0;
        }
        let after_cr = core::mem::replace(&mut self.after_cr, b == b'\r');
        match b {
            b'\n' if after_cr => Key::Ignore,
            b'\r' | b'\n' => {
                self.done = true;
                Key::Line
            }
            0x08 | 0x7f => {
                if self.len > 0 {
                    self.len -= 1;
                    Key::Erase
                } else {
                    Key::Ignore
                }
            }
            _ => {
                if self.len < LINE_MAX {
                    self.buf[self.len] = b;
                    self.len += 1;
                }
                Key::Echo
            }
        }
    }

    /// The line so far; after [`Key::Line`], the complete line (without
    /// its terminator) until the next push.
    pub fn line(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// Whether `line` is the `poweroff` console command (surrounding blanks
/// allowed).
pub fn is_poweroff_command(line: &[u8]) -> bool {
    line.trim_ascii() == b"poweroff"
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Push `input`; return the completed lines joined by '|' and the echo
    /// stream (Erase shown as '<').
    fn run(ed: &mut LineEditor, input: &[u8]) -> ([u8; 512], usize, [u8; 512], usize) {
        let mut lines = [0u8; 512];
        let mut nl = 0;
        let mut echo = [0u8; 512];
        let mut ne = 0;
        for &b in input {
            match ed.push(b) {
                Key::Echo => {
                    echo[ne] = b;
                    ne += 1;
                }
                Key::Erase => {
                    echo[ne] = b'<';
                    ne += 1;
                }
                Key::Line => {
                    echo[ne] = b'\n';
                    ne += 1;
                    let l = ed.line();
                    lines[nl..nl + l.len()].copy_from_slice(l);
                    nl += l.len();
                    lines[nl] = b'|';
                    nl += 1;
                }
                Key::Ignore => {}
            }
        }
        (lines, nl, echo, ne)
    }

    #[test]
    fn line_endings() {
        let mut ed = LineEditor::new();
        let (l, nl, e, ne) = run(&mut ed, b"a\nb\rc\r\nd\n\r\n");
        assert_eq!(&l[..nl], b"a|b|c|d||");
        assert_eq!(&e[..ne], b"a\nb\nc\nd\n\n");
    }

    #[test]
    fn partial_line_stays() {
        let mut ed = LineEditor::new();
        let (_, nl, _, _) = run(&mut ed, b"hel");
        assert_eq!(nl, 0);
        assert_eq!(ed.line(), b"hel");
        let (l, nl, _, _) = run(&mut ed, b"lo\r");
        assert_eq!(&l[..nl], b"hello|");
        // The next byte starts a new line.
        run(&mut ed, b"x");
        assert_eq!(ed.line(), b"x");
    }

    #[test]
    fn backspace() {
        let mut ed = LineEditor::new();
        let (l, nl, e, ne) = run(&mut ed, b"\x7fab\x08c\x7f\x7f\x7fd\n");
        assert_eq!(&l[..nl], b"d|");
        assert_eq!(&e[..ne], b"ab<c<<d\n");
    }

    #[test]
    fn long_line_is_truncated() {
        let mut ed = LineEditor::new();
        for _ in 0..LINE_MAX + 10 {
            assert_eq!(ed.push(b'x'), Key::Echo);
        }
        assert_eq!(ed.push(b'\n'), Key::Line);
        assert_eq!(ed.line().len(), LINE_MAX);
    }

    #[test]
    fn poweroff_command() {
        assert!(is_poweroff_command(b"poweroff"));
        assert!(is_poweroff_command(b"  poweroff \t"));
        assert!(!is_poweroff_command(b"poweroff now"));
        assert!(!is_poweroff_command(b"Poweroff"));
        assert!(!is_poweroff_command(b""));
    }
}
