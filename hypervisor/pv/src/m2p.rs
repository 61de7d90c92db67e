//! The read-only machine-to-phys table (M2P) a 64-bit PV guest reads: one
//! 8-byte entry per machine frame, the pseudo-physical frame it backs.
//! Linux finds it with XENMEM_machphys_mapping (`v_start`, `max_mfn`) and
//! reads it in `mfn_to_pfn` with a fault-tolerant load.
//!
//! **Where.** Xen maps it at `MACH2PHYS_VIRT_START` (0xffff800000000000,
//! L4 slot 256, `public/arch-x86/xen-x86_64.h`). kxen maps it one slot up,
//! at [`M2P_VIRT_START`] (slot 257), still inside the hypervisor's slots
//! 256-271 that no guest can map, and XENMEM_machphys_mapping says so.
//! Measured on the PVM hosts: a CPL3 load through a present, valid slot
//! 256 entry faults (#PF error code 0xd, a reserved-bit fault, or 4), while
//! the same tables in slot 257 or 270 read fine; PVM keeps the start of
//! the upper half for itself. Linux takes `v_start` from the hypercall,
//! so it follows; a guest hard-coding 0xffff800000000000 would not.
//!
//! This module lays the table and the hypervisor's page tables that map
//! it out in a block of frames outside the domain's RAM, and says what
//! every entry holds; the executor backs those frames, writes what is
//! laid out here, and puts [`M2pLayout::l4_entry`] in L4 slot
//! [`M2P_L4_SLOT`] of every L4 the PV MMU validates.
//!
//! Order of the block, from its first frame: the table's data pages (so
//! that entry `mfn` sits at a fixed place, `base + mfn * 8`, whatever the
//! domain's size), then the L3, the L2s and the L1s that map them. The
//! mapping covers the data pages only, read-only, user-accessible (the PV
//! kernel runs at CPL3) and not executable; the rest of the M2P's 256 GiB
//! ("the hole") is not present, so a read past the domain's frames faults.

use xen_abi::pv::{
    HYPERVISOR_L4_SLOTS, MACH2PHYS_NR_ENTRIES, MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START,
    PTE_ACCESSED, PTE_NX, PTE_PRESENT, PTE_USER,
};

use crate::mmu::MAX_FRAMES;
use crate::pte::{Mfn, ENTRIES};

/// What the M2P holds for a frame that backs no pseudo-physical frame
/// (Xen's `INVALID_M2P_ENTRY`): the tail of the last data page.
pub const INVALID_M2P_ENTRY: u64 = !0;
/// Where kxen maps the M2P: Xen's place, one L4 slot up (see above).
pub const M2P_VIRT_START: u64 = MACH2PHYS_VIRT_START + (1 << 39);
/// The end of the M2P area: as large as Xen's (MACH2PHYS_NR_ENTRIES).
pub const M2P_VIRT_END: u64 = M2P_VIRT_START + (MACH2PHYS_VIRT_END - MACH2PHYS_VIRT_START);
/// The L4 slot of [`M2P_VIRT_START`].
pub const M2P_L4_SLOT: usize = ((M2P_VIRT_START >> 39) & 0x1ff) as usize;
const _: () = assert!(M2P_L4_SLOT == *HYPERVISOR_L4_SLOTS.start() + 1);
// The whole M2P area lies in that one slot (it is half of it), and the
// largest domain's table fits in it.
const _: () = assert!((M2P_VIRT_END - 1) >> 39 == M2P_VIRT_START >> 39);
const _: () = assert!(MACH2PHYS_NR_ENTRIES * 8 == M2P_VIRT_END - M2P_VIRT_START);
const _: () = assert!(MAX_FRAMES * 8 <= M2P_VIRT_END - M2P_VIRT_START);

/// What XENMEM_machphys_mapping answers a PV domain: `(v_start, v_end,
/// max_mfn)`, the area and Xen's domU `max_mfn` (room for every entry;
/// only a hardware domain is told the top of memory).
pub const fn machphys_mapping() -> (u64, u64, u64) {
    (M2P_VIRT_START, M2P_VIRT_END, MACH2PHYS_NR_ENTRIES - 1)
}

