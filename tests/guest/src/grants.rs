//! The frontends' side of the grant table (v1): hand pages to a backend
//! domain and take them back.
//!
//! Grant frames are placed with `XENMAPSPACE_grant_table` at GFNs above the
//! ones the checks use, mapped on demand as references run out. Entries
//! 0..8 are reserved (Xen's `GNTTAB_NR_RESERVED_ENTRIES`: the toolstack's
//! console and xenstore grants).

use core::sync::atomic::{fence, AtomicU16, Ordering};

use xen_abi::grant_table::{
    QuerySize, GNTTABOP_QUERY_SIZE, GRANT_ENTRIES_PER_FRAME, GTF_PERMIT_ACCESS, GTF_READING,
    GTF_READONLY, GTF_WRITING,
};
use xen_abi::memory::{AddToPhysmap, XENMAPSPACE_GRANT_TABLE, XENMEM_ADD_TO_PHYSMAP};
use xen_abi::DOMID_SELF;

use crate::cell::Single;
use crate::hypercall::{grant_table_op, memory_op};

/// GFN of grant frame 0 (the checks use 0xf0000..).
pub const FRAME_GFN0: u64 = 0xf2000;
/// Most grant frames we map.
const MAX_FRAMES: usize = 16;
const MAX_REFS: usize = MAX_FRAMES * GRANT_ENTRIES_PER_FRAME;
/// First reference handed out.
const FIRST_REF: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GrantError {
    /// query_size or add_to_physmap failed.
    Table(i64),
    /// Every reference is in use.
    Exhausted,
    /// The backend still has the page mapped or is copying (reading/writing set).
    Busy,
    /// The reference is not one we handed out.
    NotOurs,
}

impl core::fmt::Display for GrantError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            GrantError::Table(rc) => write!(f, "grant table setup failed ({})", rc),
            GrantError::Exhausted => f.write_str("no free grant reference"),
            GrantError::Busy => f.write_str("grant still in use by the backend"),
            GrantError::NotOurs => f.write_str("grant reference not allocated"),
        }
    }
}

struct Table {
    /// Frames mapped so far.
    frames: usize,
    /// The hypervisor's limit (0 = not asked yet).
    max_frames: usize,
    used: [u64; MAX_REFS / 64],
    /// Lowest reference that may be free.
    hint: usize,
}

static TABLE: Single<Table> = Single::new(Table {
    frames: 0,
    max_frames: 0,
    used: [0; MAX_REFS / 64],
    hint: FIRST_REF as usize,
});

fn map_frame(idx: usize) -> Result<(), GrantError> {
    let mut xatp = AddToPhysmap {
        domid: DOMID_SELF,
        size: 0,
        space: XENMAPSPACE_GRANT_TABLE,
        idx: idx as u64,
        gpfn: FRAME_GFN0 + idx as u64,
    };
    match memory_op(XENMEM_ADD_TO_PHYSMAP, &mut xatp) {
        0 => Ok(()),
        rc => Err(GrantError::Table(rc)),
    }
}

impl Table {
    fn ensure_limit(&mut self) -> Result<(), GrantError> {
        if self.max_frames != 0 {
            return Ok(());
        }
        let mut q = QuerySize {
            dom: DOMID_SELF,
            ..Default::default()
        };
        let rc = grant_table_op(GNTTABOP_QUERY_SIZE, &mut q, 1);
        if rc != 0 || q.status != 0 {
            return Err(GrantError::Table(if rc != 0 {
                rc
            } else {
                q.status as i64
            }));
        }
        self.max_frames = (q.max_nr_frames as usize).clamp(1, MAX_FRAMES);
        // Refs 0..FIRST_REF are never ours.
        self.used[0] |= (1u64 << FIRST_REF) - 1;
        Ok(())
    }

    fn alloc(&mut self) -> Result<u32, GrantError> {
        self.ensure_limit()?;
        let limit = self.max_frames * GRANT_ENTRIES_PER_FRAME;
        let mut r = self.hint;
        while r < limit {
            let (w, b) = (r / 64, 1u64 << (r % 64));
            if self.used[w] == u64::MAX {
                r = (w + 1) * 64;
                continue;
            }
            if self.used[w] & b == 0 {
                let frame = r / GRANT_ENTRIES_PER_FRAME;
                while self.frames <= frame {
                    map_frame(self.frames)?;
                    self.frames += 1;
                }
                self.used[w] |= b;
                self.hint = r + 1;
                return Ok(r as u32);
            }
            r += 1;
        }
        Err(GrantError::Exhausted)
    }

    fn release(&mut self, gref: u32) {
        let r = gref as usize;
        self.used[r / 64] &= !(1u64 << (r % 64));
        self.hint = self.hint.min(r);
    }

    fn is_ours(&self, gref: u32) -> bool {
        let r = gref as usize;
        r >= FIRST_REF as usize && r < MAX_REFS && self.used[r / 64] & (1u64 << (r % 64)) != 0
    }
}

/// The entry of reference `gref` (which must lie in a mapped frame).
fn entry(gref: u32) -> *mut u8 {
    let frame = gref as usize / GRANT_ENTRIES_PER_FRAME;
    let slot = gref as usize % GRANT_ENTRIES_PER_FRAME;
    (((FRAME_GFN0 + frame as u64) << 12) + slot as u64 * 8) as *mut u8
}

fn flags(gref: u32) -> &'static AtomicU16 {
    // SAFETY: `entry` points into a grant frame mapped by `map_frame`
    // (identity-mapped, never unmapped); flags is the entry's first u16,
    // shared with the hypervisor and the backend, hence atomic.
    unsafe { AtomicU16::from_ptr(entry(gref) as *mut u16) }
}

/// Grant `domid` access to guest frame `gfn` (read-only if `readonly`).
pub fn grant(domid: u16, gfn: u64, readonly: bool) -> Result<u32, GrantError> {
    let gref = TABLE.with(|t| t.alloc())?;
    let e = entry(gref);
    // SAFETY: the entry is ours (just allocated) and not yet valid (flags
    // 0), so the backend ignores domid and frame until flags are set.
    unsafe {
        (e.add(2) as *mut u16).write_volatile(domid);
        (e.add(4) as *mut u32).write_volatile(gfn as u32);
    }
    // domid and frame must be visible before the entry becomes valid.
    fence(Ordering::Release);
    let ro = if readonly { GTF_READONLY } else { 0 };
    flags(gref).store(GTF_PERMIT_ACCESS | ro, Ordering::Release);
    Ok(gref)
}

/// Revoke `gref` if the backend no longer uses it, and free it.
pub fn end(gref: u32) -> Result<(), GrantError> {
    if !TABLE.with(|t| t.is_ours(gref)) {
        return Err(GrantError::NotOurs);
    }
    let f = flags(gref);
    let mut cur = f.load(Ordering::Acquire);
    loop {
        if cur & (GTF_READING | GTF_WRITING) != 0 {
            return Err(GrantError::Busy);
        }
        match f.compare_exchange(cur, 0, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => cur = now,
        }
    }
    TABLE.with(|t| t.release(gref));
    Ok(())
}

/// A reference that is in range but grants nothing (for hostile requests):
/// allocated, left invalid, freed by [`release_unused`].
pub fn reserve_invalid() -> Result<u32, GrantError> {
    TABLE.with(|t| t.alloc())
}

/// Free a reference from [`reserve_invalid`].
pub fn release_unused(gref: u32) {
    flags(gref).store(0, Ordering::Release);
    TABLE.with(|t| t.release(gref));
}
