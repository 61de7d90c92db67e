//! `memory_op` sub-operations.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const XENMEM_INCREASE_RESERVATION: u64 = 0;
pub const XENMEM_DECREASE_RESERVATION: u64 = 1;
pub const XENMEM_MAXIMUM_RAM_PAGE: u64 = 2;
pub const XENMEM_CURRENT_RESERVATION: u64 = 3;
pub const XENMEM_MAXIMUM_RESERVATION: u64 = 4;
pub const XENMEM_POPULATE_PHYSMAP: u64 = 6;
pub const XENMEM_ADD_TO_PHYSMAP: u64 = 7;
pub const XENMEM_MEMORY_MAP: u64 = 9;
pub const XENMEM_MACHINE_MEMORY_MAP: u64 = 10;
pub const XENMEM_MACHPHYS_MAPPING: u64 = 12;
pub const XENMEM_MAXIMUM_GPFN: u64 = 14;
pub const XENMEM_REMOVE_FROM_PHYSMAP: u64 = 15;
pub const XENMEM_ADD_TO_PHYSMAP_BATCH: u64 = 23;
/// The low bits of the `memory_op` command; the rest is a continuation start.
pub const MEMOP_CMD_MASK: u64 = 0x3f;

pub const XENMAPSPACE_SHARED_INFO: u32 = 0;
pub const XENMAPSPACE_GRANT_TABLE: u32 = 1;
pub const XENMAPSPACE_GMFN: u32 = 2;
pub const XENMAPSPACE_GMFN_RANGE: u32 = 3;
pub const XENMAPSPACE_GMFN_FOREIGN: u32 = 4;
/// In `idx` for [`XENMAPSPACE_GRANT_TABLE`]: map a status frame (v2 only).
pub const XENMAPIDX_GRANT_TABLE_STATUS: u64 = 0x8000_0000;

/// `struct xen_add_to_physmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AddToPhysmap {
    pub domid: u16,
    /// Number of pages for [`XENMAPSPACE_GMFN_RANGE`].
    pub size: u16,
    pub space: u32,
    pub idx: u64,
    pub gpfn: u64,
}

/// `struct xen_add_to_physmap_batch`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct AddToPhysmapBatch {
    pub domid: u16,
    pub space: u16,
    pub size: u16,
    pub foreign_domid: u16,
    /// Guest pointer to `size` u64 indexes.
    pub idxs: u64,
    /// Guest pointer to `size` u64 GPFNs.
    pub gpfns: u64,
    /// Guest pointer to `size` i32 per-entry results.
    pub errs: u64,
}

/// `struct xen_memory_reservation`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MemoryReservation {
    /// Guest pointer to an array of u64 GPFNs.
    pub extent_start: u64,
    pub nr_extents: u64,
    pub extent_order: u32,
    pub mem_flags: u32,
    pub domid: u16,
    pub _pad: [u8; 6],
}

/// `struct xen_machphys_mapping` (XENMEM_machphys_mapping): where a PV
/// guest's read-only M2P is mapped, and the highest machine frame it may
/// look up there.
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct MachphysMapping {
    pub v_start: u64,
    pub v_end: u64,
    pub max_mfn: u64,
}

/// `struct xen_memory_map`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MemoryMap {
    /// In: room in `buffer`; out: entries written.
    pub nr_entries: u32,
    pub _pad: u32,
    /// Guest pointer to an array of [`E820Entry`].
    pub buffer: u64,
}

/// An E820 entry as Xen returns it: packed, 20 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct E820Entry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
pub const E820_ACPI: u32 = 3;

/// `struct xen_remove_from_physmap`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RemoveFromPhysmap {
    pub domid: u16,
    pub _pad: [u8; 6],
    pub gpfn: u64,
}

// The 32-bit ("compat") layouts. A vCPU outside 64-bit mode passes its
// structs as a 32-bit compiler lays out the public headers: `xen_ulong_t`,
// `xen_pfn_t` and guest handles are 4 bytes and 8-byte fields align to 4.
// Xen reads them so and translates each to the native request; these
// `From` impls are that translation (a 4-byte handle or frame number
// zero-extends, so a compat request can never name anything above 4 GiB
// or frame 2^32).

/// Compat `struct xen_add_to_physmap`: 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatAddToPhysmap {
    pub domid: u16,
    pub size: u16,
    pub space: u32,
    pub idx: u32,
    pub gpfn: u32,
}

impl From<CompatAddToPhysmap> for AddToPhysmap {
    fn from(c: CompatAddToPhysmap) -> Self {
        AddToPhysmap {
            domid: c.domid,
            size: c.size,
            space: c.space,
            idx: c.idx.into(),
            gpfn: c.gpfn.into(),
        }
    }
}

/// Compat `struct xen_add_to_physmap_batch`: 20 bytes. Its index and GPFN
/// lists hold 4-byte entries (`compat_ulong_t`, `compat_pfn_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatAddToPhysmapBatch {
    pub domid: u16,
    pub space: u16,
    pub size: u16,
    pub foreign_domid: u16,
    /// Guest pointer to `size` u32 indexes.
    pub idxs: u32,
    /// Guest pointer to `size` u32 GPFNs.
    pub gpfns: u32,
    /// Guest pointer to `size` i32 per-entry results.
    pub errs: u32,
}

impl From<CompatAddToPhysmapBatch> for AddToPhysmapBatch {
    fn from(c: CompatAddToPhysmapBatch) -> Self {
        AddToPhysmapBatch {
            domid: c.domid,
            space: c.space,
            size: c.size,
            foreign_domid: c.foreign_domid,
            idxs: c.idxs.into(),
            gpfns: c.gpfns.into(),
            errs: c.errs.into(),
        }
    }
}

