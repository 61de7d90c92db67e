//! The frontend half of a shared ring (io/ring.h): produce requests,
//! consume responses, with the notification hold-off of
//! `RING_PUSH_REQUESTS_AND_CHECK_NOTIFY` / `RING_FINAL_CHECK_FOR_RESPONSES`.
//! It only touches the ring memory it is given, so the host unit tests
//! below run it against a backend simulated in an ordinary buffer.

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

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::AtomicU32;

    #[repr(C, align(4096))]
    struct Page([u8; 4096]);

    /// The backend's view of the same page.
    struct Back {
        base: *mut u8,
        req_cons: u32,
        rsp_prod_pvt: u32,
    }

    impl Back {
        fn idx(&self, off: usize) -> &AtomicU32 {
            // SAFETY: test page, header offsets are inside it and aligned.
            unsafe { AtomicU32::from_ptr(self.base.add(off) as *mut u32) }
        }
        /// Take every request (values are u64 ids) and answer each with
        /// id + 1000; re-arm req_event like a backend going idle.
        fn serve(&mut self, size: u32) -> bool {
            let prod = self.idx(OFFSET_REQ_PROD).load(Ordering::Acquire);
            let old = self.rsp_prod_pvt;
            while self.req_cons != prod {
                let off = entry_offset(self.req_cons, size, 16);
                // SAFETY: inside the test page.
                let id = unsafe { (self.base.add(off) as *const u64).read_volatile() };
                // SAFETY: same slot, answered in place as real backends do.
                unsafe { (self.base.add(off) as *mut u64).write_volatile(id + 1000) };
                self.req_cons += 1;
                self.rsp_prod_pvt += 1;
            }
            self.idx(OFFSET_REQ_EVENT)
                .store(self.req_cons + 1, Ordering::Release);
            self.idx(OFFSET_RSP_PROD)
                .store(self.rsp_prod_pvt, Ordering::Release);
            let event = self.idx(OFFSET_RSP_EVENT).load(Ordering::Acquire);
            need_notify(old, self.rsp_prod_pvt, event)
        }
    }

    #[test]
    fn requests_responses_and_notifications() {
        let mut page = Page([0xff; 4096]);
        let base = page.0.as_mut_ptr();
        // SAFETY: the page is ours for the test; `new` initialises the header.
        let mut f: FrontRing<u64> = unsafe { FrontRing::new(base, 4096, 16) };
        assert_eq!(f.size(), 128);
        let mut b = Back {
            base,
            req_cons: 0,
            rsp_prod_pvt: 0,
        };
        // First request: the backend asked for a kick at 1.
        assert!(f.queue(1u64));
        assert!(f.push());
        // Two more before the backend ran: it did not ask again.
        assert!(f.queue(2u64) && f.queue(3u64));
        assert!(!f.push());
        // The frontend asked for a response kick at 1 (ring init).
        assert!(b.serve(f.size()));
        assert_eq!(f.take(), Some(1001));
        assert_eq!(f.take(), Some(1002));
        assert_eq!(f.take(), Some(1003));
        assert_eq!(f.take(), None);
        // Going idle re-arms rsp_event; nothing arrived meanwhile.
        assert!(!f.final_check());
        // Backend idle with req_event = 4: the next push kicks.
        assert!(f.queue(4u64));
        assert!(f.push());
        assert!(b.serve(f.size()));
        assert!(f.final_check());
        assert_eq!(f.take(), Some(1004));
    }

    #[test]
    fn full_ring_and_hostile_rsp_prod() {
        let mut page = Page([0; 4096]);
        let base = page.0.as_mut_ptr();
        // SAFETY: as above.
        let mut f: FrontRing<u64> = unsafe { FrontRing::new(base, 4096, 16) };
        for i in 0..f.size() {
            assert!(f.queue(i as u64));
        }
        assert!(!f.queue(0u64), "a full ring refuses more");
        assert_eq!(f.free_slots(), 0);
        f.push();
        // A backend claiming far more responses than requests in flight
        // is believed only up to what is outstanding.
        let b = Back {
            base,
            req_cons: 0,
            rsp_prod_pvt: 0,
        };
        b.idx(OFFSET_RSP_PROD).store(100_000, Ordering::Release);
        assert_eq!(f.unconsumed(), f.size());
        for _ in 0..f.size() {
            assert!(f.take().is_some());
        }
        assert_eq!(f.take(), None);
        // Entries larger than a slot are refused.
        assert!(!f.queue([0u64; 3]));
    }
}
