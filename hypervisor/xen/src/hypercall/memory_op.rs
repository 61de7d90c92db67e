//! XENMEM_* (Xen's common/memory.c `do_memory_op`): ballooning, the
//! memory map, and placing Xen-owned frames (shared info, grant table)
//! at guest-chosen GFNs.

use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
use xen_abi::errno::*;
use xen_abi::memory::*;
use xen_abi::PAGE_SIZE;

use super::read_in_layout;
use crate::domain::{Domain, DomainState, OverlayFrame};
use crate::grant::{MAX_GRANT_FRAMES, MAX_STATUS_FRAMES};
use crate::guest::{Fault, GuestAccess};

/// Highest extent order a domU may use in memory reservations (2 MiB).
const MAX_EXTENT_ORDER: u32 = 9;
/// Bit position of the continuation start in a memory_op command.
const MEMOP_EXTENT_SHIFT: u32 = 6;
/// Guest frame numbers above this are not valid guest-physical addresses.
const MAX_GFN: u64 = 1 << (46 - 12);

/// Entry `index` of a guest list of `xen_pfn_t` or `xen_ulong_t`: 8 bytes
/// each natively, 4 bytes in the compat layout.
fn read_ulong_elem(g: &GuestAccess, base: u64, index: u64, compat: bool) -> Result<u64, Fault> {
    if compat {
        g.read_elem::<u32>(base, index).map(u64::from)
    } else {
        g.read_elem::<u64>(base, index)
    }
}

impl Domain {
    /// `compat`: the calling vCPU is not in 64-bit mode, so its structs
    /// come in the 32-bit layout (Xen picks it per call from the mode).
    pub(super) fn memory_op(&self, g: &GuestAccess, cmd: u64, arg: u64, compat: bool) -> i64 {
        let start_extent = cmd >> MEMOP_EXTENT_SHIFT;
        match cmd & MEMOP_CMD_MASK {
            XENMEM_DECREASE_RESERVATION => self.decrease_reservation(g, arg, start_extent, compat),
            XENMEM_POPULATE_PHYSMAP | XENMEM_INCREASE_RESERVATION => {
                self.populate_physmap(g, arg, start_extent, compat)
            }
            XENMEM_MAXIMUM_RAM_PAGE => self.cfg.max_ram_gfn() as i64,
            XENMEM_CURRENT_RESERVATION | XENMEM_MAXIMUM_RESERVATION | XENMEM_MAXIMUM_GPFN => {
                let domid = read!(g, u16, arg);
                if !self.is_self(domid) {
                    return -ESRCH;
                }
                match cmd & MEMOP_CMD_MASK {
                    XENMEM_CURRENT_RESERVATION => {
                        (self.cfg.ram_pages() - self.lock().ballooned.len() as u64) as i64
                    }
                    XENMEM_MAXIMUM_RESERVATION => self.cfg.max_pages as i64,
                    _ => self.cfg.max_ram_gfn().saturating_sub(1) as i64,
                }
            }
            // A domid pointer: the same in both layouts.
            XENMEM_ADD_TO_PHYSMAP => {
                let Ok(xatp) = read_in_layout::<AddToPhysmap, CompatAddToPhysmap>(g, arg, compat)
                else {
                    return -EFAULT;
                };
                if !self.is_self(xatp.domid) {
                    return -ESRCH;
                }
                let mut st = self.lock();
                self.add_to_physmap(&mut st, xatp.space, xatp.idx, xatp.gpfn) as i64
            }
            XENMEM_ADD_TO_PHYSMAP_BATCH => self.add_to_physmap_batch(g, arg, compat),
            XENMEM_MEMORY_MAP => {
                let Ok(map) = read_in_layout::<MemoryMap, CompatMemoryMap>(g, arg, compat) else {
                    return -EFAULT;
                };
                let n = (map.nr_entries as usize).min(self.cfg.memmap.len());
                for (i, entry) in self.cfg.memmap[..n].iter().enumerate() {
                    if g.write_elem(map.buffer, i as u64, entry).is_err() {
                        return -EFAULT;
                    }
                }
                // nr_entries is the first field in both layouts.
                write!(g, arg, &(n as u32));
                0
            }
            // Where a PV guest's read-only M2P is, as the VMM placed it:
            // an area of Xen's size and room for every machine frame (Xen
            // tells only the hardware domain the real top of memory). A
            // kxen PV domain is 64-bit: the native struct always.
            // hvm_memory_op refuses it to HVM/PVH guests.
            XENMEM_MACHPHYS_MAPPING => match self.cfg.pv_machphys_mapping {
                Some(mapping) => {
                    write!(g, arg, &mapping);
                    0
                }
                None => -ENOSYS,
            },
            // The host's memory map is the control domain's.
            XENMEM_MACHINE_MEMORY_MAP => -ENOSYS,
            XENMEM_REMOVE_FROM_PHYSMAP => {
                let Ok(xrfp) =
                    read_in_layout::<RemoveFromPhysmap, CompatRemoveFromPhysmap>(g, arg, compat)
                else {
                    return -EFAULT;
                };
                if !self.is_self(xrfp.domid) {
                    return -ESRCH;
                }
                self.remove_from_physmap(xrfp.gpfn)
            }
            _ => -ENOSYS,
        }
    }

