//! GNTTABOP_* (Xen's common/grant_table.c `do_grant_table_op`): the grant
//! table's size, setup and version (v1 or v2); GNTTABOP_copy itself lives
//! in [`crate::gntcopy`].
//!
//! The ops are those Xen 4.17 lets an HVM or PVH guest make
//! (arch/x86/hvm/hypercall.c `hvm_grant_table_op`): everything else,
//! GNTTABOP_get_status_frames included, is -ENOSYS. Such a guest finds a v2
//! table's status frames by placing them itself, with
//! `XENMAPSPACE_grant_table | XENMAPIDX_grant_table_status`.

use std::sync::atomic::Ordering;

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryMmap};
use xen_abi::errno::*;
use xen_abi::grant_table::*;
use xen_abi::PAGE_SIZE;

use crate::domain::{Domain, DomainState};
use crate::grant::MAX_GRANT_FRAMES;
use crate::guest::{atomic_u16, atomic_u32, read_phys, write_phys, GuestAccess};

impl Domain {
    /// `compat`: the caller is outside 64-bit mode, so setup_table and copy
    /// come in their 32-bit layouts (the other ops read the same in both).
    pub(super) fn grant_table_op(
        &self,
        g: &GuestAccess,
        cmd: u64,
        uop: u64,
        count: u64,
        compat: bool,
    ) -> i64 {
        // Xen takes the count as a signed int.
        if (count as i32) < 0 {
            return -EINVAL;
        }
        match cmd {
            GNTTABOP_QUERY_SIZE => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut q = read!(g, QuerySize, uop);
                if self.is_self(q.dom) {
                    q.nr_frames = self.lock().grants.nr_frames();
                    q.max_nr_frames = MAX_GRANT_FRAMES;
                    q.status = GNTST_OKAY;
                } else if q.dom == 0 {
                    // Dom0 exists, and XSM_TARGET (xsm_grant_query_size)
                    // keeps a domU out of its table.
                    q.status = GNTST_PERMISSION_DENIED;
                } else {
                    // gnttab_query_size: no such domain.
                    q.status = GNTST_BAD_DOMAIN;
                }
                write!(g, uop, &q);
                0
            }
            GNTTABOP_SETUP_TABLE => {
                if count != 1 {
                    return -EINVAL;
                }
                if compat {
                    let mut req = read!(g, CompatSetupTable, uop);
                    req.status = self.setup_table(g, &req.into(), true);
                    write!(g, uop, &req);
                } else {
                    let mut req = read!(g, SetupTable, uop);
                    req.status = self.setup_table(g, &req, false);
                    write!(g, uop, &req);
                }
                0
            }
            GNTTABOP_SET_VERSION => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut req = read!(g, SetVersion, uop);
                let mut st = self.lock();
                let rc = self.set_version(&mut st, req.version);
                // Xen reports the version in force, whatever the outcome.
                req.version = st.grants.version;
                drop(st);
                write!(g, uop, &req);
                rc
            }
            GNTTABOP_GET_VERSION => {
                if count != 1 {
                    return -EINVAL;
                }
                let mut req = read!(g, GetVersion, uop);
                if !self.is_self(req.dom) {
                    return -ESRCH;
                }
                req.version = self.lock().grants.version;
                write!(g, uop, &req);
                0
            }
            GNTTABOP_COPY => self.grant_copy(g, uop, count, compat),
            _ => -ENOSYS,
        }
    }

    /// GNTTABOP_set_version (grant_table.c gnttab_set_version): only 1 and
    /// 2 exist (-EINVAL); asking for the current version changes nothing;
    /// a switch is refused with -EBUSY while any entry past the reserved
    /// ones is pinned (its busy bits set by a copy or a backend's mapping),
    /// and 2 -> 1 with -ERANGE while a reserved entry cannot be written as
    /// v1 (a transitive grant, or a frame above 32 bits). A switch keeps
    /// the reserved entries (converted to the new layout) and clears the
    /// rest of every frame.
    fn set_version(&self, st: &mut DomainState, version: u32) -> i64 {
        if version != 1 && version != 2 {
            return -EINVAL;
        }
        if st.grants.version == version {
            return 0;
        }
        let guard = self.mem.memory();
        let mem: &GuestMemoryMmap = &guard;
        let nr_entries = st.grants.nr_frames() as u64 * st.grants.entries_per_frame();
        for gref in GNTTAB_NR_RESERVED_ENTRIES as u64..nr_entries {
            if busy_bits(st, mem, gref) != 0 {
                tracing::warn!(
                    domid = self.cfg.domid,
                    gref,
                    "grant table version change refused: a grant is in use"
                );
                return -EBUSY;
            }
        }
        // The reserved entries, as v1 entries with their busy bits.
        let mut reserved = [GrantEntryV1::default(); GNTTAB_NR_RESERVED_ENTRIES as usize];
        for (gref, slot) in reserved.iter_mut().enumerate() {
            let Some(loc) = st.grants.locate(gref as u64) else {
                continue;
            };
            if st.grants.version == 1 {
                *slot = read_phys(mem, loc.entry);
                continue;
            }
            let e: GrantEntryV2 = read_phys(mem, loc.entry);
            match e.flags & GTF_TYPE_MASK {
                GTF_PERMIT_ACCESS if e.frame >> 32 == 0 => {
                    *slot = GrantEntryV1 {
                        flags: e.flags | busy_bits(st, mem, gref as u64),
                        domid: e.domid,
                        frame: e.frame as u32,
                    }
                }
                GTF_PERMIT_ACCESS | GTF_TRANSITIVE => return -ERANGE,
                // Anything else is not kept.
                _ => {}
            }
        }
        if version == 2 {
            st.grants.version = 2;
            let rc = self.place_default_status_frames(st);
            if rc != 0 {
                self.remove_status_frames(st);
                st.grants.version = 1;
                self.publish_event_layout(st);
                return rc as i64;
            }
        } else {
            self.remove_status_frames(st);
            st.grants.version = 1;
        }
        // No crud from the old layout survives.
        let zero = [0u8; PAGE_SIZE];
        for gfn in st.grants.frames.iter().flatten() {
            let _ = mem.write_slice(&zero, GuestAddress(gfn << 12));
        }
        for gfn in st.grants.status_frames.iter().flatten() {
            let _ = mem.write_slice(&zero, GuestAddress(gfn << 12));
        }
        for (gref, e) in reserved.iter().enumerate() {
            let Some(loc) = st.grants.locate(gref as u64) else {
                continue;
            };
            match loc.status {
                None => {
                    write_phys(mem, loc.entry, e);
                }
                Some(status) => {
                    let busy = e.flags & (GTF_READING | GTF_WRITING);
                    let v2 = GrantEntryV2 {
                        flags: e.flags & !(GTF_READING | GTF_WRITING),
                        domid: e.domid,
                        frame: e.frame as u64,
                        ..Default::default()
                    };
                    write_phys(mem, status, &busy);
                    write_phys(mem, loc.entry, &v2);
                }
            }
        }
        self.publish_event_layout(st);
        0
    }

    /// `compat`: the frame list holds 4-byte frame numbers (Xen's compat
    /// layer keeps their low 32 bits).
    fn setup_table(&self, g: &GuestAccess, req: &SetupTable, compat: bool) -> i16 {
        if !self.is_self(req.dom) {
            return GNTST_BAD_DOMAIN;
        }
        if req.nr_frames > MAX_GRANT_FRAMES {
            return GNTST_GENERAL_ERROR;
        }
        let mut st = self.lock();
        for i in 0..req.nr_frames {
            let gfn = match st.grants.frames[i as usize] {
                Some(gfn) => gfn,
                None => {
                    let gfn = self.cfg.default_grant_gfn + i as u64;
                    if self.place_grant_frame(&mut st, i, gfn) != 0 {
                        return GNTST_GENERAL_ERROR;
                    }
                    gfn
                }
            };
            let written = if compat {
                g.write_elem(req.frame_list, i as u64, &(gfn as u32))
            } else {
                g.write_elem(req.frame_list, i as u64, &gfn)
            };
            if written.is_err() {
                return GNTST_BAD_VIRT_ADDR;
            }
        }
        GNTST_OKAY
    }
}

/// `gref`'s GTF_reading/GTF_writing bits: in its flags (v1) or its status
/// word (v2). An entry whose frame is not placed has none.
fn busy_bits(st: &DomainState, mem: &GuestMemoryMmap, gref: u64) -> u16 {
    let Some(loc) = st.grants.locate(gref) else {
        return 0;
    };
    let bits = match loc.status {
        None => atomic_u32(mem, loc.entry).map_or(0, |w| w.load(Ordering::SeqCst) as u16),
        Some(status) => atomic_u16(mem, status).map_or(0, |w| w.load(Ordering::SeqCst)),
    };
    bits & (GTF_READING | GTF_WRITING)
}
