//! Output: the Xen PV console ring (HVM params CONSOLE_PFN/CONSOLE_EVTCHN),
//! falling back to `console_io(CONSOLEIO_write)` before the ring is known or
//! if the backend stops draining it.

use core::fmt::{self, Write};
use core::ptr::null_mut;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU32, Ordering};

use xen_abi::console::{
    IN_SIZE, OFFSET_IN, OFFSET_IN_CONS, OFFSET_IN_PROD, OFFSET_OUT, OFFSET_OUT_CONS,
    OFFSET_OUT_PROD, OUT_SIZE,
};

use crate::hypercall::console_io_write;
use crate::time::Deadline;
use crate::xen;

static RING: AtomicPtr<u8> = AtomicPtr::new(null_mut());
static PORT: AtomicU32 = AtomicU32::new(0);
/// Also copy everything to console_io (set after EVTCHNOP_reset closed the
/// console port).
static MIRROR: AtomicBool = AtomicBool::new(false);

/// Start using the ring at `gpa` (identity-mapped) notified through `port`.
pub fn use_ring(gpa: u64, port: u32) {
    PORT.store(port, Ordering::Release);
    RING.store(gpa as *mut u8, Ordering::Release);
}

/// Copy all further output to console_io as well.
pub fn mirror_to_console_io() {
    MIRROR.store(true, Ordering::Release);
}

fn ring_write(ring: *mut u8, port: u32, data: &[u8]) -> bool {
    // SAFETY: `ring` is the identity-mapped console page the VMM gave us
    // (page aligned, never unmapped); the producer/consumer indices are
    // shared with the backend and therefore accessed atomically.
    let cons = unsafe { AtomicU32::from_ptr(ring.add(OFFSET_OUT_CONS) as *mut u32) };
    // SAFETY: as above.
    let prod = unsafe { AtomicU32::from_ptr(ring.add(OFFSET_OUT_PROD) as *mut u32) };
    let mut p = prod.load(Ordering::Relaxed);
    for &b in data {
        if p.wrapping_sub(cons.load(Ordering::Acquire)) >= OUT_SIZE as u32 {
            // Full: publish what we have, kick the backend, and wait for it.
            prod.store(p, Ordering::Release);
            xen::send(port);
            let mut d = Deadline::after_ms(5_000);
            while p.wrapping_sub(cons.load(Ordering::Acquire)) >= OUT_SIZE as u32 {
                if d.expired() {
                    return false;
                }
                xen::sched_yield();
            }
        }
        let idx = p as usize & (OUT_SIZE - 1);
        // SAFETY: idx < OUT_SIZE, so the byte is inside the ring's out array;
        // the backend only reads slots between cons and prod.
        unsafe { ring.add(OFFSET_OUT + idx).write_volatile(b) };
        p = p.wrapping_add(1);
    }
    prod.store(p, Ordering::Release);
    xen::send(port);
    true
}

/// Write raw bytes to the console.
pub fn write_bytes(data: &[u8]) {
    let ring = RING.load(Ordering::Acquire);
    if !ring.is_null() {
        if !ring_write(ring, PORT.load(Ordering::Acquire), data) {
            RING.store(null_mut(), Ordering::Release);
            console_io_write(b"kxen-testguest: PV console ring stalled; using console_io\n");
            console_io_write(data);
        } else if MIRROR.load(Ordering::Acquire) {
            console_io_write(data);
        }
    } else {
        console_io_write(data);
    }
}

/// Take up to `buf.len()` bytes of console input (the ring's `in` array,
/// filled by the backend); returns how many. Notifies the backend when it
/// freed space. 0 when there is no input or no ring.
pub fn read_input(buf: &mut [u8]) -> usize {
    let ring = RING.load(Ordering::Acquire);
    if ring.is_null() {
        return 0;
    }
    // SAFETY: `ring` is the identity-mapped console page (see
    // `ring_write`); the input indices are shared with the backend.
    let cons = unsafe { AtomicU32::from_ptr(ring.add(OFFSET_IN_CONS) as *mut u32) };
    // SAFETY: as above.
    let prod = unsafe { AtomicU32::from_ptr(ring.add(OFFSET_IN_PROD) as *mut u32) };
    let c = cons.load(Ordering::Relaxed);
    let p = prod.load(Ordering::Acquire);
    let avail = p.wrapping_sub(c) as usize;
    if avail > IN_SIZE {
        // Corrupt indices: drop what cannot be trusted.
        cons.store(p, Ordering::Release);
        xen::send(PORT.load(Ordering::Acquire));
        return 0;
    }
    let n = avail.min(buf.len());
    for (i, b) in buf[..n].iter_mut().enumerate() {
        let idx = c.wrapping_add(i as u32) as usize & (IN_SIZE - 1);
        // SAFETY: idx < IN_SIZE: a byte of the in array between in_cons
        // and in_prod, which the backend does not write until in_cons
        // moves past it.
        *b = unsafe { ring.add(OFFSET_IN + idx).read_volatile() };
    }
    if n > 0 {
        cons.store(c.wrapping_add(n as u32), Ordering::Release);
        xen::send(PORT.load(Ordering::Acquire));
    }
    n
}

/// A line buffer: formatted text goes out in as few notifications as possible.
pub struct Line {
    buf: [u8; 512],
    len: usize,
}

impl Line {
    pub const fn new() -> Self {
        Line {
            buf: [0; 512],
            len: 0,
        }
    }

    /// Append raw bytes (not necessarily UTF-8).
    pub fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            if self.len == self.buf.len() {
                self.flush();
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    pub fn flush(&mut self) {
        if self.len > 0 {
            write_bytes(&self.buf[..self.len]);
            self.len = 0;
        }
    }
}

impl Write for Line {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.bytes(s.as_bytes());
        Ok(())
    }
}

/// Print one line (a newline is appended).
pub fn print_line(args: fmt::Arguments) {
    let mut line = Line::new();
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    line.flush();
}

#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}