/// Compat `struct xen_memory_reservation`: 20 bytes. `extent_start`
/// points at 4-byte GPFNs (`compat_pfn_t`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatMemoryReservation {
    /// Guest pointer to an array of u32 GPFNs.
    pub extent_start: u32,
    pub nr_extents: u32,
    pub extent_order: u32,
    pub mem_flags: u32,
    pub domid: u16,
    pub _pad: [u8; 2],
}

impl From<CompatMemoryReservation> for MemoryReservation {
    fn from(c: CompatMemoryReservation) -> Self {
        MemoryReservation {
            extent_start: c.extent_start.into(),
            nr_extents: c.nr_extents.into(),
            extent_order: c.extent_order,
            mem_flags: c.mem_flags,
            domid: c.domid,
            _pad: [0; 6],
        }
    }
}

/// Compat `struct xen_memory_map`: 8 bytes. The [`E820Entry`]s it points
/// at are the same 20 bytes as in 64-bit mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatMemoryMap {
    /// In: room in `buffer`; out: entries written.
    pub nr_entries: u32,
    /// Guest pointer to an array of [`E820Entry`].
    pub buffer: u32,
}

impl From<CompatMemoryMap> for MemoryMap {
    fn from(c: CompatMemoryMap) -> Self {
        MemoryMap {
            nr_entries: c.nr_entries,
            _pad: 0,
            buffer: c.buffer.into(),
        }
    }
}

/// Compat `struct xen_remove_from_physmap`: 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatRemoveFromPhysmap {
    pub domid: u16,
    pub _pad: u16,
    pub gpfn: u32,
}

impl From<CompatRemoveFromPhysmap> for RemoveFromPhysmap {
    fn from(c: CompatRemoveFromPhysmap) -> Self {
        RemoveFromPhysmap {
            domid: c.domid,
            _pad: [0; 6],
            gpfn: c.gpfn.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    /// Sizes and offsets as gcc lays out the public memory.h for x86_64
    /// and, with `-m32`, for the compat (x86_32) ABI.
    #[test]
    fn native_and_compat_layouts_match_the_public_headers() {
        assert_eq!(size_of::<AddToPhysmap>(), 24);
        assert_eq!(offset_of!(AddToPhysmap, idx), 8);
        assert_eq!(offset_of!(AddToPhysmap, gpfn), 16);
        assert_eq!(size_of::<CompatAddToPhysmap>(), 16);
        assert_eq!(offset_of!(CompatAddToPhysmap, space), 4);
        assert_eq!(offset_of!(CompatAddToPhysmap, idx), 8);
        assert_eq!(offset_of!(CompatAddToPhysmap, gpfn), 12);

        assert_eq!(size_of::<AddToPhysmapBatch>(), 32);
        assert_eq!(size_of::<CompatAddToPhysmapBatch>(), 20);
        assert_eq!(offset_of!(CompatAddToPhysmapBatch, idxs), 8);
        assert_eq!(offset_of!(CompatAddToPhysmapBatch, gpfns), 12);
        assert_eq!(offset_of!(CompatAddToPhysmapBatch, errs), 16);

        assert_eq!(size_of::<MemoryReservation>(), 32);
        assert_eq!(offset_of!(MemoryReservation, domid), 24);
        assert_eq!(size_of::<CompatMemoryReservation>(), 20);
        assert_eq!(offset_of!(CompatMemoryReservation, nr_extents), 4);
        assert_eq!(offset_of!(CompatMemoryReservation, extent_order), 8);
        assert_eq!(offset_of!(CompatMemoryReservation, mem_flags), 12);
        assert_eq!(offset_of!(CompatMemoryReservation, domid), 16);

        assert_eq!(size_of::<MemoryMap>(), 16);
        assert_eq!(size_of::<MachphysMapping>(), 24);
        assert_eq!(offset_of!(MachphysMapping, max_mfn), 16);
        assert_eq!(offset_of!(MemoryMap, buffer), 8);
        assert_eq!(size_of::<CompatMemoryMap>(), 8);
        assert_eq!(offset_of!(CompatMemoryMap, buffer), 4);
        // e820entry is packed: the same 20 bytes in both modes.
        assert_eq!(size_of::<E820Entry>(), 20);

        assert_eq!(size_of::<RemoveFromPhysmap>(), 16);
        assert_eq!(offset_of!(RemoveFromPhysmap, gpfn), 8);
        assert_eq!(size_of::<CompatRemoveFromPhysmap>(), 8);
        assert_eq!(offset_of!(CompatRemoveFromPhysmap, gpfn), 4);
    }

    #[test]
    fn compat_translation_zero_extends_handles_and_frames() {
        let native = AddToPhysmap::from(CompatAddToPhysmap {
            domid: 0x7ff0,
            size: 3,
            space: XENMAPSPACE_SHARED_INFO,
            idx: u32::MAX,
            gpfn: u32::MAX,
        });
        assert_eq!(native.idx, 0xffff_ffff);
        assert_eq!(native.gpfn, 0xffff_ffff);
        assert_eq!((native.domid, native.size), (0x7ff0, 3));

        let res = MemoryReservation::from(CompatMemoryReservation {
            extent_start: 0xffff_f000,
            nr_extents: u32::MAX,
            extent_order: 9,
            mem_flags: 0,
            domid: 0x7ff0,
            _pad: [0; 2],
        });
        assert_eq!(res.extent_start, 0xffff_f000);
        assert_eq!(res.nr_extents, 0xffff_ffff);
        assert_eq!((res.extent_order, res.domid), (9, 0x7ff0));

        let map = MemoryMap::from(CompatMemoryMap {
            nr_entries: 4,
            buffer: 0x8000_0000,
        });
        assert_eq!((map.nr_entries, map.buffer), (4, 0x8000_0000));
    }
}
