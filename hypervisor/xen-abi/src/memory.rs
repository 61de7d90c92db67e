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
