//! The event routing area: kxen's own (non-Xen) layout shared by kxen-vmm
//! and Dom0 backends. It lives here, not in `xen-abi`, because no Xen
//! interface has it.
//!
//! A few pages at the end of the domain's memfd, never mapped into the
//! guest. kxen-vmm keeps them current so that a Dom0 backend can raise a
//! guest port without asking kxen-vmm: it finds the guest's shared_info and
//! vcpu_info in the memfd, sets the 2-level pending bits itself, and kicks
//! the target vCPU's irqfd.
//!
//! Layout (all little-endian, offsets from the start of the area):
//!
//! | offset | field |
//! |---|---|
//! | 0 | [`RoutingHeader`] |
//! | [`ROUTING_PORTS_OFFSET`] | [`RoutingPort`] per guest port, 131072 of them (the FIFO ABI's port space) |
//! | [`ROUTING_RAISE_OFFSET`] | the raise-request bitmap: one bit per guest port |
//!
//! Every field is read and written with atomic loads and stores of its own
//! width. `generation` works as a sequence lock around layout changes
//! (shared_info or vcpu_info moving): the VMM makes it odd before it moves
//! a page and even again once the new offsets are published. A backend that
//! saw it change (or odd) while it set bits redoes the notification at the
//! new location. A switch to the FIFO event ABI is such a change: from then
//! on backends ask the VMM to raise ports (the raise-request bitmap)
//! instead of setting bits themselves.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "KXER" as a little-endian u32.
pub const ROUTING_MAGIC: u32 = u32::from_le_bytes(*b"KXER");
/// Layout version of this module (2: the port table and the raise-request
/// bitmap cover the FIFO ABI's 131072 ports, the bitmap after the table).
pub const ROUTING_VERSION: u32 = 2;
/// vCPUs the area describes (kxen-vmm allows at most 32).
pub const ROUTING_MAX_VCPUS: usize = 32;
/// Grant frames the area describes.
pub const ROUTING_MAX_GRANT_FRAMES: usize = 64;
/// Status frames the area describes (those of a 64-frame v2 table).
pub const ROUTING_MAX_STATUS_FRAMES: usize = 8;
/// Ports the area describes: the whole FIFO port space (which contains
/// the 2-level ABI's 4096).
pub const ROUTING_NR_PORTS: usize = 1 << 17;
/// An offset field that names nothing (page not placed or not in the memfd).
pub const ROUTING_NO_OFFSET: u64 = u64::MAX;
/// Where the per-port table starts.
pub const ROUTING_PORTS_OFFSET: usize = 4096;
/// Where the raise-request bitmap starts: one bit per guest port, set by
/// a backend that asks the VMM to raise the port (FIFO domains), cleared
/// by the VMM when it takes the request.
pub const ROUTING_RAISE_OFFSET: usize =
    ROUTING_PORTS_OFFSET + ROUTING_NR_PORTS * core::mem::size_of::<RoutingPort>();
/// Size of the whole area in bytes (a whole number of pages).
pub const ROUTING_AREA_SIZE: usize = ROUTING_RAISE_OFFSET + ROUTING_NR_PORTS / 8;

/// One vCPU as backends need it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RoutingVcpu {
    /// memfd offset of the vCPU's vcpu_info (registered, or the legacy slot
    /// in shared_info); [`ROUTING_NO_OFFSET`] if it has none.
    pub vcpu_info_offset: u64,
    /// 1 while the vCPU waits in SCHEDOP_block/poll inside kxen-vmm. The
    /// VMM stores it before re-checking for events; a backend reads it
    /// after setting pending bits (both with full fences), and writes the
    /// domain's wake eventfd when it is 1.
    pub blocked: u32,
    pub _pad: u32,
}

/// Offsets of the [`RoutingVcpu`] fields.
pub const VCPU_INFO_OFFSET_FIELD: usize = 0;
pub const VCPU_BLOCKED_FIELD: usize = 8;

/// The first part of the area.
#[repr(C)]
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RoutingHeader {
    /// [`ROUTING_MAGIC`] once the VMM initialised the area.
    pub magic: u32,
    /// [`ROUTING_VERSION`].
    pub version: u32,
    /// Sequence count of layout changes; odd while one is in progress.
    pub generation: u32,
    /// vCPUs of the domain (entries of `vcpus` in use).
    pub nr_vcpus: u32,
    /// memfd offset of the domain's shared_info page.
    pub shared_info_offset: u64,
    /// Grant frames in use (one past the highest placed).
    pub nr_grant_frames: u32,
    /// One past the highest guest port ever bound to Dom0 in the port
    /// table (a bound for scans; entries above it are all unbound).
    pub nr_ports: u32,
    pub vcpus: [RoutingVcpu; ROUTING_MAX_VCPUS],
    /// memfd offset of each grant frame; [`ROUTING_NO_OFFSET`] if not placed.
    pub grant_frame_offsets: [u64; ROUTING_MAX_GRANT_FRAMES],
    /// The grant table's layout: 1 (`grant_entry_v1`) or 2
    /// (`grant_entry_v2`, busy bits in the status frames); 0 (an area
    /// written before this field existed) means 1.
    pub grant_version: u32,
    /// Status frames of a v2 table (0 in v1).
    pub nr_status_frames: u32,
    /// memfd offset of each v2 status frame; [`ROUTING_NO_OFFSET`] if none.
    pub status_frame_offsets: [u64; ROUTING_MAX_STATUS_FRAMES],
    /// The guest's event ABI: [`EVENT_ABI_2L`] (0, also in an area written
    /// before this field existed) or [`EVENT_ABI_FIFO`]. A FIFO domain's
    /// event words are the VMM's to link into its queues: a backend sets
    /// the port's bit in the raise-request bitmap
    /// ([`ROUTING_RAISE_OFFSET`]) and writes the wake eventfd, and the VMM
    /// raises the port.
    pub event_abi: u32,
    /// The layout of the guest's shared_info and vcpu_infos:
    /// [`SHARED_INFO_NATIVE`] (0, also in an area written before this
    /// field existed) or [`SHARED_INFO_COMPAT`], Xen's 32-bit layout (u32
    /// event words at other offsets, the selector a u32 at 4), which Xen
    /// latches for a guest that set up events outside 64-bit mode.
    pub shared_info_layout: u32,
}

