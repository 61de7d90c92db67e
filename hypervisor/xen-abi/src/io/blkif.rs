//! The block device protocol (`io/blkif.h`), x86_64 ABI.
//!
//! Requests and responses share the slots of one shared ring
//! ([`super::ring`]); a slot is [`ENTRY_SIZE`] bytes. The first byte of
//! every request is its operation, which says how the rest is laid out:
//! [`Request`] for read/write/barrier/flush, [`RequestDiscard`] and
//! [`RequestIndirect`] for their operations. Sectors are 512-byte units
//! everywhere on the wire, whatever the backing store's sector size.
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Read `nr_segments` segments from disk into granted pages.
pub const BLKIF_OP_READ: u8 = 0;
/// Write granted pages to disk.
pub const BLKIF_OP_WRITE: u8 = 1;
/// A write ordered after every earlier write and before every later one
/// ("feature-barrier").
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Commit the backing store's volatile cache ("feature-flush-cache").
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved (SLES device-specific packets); never valid here.
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard a sector range ("feature-discard"), see [`RequestDiscard`].
pub const BLKIF_OP_DISCARD: u8 = 5;
/// A read or write whose segments are in granted indirect pages
/// ("feature-max-indirect-segments"), see [`RequestIndirect`].
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Success.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// The request failed (EIO, or a malformed request).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// The operation is not supported by this backend.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// Segments a direct request carries.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Indirect pages one indirect request may name.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segment descriptors per indirect page.
pub const SEGMENTS_PER_INDIRECT_FRAME: usize = crate::PAGE_SIZE / SEGMENT_SIZE;
/// The most segments any indirect request can describe.
pub const MAX_INDIRECT_SEGMENTS: usize =
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST * SEGMENTS_PER_INDIRECT_FRAME;

/// `BLKIF_DISCARD_SECURE` in [`RequestDiscard::flag`].
pub const BLKIF_DISCARD_SECURE: u8 = 1;

/// Bytes of one wire sector.
pub const SECTOR_SIZE: usize = 512;
/// Wire sectors in one page: a segment's `last_sect` is at most 7.
pub const SECTORS_PER_PAGE: u8 = (crate::PAGE_SIZE / SECTOR_SIZE) as u8;

/// Bits of the backend's `info` node.
pub const VDISK_CDROM: u32 = 1;
pub const VDISK_REMOVABLE: u32 = 2;
pub const VDISK_READONLY: u32 = 4;

/// Bytes of one [`RequestSegment`].
pub const SEGMENT_SIZE: usize = 8;
/// Bytes of one ring slot (the larger of request and response).
pub const ENTRY_SIZE: usize = 112;
/// Bytes of one [`Response`].
pub const RESPONSE_SIZE: usize = 16;
/// Slots in a one-page blkif ring.
pub const RING_SIZE_ONE_PAGE: u32 = super::ring::ring_size_for_pages(1, ENTRY_SIZE);

/// The `protocol` node value for this layout; absent means native (the
/// same on x86_64).
pub const PROTOCOL_X86_64: &str = "x86_64-abi";
/// The 32-bit layout, which kxen does not serve.
pub const PROTOCOL_X86_32: &str = "x86_32-abi";

/// One data segment: sectors `first_sect..=last_sect` of granted page
/// `gref` (`struct blkif_request_segment`).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct RequestSegment {
    pub gref: u32,
    pub first_sect: u8,
    pub last_sect: u8,
    pub _pad: [u8; 2],
}

/// A read, write, barrier or flush request (`struct blkif_request`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct Request {
    pub operation: u8,
    pub nr_segments: u8,
    /// The virtual device (unused by backends: the ring already says).
    pub handle: u16,
    pub _pad: u32,
    /// The frontend's tag, echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: u64,
    pub seg: [RequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// A discard request (`struct blkif_request_discard`); occupies the start
/// of a slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RequestDiscard {
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or 0.
    pub flag: u8,
    pub handle: u16,
    pub _pad: u32,
    pub id: u64,
    pub sector_number: u64,
    pub nr_sectors: u64,
}

/// An indirect request (`struct blkif_request_indirect`): `nr_segments`
/// [`RequestSegment`]s are packed in the pages `indirect_grefs` names,
/// [`SEGMENTS_PER_INDIRECT_FRAME`] per page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct RequestIndirect {
    pub operation: u8,
    /// [`BLKIF_OP_READ`] or [`BLKIF_OP_WRITE`].
    pub indirect_op: u8,
    pub nr_segments: u16,
    pub _pad: u32,
    pub id: u64,
    pub sector_number: u64,
    pub handle: u16,
    pub _pad1: u16,
    pub indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    pub _pad2: u32,
}

/// A response (`struct blkif_response`).
#[repr(C)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct Response {
    pub id: u64,
    /// The request's operation, echoed.
    pub operation: u8,
    pub _pad: u8,
    /// One of the `BLKIF_RSP_*` codes.
    pub status: i16,
    pub _pad1: u32,
}

