//! The xenstore ring page shared with a guest (`xenstore_domain_interface`):
//! two 1 KiB byte queues with free-running indices. Everything the guest
//! controls is checked: indices that claim more than a ring's worth of data
//! are a protocol error, never a reason to read or write out of bounds.

use std::sync::atomic::{fence, AtomicU32, Ordering};

use xen_abi::xenstore as xs;

/// The guest's ring page as kxend maps it (from the domain's memfd).
///
/// `load_u32`/`store_u32` must be single atomic 32-bit accesses (the guest
/// changes indices concurrently); `read`/`write` copy bytes. Offsets are
/// within the 4 KiB page; the daemon never passes anything else.
pub trait SharedPage: Send + Sync {
    fn load_u32(&self, off: usize) -> u32;
    fn store_u32(&self, off: usize, v: u32);
    fn read(&self, off: usize, buf: &mut [u8]);
    fn write(&self, off: usize, data: &[u8]);
}

/// A ring page in ordinary memory: for tests, fuzzing, and in-process
/// clients.
pub struct HeapPage {
    words: Box<[AtomicU32; 1024]>,
}

impl Default for HeapPage {
    fn default() -> Self {
        HeapPage::new()
    }
}

impl HeapPage {
    pub fn new() -> HeapPage {
        HeapPage {
            words: Box::new(std::array::from_fn(|_| AtomicU32::new(0))),
        }
    }

    fn byte(&self, off: usize) -> u8 {
        let w = self.words[(off / 4) % 1024].load(Ordering::Relaxed);
        w.to_le_bytes()[off % 4]
    }

    fn set_byte(&self, off: usize, v: u8) {
        let word = &self.words[(off / 4) % 1024];
        let shift = (off % 4) * 8;
        let mut cur = word.load(Ordering::Relaxed);
        loop {
            let new = (cur & !(0xff << shift)) | ((v as u32) << shift);
            match word.compare_exchange_weak(cur, new, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(c) => cur = c,
            }
        }
    }
}

impl SharedPage for HeapPage {
    fn load_u32(&self, off: usize) -> u32 {
        self.words[(off / 4) % 1024].load(Ordering::Acquire)
    }

    fn store_u32(&self, off: usize, v: u32) {
        self.words[(off / 4) % 1024].store(v, Ordering::Release)
    }

    fn read(&self, off: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.byte(off + i);
        }
    }

    fn write(&self, off: usize, data: &[u8]) {
        for (i, &b) in data.iter().enumerate() {
            self.set_byte(off + i, b);
        }
    }
}

/// A ring whose indices make no sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BadIndex;

const SIZE: usize = xs::RING_SIZE;

fn mask(idx: u32) -> usize {
    idx as usize & (SIZE - 1)
}

/// Take up to `buf.len()` request bytes; returns how many.
pub(crate) fn read_requests(page: &dyn SharedPage, buf: &mut [u8]) -> Result<usize, BadIndex> {
    let cons = page.load_u32(xs::OFFSET_REQ_CONS);
    let prod = page.load_u32(xs::OFFSET_REQ_PROD);
    fence(Ordering::SeqCst);
    let avail = prod.wrapping_sub(cons) as usize;
    if avail > SIZE {
        return Err(BadIndex);
    }
    let n = avail.min(buf.len());
    let start = mask(cons);
    let first = n.min(SIZE - start);
    page.read(xs::OFFSET_REQ + start, &mut buf[..first]);
    page.read(xs::OFFSET_REQ, &mut buf[first..n]);
    fence(Ordering::SeqCst);
    if n > 0 {
        page.store_u32(xs::OFFSET_REQ_CONS, cons.wrapping_add(n as u32));
    }
    Ok(n)
}

/// Whether the guest has request bytes waiting (indices checked later).
pub(crate) fn has_requests(page: &dyn SharedPage) -> bool {
    page.load_u32(xs::OFFSET_REQ_CONS) != page.load_u32(xs::OFFSET_REQ_PROD)
}

/// Put as much of `data` as fits into the response queue; returns how much.
pub(crate) fn write_responses(page: &dyn SharedPage, data: &[u8]) -> Result<usize, BadIndex> {
    let cons = page.load_u32(xs::OFFSET_RSP_CONS);
    let prod = page.load_u32(xs::OFFSET_RSP_PROD);
    fence(Ordering::SeqCst);
    let used = prod.wrapping_sub(cons) as usize;
    if used > SIZE {
        return Err(BadIndex);
    }
    let n = (SIZE - used).min(data.len());
    let start = mask(prod);
    let first = n.min(SIZE - start);
    page.write(xs::OFFSET_RSP + start, &data[..first]);
    page.write(xs::OFFSET_RSP, &data[first..n]);
    fence(Ordering::SeqCst);
    if n > 0 {
        page.store_u32(xs::OFFSET_RSP_PROD, prod.wrapping_add(n as u32));
    }
    Ok(n)
}

/// Reset the ring to empty and connected, advertising our features.
pub(crate) fn reset(page: &dyn SharedPage) {
    page.store_u32(xs::OFFSET_REQ_CONS, 0);
    page.store_u32(xs::OFFSET_REQ_PROD, 0);
    page.store_u32(xs::OFFSET_RSP_CONS, 0);
    page.store_u32(xs::OFFSET_RSP_PROD, 0);
    page.store_u32(
        xs::OFFSET_SERVER_FEATURES,
        xs::SERVER_FEATURE_RECONNECTION | xs::SERVER_FEATURE_ERROR,
    );
    page.store_u32(xs::OFFSET_ERROR, xs::ERROR_NONE);
    fence(Ordering::SeqCst);
    page.store_u32(xs::OFFSET_CONNECTION, xs::CONNECTED);
}