const PAGE: u64 = xen_abi::PAGE_SIZE as u64;
const ENTRIES_U64: u64 = ENTRIES as u64;
/// Entries of an upper-level table: present, user, accessed (preset, so
/// the CPU never writes the hypervisor's tables), never writable.
const TABLE_BITS: u64 = PTE_PRESENT | PTE_USER | PTE_ACCESSED;
/// Entries of an L1: the same, not executable.
const LEAF_BITS: u64 = TABLE_BITS | PTE_NX;
/// Frame numbers must fit a page-table entry's 40-bit frame field.
const MAX_GFN: u64 = 1 << 40;

/// Why a domain's M2P cannot be laid out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum M2pLayoutError {
    #[error("{0} frames: a PV domain has 1 to {MAX_FRAMES}")]
    FrameCount(u64),
    #[error(
        "an M2P block of {pages} frames at frame {base_gfn:#x} does not fit in page-table entries"
    )]
    Base { base_gfn: u64, pages: u64 },
}

/// Where a domain's M2P and its page tables live, by guest frame number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct M2pLayout {
    nr_frames: u64,
    base_gfn: u64,
    data_pages: u64,
    l1_tables: u64,
    l2_tables: u64,
}

impl M2pLayout {
    /// The M2P of a domain of `nr_frames` frames, in a block of frames
    /// starting at `base_gfn` (outside the domain's RAM).
    pub fn new(nr_frames: u64, base_gfn: u64) -> Result<M2pLayout, M2pLayoutError> {
        if nr_frames == 0 || nr_frames > MAX_FRAMES {
            return Err(M2pLayoutError::FrameCount(nr_frames));
        }
        // Bounded by MAX_FRAMES (2^26): no overflow below.
        let data_pages = (nr_frames * 8).div_ceil(PAGE);
        let l1_tables = data_pages.div_ceil(ENTRIES_U64);
        let l2_tables = l1_tables.div_ceil(ENTRIES_U64);
        let layout = M2pLayout {
            nr_frames,
            base_gfn,
            data_pages,
            l1_tables,
            l2_tables,
        };
        let pages = layout.total_pages();
        if base_gfn.checked_add(pages).is_none_or(|end| end > MAX_GFN) {
            return Err(M2pLayoutError::Base { base_gfn, pages });
        }
        Ok(layout)
    }

    pub fn nr_frames(&self) -> u64 {
        self.nr_frames
    }

    pub fn base_gfn(&self) -> u64 {
        self.base_gfn
    }

    /// Frames of the whole block: data pages and page tables.
    pub fn total_pages(&self) -> u64 {
        self.data_pages + 1 + self.l2_tables + self.l1_tables
    }

    /// Frames holding the table's entries.
    pub fn data_pages(&self) -> u64 {
        self.data_pages
    }

    /// The guest-physical address of `mfn`'s entry; `None` outside the
    /// domain.
    pub fn entry_gpa(&self, mfn: Mfn) -> Option<u64> {
        (mfn < self.nr_frames).then(|| (self.base_gfn << 12) + mfn * 8)
    }

    /// The first address past the mapped table: the hole starts here and
    /// runs to [`M2P_VIRT_END`].
    pub fn mapped_end_va(&self) -> u64 {
        M2P_VIRT_START + self.data_pages * PAGE
    }

    /// What entry `index` of data page `page` holds before the guest
    /// changes any (the identity P2M makes the M2P the identity).
    pub fn initial_entry(&self, page: u64, index: usize) -> u64 {
        let mfn = page * ENTRIES_U64 + index as u64;
        if mfn < self.nr_frames {
            mfn
        } else {
            INVALID_M2P_ENTRY
        }
    }

    fn l3_gfn(&self) -> u64 {
        self.base_gfn + self.data_pages
    }