/// Indirect pages needed for `segments` indirect segments.
pub const fn indirect_pages(segments: usize) -> usize {
    segments.div_ceil(SEGMENTS_PER_INDIRECT_FRAME)
}

/// xenstore node names of the vbd protocol.
pub mod keys {
    // Backend → frontend: features.
    pub const FEATURE_BARRIER: &str = "feature-barrier";
    pub const FEATURE_FLUSH_CACHE: &str = "feature-flush-cache";
    pub const FEATURE_DISCARD: &str = "feature-discard";
    pub const DISCARD_GRANULARITY: &str = "discard-granularity";
    pub const DISCARD_ALIGNMENT: &str = "discard-alignment";
    pub const DISCARD_SECURE: &str = "discard-secure";
    pub const FEATURE_PERSISTENT: &str = "feature-persistent";
    pub const FEATURE_MAX_INDIRECT_SEGMENTS: &str = "feature-max-indirect-segments";
    pub const MAX_RING_PAGE_ORDER: &str = "max-ring-page-order";
    pub const MULTI_QUEUE_MAX_QUEUES: &str = "multi-queue-max-queues";
    // Backend → frontend: the device.
    pub const SECTORS: &str = "sectors";
    pub const SECTOR_SIZE: &str = "sector-size";
    pub const PHYSICAL_SECTOR_SIZE: &str = "physical-sector-size";
    pub const INFO: &str = "info";
    pub const MODE: &str = "mode";
    // Frontend → backend: transport.
    pub const RING_REF: &str = "ring-ref";
    /// `ring-ref0`, `ring-ref1`, ... for multi-page rings.
    pub const RING_REF_PREFIX: &str = "ring-ref";
    pub const RING_PAGE_ORDER: &str = "ring-page-order";
    pub const EVENT_CHANNEL: &str = "event-channel";
    pub const PROTOCOL: &str = "protocol";
    pub const MULTI_QUEUE_NUM_QUEUES: &str = "multi-queue-num-queues";
    /// `queue-0`, `queue-1`, ... directories for multi-queue.
    pub const QUEUE_PREFIX: &str = "queue-";
    pub const FRONTEND_FEATURE_PERSISTENT: &str = "feature-persistent";
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn request_layout() {
        assert_eq!(size_of::<RequestSegment>(), SEGMENT_SIZE);
        assert_eq!(offset_of!(RequestSegment, first_sect), 4);
        assert_eq!(offset_of!(RequestSegment, last_sect), 5);
        assert_eq!(size_of::<Request>(), ENTRY_SIZE);
        assert_eq!(offset_of!(Request, nr_segments), 1);
        assert_eq!(offset_of!(Request, handle), 2);
        assert_eq!(offset_of!(Request, id), 8);
        assert_eq!(offset_of!(Request, sector_number), 16);
        assert_eq!(offset_of!(Request, seg), 24);
    }

    #[test]
    fn discard_and_indirect_layout() {
        assert_eq!(size_of::<RequestDiscard>(), 32);
        assert_eq!(offset_of!(RequestDiscard, flag), 1);
        assert_eq!(offset_of!(RequestDiscard, handle), 2);
        assert_eq!(offset_of!(RequestDiscard, id), 8);
        assert_eq!(offset_of!(RequestDiscard, sector_number), 16);
        assert_eq!(offset_of!(RequestDiscard, nr_sectors), 24);
        assert_eq!(size_of::<RequestIndirect>(), 64);
        assert_eq!(offset_of!(RequestIndirect, indirect_op), 1);
        assert_eq!(offset_of!(RequestIndirect, nr_segments), 2);
        assert_eq!(offset_of!(RequestIndirect, id), 8);
        assert_eq!(offset_of!(RequestIndirect, sector_number), 16);
        assert_eq!(offset_of!(RequestIndirect, handle), 24);
        assert_eq!(offset_of!(RequestIndirect, indirect_grefs), 28);
        assert!(size_of::<RequestIndirect>() <= ENTRY_SIZE);
    }

    #[test]
    fn response_layout_and_ring() {
        assert_eq!(size_of::<Response>(), RESPONSE_SIZE);
        assert_eq!(offset_of!(Response, operation), 8);
        assert_eq!(offset_of!(Response, status), 10);
        assert_eq!(RING_SIZE_ONE_PAGE, 32);
        assert_eq!(SEGMENTS_PER_INDIRECT_FRAME, 512);
        assert_eq!(MAX_INDIRECT_SEGMENTS, 4096);
        assert_eq!(indirect_pages(0), 0);
        assert_eq!(indirect_pages(1), 1);
        assert_eq!(indirect_pages(513), 2);
        assert_eq!(SECTORS_PER_PAGE, 8);
    }
}
