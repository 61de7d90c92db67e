//! `grant_table_op` sub-operations and the v1 and v2 grant entries.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const GNTTABOP_MAP_GRANT_REF: u64 = 0;
pub const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
pub const GNTTABOP_SETUP_TABLE: u64 = 2;
pub const GNTTABOP_DUMP_TABLE: u64 = 3;
pub const GNTTABOP_TRANSFER: u64 = 4;
pub const GNTTABOP_COPY: u64 = 5;
pub const GNTTABOP_QUERY_SIZE: u64 = 6;
pub const GNTTABOP_UNMAP_AND_REPLACE: u64 = 7;
pub const GNTTABOP_SET_VERSION: u64 = 8;
pub const GNTTABOP_GET_STATUS_FRAMES: u64 = 9;
pub const GNTTABOP_GET_VERSION: u64 = 10;

/// `GNTST_*` per-operation status codes.
pub const GNTST_OKAY: i16 = 0;
pub const GNTST_GENERAL_ERROR: i16 = -1;
pub const GNTST_BAD_DOMAIN: i16 = -2;
pub const GNTST_BAD_GNTREF: i16 = -3;
pub const GNTST_BAD_HANDLE: i16 = -4;
pub const GNTST_BAD_VIRT_ADDR: i16 = -5;
pub const GNTST_BAD_DEV_ADDR: i16 = -6;
pub const GNTST_NO_DEVICE_SPACE: i16 = -7;
pub const GNTST_PERMISSION_DENIED: i16 = -8;
pub const GNTST_BAD_PAGE: i16 = -9;
pub const GNTST_BAD_COPY_ARG: i16 = -10;
pub const GNTST_ADDRESS_TOO_BIG: i16 = -11;
pub const GNTST_EAGAIN: i16 = -12;

/// Grant entry flags.
pub const GTF_INVALID: u16 = 0;
pub const GTF_PERMIT_ACCESS: u16 = 1;
pub const GTF_ACCEPT_TRANSFER: u16 = 2;
pub const GTF_TYPE_MASK: u16 = 3;
pub const GTF_READONLY: u16 = 1 << 2;
pub const GTF_READING: u16 = 1 << 3;
pub const GTF_WRITING: u16 = 1 << 4;
/// Grant type (v2 only): access to another domain's grant, by reference.
pub const GTF_TRANSITIVE: u16 = 3;
/// v2 only: the grant covers `sub_page.length` bytes at `sub_page.page_off`.
pub const GTF_SUB_PAGE: u16 = 1 << 8;

/// Entries 0..8 belong to the toolstack (console and xenstore grants):
/// Xen keeps them across a version switch and ignores their pins.
pub const GNTTAB_NR_RESERVED_ENTRIES: u32 = 8;

/// Bytes of one v1 grant entry.
pub const GRANT_ENTRY_V1_SIZE: usize = 8;
/// v1 entries per grant frame.
pub const GRANT_ENTRIES_PER_FRAME: usize = crate::PAGE_SIZE / GRANT_ENTRY_V1_SIZE;

/// Bytes of one v2 grant entry.
pub const GRANT_ENTRY_V2_SIZE: usize = 16;
/// v2 entries per grant frame.
pub const GRANT_ENTRIES_PER_FRAME_V2: usize = crate::PAGE_SIZE / GRANT_ENTRY_V2_SIZE;
/// `grant_status_t` (u16) entries per status frame.
pub const GRANT_STATUS_PER_FRAME: usize = crate::PAGE_SIZE / 2;

/// Status frames a v2 table of `grant_frames` grant frames has.
pub const fn status_frames_for(grant_frames: u32) -> u32 {
    let entries = grant_frames as usize * GRANT_ENTRIES_PER_FRAME_V2;
    entries.div_ceil(GRANT_STATUS_PER_FRAME) as u32
}

/// `grant_entry_v1_t`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryV1 {
    pub flags: u16,
    pub domid: u16,
    pub frame: u32,
}

