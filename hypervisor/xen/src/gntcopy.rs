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
//! GTF_writing (destination), as Xen's active pins do. Each op gets its own
//! status; the call fails only if an op cannot be read or its status
//! written (-EFAULT).

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use xen_abi::errno::EFAULT;
use xen_abi::grant_table::*;
use xen_abi::{DOMID_SELF, PAGE_SIZE};

use crate::domain::{Domain, DomainState};
use crate::guest::{atomic_u32, GuestAccess};

/// Offset of `status` in `gnttab_copy`.
const STATUS_OFFSET: u64 = 36;
/// How often a racing guest may change an entry before the op fails.
const MAX_RETRIES: usize = 8;
/// Highest guest frame a copy may name (46-bit guest-physical space).
const MAX_GFN: u64 = 1 << (46 - 12);

/// One side of a copy, resolved.
struct Side {
    gfn: u64,
    /// The pinned entry and the busy bit to clear, if by grant.
    pin: Option<(u64, u16)>,
}

impl Domain {
    /// GNTTABOP_copy over `count` ops at `uop`.
    pub(crate) fn grant_copy(&self, g: &GuestAccess, uop: u64, count: u64) -> i64 {
        let size = core::mem::size_of::<Copy>() as u64;
        for i in 0..count {
            let Some(addr) = i.checked_mul(size).and_then(|o| uop.checked_add(o)) else {
                return -EFAULT;
            };
            let Ok(op) = g.read_obj::<Copy>(addr) else {
                return -EFAULT;
            };
            let status = {
                let st = self.lock();
                self.copy_one(&st, g.mem, &op)
            };
            if g.write_obj(addr + STATUS_OFFSET, &status).is_err() {
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
        ) {
            Ok(s) => s,
            Err(e) => return e,
        };
        let dst = match self.claim(st, mem, &op.dest, op.flags & GNTCOPY_DEST_GREF != 0, true) {
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
    ) -> Result<Side, i16> {
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
        let gref = ptr.gref_or_gfn;
        let per_frame = GRANT_ENTRIES_PER_FRAME as u64;
        let frame = st
            .grants
            .frames
            .get((gref / per_frame).min(u32::MAX as u64) as usize)
            .copied()
            .flatten()
            .ok_or(GNTST_BAD_GNTREF)?;
        let entry = (frame << 12) + (gref % per_frame) * GRANT_ENTRY_V1_SIZE as u64;
        let word = atomic_u32(mem, entry).ok_or(GNTST_BAD_GNTREF)?;
        let busy = if write { GTF_WRITING } else { GTF_READING };
        for _ in 0..MAX_RETRIES {
            let cur = word.load(Ordering::SeqCst);
            let flags = cur as u16;
            let domid = (cur >> 16) as u16;
            // The entry must grant the caller itself.
            if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != self.cfg.domid {
                return Err(GNTST_PERMISSION_DENIED);
            }
            if write && flags & GTF_READONLY != 0 {
                return Err(GNTST_PERMISSION_DENIED);
            }
            if word
                .compare_exchange(cur, cur | busy as u32, Ordering::SeqCst, Ordering::SeqCst)
                .is_err()
            {
                continue;
            }
            // The frame is read once pinned: the guest may not change it
            // while a busy bit is set. A bit that was already set (the
            // same grant on both sides) stays set.
            let pin = (flags & busy == 0).then_some((entry, busy));
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
}

fn page_backed(mem: &GuestMemoryMmap, gfn: u64) -> bool {
    gfn < MAX_GFN && mem.get_slice(GuestAddress(gfn << 12), PAGE_SIZE).is_ok()
}

fn release(mem: &GuestMemoryMmap, side: &Side) {
    release_pin(mem, side.pin);
}

fn release_pin(mem: &GuestMemoryMmap, pin: Option<(u64, u16)>) {
    if let Some((entry, busy)) = pin {
        if let Some(word) = atomic_u32(mem, entry) {
            word.fetch_and(!(busy as u32), Ordering::SeqCst);
        }
    }
}
