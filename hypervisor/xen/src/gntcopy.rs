//! GNTTABOP_copy for a domU: copy bytes between pages named by grant
//! references or by the caller's own frame numbers.
//!
//! Rules (Xen 4.17's gnttab_copy): each side's `offset + len` must lie in
//! one page (GNTST_bad_copy_arg); a frame number is only accepted with
//! domid DOMID_SELF (GNTST_permission_denied otherwise); a grant reference
//! must name a domain we can reach (only this one: GNTST_bad_domain for
//! any other), be within the table (GNTST_bad_gntref), permit access to
//! the caller (GNTST_permission_denied) and, for the destination, not be
//! read-only. While bytes move, the entries carry GTF_reading (source) and
//! GTF_writing (destination), as Xen's active pins do: in the entry's flags
//! in a v1 table, in the entry's status word in a v2 table. A v2 entry
//! gives its frame in `full_page`, or in `sub_page` with a window the copy
//! must stay in (GNTST_general_error otherwise); transitive grants are
//! refused (GNTST_general_error). Each op gets its own
//! status; the call fails only if an op cannot be read or its status
//! written (-EFAULT).

use std::mem::size_of;
use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xen_abi::errno::EFAULT;
use xen_abi::grant_table::*;
use xen_abi::{DOMID_SELF, PAGE_SIZE};

use crate::domain::{Domain, DomainState};
use crate::guest::{atomic_u16, atomic_u32, read_phys, GuestAccess};

/// How often a racing guest may change an entry before the op fails.
const MAX_RETRIES: usize = 8;
/// Highest guest frame a copy may name (46-bit guest-physical space).
const MAX_GFN: u64 = 1 << (46 - 12);

/// One side of a copy, resolved.
struct Side {
    gfn: u64,
    /// The busy bit to clear, if by grant.
    pin: Option<Pin>,
}

/// A busy bit set while bytes move.
#[derive(Clone, Copy)]
enum Pin {
    /// In a v1 entry's flags (the entry's address).
    Flags(u64, u16),
    /// In a v2 entry's status word (its address).
    Status(u64, u16),
}

impl Domain {
    /// GNTTABOP_copy over `count` ops at `uop`, in the 32-bit layout if
    /// `compat` (24-byte ops with 4-byte frame numbers).
    pub(crate) fn grant_copy(&self, g: &GuestAccess, uop: u64, count: u64, compat: bool) -> i64 {
        let (size, status_offset) = if compat {
            (size_of::<CompatCopy>(), COMPAT_COPY_STATUS_OFFSET)
        } else {
            (size_of::<Copy>(), COPY_STATUS_OFFSET)
        };
        for i in 0..count {
            let Some(addr) = i.checked_mul(size as u64).and_then(|o| uop.checked_add(o)) else {
                return -EFAULT;
            };
            let read = if compat {
                g.read_obj::<CompatCopy>(addr).map(Copy::from)
            } else {
                g.read_obj::<Copy>(addr)
            };
            let Ok(op) = read else {
                return -EFAULT;
            };
            let status = {
                let st = self.lock();
                self.copy_one(&st, g.mem, &op)
            };
            if g.write_obj(addr + status_offset as u64, &status).is_err() {
                return -EFAULT;
            }
        }
        0
    }

    fn copy_one(&self, st: &DomainState, mem: &GuestMemoryMmap, op: &Copy) -> i16 {
        let len = op.len as usize;
        if op.source.offset as usize + len > PAGE_SIZE || op.dest.offset as usize + len > PAGE_SIZE
        {
            return GNTST_BAD_COPY_ARG;
        }
        let src = match self.claim(
            st,
            mem,
            &op.source,
            op.flags & GNTCOPY_SOURCE_GREF != 0,
            false,
            op.len,
        ) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let dst = match self.claim(
            st,
            mem,
            &op.dest,
            op.flags & GNTCOPY_DEST_GREF != 0,
            true,
            op.len,
        ) {
            Ok(d) => d,
            Err(e) => {
                release(mem, &src);
                return e;
            }
        };
        let mut buf = vec![0u8; len];
        let from = GuestAddress((src.gfn << 12) + op.source.offset as u64);
        let to = GuestAddress((dst.gfn << 12) + op.dest.offset as u64);
        let status = if mem.read_slice(&mut buf, from).is_ok() && mem.write_slice(&buf, to).is_ok()
        {
            GNTST_OKAY
        } else {
            GNTST_BAD_PAGE
        };
        release(mem, &dst);
        release(mem, &src);
        status
    }

    /// Check one side and pin it if it is a grant.
    fn claim(
        &self,
        st: &DomainState,
        mem: &GuestMemoryMmap,
        ptr: &CopyPtr,
        is_gref: bool,
        write: bool,
        len: u16,
    ) -> Result<Side, i16> {
        let window = (ptr.offset, len);
        if !is_gref {
            // Only DOMID_SELF may name a frame directly.
            if ptr.domid != DOMID_SELF {
                return Err(GNTST_PERMISSION_DENIED);
            }
            return page_backed(mem, ptr.gref_or_gfn)
                .then_some(Side {
                    gfn: ptr.gref_or_gfn,
                    pin: None,
                })
                .ok_or(GNTST_BAD_PAGE);
        }
        // Other domains' tables are out of this VMM's reach.
        if ptr.domid != DOMID_SELF && ptr.domid != self.cfg.domid {
            return Err(GNTST_BAD_DOMAIN);
        }
        let loc = st.grants.locate(ptr.gref_or_gfn).ok_or(GNTST_BAD_GNTREF)?;
        let busy = if write { GTF_WRITING } else { GTF_READING };
        match loc.status {
            None => self.claim_v1(mem, loc.entry, busy),
            Some(status) => self.claim_v2(mem, loc.entry, status, busy, window),
        }
    }

