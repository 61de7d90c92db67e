//! The backend's end of one blkif shared ring, possibly several pages.
//!
//! The ring pages stay pinned (mapped for writing) while the ring lives.
//! Slots are 112 bytes and the pages are not contiguous in Dom0, so a slot
//! may straddle two pages; every access is split at page boundaries.

use std::sync::atomic::{fence, Ordering};

use kxen_foreign::foreign::ForeignPage;
use kxen_foreign::grant::GrantMapping;
use xen_abi::io::blkif::{Response, ENTRY_SIZE};
use xen_abi::io::ring::{self, RingIdx};
use xen_abi::PAGE_SIZE;
use zerocopy::IntoBytes;

use crate::error::BlkError;

/// The frontend published more requests than the ring holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("frontend's req_prod {req_prod} overruns the ring (rsp_prod {rsp_prod}, size {size})")]
pub struct RingOverflow {
    pub req_prod: RingIdx,
    pub rsp_prod: RingIdx,
    pub size: u32,
}

pub struct BackRing {
    pages: Vec<ForeignPage>,
    /// Keeps the ring's grants pinned.
    _mappings: Vec<GrantMapping>,
    size: u32,
    req_cons: RingIdx,
    rsp_prod_pvt: RingIdx,
}

impl BackRing {
    /// Attach to a ring whose pages are `mappings` (mapped for writing), in
    /// order. Picks up where the shared indices say, so a reconnecting
    /// frontend's outstanding state is not replayed.
    pub fn attach(mappings: Vec<GrantMapping>) -> Result<BackRing, BlkError> {
        let pages: Vec<ForeignPage> = mappings
            .iter()
            .map(|m| m.shared_page().cloned())
            .collect::<Option<_>>()
            .ok_or_else(|| BlkError::Ring("ring page not mapped writable".into()))?;
        if pages.is_empty() || !pages.len().is_power_of_two() {
            return Err(BlkError::Ring(format!("{} ring pages", pages.len())));
        }
        let size = ring::ring_size_for_pages(pages.len(), ENTRY_SIZE);
        let start = pages[0].load_u32(ring::OFFSET_RSP_PROD);
        Ok(BackRing {
            pages,
            _mappings: mappings,
            size,
            req_cons: start,
            rsp_prod_pvt: start,
        })
    }

    fn header(&self) -> &ForeignPage {
        &self.pages[0]
    }

    /// Requests ready to take now, bounded by free response slots.
    pub fn pending(&self) -> Result<u32, RingOverflow> {
        let req_prod = self.header().load_u32(ring::OFFSET_REQ_PROD);
        if ring::request_prod_overflow(req_prod, self.rsp_prod_pvt, self.size) {
            return Err(RingOverflow {
                req_prod,
                rsp_prod: self.rsp_prod_pvt,
                size: self.size,
            });
        }
        Ok(ring::unconsumed_requests(
            req_prod,
            self.req_cons,
            self.rsp_prod_pvt,
            self.size,
        ))
    }

    /// Copy the next request slot out of the ring and consume it. Call only
    /// after [`BackRing::pending`] said there is one.
    pub fn take_request(&mut self, slot: &mut [u8; ENTRY_SIZE]) {
        let off = ring::entry_offset(self.req_cons, self.size, ENTRY_SIZE);
        self.read_bytes(off, slot);
        self.req_cons = self.req_cons.wrapping_add(1);
    }

    /// Queue a response (published by [`BackRing::push_responses`]).
    pub fn put_response(&mut self, rsp: &Response) {
        let off = ring::entry_offset(self.rsp_prod_pvt, self.size, ENTRY_SIZE);
        self.write_bytes(off, rsp.as_bytes());
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
    }

    /// Publish queued responses; true if the frontend asked to be notified.
    pub fn push_responses(&mut self) -> bool {
        let h = self.header();
        let old = h.load_u32(ring::OFFSET_RSP_PROD);
        let new = self.rsp_prod_pvt;
        if old == new {
            return false;
        }
        // The release store orders the response bodies before the index.
        h.store_u32(ring::OFFSET_RSP_PROD, new);
        // The frontend's rsp_event must be read after our index is visible,
        // or both sides could wait for each other.
        fence(Ordering::SeqCst);
        let event = h.load_u32(ring::OFFSET_RSP_EVENT);
        ring::need_notify(old, new, event)
    }

    /// Out of work: ask for a kick on the next request, then look once more
    /// so a request published meanwhile is not left waiting. True if there
    /// is more work.
    pub fn final_check(&mut self) -> Result<bool, RingOverflow> {
        if self.pending()? > 0 {
            return Ok(true);
        }
        self.header()
            .store_u32(ring::OFFSET_REQ_EVENT, self.req_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        Ok(self.pending()? > 0)
    }

    fn read_bytes(&self, mut off: usize, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let (page, in_page) = (off / PAGE_SIZE, off % PAGE_SIZE);
            let n = (PAGE_SIZE - in_page).min(buf.len() - done);
            self.pages[page].read(in_page, &mut buf[done..done + n]);
            done += n;
            off += n;
        }
    }

    fn write_bytes(&self, mut off: usize, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let (page, in_page) = (off / PAGE_SIZE, off % PAGE_SIZE);
            let n = (PAGE_SIZE - in_page).min(data.len() - done);
            self.pages[page].write(in_page, &data[done..done + n]);
            done += n;
            off += n;
        }
    }
}
