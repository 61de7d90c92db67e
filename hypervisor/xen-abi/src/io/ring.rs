//! The generic shared ring (`io/ring.h`).
//!
//! A ring lives in one or more granted pages, shared by a frontend
//! (producer of requests, consumer of responses) and a backend (the
//! reverse). The first 64 bytes are a header of four free-running 32-bit
//! indices and padding; fixed-size entries follow at offset 64. Requests and
//! responses share the entry slots, so an entry is as large as the larger of
//! the two, and the slot count is the largest power of two that fits.
//!
//! Indices never wrap to the ring size: they count up forever (modulo
//! 2^32) and are masked with `size - 1` only to find a slot. Every
//! difference of indices is therefore computed with wrapping arithmetic.
//!
//! Notification hold-off: each side says, through `req_event` /
//! `rsp_event`, at which producer index it wants to be told about new
//! entries. A producer notifies only if the index it just published passed
//! that mark ([`need_notify`]). A consumer that runs out of work re-arms the
//! mark to `cons + 1` and then checks once more for work, so that an entry
//! published between its last check and the re-arm is not missed.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A free-running ring index (`RING_IDX`).
pub type RingIdx = u32;

/// Offset of `req_prod`: requests published by the frontend.
pub const OFFSET_REQ_PROD: usize = 0;
/// Offset of `req_event`: the backend wants a kick once `req_prod` passes it.
pub const OFFSET_REQ_EVENT: usize = 4;
/// Offset of `rsp_prod`: responses published by the backend.
pub const OFFSET_RSP_PROD: usize = 8;
/// Offset of `rsp_event`: the frontend wants a kick once `rsp_prod` passes it.
pub const OFFSET_RSP_EVENT: usize = 12;
/// Offset of the first entry; the 48 bytes before it are padding
/// (a few of which older drivers used privately).
pub const OFFSET_ENTRIES: usize = 64;

/// Largest ring Linux and Xen's tools negotiate: 2^4 pages
/// (`XENBUS_MAX_RING_GRANT_ORDER`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;

/// The header at the start of every shared ring (`struct *_sring` up to
/// `ring[]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SringHeader {
    pub req_prod: RingIdx,
    pub req_event: RingIdx,
    pub rsp_prod: RingIdx,
    pub rsp_event: RingIdx,
    pub pad: [u8; 48],
}

impl Default for SringHeader {
    /// What `SHARED_RING_INIT` leaves: no entries, both sides want a kick
    /// for the first one.
    fn default() -> Self {
        SringHeader {
            req_prod: 0,
            req_event: 1,
            rsp_prod: 0,
            rsp_event: 1,
            pad: [0; 48],
        }
    }
}

/// Number of entries a ring of `ring_bytes` bytes holds for entries of
/// `entry_size` bytes: the largest power of two that fits after the
/// header, 0 if none does.
pub const fn ring_size(ring_bytes: usize, entry_size: usize) -> u32 {
    if entry_size == 0 || ring_bytes <= OFFSET_ENTRIES {
        return 0;
    }
    let fit = (ring_bytes - OFFSET_ENTRIES) / entry_size;
    if fit == 0 {
        return 0;
    }
    let fit = if fit > u32::MAX as usize {
        u32::MAX
    } else {
        fit as u32
    };
    1 << (31 - fit.leading_zeros())
}

/// [`ring_size`] for a ring of `pages` guest pages.
pub const fn ring_size_for_pages(pages: usize, entry_size: usize) -> u32 {
    ring_size(pages * crate::PAGE_SIZE, entry_size)
}

/// Byte offset of slot `idx` in a ring of `size` (a power of two) entries.
pub const fn entry_offset(idx: RingIdx, size: u32, entry_size: usize) -> usize {
    OFFSET_ENTRIES + (idx & size.wrapping_sub(1)) as usize * entry_size
}