    /// Walk the extents of a `xen_memory_reservation` from `start`, giving
    /// `apply` each extent as a range of RAM GFNs. Like Xen, returns the
    /// number of extents done: a bad struct, list entry or extent stops
    /// the walk there.
    fn for_each_extent(
        &self,
        g: &GuestAccess,
        arg: u64,
        start: u64,
        compat: bool,
        mut apply: impl FnMut(&mut DomainState, std::ops::Range<u64>) -> bool,
    ) -> i64 {
        let Ok(res) = read_in_layout::<MemoryReservation, CompatMemoryReservation>(g, arg, compat)
        else {
            return start as i64;
        };
        if !self.is_self(res.domid) || res.extent_order > MAX_EXTENT_ORDER {
            return start as i64;
        }
        let pages = 1u64 << res.extent_order;
        let mut st = self.lock();
        for i in start..res.nr_extents {
            let Ok(gfn) = read_ulong_elem(g, res.extent_start, i, compat) else {
                return i as i64;
            };
            // The guest picks gfn: keep the range in bounds and all RAM.
            let Some(end) = gfn.checked_add(pages).filter(|&end| end <= MAX_GFN) else {
                return i as i64;
            };
            let extent = gfn..end;
            if gfn % pages != 0 || !extent.clone().all(|p| self.cfg.is_ram(p)) {
                return i as i64;
            }
            if !apply(&mut st, extent) {
                return i as i64;
            }
        }
        res.nr_extents as i64
    }

    /// Balloon out the extents listed by the guest.
    fn decrease_reservation(&self, g: &GuestAccess, arg: u64, start: u64, compat: bool) -> i64 {
        self.for_each_extent(g, arg, start, compat, |st, extent| {
            if extent.clone().any(|p| st.ballooned.contains(&p)) {
                return false;
            }
            for p in extent {
                self.platform.discard_ram(p);
                st.ballooned.insert(p);
            }
            true
        })
    }

    /// Give ballooned RAM back, up to the domain's maximum.
    fn populate_physmap(&self, g: &GuestAccess, arg: u64, start: u64, compat: bool) -> i64 {
        self.for_each_extent(g, arg, start, compat, |st, extent| {
            let populated = self.cfg.ram_pages() - st.ballooned.len() as u64;
            let new_pages = extent.clone().filter(|p| st.ballooned.contains(p)).count() as u64;
            if populated + new_pages > self.cfg.max_pages {
                return false;
            }
            for p in extent {
                st.ballooned.remove(&p);
            }
            true
        })
    }

