//! Xen's migration stream, as kxen writes and reads it.
//!
//! A saved image or a live-migration stream is libxl's stream
//! (`docs/specs/libxl-migration-stream.pandoc` in Xen's tree) whose
//! LIBXC_CONTEXT record hands over to libxc's stream
//! (`docs/specs/libxc-migration-stream.pandoc`, versions 2 and 3). Both are a
//! header and then records of `type`, `body_length` and a body padded with
//! zeroes to a multiple of 8 octets.
//!
//! * [`libxc`]: the image and domain headers, every libxc record type,
//!   [`libxc::LibxcWriter`] and [`libxc::LibxcReader`].
//! * [`libxl`]: the libxl header and records, [`libxl::LibxlWriter`] and
//!   [`libxl::LibxlReader`], which pass the stream to and from the libxc
//!   layer by value so that neither layer can read the other's records.
//! * [`hvm_context`]: the HVM_CONTEXT record's body, a sequence of Xen's HVM
//!   save entries (layouts in [`xen_abi::hvm_save`]).
//!
//! Writers take any [`std::io::Write`] and write each record as it is
//! given (wrap a file in a `BufWriter`); readers take any [`std::io::Read`]
//! and never hold more than one record body, and not even that for page
//! contents, which the caller reads one page at a time. A stream is
//! untrusted input: every length, count, frame number and type is checked
//! against [`Limits`] before anything is allocated for it, and every fault
//! is a [`ReadError`].
//!
//! The layouts are little-endian on the wire whatever the host, as the
//! spec asks of x86 images; big-endian streams are refused.

mod framing;
pub mod hvm_context;
pub mod libxc;
pub mod libxl;

#[cfg(test)]
mod tests;

use std::io;

pub use xen_abi::{PAGE_SHIFT, PAGE_SIZE};

/// libxc's `REC_LENGTH_MAX` (`xg_sr_stream_format.h`): the longest record
/// body libxc writes or accepts.
pub const REC_LENGTH_MAX: u32 = 128 << 20;
/// libxc's `MAX_BATCH_SIZE` (`xg_save_restore.h`): the most pages libxc puts
/// in one PAGE_DATA record.
pub const MAX_BATCH_SIZE: u32 = 1024;
/// Bits 51:0 of a PAGE_DATA pfn entry: the widest pfn the format can carry.
pub const PFN_FIELD_MASK: u64 = (1 << 52) - 1;
/// Records are padded to this alignment.
pub const RECORD_ALIGN: usize = 8;
/// Bit 31 of a record type marks an optional record, which a reader that
/// does not know it may skip (both specs, "Records").
pub const RECORD_TYPE_OPTIONAL: u32 = 1 << 31;

/// Caps a reader holds a stream to. Each is checked before the field it
/// bounds is used, so a hostile length or count costs nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest record body accepted at all (PAGE_DATA, skipped optional
    /// records). Default [`REC_LENGTH_MAX`], libxc's own.
    pub max_record_length: u32,
    /// Longest body the reader holds in memory (HVM_CONTEXT, HVM_PARAMS,
    /// policies, vCPU blobs, emulator records). Default 16 MiB: a 128-vCPU
    /// HVM context with AMX-sized XSAVE areas is about 2 MiB.
    pub max_buffered_length: u32,
    /// Most pfns in one PAGE_DATA record. Default [`MAX_BATCH_SIZE`]:
    /// libxc never writes more.
    pub max_pfns_per_batch: u32,
    /// Highest guest frame number the receiving domain can hold (its RAM
    /// and the special pages above it). No default: it depends on the
    /// domain, so [`Limits::new`] takes it.
    pub max_pfn: u64,
}

impl Limits {
    /// The default caps, with `max_pfn` (capped to the 52 bits the format
    /// carries) as the highest frame a PAGE_DATA record may name.
    pub fn new(max_pfn: u64) -> Limits {
        Limits {
            max_record_length: REC_LENGTH_MAX,
            max_buffered_length: 16 << 20,
            max_pfns_per_batch: MAX_BATCH_SIZE,
            max_pfn: max_pfn.min(PFN_FIELD_MASK),
        }
    }

    /// Caps for a domain whose frames all lie below `bytes` of guest
    /// physical address space.
    pub fn for_guest_physical_size(bytes: u64) -> Limits {
        Limits::new((bytes >> PAGE_SHIFT).saturating_sub(1))
    }
}