/// The producer's notify rule (`RING_PUSH_*_AND_CHECK_NOTIFY`): having
/// moved the producer index from `old` to `new`, notify the other side iff
/// its event mark `event` lies in `(old, new]`.
pub const fn need_notify(old: RingIdx, new: RingIdx, event: RingIdx) -> bool {
    new.wrapping_sub(event) < new.wrapping_sub(old)
}

/// Requests a backend may consume now (`RING_UNCONSUMED_REQUESTS`): those
/// published and not yet taken, but never more than the free response
/// slots, so a frontend that over-publishes cannot make the backend
/// overwrite responses it has not read.
pub const fn unconsumed_requests(
    req_prod: RingIdx,
    req_cons: RingIdx,
    rsp_prod_pvt: RingIdx,
    size: u32,
) -> u32 {
    let published = req_prod.wrapping_sub(req_cons);
    let room = size.wrapping_sub(req_cons.wrapping_sub(rsp_prod_pvt));
    if published < room {
        published
    } else {
        room
    }
}

/// True if a frontend published more requests than the ring has slots
/// (`RING_REQUEST_PROD_OVERFLOW`): a broken or hostile frontend, whose ring
/// must not be processed further.
pub const fn request_prod_overflow(req_prod: RingIdx, rsp_prod_pvt: RingIdx, size: u32) -> bool {
    req_prod.wrapping_sub(rsp_prod_pvt) > size
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn header_layout() {
        assert_eq!(size_of::<SringHeader>(), OFFSET_ENTRIES);
        assert_eq!(offset_of!(SringHeader, req_prod), OFFSET_REQ_PROD);
        assert_eq!(offset_of!(SringHeader, req_event), OFFSET_REQ_EVENT);
        assert_eq!(offset_of!(SringHeader, rsp_prod), OFFSET_RSP_PROD);
        assert_eq!(offset_of!(SringHeader, rsp_event), OFFSET_RSP_EVENT);
    }

    #[test]
    fn sizes_round_down_to_a_power_of_two() {
        // blkif: 112-byte entries, 36 fit in one page, 32 are used.
        assert_eq!(ring_size_for_pages(1, 112), 32);
        assert_eq!(ring_size_for_pages(2, 112), 64);
        assert_eq!(ring_size_for_pages(16, 112), 512);
        // netif tx (12-byte entries): 336 fit, 256 used.
        assert_eq!(ring_size_for_pages(1, 12), 256);
        assert_eq!(ring_size(64, 8), 0);
        assert_eq!(ring_size(4096, 0), 0);
        assert_eq!(ring_size(100, 112), 0);
        assert_eq!(entry_offset(33, 32, 112), 64 + 112);
    }

    #[test]
    fn notify_rule() {
        // Event mark inside (old, new]: notify.
        assert!(need_notify(0, 1, 1));
        assert!(need_notify(5, 10, 10));
        assert!(need_notify(5, 10, 6));
        // Mark already passed before this push, or not reached yet.
        assert!(!need_notify(5, 10, 5));
        assert!(!need_notify(5, 10, 11));
        // Nothing pushed: never notify.
        assert!(!need_notify(7, 7, 7));
        // Across the 2^32 wrap.
        assert!(need_notify(u32::MAX - 1, 2, 0));
        assert!(!need_notify(u32::MAX - 1, 2, 3));
    }

    #[test]
    fn unconsumed_is_bounded_by_free_slots() {
        assert_eq!(unconsumed_requests(10, 4, 4, 32), 6);
        // Frontend claims 100 new requests on a 32-slot ring.
        assert_eq!(unconsumed_requests(104, 4, 4, 32), 32);
        // 30 taken but not answered: only 2 slots left.
        assert_eq!(unconsumed_requests(40, 34, 4, 32), 2);
        assert_eq!(unconsumed_requests(3, u32::MAX - 1, u32::MAX - 1, 32), 5);
        assert!(request_prod_overflow(40, 4, 32));
        assert!(!request_prod_overflow(36, 4, 32));
        assert!(request_prod_overflow(0, 1, 32));
    }
}