    fn remove_from_physmap(&self, gpfn: u64) -> i64 {
        let mut st = self.lock();
        if st.shared_info_overlay && st.shared_info_gfn == gpfn {
            return -EBUSY;
        }
        if let Some(slot) = st.grants.frames.iter().position(|f| *f == Some(gpfn)) {
            if !self.cfg.is_ram(gpfn) {
                self.platform.unmap_overlay(gpfn);
            }
            st.grants.frames[slot] = None;
            self.publish_event_layout(&st);
            return 0;
        }
        if let Some(slot) = st
            .grants
            .status_frames
            .iter()
            .position(|f| *f == Some(gpfn))
        {
            if !self.cfg.is_ram(gpfn) {
                self.platform.unmap_overlay(gpfn);
            }
            st.grants.status_frames[slot] = None;
            self.publish_event_layout(&st);
            return 0;
        }
        if self.cfg.is_ram(gpfn) && !st.ballooned.contains(&gpfn) {
            self.platform.discard_ram(gpfn);
            st.ballooned.insert(gpfn);
            return 0;
        }
        -EINVAL
    }

    fn add_to_physmap_batch(&self, g: &GuestAccess, arg: u64, compat: bool) -> i64 {
        let Ok(batch) =
            read_in_layout::<AddToPhysmapBatch, CompatAddToPhysmapBatch>(g, arg, compat)
        else {
            return -EFAULT;
        };
        if !self.is_self(batch.domid) {
            return -ESRCH;
        }
        for i in 0..batch.size as u64 {
            let idx = match read_ulong_elem(g, batch.idxs, i, compat) {
                Ok(v) => v,
                Err(_) => return -EFAULT,
            };
            let gpfn = match read_ulong_elem(g, batch.gpfns, i, compat) {
                Ok(v) => v,
                Err(_) => return -EFAULT,
            };
            let rc = {
                let mut st = self.lock();
                self.add_to_physmap(&mut st, batch.space as u32, idx, gpfn)
            };
            if g.write_elem(batch.errs, i, &rc).is_err() {
                return -EFAULT;
            }
        }
        0
    }

    /// Place a Xen-owned frame at `gpfn`. Returns 0 or -errno.
    pub fn add_to_physmap(&self, st: &mut DomainState, space: u32, idx: u64, gpfn: u64) -> i32 {
        if gpfn >= MAX_GFN {
            return -EINVAL as i32;
        }
        match space {
            XENMAPSPACE_SHARED_INFO => {
                if idx != 0 {
                    return -EINVAL as i32;
                }
                self.place_shared_info(st, gpfn)
            }
            XENMAPSPACE_GRANT_TABLE => {
                // grant_table.c gnttab_map_frame: the status bit names a
                // status frame only in a v2 table; in v1 the index, bit
                // included, names a grant frame far beyond the maximum.
                if st.grants.version == 2 && idx & XENMAPIDX_GRANT_TABLE_STATUS != 0 {
                    let idx = idx & !XENMAPIDX_GRANT_TABLE_STATUS;
                    // gnttab_get_status_frame_mfn grows the table to the
                    // grant frames this status frame covers, if allowed.
                    if idx >= MAX_STATUS_FRAMES as u64 {
                        return -EINVAL as i32;
                    }
                    return self.place_status_frame(st, idx as u32, gpfn);
                }
                if idx >= MAX_GRANT_FRAMES as u64 {
                    return -EINVAL as i32;
                }
                self.place_grant_frame(st, idx as u32, gpfn)
            }
            // Moving guest RAM around and foreign mappings are not offered.
            _ => -ENOSYS as i32,
        }
    }

    /// Whether `gfn` already holds another Xen-owned frame.
    fn gfn_in_use(&self, st: &DomainState, gfn: u64, except: OverlayFrame) -> bool {
        if except != OverlayFrame::SharedInfo && st.shared_info_gfn == gfn {
            return true;
        }
        let grant = st
            .grants
            .frames
            .iter()
            .enumerate()
            .any(|(i, f)| *f == Some(gfn) && except != OverlayFrame::GrantTable(i as u32));
        grant
            || st
                .grants
                .status_frames
                .iter()
                .enumerate()
                .any(|(i, f)| *f == Some(gfn) && except != OverlayFrame::GrantStatus(i as u32))
    }