/// `grant_entry_v2_t`, read as its `full_page` / `sub_page` view: the
/// header, then either `pad0: u32, frame: u64` (full page) or
/// `page_off: u16, length: u16, frame: u64` (sub page). The transitive view
/// puts `trans_domid: u16, pad: u16, gref: u32` where `sub_page` has its
/// first two fields and `frame`'s low half.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GrantEntryV2 {
    pub flags: u16,
    pub domid: u16,
    /// `sub_page.page_off` (`transitive.trans_domid`).
    pub page_off: u16,
    /// `sub_page.length`.
    pub length: u16,
    /// `full_page.frame` / `sub_page.frame` (`transitive.gref`: low half).
    pub frame: u64,
}
/// Byte offset of `frame` in a v2 entry.
pub const GRANT_V2_FRAME_OFFSET: usize = 8;
/// Byte offset of `sub_page.page_off` in a v2 entry.
pub const GRANT_V2_PAGE_OFF_OFFSET: usize = 4;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SetupTable {
    pub dom: u16,
    pub _pad: u16,
    pub nr_frames: u32,
    /// Out.
    pub status: i16,
    pub _pad2: [u8; 6],
    /// Guest pointer to `nr_frames` u64 frame numbers (out).
    pub frame_list: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct QuerySize {
    pub dom: u16,
    pub _pad: u16,
    /// Out.
    pub nr_frames: u32,
    /// Out.
    pub max_nr_frames: u32,
    /// Out.
    pub status: i16,
    pub _pad2: u16,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct SetVersion {
    pub version: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetVersion {
    pub dom: u16,
    pub _pad: u16,
    /// Out.
    pub version: u32,
}

/// `gnttab_get_status_frames_t` (PV guests only: HVM and PVH guests get
/// -ENOSYS).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GetStatusFrames {
    pub nr_frames: u32,
    pub dom: u16,
    /// Out.
    pub status: i16,
    /// Guest pointer to `nr_frames` u64 frame numbers (out).
    pub frame_list: u64,
}

/// One side of a `gnttab_copy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CopyPtr {
    /// A grant reference, or a GFN of the caller's own memory.
    pub gref_or_gfn: u64,
    pub domid: u16,
    pub offset: u16,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Copy {
    pub source: CopyPtr,
    pub dest: CopyPtr,
    pub len: u16,
    pub flags: u16,
    /// Out.
    pub status: i16,
    pub _pad: u16,
}
pub const GNTCOPY_SOURCE_GREF: u16 = 1;
pub const GNTCOPY_DEST_GREF: u16 = 2;

// ---- 32-bit ("compat") layouts ----------------------------------------------
//
// A caller outside 64-bit mode passes guest handles and `xen_pfn_t` as 4
// bytes. query_size, set_version and get_version have no such field and
// read the same in both modes (Xen's CHECK_gnttab_* asserts it).

/// Compat `struct gnttab_setup_table`: the frame-list handle is 4 bytes at
/// 12, and the list holds 4-byte frame numbers (`compat_pfn_t`); 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatSetupTable {
    pub dom: u16,
    pub _pad: u16,
    pub nr_frames: u32,
    /// Out.
    pub status: i16,
    pub _pad2: u16,
    /// Guest pointer to `nr_frames` u32 frame numbers (out).
    pub frame_list: u32,
}

impl From<CompatSetupTable> for SetupTable {
    fn from(c: CompatSetupTable) -> Self {
        SetupTable {
            dom: c.dom,
            nr_frames: c.nr_frames,
            status: c.status,
            frame_list: c.frame_list.into(),
            ..Default::default()
        }
    }
}

/// Compat `struct gnttab_copy_ptr`: the ref/gmfn union is 4 bytes
/// (`grant_ref_t`, `compat_pfn_t`); 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatCopyPtr {
    pub gref_or_gfn: u32,
    pub domid: u16,
    pub offset: u16,
}

impl From<CompatCopyPtr> for CopyPtr {
    fn from(c: CompatCopyPtr) -> Self {
        CopyPtr {
            gref_or_gfn: c.gref_or_gfn.into(),
            domid: c.domid,
            offset: c.offset,
            _pad: 0,
        }
    }
}

/// Compat `struct gnttab_copy`: `len` at 16, `flags` at 18, `status` at
/// 20; 24 bytes (4-byte aligned), so a batch's ops are 24 bytes apart.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct CompatCopy {
    pub source: CompatCopyPtr,
    pub dest: CompatCopyPtr,
    pub len: u16,
    pub flags: u16,
    /// Out.
    pub status: i16,
    pub _pad: u16,
}

impl From<CompatCopy> for Copy {
    fn from(c: CompatCopy) -> Self {
        Copy {
            source: c.source.into(),
            dest: c.dest.into(),
            len: c.len,
            flags: c.flags,
            status: c.status,
            _pad: 0,
        }
    }
}

/// Offset of `status` in a native `gnttab_copy`.
pub const COPY_STATUS_OFFSET: usize = 36;
/// Offset of `status` in a compat `gnttab_copy`.
pub const COMPAT_COPY_STATUS_OFFSET: usize = 20;

const _: () = {
    assert!(core::mem::size_of::<GrantEntryV2>() == GRANT_ENTRY_V2_SIZE);
    assert!(core::mem::offset_of!(GrantEntryV2, frame) == GRANT_V2_FRAME_OFFSET);
    assert!(core::mem::offset_of!(GrantEntryV2, page_off) == GRANT_V2_PAGE_OFF_OFFSET);
    assert!(core::mem::size_of::<GetStatusFrames>() == 16);
    assert!(core::mem::offset_of!(Copy, status) == COPY_STATUS_OFFSET);
    assert!(core::mem::size_of::<CompatSetupTable>() == 16);
    assert!(core::mem::offset_of!(CompatSetupTable, status) == 8);
    assert!(core::mem::offset_of!(CompatSetupTable, frame_list) == 12);
    assert!(core::mem::size_of::<CompatCopyPtr>() == 8);
    assert!(core::mem::size_of::<CompatCopy>() == 24);
    assert!(core::mem::offset_of!(CompatCopy, len) == 16);
    assert!(core::mem::offset_of!(CompatCopy, status) == COMPAT_COPY_STATUS_OFFSET);
};