    /// Check a v1 entry and set its busy bit with one compare-and-exchange
    /// of its `flags | domid` word.
    fn claim_v1(&self, mem: &GuestMemoryMmap, entry: u64, busy: u16) -> Result<Side, i16> {
        let word = atomic_u32(mem, entry).ok_or(GNTST_BAD_GNTREF)?;
        for _ in 0..MAX_RETRIES {
            let cur = word.load(Ordering::SeqCst);
            self.check_header(cur, busy)?;
            if word
                .compare_exchange(cur, cur | busy as u32, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            // The frame is read once pinned: the guest may not change it
            // while a busy bit is set. A bit that was already set (the
            // same grant on both sides) stays set.
            let pin = (cur as u16 & busy == 0).then_some(Pin::Flags(entry, busy));
            let gfn = mem
                .read_obj::<u32>(GuestAddress(entry + 4))
                .map(u64::from)
                .unwrap_or(u64::MAX);
            if !page_backed(mem, gfn) {
                release_pin(mem, pin);
                return Err(GNTST_BAD_PAGE);
            }
            return Ok(Side { gfn, pin });
        }
        Err(GNTST_GENERAL_ERROR)
    }

    /// Check a v2 entry and set its busy bit in its status word: the bit is
    /// set first and the header read again after it, so a guest that
    /// changed the entry in between is seen (Xen's _set_status_v2). The
    /// frame comes from `full_page`, or from `sub_page`, whose window
    /// `window` (the op's offset and length) must lie in.
    fn claim_v2(
        &self,
        mem: &GuestMemoryMmap,
        entry: u64,
        status: u64,
        busy: u16,
        window: (u16, u16),
    ) -> Result<Side, i16> {
        let header = atomic_u32(mem, entry).ok_or(GNTST_BAD_GNTREF)?;
        let status_word = atomic_u16(mem, status).ok_or(GNTST_BAD_GNTREF)?;
        for _ in 0..MAX_RETRIES {
            let cur = header.load(Ordering::SeqCst);
            self.check_header(cur, busy)?;
            let before = status_word.fetch_or(busy, Ordering::SeqCst);
            let pin = (before & busy == 0).then_some(Pin::Status(status, busy));
            if header.load(Ordering::SeqCst) != cur {
                release_pin(mem, pin);
                continue; // the guest changed the entry: check it again
            }
            let flags = cur as u16;
            let e: GrantEntryV2 = read_phys(mem, entry);
            if flags & GTF_SUB_PAGE != 0 {
                // gnttab_copy_buf: the copy must stay inside the granted
                // part of the page.
                let (offset, len) = (window.0 as u32, window.1 as u32);
                let start = e.page_off as u32;
                if offset < start || offset + len > start + e.length as u32 {
                    release_pin(mem, pin);
                    return Err(GNTST_GENERAL_ERROR);
                }
            }
            if !page_backed(mem, e.frame) {
                release_pin(mem, pin);
                return Err(GNTST_BAD_PAGE);
            }
            return Ok(Side { gfn: e.frame, pin });
        }
        Err(GNTST_GENERAL_ERROR)
    }

    /// The checks on an entry's `flags | domid` word both layouts share:
    /// it must grant access to the caller itself, and not read-only for a
    /// write. A transitive grant (v2) could only lead back to this domain
    /// or to one this VMM cannot reach: Xen refuses both.
    fn check_header(&self, word: u32, busy: u16) -> Result<(), i16> {
        let flags = word as u16;
        let domid = (word >> 16) as u16;
        if flags & GTF_TYPE_MASK == GTF_TRANSITIVE {
            return Err(GNTST_GENERAL_ERROR);
        }
        if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != self.cfg.domid {
            return Err(GNTST_PERMISSION_DENIED);
        }
        if busy == GTF_WRITING && flags & GTF_READONLY != 0 {
            return Err(GNTST_PERMISSION_DENIED);
        }
        Ok(())
    }
}

fn page_backed(mem: &GuestMemoryMmap, gfn: u64) -> bool {
    gfn < MAX_GFN && mem.get_slice(GuestAddress(gfn << 12), PAGE_SIZE).is_ok()
}

fn release(mem: &GuestMemoryMmap, side: &Side) {
    release_pin(mem, side.pin);
}

fn release_pin(mem: &GuestMemoryMmap, pin: Option<Pin>) {
    match pin {
        Some(Pin::Flags(entry, busy)) => {
            if let Some(word) = atomic_u32(mem, entry) {
                word.fetch_and(!(busy as u32), Ordering::SeqCst);
            }
        }
        Some(Pin::Status(status, busy)) => {
            if let Some(word) = atomic_u16(mem, status) {
                word.fetch_and(!busy, Ordering::SeqCst);
            }
        }
        None => {}
    }
}