/// `event_abi` values.
pub const EVENT_ABI_2L: u32 = 0;
pub const EVENT_ABI_FIFO: u32 = 1;

/// `shared_info_layout` values.
pub const SHARED_INFO_NATIVE: u32 = 0;
pub const SHARED_INFO_COMPAT: u32 = 1;

/// Offsets of the [`RoutingHeader`] fields.
pub const HDR_MAGIC: usize = 0;
pub const HDR_VERSION: usize = 4;
pub const HDR_GENERATION: usize = 8;
pub const HDR_NR_VCPUS: usize = 12;
pub const HDR_SHARED_INFO_OFFSET: usize = 16;
pub const HDR_NR_GRANT_FRAMES: usize = 24;
pub const HDR_NR_PORTS: usize = 28;
pub const HDR_VCPUS: usize = 32;
pub const HDR_GRANT_FRAME_OFFSETS: usize =
    HDR_VCPUS + ROUTING_MAX_VCPUS * core::mem::size_of::<RoutingVcpu>();
pub const HDR_GRANT_VERSION: usize = HDR_GRANT_FRAME_OFFSETS + ROUTING_MAX_GRANT_FRAMES * 8;
pub const HDR_NR_STATUS_FRAMES: usize = HDR_GRANT_VERSION + 4;
pub const HDR_STATUS_FRAME_OFFSETS: usize = HDR_NR_STATUS_FRAMES + 4;
pub const HDR_EVENT_ABI: usize = HDR_STATUS_FRAME_OFFSETS + ROUTING_MAX_STATUS_FRAMES * 8;
pub const HDR_SHARED_INFO_LAYOUT: usize = HDR_EVENT_ABI + 4;

/// One guest port as backends need it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RoutingPort {
    /// The Dom0 port this guest port is bound to; 0 if it is not bound to
    /// Dom0 (then a Dom0 notification for it is dropped).
    pub dom0_port: u32,
    /// The vCPU whose vcpu_info is flagged when the port fires.
    pub notify_vcpu: u32,
}

/// Area offset of `vcpu`'s entry.
pub const fn vcpu_entry(vcpu: usize) -> usize {
    HDR_VCPUS + vcpu * core::mem::size_of::<RoutingVcpu>()
}

/// Area offset of grant frame `index`'s memfd offset.
pub const fn grant_frame_entry(index: usize) -> usize {
    HDR_GRANT_FRAME_OFFSETS + index * 8
}

/// Area offset of status frame `index`'s memfd offset.
pub const fn status_frame_entry(index: usize) -> usize {
    HDR_STATUS_FRAME_OFFSETS + index * 8
}

/// Area offset of the raise-request word holding `port`'s bit
/// (bit `port % 64`).
pub const fn raise_request_word(port: usize) -> usize {
    ROUTING_RAISE_OFFSET + port / 64 * 8
}

/// Area offset of `port`'s entry.
pub const fn port_entry(port: usize) -> usize {
    ROUTING_PORTS_OFFSET + port * core::mem::size_of::<RoutingPort>()
}

const _: () = {
    assert!(core::mem::size_of::<RoutingHeader>() == HDR_SHARED_INFO_LAYOUT + 4);
    assert!(core::mem::offset_of!(RoutingHeader, event_abi) == HDR_EVENT_ABI);
    assert!(core::mem::offset_of!(RoutingHeader, shared_info_layout) == HDR_SHARED_INFO_LAYOUT);
    assert!(core::mem::offset_of!(RoutingHeader, grant_version) == HDR_GRANT_VERSION);
    assert!(core::mem::offset_of!(RoutingHeader, nr_status_frames) == HDR_NR_STATUS_FRAMES);
    assert!(core::mem::offset_of!(RoutingHeader, status_frame_offsets) == HDR_STATUS_FRAME_OFFSETS);
    assert!(core::mem::size_of::<RoutingHeader>() <= ROUTING_PORTS_OFFSET);
    assert!(core::mem::size_of::<RoutingPort>() == 8);
    assert!(ROUTING_AREA_SIZE.is_multiple_of(crate::memfd::PAGE_SIZE));
    assert!(ROUTING_RAISE_OFFSET.is_multiple_of(8));
    assert!(core::mem::offset_of!(RoutingHeader, generation) == HDR_GENERATION);
    assert!(core::mem::offset_of!(RoutingHeader, shared_info_offset) == HDR_SHARED_INFO_OFFSET);
    assert!(core::mem::offset_of!(RoutingHeader, nr_grant_frames) == HDR_NR_GRANT_FRAMES);
    assert!(core::mem::offset_of!(RoutingHeader, vcpus) == HDR_VCPUS);
    assert!(core::mem::offset_of!(RoutingVcpu, blocked) == VCPU_BLOCKED_FIELD);
};