/// Why a stream could not be read. Every malformed, truncated or hostile
/// input ends in one of these, never in a panic.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("stream truncated in the {what}")]
    Truncated { what: &'static str },
    #[error("reading the stream: {0}")]
    Io(#[source] io::Error),
    #[error("not a libxc v2+ image: marker {0:#018x} (a legacy image has zero bits here)")]
    BadImageMarker(u64),
    #[error("not a libxc image: id {0:#010x}, expected {expected:#010x} (\"XENF\")", expected = libxc::IHDR_ID)]
    BadImageId(u32),
    #[error("libxc stream version {0} is not supported (versions 2 and 3 are)")]
    UnsupportedLibxcVersion(u32),
    #[error("not a libxl stream: ident {0:#018x}, expected \"LibxlFmt\"")]
    BadLibxlIdent(u64),
    #[error("libxl stream version {0} is not supported (version 2 is)")]
    UnsupportedLibxlVersion(u32),
    #[error("the {0} says the stream is big-endian; only little-endian streams are read")]
    BigEndian(&'static str),
    #[error("unknown domain type {0:#x} in the domain header")]
    UnknownDomainType(u32),
    #[error("domain header page shift {0}, expected 12")]
    BadPageShift(u16),
    #[error(
        "{layer} record type {record_type:#x} has a {length}-byte body, over the cap of {cap}"
    )]
    RecordTooLong {
        layer: &'static str,
        record_type: u32,
        length: u32,
        cap: u32,
    },
    #[error("{layer} record type {record_type:#x} has non-zero padding")]
    BadPadding {
        layer: &'static str,
        record_type: u32,
    },
    #[error("unknown mandatory {layer} record type {record_type:#x}")]
    UnknownMandatoryRecord {
        layer: &'static str,
        record_type: u32,
    },
    #[error("malformed {record} record: {reason}")]
    MalformedRecord {
        record: &'static str,
        reason: String,
    },
    #[error("PAGE_DATA record with {count} pfns, over the cap of {cap}")]
    TooManyPfns { count: u32, cap: u32 },
    #[error("{record} names pfn {pfn:#x}, beyond the domain's highest pfn {max_pfn:#x}")]
    PfnBeyondMax {
        record: &'static str,
        pfn: u64,
        max_pfn: u64,
    },
    #[error("PAGE_DATA pfn {pfn:#x} has the reserved page type {page_type:#x}")]
    BadPageType { pfn: u64, page_type: u8 },
    #[error("{record} record in a version {version} stream (it needs version 3)")]
    RecordNeedsV3 { record: &'static str, version: u32 },
    #[error("{record} record before STATIC_DATA_END in a version 3 stream")]
    BeforeStaticDataEnd { record: &'static str },
    #[error("a second STATIC_DATA_END record")]
    DuplicateStaticDataEnd,
    #[error("the {layer} stream has ended; nothing more can be read from it")]
    AfterEnd { layer: &'static str },
    #[error("the TOOLSTACK record is obsolete and is refused")]
    ObsoleteToolstackRecord,
    #[error("no page contents are pending: the last PAGE_DATA record's pages have all been read")]
    NoPagePending,
    #[error("{0}")]
    WrongLayer(&'static str),
    #[error("malformed HVM context: {0}")]
    HvmContext(String),
}

impl ReadError {
    /// Maps an I/O error from reading `what`, so that an early end of the
    /// input reads as truncation rather than as an I/O fault.
    fn from_io(error: io::Error, what: &'static str) -> ReadError {
        if error.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Truncated { what }
        } else {
            ReadError::Io(error)
        }
    }

    fn malformed(record: &'static str, reason: impl Into<String>) -> ReadError {
        ReadError::MalformedRecord {
            record,
            reason: reason.into(),
        }
    }
}

/// Why a stream could not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing the stream: {0}")]
    Io(#[from] io::Error),
    #[error("record type {record_type:#x} would have a {length}-byte body, over libxc's {max}", max = REC_LENGTH_MAX)]
    RecordTooLong { record_type: u32, length: u64 },
    #[error("pfn {0:#x} does not fit the stream's 52-bit pfn field")]
    PfnTooWide(u64),
    #[error("pfn {pfn:#x} of type {page_type:?} {problem}")]
    PageContents {
        pfn: u64,
        page_type: libxc::PageType,
        problem: &'static str,
    },
    #[error("{record} record written out of order: {rule}")]
    OutOfOrder {
        record: &'static str,
        rule: &'static str,
    },
    #[error("xenstore {what} {text:?} cannot go in an EMULATOR_XENSTORE_DATA record: {problem}")]
    BadXenstoreString {
        what: &'static str,
        text: String,
        problem: &'static str,
    },
    #[error("{0}")]
    WrongLayer(&'static str),
    #[error(
        "HVM context entry type {typecode} is {length} bytes, over the descriptor's 32-bit length"
    )]
    HvmEntryTooLong { typecode: u16, length: usize },
}

/// What [`check_libxl_stream`] found in a well-formed stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    pub domain: Option<libxc::DomainHeader>,
    pub libxc_version: u32,
    /// Records of either layer, END records included.
    pub records: u64,
    /// Pages whose contents the stream carries.
    pub pages_with_contents: u64,
    /// HVM save entries across HVM_CONTEXT records, HEADER and END excluded.
    pub hvm_context_entries: u64,
    pub checkpoints: u64,
}

/// Reads a whole libxl stream (the libxc stream inside it included,
/// through any checkpoints) and checks every record, HVM contexts
/// included, without holding more than one record body: what a restore
/// does before touching a domain, and what the fuzz target drives.
pub fn check_libxl_stream<R: io::Read>(
    input: R,
    limits: Limits,
) -> Result<StreamSummary, ReadError> {
    let mut summary = StreamSummary::default();
    let mut libxl = libxl::LibxlReader::new(input, limits)?;
    let mut page = [0u8; PAGE_SIZE];
    loop {
        let record = libxl.next_record()?;
        summary.records += 1;
        match record {
            libxl::LibxlRecord::End => return Ok(summary),
            libxl::LibxlRecord::LibxcContext | libxl::LibxlRecord::CheckpointEnd => {}
            _ => continue,
        }
        let mut libxc = libxl.into_libxc()?;
        summary.domain = Some(*libxc.domain());
        summary.libxc_version = libxc.version();
        loop {
            let record = libxc.next_record()?;
            summary.records += 1;
            match record {
                libxc::LibxcRecord::End => break,
                libxc::LibxcRecord::Checkpoint => {
                    summary.checkpoints += 1;
                    break;
                }
                libxc::LibxcRecord::PageData(_) => {
                    while libxc.pages_pending() > 0 {
                        libxc.read_page(&mut page)?;
                        summary.pages_with_contents += 1;
                    }
                }
                libxc::LibxcRecord::HvmContext(blob) => {
                    summary.hvm_context_entries += hvm_context::parse(&blob)?.entries.len() as u64;
                }
                _ => {}
            }
        }
        libxl = libxc.into_libxl()?;
    }
}
