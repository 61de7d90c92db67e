//! Port 0xE9, the debug console of HVM and PVH guests.
//!
//! Xen collects what a guest writes there a byte at a time, keeps only
//! printable characters, tabs and newlines, and prints each line in its
//! console log (`xl dmesg`) behind `(dN) `, cutting a line that grows too
//! long. kxen does the same: each line goes to the domain's VMM log
//! (stderr) and, when kxend handed us its hypervisor log, to `kxl dmesg`.
//!
//! The guest controls this output, so it is bounded twice: a line never
//! holds more than [`MAX_LINE`] bytes, and a token bucket lets through
//! [`BURST`] lines at once and [`LINES_PER_SEC`] a second after that. Lines
//! over the rate are dropped and counted; the count is reported once the
//! rate allows a line again, as Xen's printk rate limit reports its
//! suppressed messages.

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub const DEBUG_PORT: u16 = 0xe9;
/// Longest line kept; a longer one is cut and printed in pieces.
pub const MAX_LINE: usize = 255;
/// Lines let through at once.
pub const BURST: u32 = 20;
/// Lines a second after the burst.
pub const LINES_PER_SEC: u32 = 10;

/// A token bucket: `capacity` tokens, one more every `period`.
#[derive(Debug)]
pub struct RateLimiter {
    capacity: u32,
    period: Duration,
    tokens: u32,
    /// When the next token is due (only meaningful below capacity).
    next_refill: Instant,
}

impl RateLimiter {
    pub fn new(capacity: u32, per_sec: u32, now: Instant) -> Self {
        RateLimiter {
            capacity,
            period: Duration::from_secs(1) / per_sec.max(1),
            tokens: capacity,
            next_refill: now,
        }
    }

    /// Take a token if one is there at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        // At most `capacity` rounds: the loop stops once the bucket is full.
        while self.tokens < self.capacity && now >= self.next_refill {
            self.tokens += 1;
            self.next_refill += self.period;
        }
        if self.tokens == self.capacity {
            // A full bucket earns nothing: the refill clock starts with
            // this take.
            self.next_refill = now + self.period;
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// The per-domain line buffer and its limiter, without the output.
#[derive(Debug)]
pub struct LineBuffer {
    line: Vec<u8>,
    limiter: RateLimiter,
    suppressed: u64,
}

/// What one byte produced: nothing yet, or lines to print.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// How many lines were dropped before `line` (reported before it).
    pub suppressed: u64,
    pub line: Option<String>,
}

impl LineBuffer {
    pub fn new(now: Instant) -> Self {
        LineBuffer {
            line: Vec::with_capacity(MAX_LINE),
            limiter: RateLimiter::new(BURST, LINES_PER_SEC, now),
            suppressed: 0,
        }
    }

    /// Take one byte the guest wrote; a finished line comes back when the
    /// rate allows it.
    pub fn push(&mut self, byte: u8, now: Instant) -> Output {
        let printable = byte == b'\n' || byte == b'\t' || (0x20..0x7f).contains(&byte);
        if !printable {
            return Output::default();
        }
        if byte != b'\n' {
            self.line.push(byte);
        }
        if byte != b'\n' && self.line.len() < MAX_LINE {
            return Output::default();
        }
        // Bytes 0x20..0x7f and tabs only: always valid UTF-8.
        let line = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        if !self.limiter.allow(now) {
            self.suppressed += 1;
            return Output::default();
        }
        Output {
            suppressed: std::mem::take(&mut self.suppressed),
            line: Some(line),
        }
    }

    /// Bytes held for the current line.
    pub fn pending(&self) -> usize {
        self.line.len()
    }
}

/// The domain's debug console: the line buffer and where lines go.
pub struct DebugConsole {
    domid: u16,
    buffer: Mutex<LineBuffer>,
    /// kxend's hypervisor log (`kxl dmesg`), opened for appending.
    hypervisor_log: Option<Arc<File>>,
}

impl DebugConsole {
    pub fn new(domid: u16, hypervisor_log: Option<Arc<File>>) -> Self {
        DebugConsole {
            domid,
            buffer: Mutex::new(LineBuffer::new(Instant::now())),
            hypervisor_log,
        }
    }

    /// Bytes the guest wrote to port 0xE9 (one per `out`, normally).
    pub fn write(&self, data: &[u8]) {
        for &byte in data {
            let out = self
                .buffer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(byte, Instant::now());
            if out.suppressed > 0 {
                self.emit(&format!(
                    "{} port 0xe9 lines suppressed (rate limit)",
                    out.suppressed
                ));
            }
            if let Some(line) = out.line {
                self.emit(&line);
            }
        }
    }

    fn emit(&self, line: &str) {
        // One write per line and sink, so lines from several writers
        // never interleave inside a line.
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(format!("(d{}) {line}\n", self.domid).as_bytes());
        if let Some(mut log) = self.hypervisor_log.as_deref() {
            let stamped = format!(
                "(d{}) {}{line}\n",
                self.domid,
                kxen_vmm_api::log::datems_stamp(SystemTime::now())
            );
            let _ = log.write_all(stamped.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(buf: &mut LineBuffer, bytes: &[u8], now: Instant) -> Vec<Output> {
        bytes
            .iter()
            .map(|&b| buf.push(b, now))
            .filter(|o| *o != Output::default())
            .collect()
    }

    #[test]
    fn lines_end_at_newline_and_drop_unprintables() {
        let now = Instant::now();
        let mut buf = LineBuffer::new(now);
        let out = feed(&mut buf, b"he\x07llo\r\tthere\nsecond", now);
        assert_eq!(
            out,
            vec![Output {
                suppressed: 0,
                line: Some("hello\tthere".into())
            }]
        );
        assert_eq!(buf.pending(), "second".len());
    }

    #[test]
    fn a_line_without_newline_is_cut_at_the_limit() {
        let now = Instant::now();
        let mut buf = LineBuffer::new(now);
        // A hostile guest that never ends its line.
        let out = feed(&mut buf, &[b'x'; 10 * MAX_LINE + 3], now);
        assert_eq!(out.len(), 10);
        assert!(out
            .iter()
            .all(|o| o.line.as_deref().map(str::len) == Some(MAX_LINE)));
        assert_eq!(buf.pending(), 3);
        // Memory stays bounded whatever the guest writes.
        assert!(buf.line.capacity() <= MAX_LINE);
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_and_the_drops_reported() {
        let start = Instant::now();
        let mut buf = LineBuffer::new(start);
        let out = feed(&mut buf, &b"spam\n".repeat(1000), start);
        assert_eq!(out.len(), BURST as usize, "only the burst gets through");
        // A second later, LINES_PER_SEC more, the first with the count.
        let later = start + Duration::from_secs(1);
        let out = feed(&mut buf, &b"spam\n".repeat(100), later);
        assert_eq!(out.len(), LINES_PER_SEC as usize);
        assert_eq!(out[0].suppressed, 1000 - u64::from(BURST));
        assert!(out[1..].iter().all(|o| o.suppressed == 0));
    }

    #[test]
    fn the_bucket_refills_to_its_capacity_only() {
        let start = Instant::now();
        let mut bucket = RateLimiter::new(3, 10, start);
        let much_later = start + Duration::from_secs(3600);
        let allowed = (0..10).filter(|_| bucket.allow(much_later)).count();
        assert_eq!(allowed, 3);
    }
}