    /// Move a frame's contents from `old` (if any) to `new`, mapping `new`
    /// as an overlay when it is not RAM and unmapping an old overlay.
    fn move_frame(&self, frame: OverlayFrame, old: Option<u64>, new: u64) -> i32 {
        let mut contents = vec![0u8; PAGE_SIZE];
        if let Some(old) = old {
            let _ = self
                .mem
                .memory()
                .read_slice(&mut contents, GuestAddress(old << 12));
        }
        if !self.cfg.is_ram(new) {
            if let Err(e) = self.platform.map_overlay(new, frame) {
                return e as i32;
            }
        }
        if self
            .mem
            .memory()
            .write_slice(&contents, GuestAddress(new << 12))
            .is_err()
        {
            return -EFAULT as i32;
        }
        if let Some(old) = old {
            if !self.cfg.is_ram(old) && old != new {
                self.platform.unmap_overlay(old);
            }
        }
        0
    }

    fn place_shared_info(&self, st: &mut DomainState, gpfn: u64) -> i32 {
        if st.shared_info_gfn == gpfn {
            return 0;
        }
        if self.gfn_in_use(st, gpfn, OverlayFrame::SharedInfo) {
            return -EBUSY as i32;
        }
        // The initial location is a special page, never an overlay to drop.
        let old = st.shared_info_gfn;
        self.platform.begin_event_layout_change();
        let rc = self.move_frame(OverlayFrame::SharedInfo, Some(old), gpfn);
        if rc != 0 {
            self.publish_event_layout(st);
            return rc;
        }
        st.shared_info_gfn = gpfn;
        self.publish_event_layout(st);
        st.shared_info_overlay = !self.cfg.is_ram(gpfn);
        self.write_wallclock(st);
        for vcpu in 0..self.cfg.nr_vcpus {
            self.update_vcpu_time(st, vcpu);
            self.recheck_upcall(st, vcpu);
        }
        0
    }

    pub(super) fn place_grant_frame(&self, st: &mut DomainState, idx: u32, gpfn: u64) -> i32 {
        let old = st.grants.frames[idx as usize];
        if old == Some(gpfn) {
            return 0;
        }
        if self.gfn_in_use(st, gpfn, OverlayFrame::GrantTable(idx)) {
            return -EBUSY as i32;
        }
        let rc = self.move_frame(OverlayFrame::GrantTable(idx), old, gpfn);
        if rc == 0 {
            st.grants.frames[idx as usize] = Some(gpfn);
            // A v2 table that grew needs the status frames of its new
            // entries (Xen's gnttab_grow_table populates them).
            let rc = self.place_default_status_frames(st);
            if rc != 0 {
                return rc;
            }
            self.publish_event_layout(st);
        }
        rc
    }

    /// Place status frame `idx` at `gpfn`, moving its contents there.
    pub(super) fn place_status_frame(&self, st: &mut DomainState, idx: u32, gpfn: u64) -> i32 {
        let old = st.grants.status_frames[idx as usize];
        if old == Some(gpfn) {
            return 0;
        }
        if self.gfn_in_use(st, gpfn, OverlayFrame::GrantStatus(idx)) {
            return -EBUSY as i32;
        }
        let rc = self.move_frame(OverlayFrame::GrantStatus(idx), old, gpfn);
        if rc == 0 {
            st.grants.status_frames[idx as usize] = Some(gpfn);
            self.publish_event_layout(st);
        }
        rc
    }

    /// GFN a status frame the guest has not placed gets: the window after
    /// the grant frames' default window.
    pub(super) fn default_status_gfn(&self, idx: u32) -> u64 {
        self.cfg.default_grant_gfn + MAX_GRANT_FRAMES as u64 + idx as u64
    }

    /// Give every status frame a v2 table has (and lacks) its default GFN.
    pub(super) fn place_default_status_frames(&self, st: &mut DomainState) -> i32 {
        for idx in 0..st.grants.nr_status_frames() {
            if st.grants.status_frames[idx as usize].is_none() {
                let rc = self.place_status_frame(st, idx, self.default_status_gfn(idx));
                if rc != 0 {
                    return rc;
                }
            }
        }
        0
    }

    /// Drop every status frame (the table went back to v1): Xen's
    /// gnttab_unpopulate_status_frames removes them from the physmap.
    pub(super) fn remove_status_frames(&self, st: &mut DomainState) {
        for slot in st.grants.status_frames.iter_mut() {
            if let Some(gfn) = slot.take() {
                if !self.cfg.is_ram(gfn) {
                    self.platform.unmap_overlay(gfn);
                }
            }
        }
    }
}
