//! Dom0's end of one shared ring page (io/ring.h "back ring"): the
//! guest-written indices are read atomically, every index difference is
//! checked against the ring size, and entries are copied in and out, never
//! referenced, since the guest may change them at any time.

use std::sync::atomic::{fence, Ordering};

use kxen_foreign::foreign::ForeignPage;
use kxen_foreign::grant::GrantMapping;
use xen_abi::io::ring::{
    entry_offset, need_notify, request_prod_overflow, ring_size_for_pages, unconsumed_requests,
    RingIdx, OFFSET_REQ_EVENT, OFFSET_REQ_PROD, OFFSET_RSP_EVENT, OFFSET_RSP_PROD,
};

use crate::error::NetError;

/// A one-page ring mapped from a grant, with the backend's private indices.
pub struct BackRing {
    /// Keeps the grant pinned (GTF_writing) while the ring is in use.
    _map: GrantMapping,
    page: ForeignPage,
    size: u32,
    entry_size: usize,
    /// Next request to consume.
    pub req_cons: RingIdx,
    /// Next response slot to fill (published with [`BackRing::push`]).
    pub rsp_prod_pvt: RingIdx,
}

impl BackRing {
    /// `map` must be a writable mapping of the ring page. The guest
    /// initialised the ring, so start from the indices it left there.
    pub fn new(map: GrantMapping, entry_size: usize) -> Result<BackRing, NetError> {
        let page = map.shared_page().ok_or(NetError::RingNotWritable)?.clone();
        let size = ring_size_for_pages(1, entry_size);
        let rsp_prod = page.load_u32(OFFSET_RSP_PROD);
        Ok(BackRing {
            _map: map,
            page,
            size,
            entry_size,
            req_cons: rsp_prod,
            rsp_prod_pvt: rsp_prod,
        })
    }

    pub fn size(&self) -> u32 {
        self.size
    }

    pub fn req_prod(&self) -> RingIdx {
        self.page.load_u32(OFFSET_REQ_PROD)
    }

    /// True if the guest claims more requests than the ring holds: it is
    /// broken or hostile, and the ring is not served any further.
    pub fn overflowed(&self) -> bool {
        request_prod_overflow(self.req_prod(), self.rsp_prod_pvt, self.size)
    }

    /// Requests that may be consumed now (never more than the free
    /// response slots).
    pub fn unconsumed(&self) -> u32 {
        unconsumed_requests(self.req_prod(), self.req_cons, self.rsp_prod_pvt, self.size)
    }

    /// Copy the entry at ring index `idx` into `buf` (entry-sized).
    pub fn read_entry(&self, idx: RingIdx, buf: &mut [u8]) {
        let len = buf.len().min(self.entry_size);
        self.page.read(
            entry_offset(idx, self.size, self.entry_size),
            &mut buf[..len],
        );
    }

    /// Write `data` (at most an entry) into the slot at ring index `idx`.
    pub fn write_entry(&self, idx: RingIdx, data: &[u8]) {
        let len = data.len().min(self.entry_size);
        self.page
            .write(entry_offset(idx, self.size, self.entry_size), &data[..len]);
    }

    /// Publish the responses written so far; true if the guest asked to be
    /// notified (its `rsp_event` lies in the newly published range).
    pub fn push(&mut self) -> bool {
        let old = self.page.load_u32(OFFSET_RSP_PROD);
        if old == self.rsp_prod_pvt {
            return false;
        }
        // Responses must be visible before the index that publishes them.
        fence(Ordering::Release);
        self.page.store_u32(OFFSET_RSP_PROD, self.rsp_prod_pvt);
        // The guest's rsp_event must be read after the store (io/ring.h mb()).
        fence(Ordering::SeqCst);
        need_notify(old, self.rsp_prod_pvt, self.page.load_u32(OFFSET_RSP_EVENT))
    }

    /// Ask for a kick once requests beyond `req_cons + want - 1` arrive,
    /// then look again: true if requests arrived meanwhile.
    pub fn arm(&self, want: u32) -> bool {
        let want = want.max(1);
        self.page
            .store_u32(OFFSET_REQ_EVENT, self.req_cons.wrapping_add(want));
        // The re-check must not be reordered before the store (io/ring.h mb()).
        fence(Ordering::SeqCst);
        self.unconsumed() >= want
    }
}