    fn l2_gfn(&self, i: u64) -> u64 {
        self.l3_gfn() + 1 + i
    }

    fn l1_gfn(&self, i: u64) -> u64 {
        self.l2_gfn(self.l2_tables) + i
    }

    /// The entry for L4 slot [`M2P_L4_SLOT`].
    pub fn l4_entry(&self) -> u64 {
        (self.l3_gfn() << 12) | TABLE_BITS
    }

    /// Every page-table frame of the block and its 512 entries. The
    /// executor writes each whole frame (a frame it reuses keeps no stale
    /// entry); the data pages come from [`M2pLayout::initial_entry`].
    pub fn tables(&self) -> Vec<(u64, Vec<u64>)> {
        // A table's 512 entries: children `from..from + 512` of the
        // `count` the level below has, the rest not present.
        let table = |from: u64, count: u64, child_gfn: &dyn Fn(u64) -> u64, bits: u64| {
            (0..ENTRIES_U64)
                .map(|i| {
                    let child = from + i;
                    if child < count {
                        (child_gfn(child) << 12) | bits
                    } else {
                        0
                    }
                })
                .collect::<Vec<u64>>()
        };
        let mut out = Vec::with_capacity((1 + self.l2_tables + self.l1_tables) as usize);
        out.push((
            self.l3_gfn(),
            table(0, self.l2_tables, &|i| self.l2_gfn(i), TABLE_BITS),
        ));
        for l2 in 0..self.l2_tables {
            out.push((
                self.l2_gfn(l2),
                table(
                    l2 * ENTRIES_U64,
                    self.l1_tables,
                    &|i| self.l1_gfn(i),
                    TABLE_BITS,
                ),
            ));
        }
        for l1 in 0..self.l1_tables {
            out.push((
                self.l1_gfn(l1),
                table(
                    l1 * ENTRIES_U64,
                    self.data_pages,
                    &|i| self.base_gfn + i,
                    LEAF_BITS,
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pte::{entry_mfn, is_present, PtLevel};
    use std::collections::BTreeMap;

    /// Walk `va` through the layout's tables as the CPU would, starting at
    /// the L4 entry: the guest-physical address it reaches and the
    /// permission bits of the walk (P/RW/U where every level has them, NX
    /// where any has it), or None where an entry is not present.
    fn walk(layout: &M2pLayout, va: u64) -> Option<(u64, u64)> {
        let tables: BTreeMap<u64, Vec<u64>> = layout.tables().into_iter().collect();
        let mut entry = layout.l4_entry();
        let mut all_bits = !0u64;
        let mut nx = 0;
        for level in [PtLevel::L3, PtLevel::L2, PtLevel::L1] {
            if !is_present(entry) {
                return None;
            }
            all_bits &= entry;
            nx |= entry & PTE_NX;
            let table = tables.get(&entry_mfn(entry)).expect("a table of the block");
            entry = table[level.index_of(va)];
        }
        if !is_present(entry) {
            return None;
        }
        let bits = (all_bits & entry & !PTE_NX) | nx | (entry & PTE_NX);
        Some(((entry_mfn(entry) << 12) | (va & 0xfff), bits))
    }

    #[test]
    fn a_64_mib_domain_maps_exactly_its_entries() {
        let nr = 16384; // 64 MiB
        let layout = M2pLayout::new(nr, 0xf0000).unwrap();
        assert_eq!(layout.data_pages(), 32);
        assert_eq!(layout.total_pages(), 32 + 3);
        assert_eq!(layout.mapped_end_va(), M2P_VIRT_START + 32 * 4096);
        for mfn in [0, 1, 511, 512, 7777, nr - 1] {
            let va = M2P_VIRT_START + mfn * 8;
            let (gpa, bits) = walk(&layout, va).unwrap();
            assert_eq!(Some(gpa), layout.entry_gpa(mfn), "mfn {mfn}");
            assert_eq!(bits & (PTE_PRESENT | PTE_USER), PTE_PRESENT | PTE_USER);
            assert_eq!(bits & xen_abi::pv::PTE_RW, 0, "read-only at every level");
            assert_ne!(bits & PTE_NX, 0, "not executable");
        }
        // The hole: the next page, another L2 slot, another L3 slot, the
        // last entry of the M2P area.
        for va in [
            layout.mapped_end_va(),
            M2P_VIRT_START + (2 << 20),
            M2P_VIRT_START + (1 << 30),
            M2P_VIRT_END - 8,
        ] {
            assert_eq!(walk(&layout, va), None, "{va:#x}");
        }
        assert_eq!(layout.entry_gpa(nr), None);
        // The data pages come first: entry mfn at base + mfn * 8.
        assert_eq!(layout.entry_gpa(513), Some((0xf0000 << 12) + 513 * 8));
    }

    #[test]
    fn the_area_is_in_the_hypervisor_hole() {
        let (start, end, max_mfn) = machphys_mapping();
        let slot = |va: u64| ((va >> 39) & 0x1ff) as usize;
        assert!(HYPERVISOR_L4_SLOTS.contains(&slot(start)));
        assert!(HYPERVISOR_L4_SLOTS.contains(&slot(end - 1)));
        assert_eq!(slot(start), M2P_L4_SLOT);
        assert_eq!((start, end), (0xffff_8080_0000_0000, 0xffff_80c0_0000_0000));
        assert_eq!((max_mfn + 1) * 8, end - start);
    }

    #[test]
    fn the_identity_and_the_invalid_tail() {
        let layout = M2pLayout::new(700, 0x1000).unwrap();
        assert_eq!(layout.data_pages(), 2);
        assert_eq!(layout.initial_entry(0, 5), 5);
        assert_eq!(layout.initial_entry(1, 187), 699);
        assert_eq!(layout.initial_entry(1, 188), INVALID_M2P_ENTRY);
        assert_eq!(layout.initial_entry(1, 511), INVALID_M2P_ENTRY);
        // A partial last page is mapped whole; past it is the hole.
        assert!(walk(&layout, M2P_VIRT_START + 1023 * 8).is_some());
        assert_eq!(walk(&layout, M2P_VIRT_START + 1024 * 8), None);
    }

    #[test]
    fn many_tables_at_each_level() {
        // 2^26 frames: 131072 data pages, 256 L1s, one L2. Then the most
        // frames an L2 can map past one table: 512 L1s + 1.
        let big = M2pLayout::new(MAX_FRAMES, 0x10_0000).unwrap();
        assert_eq!(big.data_pages(), 131072);
        assert_eq!(big.total_pages(), 131072 + 1 + 1 + 256);
        let last = MAX_FRAMES - 1;
        let (gpa, _) = walk(&big, M2P_VIRT_START + last * 8).unwrap();
        assert_eq!(Some(gpa), big.entry_gpa(last));
        assert_eq!(walk(&big, big.mapped_end_va()), None);
        // Every table frame is distinct and outside the data pages.
        let tables = big.tables();
        let gfns: std::collections::BTreeSet<u64> = tables.iter().map(|(g, _)| *g).collect();
        assert_eq!(gfns.len(), tables.len());
        assert!(gfns
            .iter()
            .all(|&g| g >= big.base_gfn() + big.data_pages()
                && g < big.base_gfn() + big.total_pages()));
    }

    #[test]
    fn refusals() {
        assert_eq!(
            M2pLayout::new(0, 0x1000),
            Err(M2pLayoutError::FrameCount(0))
        );
        assert_eq!(
            M2pLayout::new(MAX_FRAMES + 1, 0x1000),
            Err(M2pLayoutError::FrameCount(MAX_FRAMES + 1))
        );
        assert!(matches!(
            M2pLayout::new(16, u64::MAX),
            Err(M2pLayoutError::Base { .. })
        ));
        // One data page and three tables end exactly at the limit.
        assert!(M2pLayout::new(16, MAX_GFN - 4).is_ok());
        assert!(M2pLayout::new(16, MAX_GFN - 3).is_err());
    }
}
