//! The frontend half of a shared ring (io/ring.h): produce requests,
//! consume responses, with the notification hold-off of
//! `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY` / `RING_FINAL_CHECK_FOR_RESPONSES`.

use core::marker::PhantomData;
use core::mem::size_of;
use core::sync::atomic::{fence, AtomicU32, Ordering};

use xen_abi::io::ring::{
    entry_offset, need_notify, ring_size, RingIdx, OFFSET_REQ_EVENT, OFFSET_REQ_PROD,
    OFFSET_RSP_EVENT, OFFSET_RSP_PROD,
};

/// A ring in `pages` contiguous pages at `base`, with entries of
/// `entry_size` bytes; requests are `Req`-sized prefixes of an entry,
/// responses `Rsp`-sized.
pub struct FrontRing<Rsp> {
    base: *mut u8,
    size: u32,
    entry_size: usize,
    req_prod_pvt: RingIdx,
    rsp_cons: RingIdx,
    _rsp: PhantomData<Rsp>,
}

impl<Rsp: Copy> FrontRing<Rsp> {
    /// Initialise the shared header (`SHARED_RING_INIT`) and the private
    /// indices (`FRONT_RING_INIT`).
    ///
    /// # Safety
    /// `base` must point at `bytes` bytes of zeroed, page-aligned memory
    /// owned by this ring for its lifetime.
    pub unsafe fn new(base: *mut u8, bytes: usize, entry_size: usize) -> Self {
        let r = FrontRing {
            base,
            size: ring_size(bytes, entry_size),
            entry_size,
            req_prod_pvt: 0,
            rsp_cons: 0,
            _rsp: PhantomData,
        };
        r.index(OFFSET_REQ_PROD).store(0, Ordering::Relaxed);
        r.index(OFFSET_RSP_PROD).store(0, Ordering::Relaxed);
        r.index(OFFSET_REQ_EVENT).store(1, Ordering::Relaxed);
        r.index(OFFSET_RSP_EVENT).store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        r
    }

    fn index(&self, off: usize) -> &AtomicU32 {
        // SAFETY: the header's four indices lie in the ring's first page
        // (see `new`); they are shared with the backend, hence atomic.
        unsafe { AtomicU32::from_ptr(self.base.add(off) as *mut u32) }
    }

    /// Number of entry slots.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Slots free for new requests (responses not yet consumed still
    /// occupy theirs).
    pub fn free_slots(&self) -> u32 {
        self.size - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Requests published or queued and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Queue `req` in the next slot (not yet visible to the backend).
    /// Returns false if the ring is full or `T` does not fit an entry.
    pub fn queue<T: Copy>(&mut self, req: T) -> bool {
        if self.free_slots() == 0 || size_of::<T>() > self.entry_size {
            return false;
        }
        let off = entry_offset(self.req_prod_pvt, self.size, self.entry_size);
        // SAFETY: `off + size_of::<T>()` lies inside the ring (checked
        // above); the slot is free (no unconsumed response in it) and the
        // backend does not read it before req_prod moves past it. Entries
        // are 8-byte aligned (offset 64 + k * entry_size, entry sizes are
        // multiples of 8 or T has smaller alignment).
        unsafe { (self.base.add(off) as *mut T).write_volatile(req) };
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
        true
    }

    /// Publish queued requests; true if the backend must be notified.
    pub fn push(&mut self) -> bool {
        let prod = self.index(OFFSET_REQ_PROD);
        let old = prod.load(Ordering::Relaxed);
        let new = self.req_prod_pvt;
        // Requests before the index (release), the index before reading
        // req_event (full barrier, as RING_PUSH_REQUESTS_AND_CHECK_NOTIFY).
        prod.store(new, Ordering::Release);
        fence(Ordering::SeqCst);
        let event = self.index(OFFSET_REQ_EVENT).load(Ordering::Acquire);
        need_notify(old, new, event)
    }

    /// Responses waiting, bounded by the requests we have outstanding (a
    /// backend claiming more is ignored beyond that).
    pub fn unconsumed(&self) -> u32 {
        let prod = self.index(OFFSET_RSP_PROD).load(Ordering::Acquire);
        prod.wrapping_sub(self.rsp_cons).min(self.outstanding())
    }

    /// Take the next response, if any.
    pub fn take(&mut self) -> Option<Rsp> {
        if self.unconsumed() == 0 {
            return None;
        }
        fence(Ordering::Acquire);
        let off = entry_offset(self.rsp_cons, self.size, self.entry_size);
        // SAFETY: the slot lies inside the ring and holds a response the
        // backend published (rsp_prod is past it); Rsp fits an entry.
        let rsp = unsafe { (self.base.add(off) as *const Rsp).read_volatile() };
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        Some(rsp)
    }

    /// `RING_FINAL_CHECK_FOR_RESPONSES`: ask for a notification at the next
    /// response, then look once more; true if responses are waiting.
    pub fn final_check(&mut self) -> bool {
        if self.unconsumed() > 0 {
            return true;
        }
        self.index(OFFSET_RSP_EVENT)
            .store(self.rsp_cons.wrapping_add(1), Ordering::Release);
        fence(Ordering::SeqCst);
        self.unconsumed() > 0
    }
}
